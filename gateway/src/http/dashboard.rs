//! `GET /dashboard` (the page) and `GET /dashboard/stream` (the fleet's stats over SSE, one
//! `event: stats` frame a second, see `ops/dashboard.rs`).
//!
//! Both take a dashboard key (`--dashboard-keys-file`; never a publisher key, which publishes
//! to every user and has no business in a browser), as `Authorization: Bearer` or `?key=` (a
//! browser address bar can only do the latter). A page opened with `?key=` drops it from the address bar, and the
//! gateway sets it as an HttpOnly, SameSite=Strict cookie limited to `/dashboard`, so a reload
//! and the page's own stream need no key in a URL.
//! The page is one self-contained file: no external URL, no framework, charts drawn as SVG.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use futures_util::stream;

use super::{ApiError, AppState};
use crate::access::publish_keys::KeyAuth;
use crate::access::tokens::{TokenSources, pick_token};
use crate::delivery::sse;

const PAGE: &str = include_str!("../../assets/dashboard.html");

/// What the page may load: nothing from elsewhere, only its own inline script and style, and
/// its stream on this origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The cookie carrying the key of a dashboard opened with `?key=`.
const COOKIE: &str = "herald_dashboard_key";

/// Checks the dashboard key; `dev` mode needs none. Returns the key when it came as `?key=`.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<Option<String>, ApiError> {
    match &state.dashboard_auth {
        KeyAuth::Open => Ok(None),
        KeyAuth::Disabled => Err(ApiError::unauthorized(
            "the dashboard takes a dashboard key, and this gateway has none (--dashboard-keys-file)",
        )),
        KeyAuth::Keys(keys) => {
            let query = url::form_urlencoded::parse(req.query_string().as_bytes())
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.into_owned());
            let cookie = req.cookie(COOKIE);
            let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let sources =
                TokenSources { authorization, query: query.as_deref(), cookie: cookie.as_ref().map(|c| c.value()) };
            let key = pick_token(&sources).ok_or_else(|| {
                ApiError::unauthorized("open /dashboard?key=<dashboard key>, or send Authorization: Bearer <key>")
            })?;
            keys.check(key).ok_or_else(|| ApiError::unauthorized("unknown dashboard key"))?;
            let from_query = query.as_deref() == Some(key) && authorization.is_none_or(|a| !a.contains(key));
            Ok(from_query.then(|| key.to_owned()))
        }
    }
}

pub async fn page(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let key = authorize(&req, &state)?;
    let mut res = HttpResponse::Ok();
    if let Some(key) = key {
        let secure = req.connection_info().scheme() == "https";
        res.cookie(
            Cookie::build(COOKIE, key)
                .path("/dashboard")
                .http_only(true)
                .secure(secure)
                .same_site(SameSite::Strict)
                .finish(),
        );
    }
    Ok(res
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(PAGE))
}

pub async fn stream(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let mut views = state.fleet.subscribe();
    let latest = views.borrow_and_update().clone();
    let opening = [sse::retry_frame(state.settings.retry_ms), latest].concat();
    let next = stream::unfold(views, |mut views| async move {
        views.changed().await.ok()?;
        let frame = views.borrow_and_update().clone();
        Some((frame, views))
    });
    let body =
        stream::once(async move { bytes::Bytes::from(opening) }).chain(next).map(Ok::<_, std::convert::Infallible>);
    Ok(super::events::stream_response().streaming(body))
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    /// The dashboard takes a dashboard key and refuses publisher keys, so that "the key that
    /// publishes to every user is never typed into a browser" (docs/security.md). The page's own
    /// notice, shown when its stream is refused, tells the operator to do exactly that.
    #[test]
    fn the_page_never_asks_for_a_publisher_key() {
        assert!(!PAGE.contains("<publisher key>"), "the dashboard page asks for a publisher key in its URL");
        assert!(PAGE.contains("?key=<dashboard key>"), "it names the key it takes");
    }
}
