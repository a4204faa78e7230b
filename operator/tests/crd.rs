//! The checked-in CRD is exactly what the Rust types generate.

#[test]
fn the_checked_in_crd_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/herald/crds/realtimegateways.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("the CRD is checked in");
    assert!(
        checked_in == herald_operator::crd::crd_yaml(),
        "charts/herald/crds/realtimegateways.yaml is stale: run `cargo run -p herald-operator -- crdgen > charts/herald/crds/realtimegateways.yaml`"
    );
}

/// Every gateway setting of the resource reaches the gateways as an environment variable that
/// the gateway actually reads (a misspelt name would be ignored silently).
#[test]
fn every_gateway_setting_becomes_a_variable_the_gateway_reads() {
    let yaml = r#"
apiVersion: herald.dev/v1alpha1
kind: RealtimeGateway
metadata: {name: rt, namespace: ns, uid: "1"}
spec:
  image: herald:1
  replicas: {min: 1, max: 3}
  targetConnectionsPerPod: 1000
  maxConnectionsPerPod: 1500
  nats: {url: "nats://nats:4222"}
  auth: {jwtSecret: {name: s, key: k}}
  gateway:
    heartbeatSecs: 20
    maxChannels: 16
    maxConnectionsPerUser: 5
    allowedOrigins: ["https://app.example.com"]
    historyMaxAge: 1h
    historyMaxPerSubject: 100
    historyReplicas: 3
    clientQueueBytes: 65536
    logFormat: json
    presenceChannels: ["doc:*", "room:*"]
    presenceTtlSecs: 20
    clientEventMaxBytes: 1024
    clientEventRate: 10
    clientEventBurst: 30
    resumeRate: 4
    resumeBurst: 50
"#;
    let rtgw: herald_operator::crd::RealtimeGateway = serde_yaml::from_str(yaml).unwrap();
    let deployment = herald_operator::resources::deployment(&rtgw, 2);
    let container = &deployment.spec.template.spec.unwrap().containers[0];
    let env: std::collections::BTreeMap<String, String> =
        container.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src/config/flags.rs"),
    )
    .unwrap();
    for name in env.keys() {
        assert!(config.contains(&format!("env = \"{name}\"")), "the gateway has no flag reading {name}");
    }
    assert_eq!(env["HERALD_PRESENCE_CHANNELS"], "doc:*,room:*");
    assert_eq!(env["HERALD_PRESENCE_TTL_SECS"], "20");
    assert_eq!(env["HERALD_CLIENT_EVENT_BURST"], "30");
    assert_eq!((env["HERALD_RESUME_RATE"].as_str(), env["HERALD_RESUME_BURST"].as_str()), ("4", "50"));
    assert_eq!(env["HERALD_LOG_FORMAT"], "json");
    // One variable per setting in the spec above, plus the ones every pod gets.
    let settings = 16;
    assert!(env.len() >= settings + 4, "{env:?}");
}

/// Each Secret is mounted with only the key the gateway reads: a Secret shared with other
/// things (a test's publisher key, another service's credentials) shows the gateway nothing
/// else (before: every key of it, in every volume).
#[test]
fn secrets_are_mounted_one_key_each() {
    let rtgw: herald_operator::crd::RealtimeGateway =
        serde_yaml::from_str(include_str!("../../docs/examples/rtgw.yaml")).unwrap();
    let deployment = herald_operator::resources::deployment(&rtgw, 2);
    let pod = deployment.spec.template.spec.unwrap();
    let volumes = pod.volumes.unwrap();
    assert!(!volumes.is_empty());
    let env: Vec<String> = pod.containers[0].env.iter().flatten().filter_map(|e| e.value.clone()).collect();
    for volume in volumes {
        let secret = volume.secret.unwrap();
        let items = secret.items.unwrap_or_default();
        assert_eq!(items.len(), 1, "{}: {items:?}", volume.name);
        let file = format!("/etc/herald/{}/{}", volume.name, items[0].path);
        assert!(env.contains(&file), "the gateway reads {file}: {env:?}");
    }
}

/// A rolling update drains one gateway after another, not on top of each other: a new pod
/// counts as available only `drainSeconds` after it is ready, and the Deployment stops an old
/// pod only once its replacement is available (before: seconds after, while the last one still
/// drained, since a stopping pod no longer counts).
#[test]
fn a_rollout_waits_out_each_drain() {
    let rtgw: herald_operator::crd::RealtimeGateway =
        serde_yaml::from_str(include_str!("../../docs/examples/rtgw.yaml")).unwrap();
    let deployment = herald_operator::resources::deployment(&rtgw, 2);
    assert_eq!(deployment.spec.min_ready_seconds, Some(rtgw.spec.drain_seconds as i32));
    let rolling = deployment.spec.strategy.unwrap().rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!((rolling.max_surge, rolling.max_unavailable), (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))));
}
