//! Simulated end to end: three real `herald-gateway` processes on 127.0.0.1 with a real NATS; a
//! mocked API server lists them as ready pods; real SSE clients come and go; the reconcile loop
//! scales the Deployment up as connections pass the target and back down after the window,
//! as seen in the PATCH bodies it sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_operator::controller::{self, Context};
use herald_operator::crd::RealtimeGateway;
use herald_operator::metrics::Metrics;
use herald_testkit::kube_api::{self, read, respond};
use herald_testkit::{Gateway, Nats, Sse, token};
use http::StatusCode;
use serde_json::{Value, json};

/// Opens an SSE stream on `port` and reads until `connected`.
async fn open_stream(port: u16, user: &str) -> Sse {
    let mut s = Sse::with_token(([127, 0, 0, 1], port).into(), &token(user, &[], 600), &[]).await;
    assert_eq!(s.next().await.event, "connected");
    s
}

/// The mocked API server: three ready pods (the gateways), a Deployment whose replicas follow
/// the operator's PATCHes, and a record of every replica count it applied.
fn mock_api(ports: Vec<u16>, applied: Arc<Mutex<Vec<(Instant, u64)>>>) -> kube::Client {
    let (client, mut handle) = kube_api::client();
    tokio::spawn(async move {
        let mut replicas: Option<u64> = None;
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_owned();
            let (method, _, body) = read(req).await;
            let (status, reply) = match (method.as_str(), path.as_str()) {
                ("GET", "/apis/apps/v1/namespaces/default/deployments/demo") => match replicas {
                    Some(r) => (
                        StatusCode::OK,
                        json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"demo","namespace":"default",
                            "ownerReferences":[{"apiVersion":"herald.dev/v1alpha1","kind":"RealtimeGateway","name":"demo","uid":"0c6f0f3e-0000-4000-8000-000000000001","controller":true}]},
                            "spec":{"replicas":r,"selector":{},"template":{}}}),
                    ),
                    None => (
                        StatusCode::NOT_FOUND,
                        json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
                    ),
                },
                (
                    "GET",
                    "/api/v1/namespaces/default/services/demo"
                    | "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo",
                ) => (
                    StatusCode::NOT_FOUND,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
                ),
                ("GET", "/api/v1/namespaces/default/pods") => {
                    let items: Vec<Value> = ports.iter().enumerate().map(|(i, port)| json!({
                        "metadata": {"name": format!("demo-{i}"), "namespace": "default"},
                        "spec": {"containers": [{"name": "gateway", "ports": [{"name": "http", "containerPort": port}]}]},
                        "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
                    })).collect();
                    (StatusCode::OK, json!({"apiVersion":"v1","kind":"PodList","metadata":{},"items":items}))
                }
                ("PATCH", "/apis/apps/v1/namespaces/default/deployments/demo") => {
                    let r = body["spec"]["replicas"].as_u64().unwrap();
                    applied.lock().unwrap().push((Instant::now(), r));
                    replicas = Some(r);
                    (StatusCode::OK, body)
                }
                ("PATCH", p) if p.ends_with("/status") => {
                    let mut object = serde_json::to_value(rtgw()).unwrap();
                    object["status"] = body["status"].clone();
                    (StatusCode::OK, object)
                }
                ("POST", _) => (StatusCode::CREATED, body),
                _ => (StatusCode::OK, body),
            };
            send.send_response(respond(status, &reply));
        }
    });
    client
}

fn rtgw() -> RealtimeGateway {
    serde_json::from_value(json!({
        "apiVersion": "herald.dev/v1alpha1", "kind": "RealtimeGateway",
        "metadata": {"name": "demo", "namespace": "default", "uid": "0c6f0f3e-0000-4000-8000-000000000001"},
        "spec": {
            "image": "herald:test", "replicas": {"min": 1, "max": 3},
            "targetConnectionsPerPod": 10, "maxConnectionsPerPod": 20,
            "scaleUp": {"stabilizationSeconds": 0, "maxStep": 2},
            "scaleDown": {"stabilizationSeconds": 3, "maxStep": 1},
            "nats": {"url": "nats://unused"}, "auth": {"jwtSecret": {"name": "herald", "key": "jwt"}}
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_scales_real_gateways_up_and_down_with_their_connections() {
    let nats = Nats::start();
    let gateways: Vec<Gateway> =
        (0..3).map(|_| Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start()).collect();
    let ports: Vec<u16> = gateways.iter().map(|g| g.addr.port()).collect();

    let applied = Arc::new(Mutex::new(Vec::new()));
    let client = mock_api(ports.clone(), applied.clone());
    let ctx = Context::new(client, Arc::new(Metrics::default()), Duration::from_millis(200), None);
    let object = Arc::new(rtgw());
    type Until = Box<dyn Fn(&[(Instant, u64)]) -> bool>;
    let reconcile_until = |what: &'static str, deadline: Duration, cond: Until| {
        let (ctx, object, applied) = (ctx.clone(), object.clone(), applied.clone());
        async move {
            let end = Instant::now() + deadline;
            loop {
                controller::reconcile(object.clone(), ctx.clone()).await.unwrap();
                if cond(&applied.lock().unwrap()) {
                    return;
                }
                assert!(
                    Instant::now() < end,
                    "timed out waiting for: {what}; applied {:?}",
                    applied.lock().unwrap().iter().map(|a| a.1).collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    reconcile_until(
        "the fleet starts at min",
        Duration::from_secs(10),
        Box::new(|a| a.last().is_some_and(|l| l.1 == 1)),
    )
    .await;

    // 25 streams spread over the three gateways: 25 / 10 per pod → 3 pods.
    let mut streams = Vec::new();
    for i in 0..25 {
        streams.push(open_stream(ports[i % 3], &format!("user{i}")).await);
    }
    reconcile_until("scaled up to 3", Duration::from_secs(10), Box::new(|a| a.last().is_some_and(|l| l.1 == 3))).await;

    // Everyone leaves: back to 1, one step at a time, each only after the 3 s window.
    drop(streams);
    let left = Instant::now();
    reconcile_until("scaled down to 1", Duration::from_secs(30), Box::new(|a| a.last().is_some_and(|l| l.1 == 1)))
        .await;

    let history: Vec<(Instant, u64)> = applied.lock().unwrap().clone();
    let values: Vec<u64> = history.iter().map(|a| a.1).collect();
    let mut changes: Vec<u64> = values.clone();
    changes.dedup();
    assert_eq!(changes, vec![1, 3, 2, 1], "up in one bounded step, down one pod at a time: {values:?}");
    let first_down = history.iter().find(|a| a.1 == 2).unwrap().0;
    assert!(first_down.duration_since(left) >= Duration::from_secs(3), "not before the 3 s window");
}
