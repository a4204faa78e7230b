//! Herald operator: runs Herald gateways for each `RealtimeGateway` and scales them on what fills
//! a gateway: its open connections.
//!
//! Data flow: the controller ([`controller`]) watches `RealtimeGateway`s and the objects it owns;
//! each reconcile applies the Deployment, Service and PodDisruptionBudget ([`resources`]),
//! reads every pod's `/stats` ([`stats`]), asks the pure [`scaling::decide`] for a replica
//! count, and writes it and the status back. A [`lease`] makes sure only one operator replica
//! acts at a time.

pub mod controller;
pub mod crd;
pub mod lease;
pub mod metrics;
pub mod resources;
pub mod scaling;
pub mod stats;

/// Errors of one reconcile; each becomes a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid resource: {0}")]
    Invalid(String),
}

impl Error {
    /// The `error` label of `herald_operator_reconcile_errors_total`.
    /// Every value of [`Error::label`].
    pub const LABELS: [&'static str; 2] = ["kube", "invalid"];

    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
