//! Reconcile scenarios against kube's mock API (tower-test): each scenario scripts what the API
//! server answers and checks what the operator sends.

use std::sync::Arc;
use std::time::Duration;

use herald_operator::controller::{self, Context};
use herald_operator::crd::RealtimeGateway;
use herald_operator::metrics::Metrics;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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
            "nats": {"url": "nats://nats:4222"},
            "auth": {"jwtSecret": {"name": "herald", "key": "jwt"}},
            "drainSeconds": 20
        }
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

/// The next request: method, path and query, and JSON body.
async fn next(handle: &mut Handle) -> (String, String, Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request")
        .expect("service alive");
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (method, uri, body, send)
}

fn deployment(replicas: u32) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"demo","namespace":"default"},
           "spec":{"replicas":replicas,"selector":{},"template":{}},"status":{"readyReplicas":replicas}})
}

fn pods(addrs: &[(String, i32)]) -> Value {
    let items: Vec<Value> = addrs
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| {
            json!({
                "metadata": {"name": format!("demo-{i}"), "namespace": "default"},
                "spec": {"containers": [{"name": "gateway", "ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
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

/// Serves the apply/status requests of one reconcile after the GET and LIST; returns the applied
/// Deployment, whether an Event was posted, and the status patch.
async fn serve_writes(handle: &mut Handle) -> (Value, bool, Value) {
    let (method, uri, applied, send) = next(handle).await;
    assert_eq!(method, "PATCH");
    assert!(uri.starts_with("/apis/apps/v1/namespaces/default/deployments/demo?"), "{uri}");
    assert!(uri.contains("fieldManager=herald-operator") && uri.contains("force=true"), "server-side apply: {uri}");
    send.send_response(respond(StatusCode::OK, &applied));
    for path in
        ["/api/v1/namespaces/default/services/demo?", "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo?"]
    {
        let (method, uri, body, send) = next(handle).await;
        assert_eq!((method.as_str(), uri.starts_with(path)), ("PATCH", true), "{uri}");
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "RealtimeGateway");
        send.send_response(respond(StatusCode::OK, &body));
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
    (applied, event, body["status"].clone())
}

fn context() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
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

    let (applied, event, status) = serve_writes(&mut handle).await;
    assert_eq!(applied["spec"]["replicas"], 2, "a new fleet starts at min");
    assert_eq!(applied["metadata"]["ownerReferences"][0]["name"], "demo");
    let pod = &applied["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 35, "drainSeconds plus a margin");
    let env = &pod["containers"][0]["env"];
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "HERALD_MAX_CONNECTIONS" && e["value"] == "150"));
    assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "HERALD_DRAIN_SECS" && e["value"] == "20"));
    assert!(!event, "creating is not scaling");
    assert_eq!((status["desiredReplicas"].as_u64(), status["observedGeneration"].as_i64()), (Some(2), Some(3)));

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

    let (applied, event, status) = serve_writes(&mut handle).await;
    assert_eq!(applied["spec"]["replicas"], 4);
    assert!(event, "scaling records an Event");
    assert_eq!(status["connections"], 500);
    assert_eq!(status["desiredReplicas"], 4);
    assert!(status["lastScaleTime"].is_string());
    let limited =
        status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "ScalingLimited").unwrap().clone();
    assert_eq!((limited["status"].as_str(), limited["reason"].as_str()), (Some("True"), Some("ScaleUpLimit")));
    run.await.unwrap().unwrap();
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("herald_operator_scale_events_total{direction=\"up\",resource=\"default/demo\"} 1"),
        "{metrics}"
    );
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
    let (applied, _, _) = serve_writes(&mut handle).await;
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
