//! `POST /v1/publish`: validate, then hand to the broker (docs/protocol.md).
//!
//! Body: `{"type":"booking_update","data":{…},"users":["u1"],"channels":["booking:42"],
//! "broadcast":false,"durable":true}` → `200 {"ids":[…]}`. Every field is checked; nothing is
//! published unless the whole request is valid.
//!
//! While traces are on, the request is a `publish` span (a child of the publisher's
//! `traceparent`, through the JetStream acknowledgement) whose context the event carries.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{Instrument, Span};

use super::{ApiError, AppState, read_body, same_site_write};
use crate::access::publish_keys::KeyAuth;
use crate::access::tokens::{TokenSources, pick_token};
use crate::broker::BrokerError;
use crate::event::{Outgoing, Target, validate_publish_id};
use crate::names::{DEFAULT_EVENT_TYPE, Name, validate_event_type};
use crate::ops::trace;
use crate::ops::trace_context::TraceContext;

/// Most targets in one publish request.
pub const MAX_TARGETS: usize = 1000;
/// Room for everything in a request besides the payload (type, target lists).
const ENVELOPE_ALLOWANCE: usize = 160 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody<'a> {
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    /// Any JSON value, `null` included (hence not a plain `Option`, which would swallow it).
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub broadcast: bool,
    #[serde(default)]
    pub durable: Option<bool>,
    /// Idempotency key: a repeat within `--history-dedup-window` stores nothing new.
    #[serde(default)]
    pub id: Option<String>,
}

/// Keeps a present `null` as `Some`, so that only a missing field is `None`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

/// A publish request that passed validation.
#[derive(Debug)]
pub struct ValidPublish {
    pub targets: Vec<Target>,
    pub event: Outgoing,
}

/// Parses and validates a request body. Pure, so it can be table-tested and fuzzed.
pub fn validate(body: &[u8], max_payload: usize) -> Result<ValidPublish, ApiError> {
    // serde would also accept a struct written as an array; the API takes objects only.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request("invalid_json", "request body must be a JSON object"));
    }
    let parsed: PublishBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("request body is not a valid publish request: {e}"))
    })?;
    let data = parsed
        .data
        .ok_or_else(|| ApiError::bad_request("missing_data", "field \"data\" is required (any JSON value)"))?;
    if data.get().len() > max_payload {
        return Err(payload_too_large(max_payload));
    }
    if let Some(id) = &parsed.id {
        validate_publish_id(id).map_err(|e| ApiError::bad_request("invalid_id", format!("id {e}")))?;
    }
    let event_type = parsed.event_type.unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_owned());
    validate_event_type(&event_type).map_err(|e| ApiError::bad_request("invalid_type", format!("type {e}")))?;

    let count = parsed.users.len() + parsed.channels.len() + usize::from(parsed.broadcast);
    if count == 0 {
        return Err(ApiError::bad_request(
            "no_targets",
            "name at least one target: \"users\", \"channels\" or \"broadcast\": true",
        ));
    }
    if count > MAX_TARGETS {
        return Err(ApiError::bad_request("too_many_targets", format!("at most {MAX_TARGETS} targets per request")));
    }
    // A target named twice is one target: one stored event, one id, one delivery.
    let mut targets = Vec::with_capacity(count);
    let mut add = |target: Target| {
        if !targets.contains(&target) {
            targets.push(target);
        }
    };
    for u in &parsed.users {
        let name =
            Name::parse(u).map_err(|e| ApiError::bad_request("invalid_user", format!("user {:?} {e}", shown(u))))?;
        add(Target::User(name));
    }
    for c in &parsed.channels {
        let name = Name::parse(c)
            .map_err(|e| ApiError::bad_request("invalid_channel", format!("channel {:?} {e}", shown(c))))?;
        add(Target::Channel(name));
    }
    if parsed.broadcast {
        targets.push(Target::Broadcast);
    }
    Ok(ValidPublish {
        targets,
        event: Outgoing {
            event_type,
            payload: Bytes::copy_from_slice(data.get().as_bytes()),
            durable: parsed.durable.unwrap_or(true),
            trace: None,
            from: None,
            id: parsed.id,
        },
    })
}

/// The publisher key a request presents: `Authorization: Bearer <key>` only.
pub(crate) fn presented_key(req: &HttpRequest) -> Option<&str> {
    let sources = TokenSources {
        authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        query: None,
        cookie: None,
    };
    pick_token(&sources)
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn payload_too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the event payload is limited to {max} bytes"),
    )
}

/// The route: [`handle`], counted by status and timed (`herald_publish_*`).
pub async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let result = if trace::on() {
        let parent = TraceContext::from_headers(|name| req.headers().get(name).and_then(|v| v.to_str().ok()));
        let span = trace::publish_span(parent.as_ref());
        let result = handle(&req, payload, &state, Some(&span)).instrument(span.clone()).await;
        match &result {
            Ok(res) => trace::record_status(&span, res.status().as_u16(), None),
            Err(e) => trace::record_status(&span, e.status.as_u16(), Some(e.code)),
        }
        result
    } else {
        handle(&req, payload, &state, None).await
    };
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.status,
    };
    state.metrics.published(status.as_u16(), started.elapsed());
    result
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    span: Option<&Span>,
) -> Result<HttpResponse, ApiError> {
    match &state.publish_auth {
        KeyAuth::Open => {
            // No key (dev mode): nothing else keeps a page on another site from publishing.
            same_site_write(req, state)?;
        }
        KeyAuth::Disabled => {
            return Err(ApiError::unauthorized(
                "HTTP publishing is disabled on this gateway (no --publish-keys-file); publish through NATS",
            ));
        }
        KeyAuth::Keys(keys) => {
            let key = presented_key(req)
                .ok_or_else(|| ApiError::unauthorized("send a publisher key as Authorization: Bearer <key>"))?;
            let name = keys.check(key).ok_or_else(|| ApiError::unauthorized("unknown publisher key"))?;
            tracing::debug!(publisher = name, "publish request");
        }
    }

    let max_payload = state.settings.max_payload_bytes;
    let body = read_body(req, payload, max_payload + ENVELOPE_ALLOWANCE, || payload_too_large(max_payload)).await?;

    let mut valid = validate(&body, max_payload)?;
    if let Some(span) = span {
        trace::record_publish(span, &valid.targets, valid.event.durable);
        // The event carries this span's context: each gateway's `deliver` span is its child.
        valid.event.trace = TraceContext::of(span);
    }
    let ids = state.broker.publish(valid.targets, valid.event).await.map_err(|e| {
        if !matches!(e, BrokerError::Rejected(_)) {
            tracing::warn!(error = %e, "publish failed");
        }
        ApiError::of_publish(&e)
    })?;
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ids": ids })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (u16, &'static str) {
        let e = validate(body.as_bytes(), 64).unwrap_err();
        (e.status.as_u16(), e.code)
    }

    #[test]
    fn valid_requests() {
        let v = validate(br#"{"type":"booking_update","data":{"a":[1,2]},"users":["u1"],"channels":["booking:42"],"broadcast":true}"#, 64).unwrap();
        assert_eq!(v.targets.len(), 3);
        assert_eq!(v.targets[2], Target::Broadcast);
        assert_eq!(v.event.event_type, "booking_update");
        assert_eq!(&v.event.payload[..], br#"{"a":[1,2]}"#);
        assert!(v.event.durable);
        let v = validate(br#"{"data":1,"users":["u","v","u","u"],"channels":["c","u","c"]}"#, 64).unwrap();
        let names: Vec<String> = v.targets.iter().map(Target::to_string).collect();
        assert_eq!(names, ["user u", "user v", "channel c", "channel u"], "each distinct target once, in order");
        let v = validate(br#"{"data":null,"broadcast":true,"durable":false}"#, 64).unwrap();
        assert_eq!(v.event.event_type, "message");
        assert!(!v.event.durable);
    }

    #[test]
    fn invalid_requests() {
        let cases = [
            ("", (400, "invalid_json")),
            ("[]", (400, "invalid_json")),
            (r#"{"data":1,"users":["u1"],"extra":1}"#, (400, "invalid_json")),
            (r#"{"users":["u1"]}"#, (400, "missing_data")),
            (r#"{"data":1}"#, (400, "no_targets")),
            (r#"{"data":1,"users":["a b"]}"#, (400, "invalid_user")),
            (r#"{"data":1,"channels":["x.>"]}"#, (400, "invalid_channel")),
            (r#"{"data":1,"broadcast":true,"type":"connected"}"#, (400, "invalid_type")),
            (r#"{"data":1,"broadcast":true,"type":"a\nb"}"#, (400, "invalid_type")),
            (r#"{"data":1,"broadcast":"yes"}"#, (400, "invalid_json")),
            (r#"{"data":1,"broadcast":true,"id":""}"#, (400, "invalid_id")),
            (r#"{"data":1,"broadcast":true,"id":"a/b"}"#, (400, "invalid_id")),
            (
                r#"{"data":"0123456789012345678901234567890123456789012345678901234567890123","broadcast":true}"#,
                (413, "payload_too_large"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(err(body), want, "body {body}");
        }
        let many = format!(r#"{{"data":1,"users":[{}]}}"#, vec!["\"u\""; MAX_TARGETS + 1].join(","));
        assert_eq!(validate(many.as_bytes(), 64).unwrap_err().code, "too_many_targets");
    }
}
