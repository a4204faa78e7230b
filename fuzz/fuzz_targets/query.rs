//! The `/events` query string: `parse_query`, `redact_query` (what reaches the request log) and
//! `authorize_channels` against a grant.
//!
//! Input: `query[\0pattern[\0pattern…]]`; the patterns, where valid, form the token's grant.
#![no_main]

use herald_gateway::access::tokens::{ChannelPattern, Grant, redact_query};
use herald_gateway::http::client_auth::{authorize_channels, parse_query};
use herald_gateway::names::{Name, validate_name};
use herald_gateway_fuzz::{fields, text};
use libfuzzer_sys::fuzz_target;

/// The parameters `redact_query` promises to hide.
const SECRET_PARAMS: &[&str] = &["token", "key", "access_token", "jwt"];

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 2);
    let query = text(parts[0]);
    let patterns: Vec<ChannelPattern> = parts
        .get(1)
        .map(|p| p.split(|b| *b == 0).filter_map(|p| ChannelPattern::parse(&text(p)).ok()).collect())
        .unwrap_or_default();

    let q = parse_query(&query);
    for c in &q.channels {
        assert!(!c.is_empty() && !c.contains(','), "channel {c:?} from {query:?}");
    }

    check_redaction(&query);

    let grant =
        Grant { user: Name::parse("u1").unwrap(), channels: patterns, publish: Vec::new(), presence: None, expires_at: None };
    for max in [q.channels.len(), 2] {
        check_authorization(&q.channels, &grant, max);
    }
});

fn check_redaction(query: &str) {
    let redacted = redact_query(query);
    let (before, after): (Vec<&str>, Vec<&str>) = (query.split('&').collect(), redacted.split('&').collect());
    assert_eq!(before.len(), after.len(), "redaction changed the parameters of {query:?}: {redacted:?}");
    for (b, a) in before.iter().zip(&after) {
        assert!(b == a || a.ends_with("=REDACTED"), "{b:?} became {a:?}");
    }
    // Read the log line back the way the gateway reads a query: no credential-bearing parameter
    // may still carry a value.
    for (k, v) in url::form_urlencoded::parse(redacted.as_bytes()) {
        if SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(&k)) && !v.is_empty() {
            assert_eq!(v, "REDACTED", "parameter {k:?} of {query:?} is logged unredacted as {redacted:?}");
        }
    }
    if let Some(token) = parse_query(query).token.filter(|t| !t.is_empty() && t != "REDACTED") {
        assert_ne!(parse_query(&redacted).token.as_deref(), Some(token.as_str()), "token of {query:?} logged");
    }
}

fn check_authorization(requested: &[String], grant: &Grant, max: usize) {
    match authorize_channels(requested, grant, max) {
        Ok(names) => {
            assert!(names.len() <= max, "{} channels allowed, max {max}", names.len());
            for (i, n) in names.iter().enumerate() {
                assert!(requested.iter().any(|r| r == n.as_str()), "{n:?} was not requested");
                assert!(validate_name(n.as_str()).is_ok());
                assert!(grant.allows_channel(n.as_str()), "{n:?} is not granted by {:?}", grant.channels);
                assert!(!names[..i].contains(n), "{n:?} listed twice");
            }
            let mut unique: Vec<&String> = requested.iter().collect();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "requested channels dropped");
        }
        Err(e) => match (e.status.as_u16(), e.code) {
            (400, "invalid_channel") => {
                assert!(requested.iter().any(|r| validate_name(r).is_err()), "no invalid channel in {requested:?}")
            }
            (400, "too_many_channels") => {
                let mut unique: Vec<&String> = requested.iter().collect();
                unique.sort();
                unique.dedup();
                assert!(unique.len() > max, "{} distinct channels refused with max {max}", unique.len());
            }
            (403, "channel_not_allowed") => {
                assert!(requested.iter().any(|r| !grant.allows_channel(r)), "every channel was granted");
            }
            other => panic!("unexpected refusal {other:?}: {}", e.message),
        },
    }
}
