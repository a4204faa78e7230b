//! `GET /v1/presence/{channel}`: who is connected to a presence-enabled channel, fleet-wide.
//!
//! `{"channel":"doc:1","members":[{"user":"ana","connections":2,"presence":{…}}]}`, members
//! sorted by user. Allowed with a publisher key, or with a client token that may read the
//! channel (as for `/events`). Reads with a client token are limited per user
//! ([`READ_RATE`] a second, bursts of [`READ_BURST`]); every read answers from the pod's own
//! watch of the channel (`presence/mod.rs`), never with a read of the store of its own.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::client_auth::{authenticate, parse_query};
use super::publish::presented_key;
use super::{ApiError, AppState};
use crate::access::publish_keys::KeyAuth;
use crate::names::Name;
use crate::presence::MemberView;

#[derive(Serialize)]
struct Body<'a> {
    channel: &'a str,
    members: Vec<MemberView>,
}

/// Presence reads one user may make per second, and at once.
pub const READ_RATE: u32 = 5;
pub const READ_BURST: u32 = 20;

pub async fn presence(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = path.into_inner();
    let channel = Name::parse(&raw).map_err(|e| {
        let shown: String = raw.chars().take(64).collect();
        ApiError::bad_request("invalid_channel", format!("channel {shown:?} {e}"))
    })?;
    if !publisher(&req, &state) {
        let grant = authenticate(&req, &parse_query(req.query_string()), &state).await?;
        if !grant.allows_channel(channel.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "channel_not_allowed",
                format!("the token does not allow channel {:?}", channel.as_str()),
            ));
        }
        if let Err(wait) = state.presence_reads.take(grant.user.as_str(), Instant::now()) {
            let limit = format!("at most {READ_RATE} presence reads per second (bursts of {READ_BURST}) per user");
            return Ok(super::rate_limited(wait, &limit));
        }
    }
    if !state.presence.enabled(channel.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "presence_off",
            format!("channel {:?} has no presence (see --presence-channels)", channel.as_str()),
        ));
    }
    let members = state.presence.members(&channel).await.map_err(|e| {
        tracing::warn!(error = %e, "could not read presence");
        ApiError::unavailable(format!("cannot read presence right now: {e}"))
    })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(Body { channel: channel.as_str(), members }))
}

/// Whether the request carries a valid publisher key.
fn publisher(req: &HttpRequest, state: &AppState) -> bool {
    let KeyAuth::Keys(keys) = &state.publish_auth else { return false };
    presented_key(req).is_some_and(|key| keys.check(key).is_some())
}
