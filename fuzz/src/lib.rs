//! Helpers shared by the fuzz targets in `fuzz_targets/`: input splitting, token signing and the
//! checks that an SSE frame or a grant is well formed. Each check panics (which libFuzzer reports
//! as a crash) when a property of the gateway does not hold.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_gateway::access::tokens::{AuthError, ChannelPattern, Grant, Verifier};
use herald_gateway::event::EventId;
use herald_gateway::names::validate_name;
use hmac::{Hmac, Mac};
use serde::Deserialize;

/// The HMAC secret every fuzzed token is signed with.
pub const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123";
/// Issuer and audience of the strict verifier.
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "herald";
/// Key id of the strict verifier's key.
pub const KID: &str = "k1";

/// Checks that `verifier` decided `token` as jsonwebtoken's `decode` does: the one-pass check of
/// HMAC-signed tokens (`access/tokens/hmac.rs`) must refuse a token for the same reason, and grant
/// the same, as the library path it replaces.
pub fn check_same_as_library(verifier: &Verifier, token: &str, decided: &Result<Grant, AuthError>) {
    let library = verifier.verify_by_library(token);
    match (decided, &library) {
        (Ok(a), Ok(b)) => {
            let seen = |g: &Grant| (g.user.as_str().to_owned(), g.channels.clone(), g.publish.clone(), g.expires_at);
            assert_eq!(seen(a), seen(b), "one-pass and library grants differ");
            assert_eq!(a.presence.as_ref().map(|p| p.get()), b.presence.as_ref().map(|p| p.get()), "presence differs");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "one-pass and library refuse for different reasons"),
        _ => panic!("one-pass {decided:?}, library {library:?}"),
    }
}

/// A verifier with one unnamed HMAC key and no issuer or audience, like `--jwt-secret-file`.
pub fn plain_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut v = Verifier::new(None, None);
        v.add_secret(SECRET, None);
        v
    })
}

/// A verifier that requires issuer and audience and names its key, for the `kid` paths.
pub fn strict_verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let mut v = Verifier::new(Some(ISSUER.into()), Some(AUDIENCE.into()));
        v.add_secret(SECRET, Some(KID.into()));
        v
    })
}

/// Splits fuzz input at NUL bytes into at most `n` parts. Text inputs (names, JSON, query
/// strings) rarely contain NUL, so seed files stay readable: `a\0b` is two fields.
pub fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

/// Fuzz bytes as text the way the gateway receives it: request parts arrive as `&str` after a
/// lossy or validating UTF-8 decode.
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Signs `header.payload` (both raw JSON bytes, base64url-encoded here) with [`SECRET`], using
/// the HMAC of the header's `alg` (HS256 when the header names no HS384/HS512), so the verifier
/// gets past the signature check and reaches the header and claims parsers.
pub fn sign(header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let alg = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(|a| a.as_str()).map(str::to_owned));
    let input = signing_input.as_bytes();
    let signature = match alg.as_deref() {
        Some("HS384") => Hmac::<sha2::Sha384>::new_from_slice(SECRET).map(|m| m.chain_update(input).finalize_vec()),
        Some("HS512") => Hmac::<sha2::Sha512>::new_from_slice(SECRET).map(|m| m.chain_update(input).finalize_vec()),
        _ => Hmac::<sha2::Sha256>::new_from_slice(SECRET).map(|m| m.chain_update(input).finalize_vec()),
    }
    .expect("HMAC takes keys of any length");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

trait FinalizeVec {
    fn finalize_vec(self) -> Vec<u8>;
}

impl<M: Mac> FinalizeVec for M {
    fn finalize_vec(self) -> Vec<u8> {
        self.finalize().into_bytes().to_vec()
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What any grant the verifier hands out must satisfy, whatever the token said.
pub fn check_grant(grant: &Grant) {
    let user = grant.user.as_str();
    assert!(validate_name(user).is_ok(), "grant for an invalid user name {user:?}");
    let exp = grant.expires_at.expect("a verified token always has exp");
    // 5 s leeway in the verifier, plus slack for the time between verify() and this check.
    assert!(exp + 60 >= now(), "expired token accepted: exp {exp}");
    assert!(grant.channels.len() <= 256, "{} channel patterns granted", grant.channels.len());
    for p in &grant.channels {
        let text = match p {
            ChannelPattern::Exact(name) => {
                assert!(validate_name(name).is_ok(), "exact pattern {name:?} is not a valid name");
                name.clone()
            }
            ChannelPattern::Prefix(prefix) => format!("{prefix}*"),
        };
        assert_eq!(ChannelPattern::parse(&text).as_ref(), Ok(p), "pattern {text:?} does not re-parse");
    }
}

/// The envelope of an event frame, less its `data` (checked separately, byte for byte).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHead {
    pub channel: Option<String>,
    pub target: String,
    #[serde(default)]
    pub from: Option<String>,
    pub data: serde::de::IgnoredAny,
}

/// What an SSE event frame was rendered from.
pub struct Expected<'a> {
    pub id: Option<&'a EventId>,
    pub event_type: &'a str,
    pub channel: Option<&'a str>,
    pub target: &'a str,
    pub from: Option<&'a str>,
    /// The JSON payload as given to `event_frame`.
    pub payload: &'a [u8],
}

/// Checks that `frame` is exactly one SSE event: `id:`, `event:` and `data:` lines only, one
/// blank line at the very end and nowhere else (so a payload can never start a second event or
/// smuggle in a field), and that the data lines joined by `\n` give back the envelope with the
/// payload unchanged except for line breaks. Works on bytes: payloads that come straight from
/// NATS are checked as JSON without UTF-8 validation.
pub fn check_frame(frame: &[u8], want: &Expected<'_>) {
    let shown = String::from_utf8_lossy(frame);
    assert!(frame.ends_with(b"\n\n"), "frame does not end with a blank line: {shown:?}");
    assert!(!frame.contains(&b'\r'), "frame contains CR, which SSE parsers treat as a line break: {shown:?}");
    let body = &frame[..frame.len() - 2];
    assert!(!body.windows(2).any(|w| w == b"\n\n"), "blank line inside the frame: {shown:?}");
    assert!(!body.ends_with(b"\n"), "frame ends with more than one blank line: {shown:?}");

    let mut lines = body.split(|b| *b == b'\n');
    if let Some(id) = want.id {
        let line = lines.next().unwrap_or_default();
        assert_eq!(line, format!("id: {id}").as_bytes(), "first line of {shown:?}");
    }
    let line = lines.next().unwrap_or_default();
    assert_eq!(line, format!("event: {}", want.event_type).as_bytes(), "event line of {shown:?}");
    let mut data = Vec::new();
    for (i, line) in lines.enumerate() {
        let Some(rest) = line.strip_prefix(b"data: ") else {
            panic!("line {line:?} is not a data line in {shown:?}", line = String::from_utf8_lossy(line));
        };
        if i > 0 {
            data.push(b'\n');
        }
        data.extend_from_slice(rest);
    }
    assert!(!data.is_empty(), "no data line in {shown:?}");

    // The client joins data lines with \n: the payload comes back with CRLF and CR turned into LF
    // (JSON allows raw line breaks only as whitespace, so its meaning is unchanged).
    let payload = normalize_newlines(want.payload);
    let mut tail = payload.clone();
    tail.push(b'}');
    assert!(data.ends_with(&tail), "payload not carried verbatim in {shown:?}");
    let mut head = data[..data.len() - tail.len()].to_vec();
    assert!(head.ends_with(b"\"data\":"), "envelope does not end in \"data\": before the payload: {shown:?}");
    head.extend_from_slice(b"null}");
    let env: EnvelopeHead = serde_json::from_slice(&head)
        .unwrap_or_else(|e| panic!("envelope head {:?} is not JSON: {e}", String::from_utf8_lossy(&head)));
    assert_eq!(env.channel.as_deref(), want.channel);
    assert_eq!(env.target, want.target);
    assert_eq!(env.from.as_deref(), want.from);
    assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_ok(), "joined data is not JSON: {shown:?}");
}

/// CRLF and lone CR become LF, as an SSE parser splits lines.
pub fn normalize_newlines(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\r' => {
                out.push(b'\n');
                if s.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}
