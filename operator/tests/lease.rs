//! The leader lease against kube's mock API: who may take it, when, and giving it up.

use std::time::Duration;

use herald_operator::lease::LeaderLease;
use herald_testkit::kube_api::{self, Handle, next, respond};
use http::StatusCode;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/herald/leases/herald-operator";

fn lease_api() -> (LeaderLease, Handle) {
    let (client, handle) = kube_api::client();
    let api = kube::Api::namespaced(client, "herald");
    (LeaderLease::new(api, "herald-operator", "operator-a", Duration::from_secs(15)), handle)
}

fn lease(holder: Option<&str>, renewed_secs_ago: i64, transitions: i32) -> Value {
    let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "herald-operator", "namespace": "herald", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed.to_string(), "acquireTime": renewed.to_string(),
                 "leaseTransitions": transitions}
    })
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":reason,"code":code,"message":reason})
}

/// Answers the next request with `answer`; returns its method, path and body.
async fn answer(handle: &mut Handle, code: StatusCode, answer: &Value) -> (String, String, Value) {
    let (method, uri, body, send) = next(handle).await;
    send.send_response(respond(code, answer));
    (method, uri, body)
}

/// Asserts the client sends nothing more.
async fn no_more_requests(handle: &mut Handle) {
    let more = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    assert!(!matches!(more, Ok(Some(_))), "an unexpected request");
}

#[tokio::test]
async fn a_missing_lease_is_created_and_held() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.try_acquire().await.unwrap() });
    let (method, uri, _) = answer(&mut handle, StatusCode::NOT_FOUND, &status(404, "NotFound")).await;
    assert_eq!((method.as_str(), uri.as_str()), ("GET", PATH));
    let (method, uri, body) = answer(&mut handle, StatusCode::CREATED, &lease(Some("operator-a"), 0, 0)).await;
    assert_eq!(method, "POST");
    assert!(uri.starts_with("/apis/coordination.k8s.io/v1/namespaces/herald/leases"), "{uri}");
    assert_eq!(body["spec"]["holderIdentity"], "operator-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert!(run.await.unwrap());
}

#[tokio::test]
async fn a_lease_another_replica_renewed_recently_is_left_alone() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.try_acquire().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-b"), 5, 3)).await;
    assert!(!run.await.unwrap());
    no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.try_acquire().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-b"), 20, 3)).await;
    let (method, uri, body) = answer(&mut handle, StatusCode::OK, &lease(Some("operator-a"), 0, 4)).await;
    let uri = uri.trim_end_matches('?');
    assert_eq!((method.as_str(), uri), ("PUT", PATH));
    assert_eq!(body["metadata"]["resourceVersion"], "41", "the write is conditional on what was read");
    assert_eq!(body["spec"]["holderIdentity"], "operator-a");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert!(run.await.unwrap());
}

#[tokio::test]
async fn losing_a_takeover_race_is_not_leading() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.try_acquire().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-b"), 20, 3)).await;
    let (method, _, _) = answer(&mut handle, StatusCode::CONFLICT, &status(409, "Conflict")).await;
    assert_eq!(method, "PUT");
    assert!(!run.await.unwrap());
}

#[tokio::test]
async fn the_holder_renews_without_counting_a_transition() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.try_acquire().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-a"), 5, 2)).await;
    let (method, _, body) = answer(&mut handle, StatusCode::OK, &lease(Some("operator-a"), 0, 2)).await;
    assert_eq!(method, "PUT");
    assert_eq!(body["spec"]["leaseTransitions"], 2);
    assert!(run.await.unwrap());
}

#[tokio::test]
async fn a_released_lease_is_free_for_a_standby_at_once() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.release().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-a"), 2, 2)).await;
    let (method, uri, released) = answer(&mut handle, StatusCode::OK, &lease(None, 0, 2)).await;
    let uri = uri.trim_end_matches('?');
    assert_eq!((method.as_str(), uri), ("PUT", PATH));
    assert!(released["spec"]["holderIdentity"].is_null());
    assert!(released["spec"]["renewTime"].is_null());
    run.await.unwrap();

    // A standby sees the released lease and takes it without waiting for it to run out.
    let (standby, mut handle) = {
        let (client, handle) = kube_api::client();
        let api = kube::Api::namespaced(client, "herald");
        (LeaderLease::new(api, "herald-operator", "operator-b", Duration::from_secs(15)), handle)
    };
    let run = tokio::spawn(async move { standby.try_acquire().await.unwrap() });
    let mut free = released.clone();
    free["metadata"]["resourceVersion"] = json!("42");
    answer(&mut handle, StatusCode::OK, &free).await;
    let (method, _, body) = answer(&mut handle, StatusCode::OK, &lease(Some("operator-b"), 0, 3)).await;
    assert_eq!(method, "PUT");
    assert_eq!(body["spec"]["holderIdentity"], "operator-b");
    assert_eq!(body["spec"]["leaseTransitions"], 3);
    assert!(run.await.unwrap());
}

#[tokio::test]
async fn a_replica_never_releases_a_lease_it_does_not_hold() {
    let (lease_api, mut handle) = lease_api();
    let run = tokio::spawn(async move { lease_api.release().await.unwrap() });
    answer(&mut handle, StatusCode::OK, &lease(Some("operator-b"), 2, 2)).await;
    run.await.unwrap();
    no_more_requests(&mut handle).await;
}
