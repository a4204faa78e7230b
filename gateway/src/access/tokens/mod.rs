//! Client tokens (docs/protocol.md): JWT verification, channel grants and token extraction.
//!
//! A token names its user in `sub`, the channels it may read in `channels` (exact names or
//! prefixes ending in `*`), and must carry `exp`. Optionally, `publish` lists the channels the
//! user may send client events to (same patterns), and `presence` is a small JSON object shown
//! to the other members of presence-enabled channels. Keys are HMAC secrets or RSA / EC / Ed25519
//! public keys (PEM or JWKS); several may be loaded at once for rotation, selected by `kid` when
//! the token names one, otherwise by the algorithm family. A key is never used for an algorithm
//! of another family, which rules out HS/RS confusion.
//!
//! Tokens signed with an HMAC secret, the common case, are checked in one pass ([`hmac`]);
//! those signed with a public key by jsonwebtoken's `decode`. Both decide every token the same
//! way: the one-pass check is tested against the library token by token.
//!
//! About 650 lines: verification, grants and extraction are one check at the edge, and 150 of
//! them are its table tests, one case per way a token can be wrong.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::access::jwks::{KeySet, RemoteKeys, keys_of_jwks};
use crate::access::keys::VerifyKey;
use crate::names::{Name, NameError, validate_name};

/// HMAC-signed tokens checked in one pass.
mod hmac;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;
/// Longest token accepted; anything longer is rejected before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most channel patterns one token may grant.
const MAX_PATTERNS: usize = 256;
/// Largest `presence` object a token may carry, serialized.
pub const MAX_PRESENCE_BYTES: usize = 1024;

/// A channel pattern from a token: an exact name, or a prefix (`booking:*`, or `*` for all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelPattern {
    Exact(String),
    Prefix(String),
}

impl ChannelPattern {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.strip_suffix('*') {
            Some("") => Ok(ChannelPattern::Prefix(String::new())),
            Some(prefix) => {
                // A prefix is a name cut anywhere, so it may end in '.'.
                let check = prefix.strip_suffix('.').unwrap_or(prefix);
                validate_name(check)?;
                Ok(ChannelPattern::Prefix(prefix.to_owned()))
            }
            None => {
                validate_name(s)?;
                Ok(ChannelPattern::Exact(s.to_owned()))
            }
        }
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            ChannelPattern::Exact(name) => name == channel,
            ChannelPattern::Prefix(prefix) => channel.len() > prefix.len() && channel.starts_with(prefix.as_str()),
        }
    }
}

/// What a verified token allows.
#[derive(Clone, Debug)]
pub struct Grant {
    pub user: Name,
    pub channels: Vec<ChannelPattern>,
    /// Channels the user may send client events to.
    pub publish: Vec<ChannelPattern>,
    /// What others see of the user on presence-enabled channels: a JSON object.
    pub presence: Option<Box<RawValue>>,
    /// Unix seconds; `None` only in dev mode.
    pub expires_at: Option<u64>,
}

impl Grant {
    /// Dev mode: any user, every channel, no expiry.
    pub fn anything(user: Name) -> Self {
        Grant {
            user,
            channels: vec![ChannelPattern::Prefix(String::new())],
            publish: vec![ChannelPattern::Prefix(String::new())],
            presence: None,
            expires_at: None,
        }
    }

    pub fn allows_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| p.matches(channel))
    }

    pub fn allows_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }
}

/// Why a token was refused. Every variant maps to 401; the message is safe to show the client
/// (it never echoes the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt>, ?token=<jwt> or the herald_token cookie")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("token is malformed")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token uses algorithm {0}, for which no key is configured")]
    NoKeyForAlgorithm(String),
    #[error("token names key id {0:?}, which is not configured")]
    UnknownKeyId(String),
    #[error("token issuer is not accepted")]
    BadIssuer,
    #[error("token audience is not accepted")]
    BadAudience,
    #[error("token claim {0} is missing")]
    MissingClaim(&'static str),
    #[error("token claim {claim} is invalid: {reason}")]
    BadClaim { claim: &'static str, reason: String },
}

/// The claims the gateway reads. Both ways of verifying a token ([`hmac`] and jsonwebtoken's
/// `decode`) parse them with this, so a claim of the wrong type is malformed on either.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    /// Whole seconds. jsonwebtoken also reads a fraction or `null` here, and then refuses the
    /// token as malformed; refused here first, the answer is the same.
    #[serde(default, deserialize_with = "whole_seconds")]
    exp: Option<u64>,
    /// Seconds, a fraction rounded, as jsonwebtoken reads it; anything else is malformed.
    #[serde(default, deserialize_with = "seconds")]
    nbf: Option<u64>,
    /// A string or an array of strings; jsonwebtoken skips checking a value of another type, so
    /// such a value must fail here rather than count as present.
    #[serde(default)]
    iss: Option<OneOrMany>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    presence: Option<Box<RawValue>>,
}

fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    u64::deserialize(d).map(Some)
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(whole) = n.as_u64() {
        return Ok(Some(whole));
    }
    match n.as_f64() {
        Some(f) if n.is_f64() && f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.round() as u64)),
        _ => Err(serde::de::Error::custom("not a number of seconds")),
    }
}

/// A string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// Whether it is `name`, or an array that holds it.
    fn names(&self, name: &str) -> bool {
        match self {
            OneOrMany::One(one) => one == name,
            OneOrMany::Many(many) => many.iter().any(|n| n == name),
        }
    }
}

/// Verifies client tokens against the configured keys: those of files and secrets, loaded at
/// start-up, and those fetched from JWKS URLs ([`RemoteKeys`]), which change as the provider
/// rotates them.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    remote: Option<Arc<RemoteKeys>>,
    issuer: Option<String>,
    audience: Option<String>,
    /// The rules for each algorithm, made once: a `Validation` is a handful of hash sets, and
    /// making one per token cost every connection their allocations and hashing.
    validations: Vec<(Algorithm, Validation)>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).field("remote", &self.remote.is_some()).finish()
    }
}

/// Problems loading key material, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Verifier {
    pub fn new(issuer: Option<String>, audience: Option<String>) -> Self {
        let families = [AlgorithmFamily::Hmac, AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed];
        let validations = families
            .iter()
            .flat_map(AlgorithmFamily::algorithms)
            .map(|&alg| (alg, validation(alg, issuer.as_deref(), audience.as_deref())))
            .collect();
        Verifier { keys: Vec::new(), remote: None, issuer, audience, validations }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.remote.is_none()
    }

    /// Adds the keys of JWKS URLs, fetched and refreshed by `remote`.
    pub fn set_remote(&mut self, remote: Arc<RemoteKeys>) {
        self.remote = Some(remote);
    }

    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        self.remote.as_ref()
    }

    /// Whether every key source has been loaded (JWKS URLs fetched once).
    pub fn is_ready(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.loaded())
    }

    /// Adds an HMAC secret (HS256/384/512).
    pub fn add_secret(&mut self, secret: &[u8], kid: Option<String>) {
        self.keys.push(VerifyKey::new(kid, DecodingKey::from_secret(secret)));
    }

    /// Adds a raw secret file: its bytes, less one trailing newline.
    pub fn add_secret_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let mut bytes = read(path)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() < 16 {
            return Err(KeyError::Invalid {
                path: path.display().to_string(),
                reason: format!("secret is {} bytes; use at least 16 (32 recommended)", bytes.len()),
            });
        }
        self.add_secret(&bytes, None);
        Ok(())
    }

    /// Adds a PEM public key (RSA, EC P-256/P-384 or Ed25519). Its `kid` is the file's stem,
    /// so `keys/2026-11.pem` matches tokens with `"kid":"2026-11"`; tokens without a kid try
    /// every key of their algorithm's family.
    pub fn add_pem_file(&mut self, path: &Path) -> Result<(), KeyError> {
        let pem = read(path)?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem))
            .map_err(|_| KeyError::Invalid {
                path: path.display().to_string(),
                reason: "not a PEM public key (RSA, EC or Ed25519)".into(),
            })?;
        let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        self.keys.push(VerifyKey::new(kid, key));
        Ok(())
    }

    /// Adds every key of a JWKS document (RSA, EC, OKP/Ed25519 and oct keys).
    pub fn add_jwks_file(&mut self, path: &Path) -> Result<usize, KeyError> {
        let text = read(path)?;
        let keys = keys_of_jwks(&text, KeySet::File)
            .map(|read| read.keys)
            .map_err(|reason| KeyError::Invalid { path: path.display().to_string(), reason })?;
        let added = keys.len();
        self.keys.extend(keys);
        Ok(added)
    }

    /// Verifies `token`; when it names a key id that no key has, fetches the JWKS URLs first
    /// (at most once per 10 s per URL: see `jwks.rs`) and verifies it again.
    pub async fn verify_or_refresh(&self, token: &str) -> Result<Grant, AuthError> {
        match (self.verify(token), &self.remote) {
            (Err(AuthError::UnknownKeyId(kid)), Some(remote)) => {
                if remote.refresh_for_unknown_kid().await {
                    self.verify(token)
                } else {
                    Err(AuthError::UnknownKeyId(kid))
                }
            }
            (result, _) => result,
        }
    }

    /// Verifies `token` and returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        self.verify_by(token, true)
    }

    /// [`Verifier::verify`] with jsonwebtoken's `decode` for every key, HMAC ones too: the
    /// reference the one-pass HMAC check is compared with (tests, fuzzing).
    #[doc(hidden)]
    pub fn verify_by_library(&self, token: &str) -> Result<Grant, AuthError> {
        self.verify_by(token, false)
    }

    /// `shortcut`: HMAC keys check the token in one pass ([`hmac`]).
    fn verify_by(&self, token: &str, shortcut: bool) -> Result<Grant, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let family = header.alg.family();
        let fetched = self.remote.as_ref().map(|r| r.snapshot()).unwrap_or_default();
        let every = || self.keys.iter().chain(fetched.iter().flat_map(|keys| keys.iter()));
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let by_kid: Vec<_> = every().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if by_kid.is_empty() {
                    // Unnamed keys (a raw secret file) still serve tokens that carry a kid.
                    let unnamed: Vec<_> = every().filter(|k| k.kid.is_none() && k.key.family() == family).collect();
                    if unnamed.is_empty() {
                        return Err(AuthError::UnknownKeyId(truncate(kid, 64)));
                    }
                    unnamed
                } else {
                    by_kid.into_iter().filter(|k| k.key.family() == family).collect()
                }
            }
            None => every().filter(|k| k.key.family() == family).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::NoKeyForAlgorithm(format!("{:?}", header.alg)));
        }

        let made;
        let validation = match self.validations.iter().find(|(alg, _)| *alg == header.alg) {
            Some((_, v)) => v,
            None => {
                made = validation(header.alg, self.issuer.as_deref(), self.audience.as_deref());
                &made
            }
        };
        let mut last = AuthError::BadSignature;
        for key in candidates {
            let checked = match &key.hmac {
                Some(hmac) if shortcut => {
                    hmac::verify(token, header.alg, hmac, self.issuer.as_deref(), self.audience.as_deref())
                }
                _ => decode::<Claims>(token, &key.key, validation)
                    .map(|data| data.claims)
                    .map_err(|e| classify(e.kind())),
            };
            match checked {
                Ok(claims) => return grant_from(claims, self.issuer.is_some(), self.audience.is_some()),
                Err(e) => {
                    last = e;
                    if last != AuthError::BadSignature {
                        // The signature was fine; the claims are not. Other keys won't help.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// The rules a token signed with `alg` is checked against.
fn validation(alg: Algorithm, issuer: Option<&str>, audience: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECS;
    // Presence of `sub`, `exp`, `iss` and `aud` is checked in `grant_from`, in a fixed order:
    // the library keeps required claims in a hash set, so which missing one it reported
    // varied between runs (found by fuzzing).
    v.set_required_spec_claims::<&str>(&[]);
    v.validate_nbf = true;
    match audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    v
}

fn grant_from(claims: Claims, issuer_required: bool, audience_required: bool) -> Result<Grant, AuthError> {
    let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if issuer_required && claims.iss.is_none() {
        return Err(AuthError::BadIssuer);
    }
    if audience_required && claims.aud.is_none() {
        return Err(AuthError::BadAudience);
    }
    let user = Name::parse(&sub).map_err(|e| AuthError::BadClaim { claim: "sub", reason: format!("user name {e}") })?;
    let channels = patterns("channels", &claims.channels)?;
    let publish = patterns("publish", &claims.publish)?;
    let presence = match claims.presence {
        Some(raw) if raw.get() != "null" => {
            Some(presence_object(raw).map_err(|reason| AuthError::BadClaim { claim: "presence", reason })?)
        }
        _ => None,
    };
    Ok(Grant { user, channels, publish, presence, expires_at: Some(exp) })
}

/// Checks a presence object (a token's claim, or dev mode's `?presence=`): a JSON object of at
/// most [`MAX_PRESENCE_BYTES`].
pub fn presence_object(raw: Box<RawValue>) -> Result<Box<RawValue>, String> {
    if !raw.get().starts_with('{') {
        return Err("must be a JSON object".into());
    }
    if raw.get().len() > MAX_PRESENCE_BYTES {
        return Err(format!("longer than {MAX_PRESENCE_BYTES} bytes"));
    }
    Ok(raw)
}

fn patterns(claim: &'static str, raw: &[String]) -> Result<Vec<ChannelPattern>, AuthError> {
    if raw.len() > MAX_PATTERNS {
        return Err(AuthError::BadClaim { claim, reason: format!("more than {MAX_PATTERNS} patterns") });
    }
    raw.iter()
        .map(|p| {
            ChannelPattern::parse(p)
                .map_err(|e| AuthError::BadClaim { claim, reason: format!("pattern {:?} {e}", truncate(p, 64)) })
        })
        .collect()
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer => AuthError::BadIssuer,
        K::InvalidAudience => AuthError::BadAudience,
        K::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingClaim("exp"),
        K::MissingRequiredClaim(c) if c == "sub" => AuthError::MissingClaim("sub"),
        K::MissingRequiredClaim(c) if c == "aud" => AuthError::BadAudience,
        K::MissingRequiredClaim(c) if c == "iss" => AuthError::BadIssuer,
        // Key or signature problems: another key may still verify the token.
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat | K::Provider(_) => {
            AuthError::BadSignature
        }
        // Everything else concerns the token itself, e.g. a claim of the wrong type (`"nbf":"x"`,
        // a fuzzing find once reported as a bad signature).
        _ => AuthError::Malformed,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Where a request may carry its token, in order of preference.
pub struct TokenSources<'a> {
    pub authorization: Option<&'a str>,
    pub query: Option<&'a str>,
    pub cookie: Option<&'a str>,
}

/// Picks the token: `Authorization: Bearer`, else `?token=`, else the `herald_token` cookie.
pub fn pick_token<'a>(sources: &TokenSources<'a>) -> Option<&'a str> {
    bearer(sources.authorization)
        .or(sources.query.filter(|t| !t.is_empty()))
        .or(sources.cookie.filter(|t| !t.is_empty()))
}

impl TokenSources<'_> {
    /// Whether [`pick_token`] picks the cookie: the one credential a browser sends whichever
    /// site made the request.
    pub fn picks_cookie(&self) -> bool {
        bearer(self.authorization).is_none()
            && self.query.is_none_or(str::is_empty)
            && self.cookie.is_some_and(|c| !c.is_empty())
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    // `get`, not slicing: the 7th byte may fall inside a multi-byte character.
    if !h.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer ")) {
        return None;
    }
    Some(h[7..].trim()).filter(|t| !t.is_empty())
}

/// Replaces the values of credential-bearing query parameters with `REDACTED`, so URLs can be
/// logged. Works on the raw query string; unknown parameters are kept verbatim.
pub fn redact_query(query: &str) -> String {
    const SECRET_PARAMS: &[&str] = &["token", "key", "access_token", "jwt"];
    query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            // Compare the name as the gateway will decode it: `%74oken=` is a token too.
            let decoded = url::form_urlencoded::parse(name.as_bytes()).next().map(|(k, _)| k).unwrap_or_default();
            if SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(&decoded)) && pair.contains('=') {
                format!("{name}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn verifier() -> Verifier {
        let mut v = Verifier::new(None, None);
        v.add_secret(SECRET, None);
        v
    }

    #[test]
    fn patterns() {
        let p = ChannelPattern::parse("booking:*").unwrap();
        assert!(p.matches("booking:42"));
        assert!(!p.matches("booking:"));
        assert!(!p.matches("bookings:1"));
        let all = ChannelPattern::parse("*").unwrap();
        assert!(all.matches("anything"));
        let org = ChannelPattern::parse("org.42.*").unwrap();
        assert!(org.matches("org.42.dash"));
        assert!(!org.matches("org.420"));
        let exact = ChannelPattern::parse("agent:7").unwrap();
        assert!(exact.matches("agent:7") && !exact.matches("agent:70"));
        assert!(ChannelPattern::parse("a*b").is_err());
        assert!(ChannelPattern::parse("a b*").is_err());
        assert!(ChannelPattern::parse("**").is_err());
    }

    #[test]
    fn hmac_families_and_claims() {
        let v = verifier();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = hs(alg, json!({"sub":"u1","exp":now()+60,"channels":["booking:*"]}));
            let g = v.verify(&t).unwrap();
            assert_eq!(g.user.as_str(), "u1");
            assert!(g.allows_channel("booking:42"));
            assert!(!g.allows_channel("agent:7"));
        }
    }

    #[test]
    fn rejections() {
        let v = verifier();
        let cases: Vec<(String, AuthError)> = vec![
            (hs(Algorithm::HS256, json!({"sub":"u1","exp":now()-600})), AuthError::Expired),
            (hs(Algorithm::HS256, json!({"sub":"u1"})), AuthError::MissingClaim("exp")),
            (hs(Algorithm::HS256, json!({"exp":now()+60})), AuthError::MissingClaim("sub")),
            (hs(Algorithm::HS256, json!({"sub":"a b","exp":now()+60})), AuthError::BadClaim { claim: "sub", reason: "user name contains ' ' at position 1; allowed are ASCII letters, digits and _ - : @ = + ~ with . between segments".into() }),
            ("not.a.jwt".into(), AuthError::Malformed),
            ("".into(), AuthError::Malformed),
            ("a".repeat(MAX_TOKEN_LEN + 1), AuthError::TooLong),
        ];
        for (token, want) in cases {
            assert_eq!(v.verify(&token).unwrap_err(), want);
        }
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub":"u1","exp":now()+60}),
            &EncodingKey::from_secret(b"another-secret-another-secret!!"),
        )
        .unwrap();
        assert_eq!(v.verify(&other).unwrap_err(), AuthError::BadSignature);
        let bad_nbf = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"nbf":"x"}));
        assert_eq!(v.verify(&bad_nbf).unwrap_err(), AuthError::Malformed);
        let bad_pattern = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"channels":["a>*"]}));
        assert!(matches!(v.verify(&bad_pattern).unwrap_err(), AuthError::BadClaim { claim: "channels", .. }));
    }

    #[test]
    fn issuer_and_audience() {
        let mut v = Verifier::new(Some("https://auth.example".into()), Some("herald".into()));
        v.add_secret(SECRET, None);
        let ok = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example","aud":"herald"}));
        assert!(v.verify(&ok).is_ok());
        let bad_iss = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"iss":"evil","aud":"herald"}));
        assert_eq!(v.verify(&bad_iss).unwrap_err(), AuthError::BadIssuer);
        let bad_aud = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example","aud":"x"}));
        assert_eq!(v.verify(&bad_aud).unwrap_err(), AuthError::BadAudience);
        let no_iss = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"aud":"herald"}));
        assert_eq!(v.verify(&no_iss).unwrap_err(), AuthError::BadIssuer);
        let no_aud = hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example"}));
        assert_eq!(v.verify(&no_aud).unwrap_err(), AuthError::BadAudience);
        // Found by fuzzing: with both sub and exp missing, the same error every time.
        let neither = hs(Algorithm::HS256, json!({"iss":"https://auth.example","aud":"herald"}));
        for _ in 0..20 {
            assert_eq!(v.verify(&neither).unwrap_err(), AuthError::MissingClaim("sub"));
        }
    }

    #[test]
    fn token_sources_in_order() {
        let all = TokenSources { authorization: Some("Bearer h"), query: Some("q"), cookie: Some("c") };
        assert_eq!(pick_token(&all), Some("h"));
        let lower = TokenSources { authorization: Some("bearer  h2 "), query: None, cookie: None };
        assert_eq!(pick_token(&lower), Some("h2"));
        let basic = TokenSources { authorization: Some("Basic abc"), query: Some("q"), cookie: Some("c") };
        assert_eq!(pick_token(&basic), Some("q"));
        let cookie = TokenSources { authorization: None, query: Some(""), cookie: Some("c") };
        assert_eq!(pick_token(&cookie), Some("c"));
        assert!(cookie.picks_cookie() && !all.picks_cookie() && !basic.picks_cookie());
        let none = TokenSources { authorization: None, query: None, cookie: None };
        assert_eq!(pick_token(&none), None);
        // Found by fuzzing: a multi-byte character across the scheme's end must not panic.
        let odd = TokenSources { authorization: Some("Bearer\u{e9}"), query: Some("q"), cookie: None };
        assert_eq!(pick_token(&odd), Some("q"));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_query("channels=a,b&token=eyJabc.def&x=1"), "channels=a,b&token=REDACTED&x=1");
        assert_eq!(redact_query("TOKEN=abc"), "TOKEN=REDACTED");
        assert_eq!(redact_query("key=s3cret&tokens=1"), "key=REDACTED&tokens=1");
        // Found by fuzzing: a percent-encoded name is still a credential parameter.
        assert_eq!(redact_query("%74oken=secret&to%6Ben=s2"), "%74oken=REDACTED&to%6Ben=REDACTED");
        assert_eq!(redact_query("t+oken=x"), "t+oken=x");
        assert_eq!(redact_query(""), "");
    }

    #[test]
    fn issuer_and_audience_of_the_wrong_type_are_refused() {
        // Found by fuzz target `claims`: jsonwebtoken skips checking an `iss` / `aud` that is not a
        // string or an array of strings, and any JSON value counted as present.
        let mut v = Verifier::new(Some("https://auth.example".into()), Some("herald".into()));
        v.add_secret(SECRET, None);
        for claims in [
            json!({"sub":"u1","exp":now()+60,"iss":5,"aud":"herald"}),
            json!({"sub":"u1","exp":now()+60,"iss":["https://auth.example", 5],"aud":"herald"}),
            json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example","aud":{"a":1}}),
            json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example","aud":true}),
        ] {
            assert!(v.verify(&hs(Algorithm::HS256, claims.clone())).is_err(), "{claims}");
        }
        let array =
            hs(Algorithm::HS256, json!({"sub":"u1","exp":now()+60,"iss":"https://auth.example","aud":["x","herald"]}));
        assert!(v.verify(&array).is_ok());
    }
}
