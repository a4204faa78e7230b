//! The `RealtimeGateway` custom resource (group `herald.dev`, version `v1alpha1`).
//!
//! The YAML under `charts/herald/crds/` is generated from these types (`herald-operator
//! crdgen`); a test fails when it is stale.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A fleet of Herald gateways, scaled on their connection counts.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "RealtimeGateway",
    namespaced,
    shortname = "rtgw",
    status = "RealtimeGatewayStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeGatewaySpec {
    /// Container image of the gateway (runs `herald-gateway serve`).
    pub image: String,
    /// Image pull policy (default IfNotPresent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Bounds of the replica count the operator chooses.
    pub replicas: ReplicaBounds,
    /// Connections per pod the operator aims for: replicas = ceil(total / target).
    #[schemars(range(min = 1))]
    pub target_connections_per_pod: u32,
    /// Hard limit per pod (the gateways' `--max-connections`); above it a pod answers
    /// "come back later". Must be at least the target.
    #[schemars(range(min = 1))]
    pub max_connections_per_pod: u32,
    /// How fast to scale up.
    #[serde(default = "ScalePolicy::default_up")]
    pub scale_up: ScalePolicy,
    /// How carefully to scale down (long-lived streams make every removed pod a reconnect wave).
    #[serde(default = "ScalePolicy::default_down")]
    pub scale_down: ScalePolicy,
    /// Where the gateways find NATS.
    pub nats: NatsSpec,
    /// Where the gateways find their keys.
    pub auth: AuthSpec,
    /// Seconds a gateway spreads its streams' closing over when it stops (`--drain-secs`); the
    /// pods' termination grace period is this plus a margin.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: u32,
    /// CPU and memory of each gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Gateway settings.
    #[serde(default)]
    pub gateway: GatewaySettings,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ReplicaBounds {
    #[schemars(range(min = 1))]
    pub min: u32,
    #[schemars(range(min = 1))]
    pub max: u32,
}

/// A scaling policy in one direction.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalePolicy {
    /// Up: how long a higher recommendation must have been seen before acting (0 = at once).
    /// Down: the window whose highest recommendation is used, so a brief dip never removes pods.
    #[schemars(range(min = 0, max = 86400))]
    pub stabilization_seconds: u32,
    /// Most pods added or removed in one step.
    #[schemars(range(min = 1))]
    pub max_step: u32,
}

impl ScalePolicy {
    pub fn default_up() -> Self {
        ScalePolicy { stabilization_seconds: 0, max_step: 4 }
    }
    pub fn default_down() -> Self {
        ScalePolicy { stabilization_seconds: 300, max_step: 1 }
    }
}

fn default_drain_seconds() -> u32 {
    30
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// NATS URL(s), comma-separated, e.g. `nats://nats.nats.svc:4222`.
    pub url: String,
    /// Secret holding a NATS `.creds` file, if the server wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret key with the HS256 secret for client tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<SecretKeyRef>,
    /// Secret key with a JWKS document for client tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<SecretKeyRef>,
    /// Secret key with the publisher keys file (`name:secret` lines); without it HTTP
    /// publishing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_keys: Option<SecretKeyRef>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Gateway flags. Anything unset keeps the gateway's default.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_user: Option<u32>,
    /// Origins allowed by CORS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// How long events stay resumable (`--history-max-age`), e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max_per_subject: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_queue_bytes: Option<u64>,
    /// `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// What the operator observed and decided.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeGatewayStatus {
    #[serde(default)]
    pub replicas: u32,
    #[serde(default)]
    pub ready_replicas: u32,
    #[serde(default)]
    pub desired_replicas: u32,
    /// Open streams across the ready pods that reported.
    #[serde(default)]
    pub connections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition, as HPA reports them (AbleToScale, ScalingActive, ScalingLimited).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// The CRD as YAML, as checked in under `charts/herald/crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = RealtimeGateway::crd();
    format!(
        "# Generated by `herald-operator crdgen` from operator/src/crd.rs. Do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("the CRD serialises")
    )
}
