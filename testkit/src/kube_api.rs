//! kube's mock API server (tower-test) as the operator's tests script it: a client whose every
//! request comes to the test, which reads it and answers it.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::Value;

/// Where the mocked API server's requests arrive.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
/// Where the answer to one request goes.
pub type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// A kube client (default namespace `default`) whose requests come to the returned handle.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// A response with `status` and `body` as JSON.
pub fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

/// A request's method, path and query, and JSON body (`Null` when it has none).
pub async fn read(req: Request<Body>) -> (String, String, Value) {
    let (method, uri) = (req.method().to_string(), req.uri().to_string());
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (method, uri, body)
}

/// The next request, which must come within 5 s, read; and where its answer goes.
pub async fn next(handle: &mut Handle) -> (String, String, Value, Reply) {
    let (req, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request")
        .expect("service alive");
    let (method, uri, body) = read(req).await;
    (method, uri, body, reply)
}
