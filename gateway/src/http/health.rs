//! `/healthz` (the process is alive), `/readyz` (it can take streams) and `/stats` (what the
//! operator scales on).

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::config::ClientAuth;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready while the broker is connected, the client-token keys are loaded (every JWKS URL
/// fetched once) and the gateway is not draining.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let keys = match &state.client_auth {
        ClientAuth::Jwt(verifier) => verifier.is_ready(),
        ClientAuth::Open => true,
    };
    let reason = if state.admission.draining() {
        "draining"
    } else if !state.broker.is_connected() {
        "broker disconnected"
    } else if !keys {
        "client-token keys not fetched yet (--jwks-url)"
    } else {
        return HttpResponse::Ok().json(json!({"status": "ready"}));
    };
    HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reason": reason}))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub connections: usize,
    pub max_connections: usize,
    pub draining: bool,
    pub subjects: usize,
}

pub async fn stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Stats {
        connections: state.admission.connections(),
        max_connections: state.admission.max_connections(),
        draining: state.admission.draining(),
        subjects: state.hub.subjects(),
    })
}
