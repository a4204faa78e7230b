//! The `RealtimeGateway` custom resource (group `herald.dev`, version `v1alpha1`).
//!
//! The YAML under `charts/herald/crds/` is generated from these types (`herald-operator
//! crdgen`); a test fails when it is stale.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Rules across fields are CEL rules (`x-kubernetes-validations`) that the API server enforces on
// every write; `validate` checks the same rules in the operator, for objects stored before the
// CRD carried them.

/// A fleet of Herald gateways, scaled on their connection counts.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "herald.dev",
    version = "v1alpha1",
    kind = "RealtimeGateway",
    namespaced,
    shortname = "rtgw",
    status = "RealtimeGatewayStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.replicas.min"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.replicas.max"}"#,
    printcolumn = r#"{"name":"Connections","type":"integer","jsonPath":".status.connections"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(MAX_AT_LEAST_TARGET.0).message(MAX_AT_LEAST_TARGET.1))]
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
    #[schemars(range(min = 1, max = 10000000))]
    #[serde(deserialize_with = "lenient::u32")]
    pub target_connections_per_pod: u32,
    /// Hard limit per pod (the gateways' `--max-connections`); above it a pod answers
    /// "come back later". Must be at least the target.
    #[schemars(range(min = 1, max = 10000000))]
    #[serde(deserialize_with = "lenient::u32")]
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
    /// The gateway pods' shape: environment, scheduling, identity, metadata.
    #[serde(default, skip_serializing_if = "GatewayPod::is_empty")]
    pub pod: GatewayPod,
    /// The gateway Service's type and annotations.
    #[serde(default, skip_serializing_if = "GatewayService::is_empty")]
    pub service: GatewayService,
}

/// What a platform shapes on every pod it runs, applied to the gateway pods as given (Kubernetes'
/// own types).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPod {
    /// Extra environment of the gateway container, after the operator's own. Any gateway flag
    /// can be set by its `HERALD_*` twin (an entry replaces the operator's of the same name),
    /// except those the operator must own: `HERALD_LISTEN`, `HERALD_NATS_URL`,
    /// `HERALD_MAX_CONNECTIONS`, `HERALD_DRAIN_SECS`. `OTEL_*` turns traces on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Environment from ConfigMaps and Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Pod annotations (a service mesh's, a log shipper's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Pod labels, beside the operator's own (which win on a clash: they select the pods).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Spread the gateways over zones and nodes: a lost node then takes only its share of the
    /// connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The pods' ServiceAccount (gateways never call the Kubernetes API; its token is not
    /// mounted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

impl GatewayPod {
    pub fn is_empty(&self) -> bool {
        *self == GatewayPod::default()
    }
}

/// The gateway Service.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayService {
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Service annotations (a cloud load balancer's settings, its idle timeout above all: SSE
    /// streams stay open for hours).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl GatewayService {
    pub fn is_empty(&self) -> bool {
        *self == GatewayService::default()
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Environment variables of the gateway container that only the operator sets.
pub const MANAGED_ENV: [&str; 4] = ["HERALD_LISTEN", "HERALD_NATS_URL", "HERALD_MAX_CONNECTIONS", "HERALD_DRAIN_SECS"];

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(MAX_AT_LEAST_MIN.0).message(MAX_AT_LEAST_MIN.1))]
pub struct ReplicaBounds {
    #[schemars(range(min = 1, max = 10000))]
    #[serde(deserialize_with = "lenient::u32")]
    pub min: u32,
    #[schemars(range(min = 1, max = 10000))]
    #[serde(deserialize_with = "lenient::u32")]
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
    #[schemars(range(min = 1, max = 10000))]
    #[serde(deserialize_with = "lenient::u32")]
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

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new(A_TOKEN_KEY.0).message(A_TOKEN_KEY.1))]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret key with the HS256 secret for client tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<SecretKeyRef>,
    /// Secret key with a JWKS document for client tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<SecretKeyRef>,
    /// JWKS URLs of an identity provider (`https://…/.well-known/jwks.json`): every gateway
    /// fetches them at start (it is not ready before) and refreshes them, so the provider's key
    /// rotations need no restart (`--jwks-url`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwks_urls: Vec<String>,
    /// Seconds between two fetches of each JWKS URL (`--jwks-refresh-secs`, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub jwks_refresh_secs: Option<u32>,
    /// Allow `http://` JWKS URLs beyond loopback, for a provider reachable only inside the
    /// cluster (`--jwks-allow-http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_allow_http: Option<bool>,
    /// Required `iss` claim of client tokens (`--jwt-issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim of client tokens (`--jwt-audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Secret key with the publisher keys file (`name:secret` lines); without it HTTP
    /// publishing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_keys: Option<SecretKeyRef>,
    /// Secret key with the dashboard keys file (`name:secret` lines), the only credential
    /// `/dashboard` accepts; without it the dashboard is off (`--dashboard-keys-file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_keys: Option<SecretKeyRef>,
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
    /// Seconds between heartbeat comments on idle streams (`--heartbeat-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub heartbeat_secs: Option<u32>,
    /// Channels one stream may join (`--max-channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_channels: Option<u32>,
    /// Streams one user may hold on one pod (`--max-connections-per-user`; 0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::optional")]
    #[schemars(range(min = 0, max = 10000000))]
    pub max_connections_per_user: Option<u32>,
    /// Origins allowed by CORS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// How long events stay resumable (`--history-max-age`): seconds, or like `90s`, `15m`,
    /// `24h`, `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*[smhd]?$"))]
    pub history_max_age: Option<String>,
    /// Events kept per subject (`--history-max-per-subject`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::optional")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub history_max_per_subject: Option<u32>,
    /// Replicas of the JetStream stream (`--history-replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub history_replicas: Option<u32>,
    /// Bytes queued per stream before a slow client is disconnected (`--client-queue-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::optional")]
    #[schemars(range(min = 4096, max = 1073741824))]
    pub client_queue_bytes: Option<u64>,
    /// Log lines as `text` or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Channel patterns with presence (`--presence-channels`), e.g. `doc:*`; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence_channels: Vec<String>,
    /// Seconds after which a vanished pod's users leave presence (`--presence-ttl-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3, max = 3600))]
    pub presence_ttl_secs: Option<u32>,
    /// Largest client event request body, in bytes (`--client-event-max-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 65536))]
    pub client_event_max_bytes: Option<u32>,
    /// Client events per user per second on one pod (`--client-event-rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub client_event_rate: Option<u32>,
    /// Client events a user may send in a burst (`--client-event-burst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub client_event_burst: Option<u32>,
    /// Resumes (streams opened with a `Last-Event-ID`) each user may start per second on one
    /// pod (`--resume-rate`); beyond the budget a stream is told to come back later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub resume_rate: Option<u32>,
    /// Resumes a user may start at once on one pod (`--resume-burst`; by default
    /// `maxConnectionsPerUser`, at least 100, and no budget when that is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub resume_burst: Option<u32>,
}

/// The gateways' `--log-format`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Cross-field rules: (CEL rule, message). In the CRD as `x-kubernetes-validations`, and checked
/// by [`validate`].
pub const MAX_AT_LEAST_MIN: (&str, &str) = ("self.max >= self.min", "replicas.max must be at least replicas.min");
pub const MAX_AT_LEAST_TARGET: (&str, &str) = (
    "self.maxConnectionsPerPod >= self.targetConnectionsPerPod",
    "maxConnectionsPerPod must be at least targetConnectionsPerPod",
);
pub const A_TOKEN_KEY: (&str, &str) = (
    "has(self.jwtSecret) || has(self.jwks) || (has(self.jwksUrls) && size(self.jwksUrls) > 0)",
    "auth needs jwtSecret, jwks or jwksUrls: gateways refuse to run without a client-token key",
);

/// The most replicas (and the largest step) the schema allows.
const MAX_REPLICAS: u32 = 10_000;

/// The most connections per pod the schema allows.
const MAX_CONNECTIONS_PER_POD: u32 = 10_000_000;

/// Integers read leniently. The API server checks an integer's type and, where the schema has
/// them, its bounds, but not that it fits the operator's type (`format: uint32` is not
/// enforced). Before the schema bounded these fields, one resource holding a number that did
/// not fit failed the whole list the operator watches, and no resource was reconciled. Such a
/// number saturates here instead, and [`validate`] reports it (`InvalidSpec`).
mod lenient {
    use serde::{Deserialize, Deserializer};

    /// Numbers that saturate into an unsigned integer type.
    pub trait Saturating: Sized {
        fn saturate(value: f64) -> Self;
    }

    impl Saturating for u32 {
        fn saturate(value: f64) -> Self {
            // `as` saturates, and takes NaN to 0.
            value as u32
        }
    }

    impl Saturating for u64 {
        fn saturate(value: f64) -> Self {
            value as u64
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        f64::deserialize(d).map(u32::saturate)
    }

    pub fn optional<'de, D: Deserializer<'de>, T: Saturating>(d: D) -> Result<Option<T>, D::Error> {
        Option::<f64>::deserialize(d).map(|v| v.map(T::saturate))
    }
}

/// Checks what the schema and its CEL rules say, for objects the API server did not check (stored
/// before the CRD had the rule). Returns every problem, not just the first.
pub fn validate(spec: &RealtimeGatewaySpec) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, message: &str| {
        if !ok {
            problems.push(message.to_owned());
        }
    };
    check(spec.replicas.min >= 1, "replicas.min must be at least 1");
    check(spec.replicas.max >= spec.replicas.min, MAX_AT_LEAST_MIN.1);
    check(spec.target_connections_per_pod >= 1, "targetConnectionsPerPod must be at least 1");
    check(spec.max_connections_per_pod >= spec.target_connections_per_pod, MAX_AT_LEAST_TARGET.1);
    check(spec.auth.jwt_secret.is_some() || spec.auth.jwks.is_some() || !spec.auth.jwks_urls.is_empty(), A_TOKEN_KEY.1);
    check(spec.scale_up.max_step >= 1 && spec.scale_down.max_step >= 1, "scaleUp/scaleDown.maxStep must be at least 1");
    check(
        spec.scale_up.max_step <= MAX_REPLICAS && spec.scale_down.max_step <= MAX_REPLICAS,
        "scaleUp/scaleDown.maxStep must be at most 10000",
    );
    check(spec.replicas.max <= MAX_REPLICAS, "replicas.max must be at most 10000");
    check(spec.max_connections_per_pod <= MAX_CONNECTIONS_PER_POD, "maxConnectionsPerPod must be at most 10000000");
    let gateway = &spec.gateway;
    check(
        gateway.max_connections_per_user.is_none_or(|n| n <= MAX_CONNECTIONS_PER_POD),
        "gateway.maxConnectionsPerUser must be at most 10000000",
    );
    check(
        gateway.history_max_per_subject.is_none_or(|n| n <= 1_000_000_000),
        "gateway.historyMaxPerSubject must be at most 1000000000",
    );
    check(gateway.client_queue_bytes.is_none_or(|n| n <= 1 << 30), "gateway.clientQueueBytes must be at most 1 GiB");
    check(spec.drain_seconds <= 3600, "drainSeconds must be at most 3600");
    check(
        !gateway.allowed_origins.iter().any(|o| o.trim() == "*"),
        "gateway.allowedOrigins must list origins, not \"*\" (with credentials it would admit every site)",
    );
    // What the gateway refuses at start, refused here: else its pods would never start.
    for origin in gateway.allowed_origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty() && *o != "*") {
        check(
            is_origin(origin),
            &format!("gateway.allowedOrigins: {origin:?} is not an origin like https://app.example.com"),
        );
    }
    check(
        gateway
            .history_max_age
            .as_deref()
            .is_none_or(|age| age.trim_start_matches('0').starts_with(|c: char| c.is_ascii_digit() && c != '0')),
        "gateway.historyMaxAge must be at least 1s",
    );
    if !spec.auth.jwks_allow_http.unwrap_or(false) {
        for url in spec.auth.jwks_urls.iter().filter(|u| u.trim().starts_with("http://") && !is_loopback_url(u)) {
            check(false, &format!("auth.jwksUrls: {url} is plain http; use https, or set auth.jwksAllowHttp"));
        }
    }
    for var in &spec.pod.env {
        check(
            !MANAGED_ENV.contains(&var.name.as_str()),
            &format!("pod.env must not set {}: the operator sets it from the resource", var.name),
        );
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// `scheme://host[:port]`, nothing after: an origin as browsers send it.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// An `http://` URL to this machine (the gateway lets keys come in the clear from there).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim().trim_start_matches("http://");
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split(']').next().unwrap_or_default().trim_start_matches('[')
    } else {
        host.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    /// Open streams across the pods that reported, ready or not.
    #[serde(default)]
    pub connections: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the Deployment has the desired replicas ready), and as HPA reports them:
    /// `AbleToScale`, `ScalingActive`, `ScalingLimited`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_env_may_not_set_what_the_operator_owns() {
        let mut rtgw: RealtimeGateway = serde_yaml::from_str(include_str!("../../docs/examples/rtgw.yaml")).unwrap();
        rtgw.spec.pod.env = vec![
            EnvVar { name: "HERALD_PUBLISH_RETRY_SECS".into(), value: Some("30".into()), ..Default::default() },
            EnvVar { name: "HERALD_LISTEN".into(), value: Some("0.0.0.0:1".into()), ..Default::default() },
        ];
        let problems = validate(&rtgw.spec).unwrap_err();
        assert_eq!(problems, ["pod.env must not set HERALD_LISTEN: the operator sets it from the resource"]);
        rtgw.spec.pod.env.pop();
        assert!(validate(&rtgw.spec).is_ok());
    }

    /// What the gateway refuses at start is refused here, instead of rolling out pods that never
    /// start: a malformed origin, a history kept for no time, keys fetched in the clear.
    #[test]
    fn what_the_gateway_would_refuse_is_refused() {
        let rtgw: RealtimeGateway = serde_yaml::from_str(include_str!("../../docs/examples/rtgw.yaml")).unwrap();
        let mut bad = rtgw.clone();
        bad.spec.gateway.allowed_origins = vec!["https://app.example.com".into(), "app.example.com".into()];
        bad.spec.gateway.allowed_origins.push("https://app.example.com/".into());
        bad.spec.gateway.history_max_age = Some("0".into());
        bad.spec.auth.jwks_urls = vec!["http://keycloak.auth.svc/jwks".into(), "http://127.0.0.1:8080/jwks".into()];
        let problems = validate(&bad.spec).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        bad.spec.auth.jwks_allow_http = Some(true);
        assert_eq!(validate(&bad.spec).unwrap_err().len(), 3);
        let mut good = rtgw;
        good.spec.gateway.allowed_origins = vec!["https://app.example.com".into(), "http://localhost:3000".into()];
        good.spec.gateway.history_max_age = Some("90s".into());
        good.spec.auth.jwks_urls = vec!["https://id.example/jwks".into(), "http://[::1]:9000/k".into()];
        assert!(validate(&good.spec).is_ok(), "{:?}", validate(&good.spec));
    }

    /// The gateway refuses `*` at start: the resource is refused instead of rolling out pods
    /// that never start.
    #[test]
    fn any_origin_is_refused() {
        let mut rtgw: RealtimeGateway = serde_yaml::from_str(include_str!("../../docs/examples/rtgw.yaml")).unwrap();
        rtgw.spec.gateway.allowed_origins = vec!["https://app.example.com".into(), "*".into()];
        let problems = validate(&rtgw.spec).unwrap_err();
        assert!(problems[0].starts_with("gateway.allowedOrigins must list origins"), "{problems:?}");
    }
}
