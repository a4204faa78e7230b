//! Reconcile scenarios against kube's mock API (tower-test): each scenario scripts what the API
//! server answers and checks what the operator sends.

use std::sync::Arc;
use std::time::Duration;

use herald_operator::controller::{self, Context};
use herald_operator::crd::RealtimeGateway;
use herald_operator::metrics::Metrics;
use herald_testkit::kube_api::{self, Handle, next, respond};
use http::StatusCode;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rtgw(status: Option<Value>) -> RealtimeGateway {
    let mut v = json!({
        "apiVersion": "herald.dev/v1alpha1",
        "kind": "RealtimeGateway",
        "metadata": {"name": "demo", "namespace": "default", "uid": "11111111-2222-3333-4444-555555555555", "generation": 3},
        "spec": {
            "image": "herald:test",
            "replicas": {"min": 2, "max": 6},
            "targetConnectionsPerPod": 100,
            "maxConnectionsPerPod": 150,
            "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
            "scaleDown": {"stabilizationSeconds": 300, "maxStep": 1},
            // A NATS cluster: every node's URL, and the history in three replicas.
            "nats": {"url": "nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222"},
            "gateway": {"historyReplicas": 3},
            "auth": {
                "jwtSecret": {"name": "herald", "key": "jwt"},
                "dashboardKeys": {"name": "herald", "key": "dashboard"},
                // An identity provider's keys as well, fetched and refreshed by the gateways.
                "jwksUrls": ["https://id.example/.well-known/jwks.json", "https://id.example/next.json"],
                "issuer": "https://id.example/"
            },
            "drainSeconds": 20
        }
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

/// The status condition of `type_`.
fn condition(status: &Value, type_: &str) -> Value {
    let conditions = status["conditions"].as_array().expect("conditions");
    conditions.iter().find(|c| c["type"] == type_).unwrap_or_else(|| panic!("no {type_} in {conditions:?}")).clone()
}

/// The owner reference of what the operator creates for `rtgw(..)`.
fn owned() -> Value {
    json!([{"apiVersion":"herald.dev/v1alpha1","kind":"RealtimeGateway","name":"demo",
            "uid":"11111111-2222-3333-4444-555555555555","controller":true}])
}

fn deployment(replicas: u32) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"demo","namespace":"default","ownerReferences":owned()},
           "spec":{"replicas":replicas,"selector":{},"template":{}},"status":{"readyReplicas":replicas}})
}

fn not_found() -> Value {
    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"})
}

/// Serves the reads of the Service and PodDisruptionBudget before the writes: none yet.
async fn serve_owned_reads(handle: &mut Handle) {
    for path in
        ["/api/v1/namespaces/default/services/demo", "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo"]
    {
        let (method, uri, _, send) = next(handle).await;
        assert_eq!((method.as_str(), uri.as_str()), ("GET", path));
        send.send_response(respond(StatusCode::NOT_FOUND, &not_found()));
    }
}

fn pods(addrs: &[(String, i32)]) -> Value {
    let items: Vec<Value> = addrs
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| {
            json!({
                "metadata": {"name": format!("demo-{i}"), "namespace": "default"},
                "spec": {"containers": [{"name": "gateway", "ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// A stand-in gateway that answers `/stats` with `connections`.
async fn stats_server(connections: u64) -> i32 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body =
                format!("{{\"connections\":{connections},\"maxConnections\":150,\"draining\":false,\"subjects\":1}}");
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
                .await;
        }
    });
    i32::from(port)
}

/// What one reconcile wrote.
struct Writes {
    deployment: Value,
    service: Value,
    event: bool,
    status: Value,
}

/// Serves the apply/status requests of one reconcile after the GET and LIST.
async fn serve_writes(handle: &mut Handle) -> Writes {
    serve_owned_reads(handle).await;
    let (method, uri, applied, send) = next(handle).await;
    assert_eq!(method, "PATCH");
    assert!(uri.starts_with("/apis/apps/v1/namespaces/default/deployments/demo?"), "{uri}");
    assert!(uri.contains("fieldManager=herald-operator") && uri.contains("force=true"), "server-side apply: {uri}");
    send.send_response(respond(StatusCode::OK, &applied));
    let mut service = Value::Null;
    for path in
        ["/api/v1/namespaces/default/services/demo?", "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo?"]
    {
        let (method, uri, body, send) = next(handle).await;
        assert_eq!((method.as_str(), uri.starts_with(path)), ("PATCH", true), "{uri}");
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "RealtimeGateway");
        send.send_response(respond(StatusCode::OK, &body));
        if path.contains("/services/") {
            service = body;
        }
    }
    let (mut method, mut uri, mut body, mut send) = next(handle).await;
    let mut event = false;
    if uri.starts_with("/apis/events.k8s.io/v1/namespaces/default/events") {
        assert_eq!(method, "POST");
        assert_eq!(body["regarding"]["name"], "demo");
        event = true;
        send.send_response(respond(StatusCode::CREATED, &body));
        (method, uri, body, send) = next(handle).await;
    }
    assert_eq!(method, "PATCH");
    assert!(uri.starts_with("/apis/herald.dev/v1alpha1/namespaces/default/realtimegateways/demo/status"), "{uri}");
    let status = body["status"].clone();
    send.send_response(respond(StatusCode::OK, &json!({"apiVersion":"herald.dev/v1alpha1","kind":"RealtimeGateway",
        "metadata":{"name":"demo","namespace":"default"},"spec": serde_json::to_value(&rtgw(None).spec).unwrap(), "status": status})));
    Writes { deployment: applied, service, event, status: body["status"].clone() }
}

fn context() -> (Arc<Context>, Handle) {
    let (client, handle) = kube_api::client();
    (
        Context::new(client, Arc::new(Metrics::default()), Duration::from_secs(15), Some("herald-operator-0".into())),
        handle,
    )
}

#[tokio::test]
async fn first_reconcile_applies_the_owned_objects() {
    let (ctx, mut handle) = context();
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(None)), ctx.clone()));

    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), uri.as_str()), ("GET", "/apis/apps/v1/namespaces/default/deployments/demo"));
    send.send_response(respond(StatusCode::NOT_FOUND, &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"})));
    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!(method, "GET");
    assert!(uri.starts_with("/api/v1/namespaces/default/pods?"), "{uri}");
    assert!(uri.contains("app.kubernetes.io%2Finstance%3Ddemo"), "pods selected by instance: {uri}");
    send.send_response(respond(StatusCode::OK, &pods(&[])));

    let Writes { deployment: applied, event, status, .. } = serve_writes(&mut handle).await;
    assert_eq!(applied["spec"]["replicas"], 2, "a new fleet starts at min");
    assert_eq!(applied["metadata"]["ownerReferences"][0]["name"], "demo");
    let pod = &applied["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 35, "drainSeconds plus a margin");
    let env = &pod["containers"][0]["env"];
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "HERALD_MAX_CONNECTIONS" && e["value"] == "150"));
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "HERALD_DRAIN_SECS" && e["value"] == "20"));
    let var = |name: &str| env.as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(
        var("HERALD_NATS_URL"),
        Some(json!("nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222"))
    );
    assert_eq!(var("HERALD_HISTORY_REPLICAS"), Some(json!("3")));
    assert_eq!(
        var("HERALD_JWKS_URL"),
        Some(json!("https://id.example/.well-known/jwks.json,https://id.example/next.json"))
    );
    assert_eq!(var("HERALD_JWT_ISSUER"), Some(json!("https://id.example/")));
    let dashboard_keys = var("HERALD_DASHBOARD_KEYS_FILE").expect("the dashboard keys, mounted");
    let mounted = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounted.iter().any(|m| dashboard_keys.as_str().unwrap().starts_with(m["mountPath"].as_str().unwrap())),
        "{dashboard_keys} is under a mount: {mounted:?}"
    );
    assert_eq!(var("HERALD_JWKS_REFRESH_SECS"), None, "the gateway's default");
    assert!(!event, "creating is not scaling");
    assert_eq!((status["desiredReplicas"].as_u64(), status["observedGeneration"].as_i64()), (Some(2), Some(3)));
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("Creating")));

    assert_eq!(run.await.unwrap().unwrap(), Action::requeue(Duration::from_secs(15)));
}

#[tokio::test]
async fn rising_load_patches_replicas_status_and_records_an_event() {
    let (ctx, mut handle) = context();
    // Two ready pods with 250 connections each: 500 / 100 → 5, bounded by the up-step of 2.
    let (a, b) = (stats_server(250).await, stats_server(250).await);
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(None)), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &deployment(2)));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[("127.0.0.1".into(), a), ("127.0.0.1".into(), b)])));

    let Writes { deployment: applied, event, status, .. } = serve_writes(&mut handle).await;
    assert_eq!(applied["spec"]["replicas"], 4);
    assert!(event, "scaling records an Event");
    assert_eq!(status["connections"], 500);
    assert_eq!(status["desiredReplicas"], 4);
    assert!(status["lastScaleTime"].is_string());
    let limited = condition(&status, "ScalingLimited");
    assert_eq!((limited["status"].as_str(), limited["reason"].as_str()), (Some("True"), Some("ScaleUpLimit")));
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ReplicasNotReady")));
    assert_eq!(ready["message"], "2 of 4 gateways ready");
    run.await.unwrap().unwrap();
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("herald_operator_scale_events_total{direction=\"up\",resource=\"default/demo\"} 1"),
        "{metrics}"
    );

    // The resource is deleted: the operator forgets its recommendations and its series.
    assert_eq!(ctx.remembered(), ["default/demo"]);
    ctx.forget_all_but([]);
    assert!(ctx.remembered().is_empty());
    let metrics = ctx.metrics.render();
    assert!(!metrics.contains("default/demo"), "{metrics}");
}

/// The controller's trigger: a status write alone (same generation) is no reason to reconcile;
/// each new generation is.
#[tokio::test]
async fn status_writes_alone_do_not_trigger_a_reconcile() {
    use futures_util::StreamExt;
    let with = |generation: i64, connections: u64| {
        let mut r = rtgw(Some(json!({"connections": connections})));
        r.metadata.generation = Some(generation);
        Ok(r)
    };
    let events = futures_util::stream::iter(vec![with(3, 0), with(3, 120), with(3, 240), with(4, 240), with(4, 300)]);
    let triggered: Vec<i64> = controller::spec_changes(events)
        .map(|r: Result<RealtimeGateway, kube::runtime::watcher::Error>| r.unwrap().metadata.generation.unwrap())
        .collect()
        .await;
    assert_eq!(triggered, [3, 4]);
}

#[tokio::test]
async fn a_deleted_deployment_is_recreated() {
    let (ctx, mut handle) = context();
    let status = json!({"replicas": 4, "readyReplicas": 4, "desiredReplicas": 4, "connections": 350});
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(Some(status))), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(
        StatusCode::NOT_FOUND,
        &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
    ));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[])));
    let applied = serve_writes(&mut handle).await.deployment;
    assert_eq!(applied["kind"], "Deployment");
    assert_eq!(applied["spec"]["replicas"], 2);
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_api_error_requeues_with_backoff_and_counts_a_failure() {
    let (ctx, mut handle) = context();
    let object = Arc::new(rtgw(None));
    let run = tokio::spawn(controller::reconcile(object.clone(), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::INTERNAL_SERVER_ERROR, &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"InternalError","code":500,"message":"etcd unavailable"})));
    let error = run.await.unwrap().unwrap_err();
    assert_eq!(error.label(), "kube");
    assert_eq!(controller::error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    assert_eq!(
        controller::error_policy(object, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(10)),
        "backoff grows"
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("herald_operator_reconcile_errors_total{error=\"kube\",resource=\"default/demo\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_and_an_event_and_nothing_is_applied() {
    let (ctx, mut handle) = context();
    let mut bad = rtgw(None);
    bad.spec.replicas.max = 1; // below min 2
    bad.spec.max_connections_per_pod = 50; // below the target 100
    let run = tokio::spawn(controller::reconcile(Arc::new(bad), ctx.clone()));

    let (method, uri, body, send) = next(&mut handle).await;
    assert_eq!(method, "PATCH", "the first write is the status, not an apply: {uri}");
    assert!(uri.starts_with("/apis/herald.dev/v1alpha1/namespaces/default/realtimegateways/demo/status"), "{uri}");
    let conditions = body["status"]["conditions"].as_array().unwrap();
    let able = conditions.iter().find(|c| c["type"] == "AbleToScale").unwrap();
    assert_eq!((able["status"].as_str(), able["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    let message = able["message"].as_str().unwrap();
    assert!(message.contains("replicas.max must be at least replicas.min"), "{message}");
    assert!(message.contains("maxConnectionsPerPod must be at least targetConnectionsPerPod"), "{message}");
    assert_eq!(body["status"]["observedGeneration"], 3);
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion":"herald.dev/v1alpha1","kind":"RealtimeGateway",
        "metadata":{"name":"demo","namespace":"default"},"spec": serde_json::to_value(&rtgw(None).spec).unwrap()}),
    ));

    let (method, uri, event, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), uri.starts_with("/apis/events.k8s.io/v1/namespaces/default/events")), ("POST", true));
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    assert_eq!(event["reportingInstance"], "herald-operator-0");
    send.send_response(respond(StatusCode::CREATED, &event));

    let error = run.await.unwrap().unwrap_err();
    assert_eq!(error.label(), "invalid");
    let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(!matches!(more, Ok(Some(_))), "nothing is applied for an invalid spec");
}

#[tokio::test]
async fn the_backoff_starts_over_after_a_successful_reconcile() {
    let (ctx, mut handle) = context();
    let object = Arc::new(rtgw(None));
    let error = herald_operator::Error::Invalid("test".into());
    assert_eq!(controller::error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    assert_eq!(controller::error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(10)));
    assert_eq!(controller::error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(20)));

    let run = tokio::spawn(controller::reconcile(object.clone(), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &deployment(2)));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[])));
    serve_writes(&mut handle).await;
    run.await.unwrap().unwrap();

    assert_eq!(
        controller::error_policy(object, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(5)),
        "a failure after a success waits the shortest time again"
    );
}

#[test]
fn backoff_doubles_up_to_five_minutes() {
    let waits: Vec<u64> = (1..=9).map(|n| controller::backoff(n).as_secs()).collect();
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

/// Every field of `spec.pod` and `spec.service` reaches the applied Deployment and Service, the
/// operator's own labels win over the resource's, and an env entry replaces the operator's of
/// the same name.
#[tokio::test]
async fn the_pod_and_service_shape_reach_the_applied_objects() {
    let mut shaped = serde_json::to_value(rtgw(None)).unwrap();
    shaped["spec"]["pod"] = json!({
        "env": [
            {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector.observability:4318"},
            {"name": "HERALD_HISTORY_REPLICAS", "value": "5"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        ],
        "envFrom": [{"configMapRef": {"name": "herald-extra"}}],
        "annotations": {"linkerd.io/inject": "enabled"},
        "labels": {"team": "realtime", "app.kubernetes.io/instance": "not-this"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "realtime", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node-pool", "operator": "In", "values": ["edge"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo"}}}],
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "herald-gateway",
        "priorityClassName": "realtime-critical"
    });
    shaped["spec"]["service"] = json!({
        "type": "LoadBalancer",
        "annotations": {"service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout": "3600"}
    });
    let shaped: RealtimeGateway = serde_json::from_value(shaped).unwrap();
    let pod_spec = shaped.spec.pod.clone();

    let (ctx, mut handle) = context();
    let run = tokio::spawn(controller::reconcile(Arc::new(shaped), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::NOT_FOUND, &json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"})));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[])));
    let writes = serve_writes(&mut handle).await;
    run.await.unwrap().unwrap();

    let template = &writes.deployment["spec"]["template"];
    let pod = &template["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().unwrap();
    let var = |name: &str| env.iter().filter(|e| e["name"] == name).cloned().collect::<Vec<_>>();
    assert_eq!(var("OTEL_EXPORTER_OTLP_ENDPOINT")[0]["value"], "http://collector.observability:4318");
    assert_eq!(
        var("HERALD_HISTORY_REPLICAS"),
        [json!({"name": "HERALD_HISTORY_REPLICAS", "value": "5"})],
        "replaced, once"
    );
    assert_eq!(var("POD_IP")[0]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(container["envFrom"], json!([{"configMapRef": {"name": "herald-extra"}}]));
    assert_eq!(template["metadata"]["annotations"], json!({"linkerd.io/inject": "enabled"}));
    assert_eq!(template["metadata"]["labels"]["team"], "realtime");
    assert_eq!(template["metadata"]["labels"]["app.kubernetes.io/instance"], "demo", "the selector's label wins");
    for (field, value) in [
        ("nodeSelector", json!(pod_spec.node_selector)),
        ("tolerations", json!(pod_spec.tolerations)),
        ("affinity", json!(pod_spec.affinity)),
        ("topologySpreadConstraints", json!(pod_spec.topology_spread_constraints)),
        ("imagePullSecrets", json!([{"name": "registry"}])),
        ("serviceAccountName", json!("herald-gateway")),
        ("priorityClassName", json!("realtime-critical")),
        ("automountServiceAccountToken", json!(false)),
    ] {
        assert_eq!(pod[field], value, "{field}");
    }
    assert_eq!(writes.service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        writes.service["metadata"]["annotations"],
        json!({"service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout": "3600"})
    );
}

/// A fleet whose Deployment has its desired replicas ready is `Ready=True`, in the shape of
/// Kubernetes' own conditions (`kubectl wait --for=condition=Ready` and Argo CD read it).
#[tokio::test]
async fn a_fleet_with_its_replicas_ready_is_ready() {
    let (ctx, mut handle) = context();
    let (a, b) = (stats_server(50).await, stats_server(50).await);
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(None)), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &deployment(2)));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[("127.0.0.1".into(), a), ("127.0.0.1".into(), b)])));
    let writes = serve_writes(&mut handle).await;
    run.await.unwrap().unwrap();
    let ready = condition(&writes.status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("True"), Some("ReplicasReady")));
    assert_eq!(ready["message"], "2 of 2 gateways ready");
    assert_eq!(ready["observedGeneration"], 3);
    let since = ready["lastTransitionTime"].as_str().unwrap();
    assert!(since.ends_with('Z') && since.contains('T'), "RFC 3339: {since}");
}

/// `pods` with each pod's Ready condition set to `ready` ("True" or "False").
fn pods_ready(addrs: &[(String, i32)], ready: &str) -> Value {
    let mut v = pods(addrs);
    for pod in v["items"].as_array_mut().unwrap() {
        pod["status"]["conditions"][0]["status"] = json!(ready);
    }
    v
}

/// A port nobody listens on: a pod whose `/stats` never answers.
fn dead_port() -> i32 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    i32::from(listener.local_addr().unwrap().port())
}

/// Ready pods that all fail to answer are no report: `ScalingActive` is False, with its own
/// reason (before: True, `ValidMetricFound`, from the count of pods asked).
#[tokio::test]
async fn scaling_is_not_active_while_no_pod_answers() {
    let (ctx, mut handle) = context();
    let dead = dead_port();
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(None)), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &deployment(2)));
    let (_, _, _, send) = next(&mut handle).await;
    send.send_response(respond(StatusCode::OK, &pods(&[("127.0.0.1".into(), dead), ("127.0.0.1".into(), dead)])));
    let writes = serve_writes(&mut handle).await;
    run.await.unwrap().unwrap();
    let active = condition(&writes.status, "ScalingActive");
    assert_eq!((&active["status"], &active["reason"]), (&json!("False"), &json!("FailedGetMetrics")), "{active}");
    assert_eq!(writes.deployment["spec"]["replicas"], 2, "no scale-down on counts nobody gave");
}

/// Gateways whose readiness fails (NATS unreachable) keep their streams: 4 pods with 140
/// connections each, none Ready, are 560 connections, not 0 (before: only Ready pods were
/// asked, the fleet counted as empty, and it was scaled down, pods full of clients first).
#[tokio::test]
async fn pods_that_are_not_ready_still_count_their_connections() {
    let (ctx, mut handle) = context();
    let mut r = rtgw(None);
    r.spec.scale_down.stabilization_seconds = 0;
    let ports = [stats_server(140).await, stats_server(140).await, stats_server(140).await, stats_server(140).await];
    let run = tokio::spawn(controller::reconcile(Arc::new(r), ctx.clone()));
    let (_, _, _, send) = next(&mut handle).await;
    let mut d = deployment(4);
    d["status"]["readyReplicas"] = json!(0);
    send.send_response(respond(StatusCode::OK, &d));
    let (_, _, _, send) = next(&mut handle).await;
    let mut addrs: Vec<(String, i32)> = ports.iter().map(|p| ("127.0.0.1".to_owned(), *p)).collect();
    // A fifth, starting and not answering yet: not Ready, so it serves nobody and blocks nothing.
    addrs.push(("127.0.0.1".to_owned(), dead_port()));
    let mut listed = pods_ready(&addrs, "False");
    // An evicted pod whose IP another pod took (it answers for that pod): not asked.
    let mut evicted = listed["items"][0].clone();
    evicted["metadata"]["name"] = json!("demo-evicted");
    evicted["status"]["phase"] = json!("Failed");
    listed["items"].as_array_mut().unwrap().push(evicted);
    send.send_response(respond(StatusCode::OK, &listed));
    let writes = serve_writes(&mut handle).await;
    run.await.unwrap().unwrap();
    assert_eq!(writes.status["connections"], 560, "{}", writes.status);
    assert_eq!(writes.deployment["spec"]["replicas"], 6, "560 / 100 per pod, up: {}", writes.status);
}

/// Runs the whole controller on a namespace holding `good` and, with `with_bad`, a resource
/// stored before the schema bounded `scaleUp.maxStep`, holding 5,000,000,000 (more than a u32).
/// Answers whether `good` was reconciled (its Deployment read), and the status `bad` was given.
async fn reconciles_beside(with_bad: bool) -> (bool, Option<Value>) {
    let (ctx, mut handle) = context();
    let mut good = serde_json::to_value(rtgw(None)).unwrap();
    good["metadata"]["name"] = json!("good");
    let mut bad = good.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["metadata"]["uid"] = json!("99999999-2222-3333-4444-555555555555");
    bad["spec"]["scaleUp"]["maxStep"] = json!(5_000_000_000u64);
    let items = if with_bad { vec![bad, good] } else { vec![good] };
    let list = json!({"apiVersion": "herald.dev/v1alpha1", "kind": "RealtimeGatewayList",
        "metadata": {"resourceVersion": "11"}, "items": items});
    let empty =
        json!({"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "11"}, "items": []});
    let not_found =
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    let run = tokio::spawn(controller::run(ctx.clone(), Some("default".into())));
    let mut watches = Vec::new(); // held open, as a watch is
    let (mut good_reconciled, mut bad_status) = (false, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(good_reconciled && (bad_status.is_some() || !with_bad)) {
        let Ok(Some((req, send))) = tokio::time::timeout_at(deadline, handle.next_request()).await else { break };
        let (method, uri, body) = kube_api::read(req).await;
        if uri.contains("watch=true") {
            watches.push(send);
        } else if uri.starts_with("/apis/herald.dev/v1alpha1/namespaces/default/realtimegateways?") {
            send.send_response(respond(StatusCode::OK, &list));
        } else if uri.starts_with("/apis/apps/v1/namespaces/default/deployments?") {
            send.send_response(respond(StatusCode::OK, &empty));
        } else if method == "GET" && uri.starts_with("/apis/apps/v1/namespaces/default/deployments/good") {
            good_reconciled = true;
            send.send_response(respond(StatusCode::NOT_FOUND, &not_found));
        } else if method == "PATCH"
            && uri.starts_with("/apis/herald.dev/v1alpha1/namespaces/default/realtimegateways/bad/status")
        {
            bad_status = Some(body["status"].clone());
            send.send_response(respond(StatusCode::OK, &list["items"][0]));
        } else {
            send.send_response(respond(StatusCode::NOT_FOUND, &not_found));
        }
    }
    run.abort();
    (good_reconciled, bad_status)
}

/// One resource holding a number its field's type cannot hold (stored before the schema
/// bounded it) is reported `InvalidSpec`, and every other resource is reconciled (before: the
/// list the operator watches failed as a whole, and no resource was reconciled at all).
#[tokio::test]
async fn a_resource_with_a_number_too_large_stops_nobody_else() {
    assert!(reconciles_beside(false).await.0, "the harness reconciles `good` alone");
    let (good, bad) = reconciles_beside(true).await;
    assert!(good, "`good` was reconciled beside `bad`");
    let bad = bad.expect("`bad` was given a status");
    let active = condition(&bad, "ScalingActive");
    assert_eq!(active["reason"], "InvalidSpec", "{bad}");
    assert!(active["message"].as_str().unwrap().contains("maxStep must be at most 10000"), "{bad}");
}

/// A Service of the resource's name that something else made is left alone: applying ours
/// would merge our selector into it (so it matches no pod of its own) and make this resource
/// its owner (so deleting the resource deletes it). Nothing is applied, and the status says
/// why (before: it was taken over).
#[tokio::test]
async fn a_service_of_the_same_name_that_is_not_ours_is_left_alone() {
    let (ctx, mut handle) = context();
    let run = tokio::spawn(controller::reconcile(Arc::new(rtgw(None)), ctx.clone()));
    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), uri.as_str()), ("GET", "/apis/apps/v1/namespaces/default/deployments/demo"));
    send.send_response(respond(StatusCode::NOT_FOUND, &not_found()));
    let (_, uri, _, send) = next(&mut handle).await;
    assert!(uri.starts_with("/api/v1/namespaces/default/pods?"), "{uri}");
    send.send_response(respond(StatusCode::OK, &pods(&[])));
    let (method, uri, _, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), uri.as_str()), ("GET", "/api/v1/namespaces/default/services/demo"));
    let theirs = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"demo","namespace":"default"},
        "spec":{"selector":{"app":"billing"},"ports":[{"port":80}]}});
    send.send_response(respond(StatusCode::OK, &theirs));
    let (_, uri, _, send) = next(&mut handle).await;
    assert_eq!(uri, "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo");
    send.send_response(respond(StatusCode::NOT_FOUND, &not_found()));

    let (method, uri, body, send) = next(&mut handle).await;
    assert_eq!(method, "PATCH", "nothing applied: {uri}");
    assert!(uri.starts_with("/apis/herald.dev/v1alpha1/namespaces/default/realtimegateways/demo/status"), "{uri}");
    let ready = condition(&body["status"], "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"].as_str().unwrap().contains("a Service named demo exists in default"), "{ready}");
    send.send_response(respond(
        StatusCode::OK,
        &json!({"apiVersion":"herald.dev/v1alpha1","kind":"RealtimeGateway",
        "metadata":{"name":"demo","namespace":"default"},"spec": serde_json::to_value(&rtgw(None).spec).unwrap()}),
    ));
    let (method, _, event, send) = next(&mut handle).await;
    assert_eq!((method.as_str(), event["reason"].as_str()), ("POST", Some("InvalidSpec")));
    send.send_response(respond(StatusCode::CREATED, &event));
    assert!(run.await.unwrap().is_err());
}
