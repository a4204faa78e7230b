//! HTTP routes: the SSE stream, the publish API, health, stats and metrics, the operations
//! dashboard, and the dev page.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::access::admission::Admission;
use crate::access::publish_keys::KeyAuth;
use crate::access::rate::RateLimiter;
use crate::broker::Broker;
use crate::config::{ClientAuth, LOOPBACK_ORIGINS, Settings, is_loopback_origin};
use crate::delivery::hub::Hub;
use crate::ops::dashboard::Fleet;
use crate::ops::metrics::Metrics;
use crate::presence::Presence;

/// Who a browser's request is, and which of its channels it may have.
pub mod client_auth;
/// `POST /v1/client-events`: a browser's small ephemeral event to a channel.
pub(crate) mod client_events;
/// `GET /dashboard` and its stream.
pub(crate) mod dashboard;
/// The demo page and the browser client's modules, in `dev` mode.
pub(crate) mod dev;
/// `GET /events`: the SSE stream.
pub mod events;
/// `/healthz`, `/readyz` and `/stats`.
pub(crate) mod health;
/// `GET /metrics`.
pub(crate) mod metrics;
/// `GET /v1/presence/{channel}`.
pub(crate) mod presence;
/// `POST /v1/publish`.
pub mod publish;

/// Shared by every worker.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub admission: Arc<Admission>,
    pub client_auth: ClientAuth,
    pub publish_auth: KeyAuth,
    /// `/dashboard`'s keys: never the publisher keys.
    pub dashboard_auth: KeyAuth,
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
    /// Presence reads per user (`presence::READ_RATE`).
    pub presence_reads: RateLimiter,
    /// Resumes per user (`--resume-rate`, `--resume-burst`); `None`: no budget.
    pub resumes: Option<RateLimiter>,
}

/// Registers every route. A known path asked with another method is answered 405 with `Allow`,
/// an unknown one 404, each with a JSON error.
pub fn routes(cfg: &mut web::ServiceConfig, dev: bool) {
    cfg.service(only(Method::GET, "/events", events::events))
        .service(only(Method::POST, "/v1/publish", publish::publish))
        .service(only(Method::POST, "/v1/client-events", client_events::client_events))
        .service(only(Method::GET, "/v1/presence/{channel}", presence::presence))
        .service(only(Method::GET, "/healthz", health::healthz))
        .service(only(Method::GET, "/readyz", health::readyz))
        .service(only(Method::GET, "/stats", health::stats))
        .service(only(Method::GET, "/metrics", metrics::metrics))
        .service(only(Method::GET, "/dashboard", dashboard::page))
        .service(only(Method::GET, "/dashboard/stream", dashboard::stream));
    if dev {
        cfg.service(only(Method::GET, "/", dev::index)).service(only(
            Method::GET,
            "/client/{name}",
            dev::client_module,
        ));
    }
    cfg.default_service(web::to(|req: actix_web::HttpRequest| async move {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such path: {}", req.path())).error_response()
    }));
}

/// `path`, answered by `handler` for `method`, and 405 for any other method.
fn only<F, Args>(method: Method, path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let route = web::method(method.clone()).to(handler);
    web::resource(path).route(route).default_service(web::to(move || {
        let method = method.clone();
        async move {
            let mut res = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path takes {method} requests"),
            )
            .error_response();
            if let Ok(allow) = HeaderValue::from_str(method.as_str()) {
                res.headers_mut().insert(header::ALLOW, allow);
            }
            res
        }
    }))
}

/// Longest a request body may take to arrive, from the handler's first read.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request body of at most `limit` bytes; a longer one (by `Content-Length`, or as it
/// arrives) is refused with `too_large()` before more of it is read. One not whole within
/// [`BODY_DEADLINE`] is answered 408, and its connection closed: a body that never finishes
/// held its connection for ever, and anyone with one key or token could hold any number.
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
    let deadline = tokio::time::Instant::now() + BODY_DEADLINE;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, payload.next()).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {} s", BODY_DEADLINE.as_secs()),
            ));
        };
        let Some(chunk) = next else { break };
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

    /// What a failed publish answers: 503 `unavailable` when nothing was sent, 504 `unconfirmed`
    /// when NATS did not confirm in time (an ephemeral event may yet be delivered: sent again, it
    /// may arrive twice), 413 when NATS refused it as too large.
    pub fn of_publish(e: &crate::broker::BrokerError) -> Self {
        use crate::broker::BrokerError;
        match e {
            // Refused before anything was sent (too large for NATS with its headers): a retry
            // cannot cure it.
            BrokerError::Rejected(reason) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", reason.clone())
            }
            BrokerError::Unavailable(_) => Self::unavailable(e.to_string()),
            BrokerError::Unsure(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "unconfirmed", e.to_string()),
        }
    }
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1, until the next token):
/// `limit` says what the limit is, e.g. "at most 5 presence reads per second (bursts of 20)
/// per user".
pub fn rate_limited(wait: std::time::Duration, limit: &str) -> actix_web::HttpResponse {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let refusal = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("{limit}; retry in {secs} s"));
    let mut res = actix_web::ResponseError::error_response(&refusal);
    res.headers_mut().insert(actix_web::http::header::RETRY_AFTER, actix_web::http::header::HeaderValue::from(secs));
    res
}

/// Refuses a state-changing request that a page on another site could have made a browser
/// send with the user's `herald_token` cookie: its body must be declared JSON (a form, or a
/// CORS "simple" request, cannot declare it without a preflight the gateway does not grant to
/// other sites), and an `Origin` it carries must be this gateway's own or one of
/// `--allowed-origins`.
pub fn check_same_site_write(
    content_type: Option<&str>,
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
) -> Result<(), ApiError> {
    let json = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    check_origin(origin, host, allowed)
}

/// Refuses a request whose `Origin` is neither this gateway's own (`host`) nor one of
/// `--allowed-origins`: a page on another site made the browser send it, with the user's
/// `herald_token` cookie. A request without an `Origin` (same-origin reads, servers) passes.
pub fn check_origin(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = origin else { return Ok(()) };
    let same_host = url::Url::parse(origin).ok().is_some_and(|u| {
        let authority = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => return false,
        };
        host.is_some_and(|h| h.eq_ignore_ascii_case(&authority))
    });
    let listed = |a: &String| a.eq_ignore_ascii_case(origin) || (a == LOOPBACK_ORIGINS && is_loopback_origin(origin));
    if same_host || allowed.iter().any(listed) {
        return Ok(());
    }
    let shown: String = origin.chars().take(100).collect();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("requests from {shown:?} are not accepted: add the origin to --allowed-origins"),
    ))
}

/// [`check_same_site_write`] on a request, against the gateway's `--allowed-origins`.
pub fn same_site_write(req: &actix_web::HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    check_same_site_write(
        header(header::CONTENT_TYPE),
        header(header::ORIGIN),
        header(header::HOST),
        &state.settings.allowed_origins,
    )
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
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may never come: the connection cannot carry another request.
            res.force_close();
        }
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        res.json(ErrorBody { error: self.code, message: &self.message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_publish_says_whether_anything_was_sent() {
        use crate::broker::BrokerError;
        let answer = |e: BrokerError| {
            let e = ApiError::of_publish(&e);
            (e.status.as_u16(), e.code)
        };
        assert_eq!(answer(BrokerError::Unavailable("down".into())), (503, "unavailable"));
        assert_eq!(answer(BrokerError::Unsure("slow".into())), (504, "unconfirmed"));
        assert_eq!(answer(BrokerError::Rejected("big".into())), (413, "payload_too_large"));
    }

    #[test]
    fn writes_from_other_sites_are_refused() {
        let allowed = vec!["https://app.example.com".to_owned()];
        let check = |ct: Option<&str>, origin: Option<&str>, host: Option<&str>| {
            check_same_site_write(ct, origin, host, &allowed).map_err(|e| (e.status.as_u16(), e.code))
        };
        let json = Some("application/json");
        assert_eq!(check(json, None, Some("rt.example.com")), Ok(()), "no Origin: not a browser's cross-site write");
        assert_eq!(check(Some("Application/JSON; charset=utf-8"), None, None), Ok(()));
        assert_eq!(check(json, Some("https://app.example.com"), Some("rt.example.com")), Ok(()));
        assert_eq!(check(json, Some("https://rt.example.com"), Some("rt.example.com")), Ok(()), "same host");
        assert_eq!(check(json, Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), Ok(()));
        for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data")] {
            assert_eq!(check(ct, None, None), Err((415, "unsupported_media_type")), "{ct:?}");
        }
        for origin in ["https://evil.example", "null", "https://app.example.com.evil.example", "http://app.example.com"]
        {
            assert_eq!(check(json, Some(origin), Some("rt.example.com")), Err((403, "origin_not_allowed")), "{origin}");
        }
        assert_eq!(
            check(json, Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")),
            Err((403, "origin_not_allowed"))
        );
    }
}
