//! Who a browser's request is: its query, its client token (from the `Authorization` header,
//! the query or the `herald_token` cookie) verified, or in `dev` mode the user it names; and
//! which of the channels it asks for it may have. `/events`, `/v1/client-events` and
//! `/v1/presence` share it. A request authenticated by the cookie alone must come from this
//! gateway's own origin or one of `--allowed-origins` when it names one.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header;
use serde_json::value::RawValue;

use super::{ApiError, AppState};
use crate::access::tokens::{AuthError, Grant, MAX_PRESENCE_BYTES, TokenSources, pick_token, presence_object};
use crate::config::ClientAuth;
use crate::names::Name;

/// The parsed query of `/events`.
#[derive(Default, Debug)]
pub struct EventsQuery {
    pub channels: Vec<String>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub last_event_id: Option<String>,
    /// Dev mode: the user's presence object (a token's `presence` claim in production).
    pub presence: Option<String>,
}

/// Parses the query string; `channels` may be comma-separated and/or repeated.
pub fn parse_query(query: &str) -> EventsQuery {
    let mut q = EventsQuery::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "channels" | "channel" => q.channels.extend(value.split(',').filter(|c| !c.is_empty()).map(str::to_owned)),
            "token" => q.token = Some(value.into_owned()),
            "user" => q.user = Some(value.into_owned()),
            "lastEventId" => q.last_event_id = Some(value.into_owned()),
            "presence" => q.presence = Some(value.into_owned()),
            _ => {}
        }
    }
    q
}

/// The grant of the request's client token, or in `dev` mode of the user it names.
pub(crate) async fn authenticate(req: &HttpRequest, query: &EventsQuery, state: &AppState) -> Result<Grant, ApiError> {
    match &state.client_auth {
        ClientAuth::Open => {
            let user = query.user.as_deref().unwrap_or("anonymous");
            let user =
                Name::parse(user).map_err(|e| ApiError::bad_request("invalid_user", format!("user name {e}")))?;
            let mut grant = Grant::anything(user);
            if let Some(raw) = &query.presence {
                let invalid = || {
                    ApiError::bad_request(
                        "invalid_presence",
                        format!("presence must be a JSON object of at most {MAX_PRESENCE_BYTES} bytes"),
                    )
                };
                let value: Box<RawValue> = serde_json::from_str(raw).map_err(|_| invalid())?;
                let value = presence_object(value).map_err(|_| invalid())?;
                grant.presence = Some(value);
            }
            Ok(grant)
        }
        ClientAuth::Jwt(verifier) => {
            let cookie = req.cookie("herald_token");
            let sources = TokenSources {
                authorization: req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
                query: query.token.as_deref(),
                cookie: cookie.as_ref().map(|c| c.value()),
            };
            let token = pick_token(&sources).ok_or_else(|| ApiError::unauthorized(AuthError::Missing.to_string()))?;
            if sources.picks_cookie() {
                // The browser sends the cookie whichever site made the request: a page of
                // another site must not open streams, spend the user's budgets or read as them.
                let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
                super::check_origin(header(header::ORIGIN), header(header::HOST), &state.settings.allowed_origins)?;
                // A request without an `Origin` (an image, a script, a prefetch) that the
                // browser says came from anywhere but the gateway's own origin or the user
                // (`same-site` too: a sibling subdomain may be anybody's page).
                if header(header::ORIGIN).is_none()
                    && header(header::HeaderName::from_static("sec-fetch-site"))
                        .is_some_and(|site| !matches!(site, "same-origin" | "none"))
                {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "origin_not_allowed",
                        "a request from another site is not authenticated by the cookie",
                    ));
                }
            }
            verifier.verify_or_refresh(token).await.map_err(|e| ApiError::unauthorized(e.to_string()))
        }
    }
}

/// Validates, de-duplicates and authorizes the requested channels.
pub fn authorize_channels(requested: &[String], grant: &Grant, max: usize) -> Result<Vec<Name>, ApiError> {
    let mut names: Vec<Name> = Vec::with_capacity(requested.len());
    for raw in requested {
        let name = Name::parse(raw).map_err(|e| {
            let shown: String = raw.chars().take(64).collect();
            ApiError::bad_request("invalid_channel", format!("channel {shown:?} {e}"))
        })?;
        if !names.contains(&name) {
            names.push(name);
        }
        if names.len() > max {
            return Err(ApiError::bad_request("too_many_channels", format!("at most {max} channels per connection")));
        }
    }
    if let Some(denied) = names.iter().find(|n| !grant.allows_channel(n.as_str())) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "channel_not_allowed",
            format!("the token does not allow channel {:?}", denied.as_str()),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::tokens::ChannelPattern;

    #[test]
    fn query_parsing() {
        let q = parse_query("channels=booking%3A42,agent:7&channels=x&token=abc&lastEventId=e-5&other=1");
        assert_eq!(q.channels, vec!["booking:42", "agent:7", "x"]);
        assert_eq!(q.token.as_deref(), Some("abc"));
        assert_eq!(q.last_event_id.as_deref(), Some("e-5"));
        assert!(parse_query("").channels.is_empty());
        assert!(parse_query("channels=,,").channels.is_empty());
        // Malformed percent-encoding is kept verbatim and then fails name validation.
        assert_eq!(parse_query("channels=%zz").channels, vec!["%zz"]);
    }

    #[test]
    fn channel_authorization() {
        let grant = Grant {
            user: Name::parse("u1").unwrap(),
            channels: vec![ChannelPattern::parse("booking:*").unwrap()],
            publish: Vec::new(),
            presence: None,
            expires_at: None,
        };
        let ok = authorize_channels(&["booking:42".into(), "booking:42".into()], &grant, 2).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(authorize_channels(&["agent:7".into()], &grant, 2).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(authorize_channels(&["a..b".into()], &grant, 2).unwrap_err().code, "invalid_channel");
        let many: Vec<String> = (0..3).map(|i| format!("booking:{i}")).collect();
        assert_eq!(authorize_channels(&many, &grant, 2).unwrap_err().code, "too_many_channels");
    }
}
