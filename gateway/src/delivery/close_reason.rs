//! Why a stream ended: set by the outbox that closes it, logged with the stream's totals and
//! counted by the `reason` label of `herald_connections_closed_total`.

/// Why a stream ended. Also the `reason` label of closed connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (a failed write or a closed socket).
    Client,
    /// The client did not read fast enough and its queue filled up.
    Slow,
    /// The client's token expired.
    TokenExpired,
    /// The gateway is shutting down.
    Drain,
    /// The gateway was at capacity.
    Overload,
    /// The user started more resumes than `--resume-rate` and `--resume-burst` allow.
    Throttled,
    /// The subscription behind the stream failed.
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Slow => "slow",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Drain => "drain",
            CloseReason::Overload => "overload",
            CloseReason::Throttled => "throttled",
            CloseReason::Error => "error",
        }
    }
}
