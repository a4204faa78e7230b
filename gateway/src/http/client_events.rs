//! `POST /v1/client-events`: a browser sends a small ephemeral event to a channel (typing,
//! cursors).
//!
//! Body `{"channel":"doc:1","type":"cursor","data":{…}}`, authenticated with the client token
//! as for `/events`, whose `publish` claim must allow the channel. The event is live only (never
//! stored, no id), limited in size and rate per user, and carries the sender's user as the
//! envelope's `from`, stamped here: nothing in the body can set it.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::client_auth::{authenticate, parse_query};
use super::{ApiError, AppState, read_body, same_site_write};
use crate::event::{Outgoing, Target};
use crate::names::{Name, validate_event_type};

#[derive(Deserialize)]
struct Body<'a> {
    channel: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(borrow, default, deserialize_with = "super::publish::present")]
    data: Option<&'a RawValue>,
}

/// A request that passed validation.
#[derive(Debug)]
pub struct ClientEvent {
    pub channel: Name,
    pub event_type: String,
    pub payload: Bytes,
}

/// Parses and validates a body. Pure, for table tests.
pub fn validate(body: &[u8]) -> Result<ClientEvent, ApiError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad_request("invalid_json", "request body must be a JSON object"));
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body is not a client event ({{\"channel\",\"type\",\"data\"}}): {e}"),
        )
    })?;
    let data = parsed
        .data
        .ok_or_else(|| ApiError::bad_request("missing_data", "field \"data\" is required (any JSON value)"))?;
    let channel = Name::parse(&parsed.channel).map_err(|e| {
        let shown: String = parsed.channel.chars().take(64).collect();
        ApiError::bad_request("invalid_channel", format!("channel {shown:?} {e}"))
    })?;
    validate_event_type(&parsed.event_type).map_err(|e| ApiError::bad_request("invalid_type", format!("type {e}")))?;
    Ok(ClientEvent { channel, event_type: parsed.event_type, payload: Bytes::copy_from_slice(data.get().as_bytes()) })
}

/// The route, counted by status (`herald_client_events_total`).
pub async fn client_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = handle(&req, payload, &state).await;
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.status,
    };
    state.metrics.client_event(status.as_u16());
    result
}

async fn handle(req: &HttpRequest, payload: web::Payload, state: &AppState) -> Result<HttpResponse, ApiError> {
    // A `herald_token` cookie authenticates this route too: refuse what another site could send.
    same_site_write(req, state)?;
    let query = parse_query(req.query_string());
    let grant = authenticate(req, &query, state).await?;

    let limit = state.settings.client_event_max_bytes;
    let body = read_body(req, payload, limit, || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a client event is limited to {limit} bytes of request body"),
        )
    })
    .await?;
    let event = validate(&body)?;
    if !grant.allows_publish(event.channel.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "publish_not_allowed",
            format!("the token does not allow client events on channel {:?}", event.channel.as_str()),
        ));
    }
    // Counted after validation: a malformed request does not use up the sender's budget.
    if let Err(wait) = state.client_events.take(grant.user.as_str(), Instant::now()) {
        let limit = format!(
            "at most {} client events per second (bursts of {}) per user",
            state.settings.client_event_rate, state.settings.client_event_burst
        );
        return Ok(super::rate_limited(wait, &limit));
    }
    let outgoing = Outgoing {
        event_type: event.event_type,
        payload: event.payload,
        durable: false,
        trace: None,
        from: Some(grant.user.as_str().to_owned()),
        id: None,
    };
    state.broker.publish(vec![Target::Channel(event.channel)], outgoing).await.map_err(|e| {
        tracing::warn!(error = %e, "could not publish a client event");
        ApiError::of_publish(&e)
    })?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"ok": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_validated_field_by_field() {
        let ok = validate(br#"{"channel":"doc:1","type":"cursor","data":{"x":1},"from":"mallory"}"#).unwrap();
        assert_eq!(ok.channel.as_str(), "doc:1");
        assert_eq!(ok.event_type, "cursor");
        assert_eq!(&ok.payload[..], br#"{"x":1}"#);
        assert_eq!(&validate(br#"{"channel":"doc:1","type":"t","data":null}"#).unwrap().payload[..], b"null");
        for (body, code) in [
            (&br#"[1]"#[..], "invalid_json"),
            (br#"{"channel":"doc:1","type":"t""#, "invalid_json"),
            (br#"{"type":"t","data":1}"#, "invalid_json"),
            (br#"{"channel":"doc:1","type":"t"}"#, "missing_data"),
            (br#"{"channel":"a..b","type":"t","data":1}"#, "invalid_channel"),
            (br#"{"channel":"doc:1","type":"presence","data":1}"#, "invalid_type"),
            (br#"{"channel":"doc:1","type":"a b","data":1}"#, "invalid_type"),
        ] {
            let err = validate(body).unwrap_err();
            assert_eq!(err.code, code, "{}", String::from_utf8_lossy(body));
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
    }
}
