//! The objects the operator owns for each `RealtimeGateway`: a Deployment of gateways, a Service
//! in front of them, and a PodDisruptionBudget. Pure builders; the controller applies them with
//! server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, KeyToPath, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{RealtimeGateway, SecretKeyRef};

/// The gateway container's HTTP port.
pub const HTTP_PORT: i32 = 8080;
/// Seconds added to `drainSeconds` for the pods' termination grace period.
pub const GRACE_MARGIN_SECS: u32 = 15;
/// Field manager of everything the operator applies.
pub const MANAGER: &str = "herald-operator";

/// Labels selecting one resource's gateway pods.
pub fn selector_labels(rtgw: &RealtimeGateway) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "herald-gateway".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), rtgw.name_any()),
    ])
}

/// The label selector string for listing the pods.
pub fn selector(rtgw: &RealtimeGateway) -> String {
    selector_labels(rtgw).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn labels(rtgw: &RealtimeGateway) -> BTreeMap<String, String> {
    let mut l = selector_labels(rtgw);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/component".into(), "gateway".into());
    l
}

fn meta(rtgw: &RealtimeGateway) -> ObjectMeta {
    ObjectMeta {
        name: Some(rtgw.name_any()),
        namespace: rtgw.namespace(),
        labels: Some(labels(rtgw)),
        owner_references: owner(rtgw).map(|o| vec![o]),
        ..Default::default()
    }
}

fn owner(rtgw: &RealtimeGateway) -> Option<OwnerReference> {
    rtgw.controller_owner_ref(&())
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// Mounts `secret`'s one key as a file and returns the file's path. Only that key: the Secret
/// may hold others (a test's publisher key, another service's credentials) the gateway must
/// not see.
fn mount(volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>, name: &str, secret: &SecretKeyRef) -> String {
    let dir = format!("/etc/herald/{name}");
    let only = KeyToPath { key: secret.key.clone(), path: secret.key.clone(), ..Default::default() };
    volumes.push(Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![only]),
            ..Default::default()
        }),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: name.into(),
        mount_path: dir.clone(),
        read_only: Some(true),
        ..Default::default()
    });
    format!("{dir}/{}", secret.key)
}

/// The gateway Deployment, running `replicas` pods.
pub fn deployment(rtgw: &RealtimeGateway, replicas: u32) -> Deployment {
    let spec = &rtgw.spec;
    let pod = &spec.pod;
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    let mut envs = vec![
        env("HERALD_LISTEN", format!("0.0.0.0:{HTTP_PORT}")),
        env("HERALD_NATS_URL", spec.nats.url.clone()),
        env("HERALD_MAX_CONNECTIONS", spec.max_connections_per_pod.to_string()),
        env("HERALD_DRAIN_SECS", spec.drain_seconds.to_string()),
    ];
    if let Some(creds) = &spec.nats.credentials_secret {
        envs.push(env("HERALD_NATS_CREDS", mount(&mut volumes, &mut mounts, "nats-creds", creds)));
    }
    if let Some(secret) = &spec.auth.jwt_secret {
        envs.push(env("HERALD_JWT_SECRET_FILE", mount(&mut volumes, &mut mounts, "jwt-secret", secret)));
    }
    if let Some(jwks) = &spec.auth.jwks {
        envs.push(env("HERALD_JWKS_FILE", mount(&mut volumes, &mut mounts, "jwks", jwks)));
    }
    if let Some(keys) = &spec.auth.publish_keys {
        envs.push(env("HERALD_PUBLISH_KEYS_FILE", mount(&mut volumes, &mut mounts, "publish-keys", keys)));
    }
    if let Some(keys) = &spec.auth.dashboard_keys {
        envs.push(env("HERALD_DASHBOARD_KEYS_FILE", mount(&mut volumes, &mut mounts, "dashboard-keys", keys)));
    }
    let a = &spec.auth;
    let g = &spec.gateway;
    let optional = [
        ("HERALD_JWKS_URL", (!a.jwks_urls.is_empty()).then(|| a.jwks_urls.join(","))),
        ("HERALD_JWKS_REFRESH_SECS", a.jwks_refresh_secs.map(|v| v.to_string())),
        ("HERALD_JWKS_ALLOW_HTTP", a.jwks_allow_http.map(|v| v.to_string())),
        ("HERALD_JWT_ISSUER", a.issuer.clone()),
        ("HERALD_JWT_AUDIENCE", a.audience.clone()),
        ("HERALD_HEARTBEAT_SECS", g.heartbeat_secs.map(|v| v.to_string())),
        ("HERALD_MAX_CHANNELS", g.max_channels.map(|v| v.to_string())),
        ("HERALD_MAX_CONNECTIONS_PER_USER", g.max_connections_per_user.map(|v| v.to_string())),
        ("HERALD_ALLOWED_ORIGINS", (!g.allowed_origins.is_empty()).then(|| g.allowed_origins.join(","))),
        ("HERALD_HISTORY_MAX_AGE", g.history_max_age.clone()),
        ("HERALD_HISTORY_MAX_PER_SUBJECT", g.history_max_per_subject.map(|v| v.to_string())),
        ("HERALD_HISTORY_REPLICAS", g.history_replicas.map(|v| v.to_string())),
        ("HERALD_CLIENT_QUEUE_BYTES", g.client_queue_bytes.map(|v| v.to_string())),
        ("HERALD_LOG_FORMAT", g.log_format.map(|f| f.as_str().to_owned())),
        ("HERALD_PRESENCE_CHANNELS", (!g.presence_channels.is_empty()).then(|| g.presence_channels.join(","))),
        ("HERALD_PRESENCE_TTL_SECS", g.presence_ttl_secs.map(|v| v.to_string())),
        ("HERALD_CLIENT_EVENT_MAX_BYTES", g.client_event_max_bytes.map(|v| v.to_string())),
        ("HERALD_CLIENT_EVENT_RATE", g.client_event_rate.map(|v| v.to_string())),
        ("HERALD_CLIENT_EVENT_BURST", g.client_event_burst.map(|v| v.to_string())),
        ("HERALD_RESUME_RATE", g.resume_rate.map(|v| v.to_string())),
        ("HERALD_RESUME_BURST", g.resume_burst.map(|v| v.to_string())),
    ];
    envs.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| env(k, v))));
    // The resource's own environment last: an entry replaces the operator's of the same name
    // (the managed ones are refused by `crd::validate`).
    for var in &spec.pod.env {
        envs.retain(|e| e.name != var.name);
        envs.push(var.clone());
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let container = Container {
        name: "gateway".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(vec!["serve".into()]),
        env: Some(envs),
        env_from: (!spec.pod.env_from.is_empty()).then(|| spec.pod.env_from.clone()),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: HTTP_PORT, ..Default::default() }]),
        readiness_probe: Some(probe("/readyz", 2)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: spec.resources.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(rtgw),
        spec: DeploymentSpec {
            replicas: Some(replicas as i32),
            selector: LabelSelector { match_labels: Some(selector_labels(rtgw)), ..Default::default() },
            // A new pod counts as available only `drainSeconds` after it is ready, and an old
            // pod is stopped only once its replacement is available: so the next old pod starts
            // draining as the last one's drain ends, not seconds later on top of it (a stopping
            // pod no longer counts, whatever it is still doing).
            min_ready_seconds: Some(spec.drain_seconds as i32),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // One pod at a time: each drained pod's clients reconnect elsewhere before the next.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(rtgw)),
                    annotations: non_empty(&pod.annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    termination_grace_period_seconds: Some(i64::from(spec.drain_seconds + GRACE_MARGIN_SECS)),
                    // Gateways never talk to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    service_account_name: pod.service_account_name.clone(),
                    priority_class_name: pod.priority_class_name.clone(),
                    node_selector: non_empty(&pod.node_selector),
                    tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
                    affinity: pod.affinity.clone(),
                    topology_spread_constraints: (!pod.topology_spread_constraints.is_empty())
                        .then(|| pod.topology_spread_constraints.clone()),
                    image_pull_secrets: (!pod.image_pull_secrets.is_empty()).then(|| pod.image_pull_secrets.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The pod template's labels: the resource's `pod.labels`, then the operator's own over them
/// (they select the pods).
fn pod_labels(rtgw: &RealtimeGateway) -> BTreeMap<String, String> {
    let mut all = rtgw.spec.pod.labels.clone();
    all.extend(labels(rtgw));
    all
}

fn non_empty(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

/// The Service in front of the gateways.
pub fn service(rtgw: &RealtimeGateway) -> Service {
    let shape = &rtgw.spec.service;
    let mut metadata = meta(rtgw);
    metadata.annotations = non_empty(&shape.annotations);
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: shape.type_.map(|t| t.as_str().to_owned()),
            selector: Some(selector_labels(rtgw)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// At most one gateway disrupted at a time: its clients must land elsewhere first.
pub fn pdb(rtgw: &RealtimeGateway) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(rtgw),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(rtgw)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
