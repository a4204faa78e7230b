//! `/healthz` (the process is alive), `/readyz` (it can take streams) and `/stats` (what the
//! operator scales on).

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready while the broker is connected and the gateway is not draining.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let connected = state.broker.is_connected();
    let draining = state.admission.draining();
    if connected && !draining {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        let reason = if draining { "draining" } else { "broker disconnected" };
        HttpResponse::ServiceUnavailable().json(json!({"status": "not_ready", "reason": reason}))
    }
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
