//! HTTP routes: the SSE stream, the publish API, health, stats and metrics, the operations
//! dashboard, and the dev page.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::broker::Broker;
use crate::config::{ClientAuth, PublishAuth, Settings};
use crate::dashboard::Fleet;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::rate::RateLimiter;

pub mod client_events;
pub mod dashboard;
pub mod dev;
pub mod events;
pub mod health;
pub mod metrics;
pub mod presence;
pub mod publish;

/// Shared by every worker.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub admission: Arc<Admission>,
    pub client_auth: ClientAuth,
    pub publish_auth: PublishAuth,
    pub settings: Settings,
    /// Random per-process prefix of connection ids.
    pub instance: String,
    pub next_connection: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// The fleet's stats, for `/dashboard`.
    pub fleet: Arc<Fleet>,
    pub presence: Arc<Presence>,
    /// Per-user budget of client events.
    pub client_events: RateLimiter,
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig, dev: bool) {
    cfg.route("/events", web::get().to(events::events))
        .route("/v1/publish", web::post().to(publish::publish))
        .route("/v1/client-events", web::post().to(client_events::client_events))
        .route("/v1/presence/{channel}", web::get().to(presence::presence))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/stats", web::get().to(health::stats))
        .route("/metrics", web::get().to(metrics::metrics))
        .route("/dashboard", web::get().to(dashboard::page))
        .route("/dashboard/stream", web::get().to(dashboard::stream));
    if dev {
        cfg.route("/", web::get().to(dev::index)).route("/client/{name}", web::get().to(dev::client_module));
    }
}

/// Reads a request body of at most `limit` bytes; a longer one (by `Content-Length`, or as it
/// arrives) is refused with `too_large()` before more of it is read.
pub async fn read_body(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    too_large: impl Fn() -> ApiError,
) -> Result<bytes::BytesMut, ApiError> {
    use futures_util::StreamExt;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("invalid_body", format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A client-facing error: status plus `{"error":"<code>","message":"<text>"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        res.json(ErrorBody { error: self.code, message: &self.message })
    }
}
