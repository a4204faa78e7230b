//! The command line: every subcommand's flags, each with a `HERALD_` environment twin.
//! [`super::Config`] validates them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "herald-gateway", version, about = "Herald: real-time push over Server-Sent Events, backed by NATS")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a production gateway (requires NATS and client-token keys).
    Serve(Box<ServeArgs>),
    /// Run a self-contained development gateway: in-process broker, no auth, demo page.
    Dev(Box<DevArgs>),
    /// Publish one event from a shell, through NATS or a gateway's HTTP API.
    Publish(PublishArgs),
    /// Check a running gateway end to end: open a stream, publish, receive.
    Selftest(crate::commands::selftest::SelftestArgs),
}

/// `herald-gateway publish`: one event from a shell (run by [`crate::commands::publish`]).
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Event type (the SSE `event:` name).
    #[arg(long = "type", default_value = "message")]
    pub event_type: String,
    /// Deliver to this user; repeatable.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Deliver to this channel; repeatable.
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// Deliver to every connected client.
    #[arg(long)]
    pub broadcast: bool,
    /// The JSON payload; `-` reads it from standard input.
    #[arg(long)]
    pub data: String,
    /// Deliver live only: not stored, no id, not resumable.
    #[arg(long)]
    pub ephemeral: bool,
    /// Idempotency key (1–128 of letters, digits and `_ . : -`): repeating the publish with it
    /// within the history's duplicate window stores nothing new and prints the same ids.
    #[arg(long)]
    pub id: Option<String>,
    /// Publish through the HTTP API of the gateway at this base URL (http://host:port).
    #[arg(long, env = "HERALD_URL")]
    pub url: Option<String>,
    /// Publisher key for the HTTP API.
    #[arg(long, env = "HERALD_PUBLISH_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// File holding the publisher key (first line).
    #[arg(long, env = "HERALD_PUBLISH_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Publish straight to NATS at this URL (used when --url is not given).
    #[arg(long, env = "HERALD_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Prefix of every NATS subject.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "HERALD_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, env = "HERALD_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// File holding the raw HS256/384/512 secret for client tokens (a trailing newline is ignored).
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key for client tokens (RSA, EC or Ed25519); repeatable. Its file stem is its `kid`.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE", value_delimiter = ',')]
    pub jwt_public_key_file: Vec<PathBuf>,
    /// JWKS file with the keys of client tokens: public keys, or HMAC secrets (`kty` `oct`),
    /// which a file may hold and a `--jwks-url` document may not.
    #[arg(long, env = "HERALD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL of an identity provider (its `/.well-known/jwks.json`), fetched at start and
    /// refreshed; repeatable. `/readyz` fails until every one has been fetched once.
    #[arg(long, env = "HERALD_JWKS_URL", value_delimiter = ',')]
    pub jwks_url: Vec<String>,
    /// Seconds between two fetches of each JWKS URL (a token naming an unknown `kid` fetches at
    /// once, at most every 10 s per URL).
    #[arg(long, env = "HERALD_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,
    /// Allow `http://` JWKS URLs beyond loopback (keys fetched in the clear can be swapped by
    /// anyone on the path: only for a provider reachable solely inside the cluster).
    #[arg(long, env = "HERALD_JWKS_ALLOW_HTTP")]
    pub jwks_allow_http: bool,
    /// Required `iss` claim of client tokens.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim of client tokens.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Keep a resumable history in the JetStream stream HERALD (`off`: live only, for a NATS
    /// without JetStream; no ids, no resume).
    #[arg(long, env = "HERALD_HISTORY", value_enum, default_value_t = Toggle::On)]
    pub history: Toggle,
    /// Replicas of the HERALD stream (1, or 3 on a NATS cluster).
    #[arg(long, env = "HERALD_HISTORY_REPLICAS", default_value_t = 1)]
    pub history_replicas: usize,
    /// Seconds a durable publish is retried while the stream cannot store it (a leader
    /// election, a lost connection) before POST /v1/publish answers 503. The default outlasts
    /// two rounds of a NATS election (each up to 9 s). Cut to --history-dedup-window when
    /// longer, so a retry is never stored twice.
    #[arg(long, env = "HERALD_PUBLISH_RETRY_SECS", default_value_t = 20)]
    pub publish_retry_secs: u64,
    /// Publisher keys for POST /v1/publish: one `name:secret` per line. Without it, HTTP
    /// publishing is off (publish through NATS).
    #[arg(long, env = "HERALD_PUBLISH_KEYS_FILE")]
    pub publish_keys_file: Option<PathBuf>,
    /// Dashboard keys for /dashboard, the only credential it accepts: one `name:secret` per
    /// line, each secret unlike every publisher key's. Without it, /dashboard is off.
    #[arg(long, env = "HERALD_DASHBOARD_KEYS_FILE")]
    pub dashboard_keys_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address to listen on. Dev mode has no auth: a non-loopback address needs --allow-remote.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Let dev mode listen beyond loopback and answer any `Host`: everyone who can reach it
    /// can read every stream and publish to everyone.
    #[arg(long, env = "HERALD_ALLOW_REMOTE")]
    pub allow_remote: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, env = "HERALD_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Most concurrent SSE connections on this gateway.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most concurrent SSE connections per user on this gateway (0 = unlimited). The default
    /// keeps one leaked or shared token from taking a gateway's capacity.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: usize,
    /// Most channels on one connection; more is a 400.
    #[arg(long, env = "HERALD_MAX_CHANNELS", default_value_t = 32)]
    pub max_channels: usize,
    /// Origins allowed by CORS, comma-separated (e.g. https://app.example.com).
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Reconnection delay (ms) suggested to clients in the `retry:` field.
    #[arg(long, env = "HERALD_RETRY_MS", default_value_t = 3000)]
    pub retry_ms: u64,
    /// Largest event payload accepted by the publish API, in bytes.
    #[arg(long, env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_payload_bytes: usize,
    /// Unsent bytes a client may fall behind by before it is disconnected as slow.
    #[arg(long, env = "HERALD_CLIENT_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub client_queue_bytes: usize,
    /// Prefix of every NATS subject.
    #[arg(long, env = "HERALD_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    /// How long events stay resumable: seconds, or a duration such as 90s, 15m, 24h, 7d.
    #[arg(long, env = "HERALD_HISTORY_MAX_AGE", default_value = "24h")]
    pub history_max_age: String,
    /// Events kept per user, channel or broadcast for resuming.
    #[arg(long, env = "HERALD_HISTORY_MAX_PER_SUBJECT", default_value_t = 1000)]
    pub history_max_per_subject: u64,
    /// How long a publish `id` is remembered: a repeat within it stores nothing new (at most
    /// `--history-max-age`).
    #[arg(long, env = "HERALD_HISTORY_DEDUP_WINDOW", default_value = "2m")]
    pub history_dedup_window: String,
    /// Most events replayed to one resuming client; beyond it the client gets `reset`.
    #[arg(long, env = "HERALD_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: usize,
    /// Seconds over which a draining gateway spreads the closing of its streams.
    #[arg(long, env = "HERALD_DRAIN_SECS", default_value_t = 10)]
    pub drain_secs: u64,
    /// HTTP worker threads (0 = one per CPU).
    #[arg(long, env = "HERALD_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// This gateway's name on the operations dashboard (default: `<hostname>:<port>`).
    #[arg(long, env = "HERALD_POD_NAME")]
    pub pod_name: Option<String>,
    /// Channels with presence (who is connected, join/leave frames), as patterns such as
    /// `booking:*,doc:*`; `*` is every channel. Off by default (dev mode: every channel).
    #[arg(long, env = "HERALD_PRESENCE_CHANNELS", value_delimiter = ',')]
    pub presence_channels: Vec<String>,
    /// Seconds after which the members of a gateway that vanished (killed, cut off) are dropped
    /// from presence. Each gateway rewrites its entries every third of it.
    #[arg(long, env = "HERALD_PRESENCE_TTL_SECS", default_value_t = 30)]
    pub presence_ttl_secs: u64,
    /// Largest body of POST /v1/client-events, in bytes.
    #[arg(long, env = "HERALD_CLIENT_EVENT_MAX_BYTES", default_value_t = 2048)]
    pub client_event_max_bytes: usize,
    /// Client events each user may send per second on this gateway (sustained).
    #[arg(long, env = "HERALD_CLIENT_EVENT_RATE", default_value_t = 20)]
    pub client_event_rate: u32,
    /// Client events a user may send in a burst above the sustained rate.
    #[arg(long, env = "HERALD_CLIENT_EVENT_BURST", default_value_t = 40)]
    pub client_event_burst: u32,
    /// Resumes (streams opened with a `Last-Event-ID`) each user may start per second on this
    /// gateway, sustained. Each reads the history; beyond the budget a stream is answered with a
    /// `retry:` and ends, and the client comes back later with the same id.
    #[arg(long, env = "HERALD_RESUME_RATE", default_value_t = 2)]
    pub resume_rate: u32,
    /// Resumes a user may start at once above the sustained rate, so that every stream of a
    /// user on a gateway that died resumes here together. Default: `--max-connections-per-user`,
    /// at least 100; no budget at all when that is 0 (unlimited).
    #[arg(long, env = "HERALD_RESUME_BURST")]
    pub resume_burst: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
