//! `GET /metrics`: every metric of this gateway in the Prometheus text format.
//!
//! Unauthenticated, on the same port as `/stats`, as Prometheus expects of a scrape target: the
//! labels carry no user ids, channel names or secrets, only counts (docs/observability.md says
//! how to keep it off a public ingress).

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::ops::metrics::Snapshot;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (mut queue_max, mut queue_total) = (0, 0);
    for outbox in state.admission.open_streams() {
        let queued = outbox.queued_bytes();
        queue_max = queue_max.max(queued);
        queue_total += queued;
    }
    let now = Snapshot {
        connections: state.admission.connections(),
        max_connections: state.admission.max_connections(),
        subjects: state.hub.subjects(),
        broker_connected: state.broker.is_connected(),
        draining: state.admission.draining(),
        queue_max,
        queue_total,
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(state.metrics.render(&now))
}
