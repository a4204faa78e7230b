//! Tokens signed with an HMAC secret (HS256, HS384, HS512), checked in one pass.
//!
//! jsonwebtoken's `decode` decodes a token's header twice and its claims twice, and keys a new
//! HMAC for every token, hashing the secret again each time: together about half of what
//! verifying a token cost each new stream (docs/benchmarks.md, "Opening a connection beside its
//! floor"). For HMAC keys the verifier takes this path instead: each part is decoded once, and
//! the HMAC starts from the secret keyed once, when the key was loaded.
//!
//! It makes the decisions `decode` makes with the verifier's `Validation`, in the same order, so
//! either path refuses a token for the same reason: the signature first (a part that is not
//! base64url is malformed, a signature that does not match is bad), then the claims (not JSON
//! of the expected shape: malformed), then `exp` (with the leeway), `nbf`, `iss` and `aud`.
//! What both then check is [`super::grant_from`]'s. The tests below and the `claims` fuzz
//! target compare the two paths token by token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use super::{AuthError, Claims, LEEWAY_SECS};
use crate::access::keys::HmacKey;

/// `token`'s claims, if it is signed with `key` under `alg` (the algorithm its header names) and
/// its `exp`, `nbf`, `iss` and `aud` pass: what jsonwebtoken's `decode` returns for it, or why
/// it refuses it.
pub(super) fn verify(
    token: &str,
    alg: Algorithm,
    key: &HmacKey,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<Claims, AuthError> {
    // Split as `decode` splits: the signature after the last dot, the claims before it.
    let (message, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (_, payload) = message.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| AuthError::Malformed)?;
    if !key.signed(alg, message.as_bytes(), &signature) {
        return Err(AuthError::BadSignature);
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::Malformed)?;
    // Claims are an object. serde reads a struct from an array too (its fields in order), which
    // `decode` always refuses: its second reading of the claims has other fields in another order.
    if payload.iter().find(|b| !b" \t\n\r".contains(b)) != Some(&b'{') {
        return Err(AuthError::Malformed);
    }
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
    let now = jsonwebtoken::get_current_timestamp();
    if claims.exp.is_some_and(|exp| exp < now.saturating_sub(LEEWAY_SECS)) {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(AuthError::NotYetValid);
    }
    if let (Some(issuer), Some(iss)) = (issuer, &claims.iss)
        && !iss.names(issuer)
    {
        return Err(AuthError::BadIssuer);
    }
    if let (Some(audience), Some(aud)) = (audience, &claims.aud)
        && !aud.names(audience)
    {
        return Err(AuthError::BadAudience);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    use sha2::{Sha256, Sha384, Sha512};

    use crate::access::tokens::{Grant, Verifier};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const ISSUER: &str = "https://auth.example";
    const AUDIENCE: &str = "herald";

    /// A token of `header` and `claims` as written (duplicates and odd values kept), signed with
    /// `secret` under the header's `alg`.
    fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let signature = if header.contains("HS384") {
            tag::<Hmac<Sha384>>(secret, &message)
        } else if header.contains("HS512") {
            tag::<Hmac<Sha512>>(secret, &message)
        } else {
            tag::<Hmac<Sha256>>(secret, &message)
        };
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn tag<M: Mac + hmac::digest::KeyInit>(secret: &[u8], message: &str) -> Vec<u8> {
        <M as Mac>::new_from_slice(secret).unwrap().chain_update(message).finalize().into_bytes().to_vec()
    }

    fn verifiers() -> Vec<(&'static str, Verifier)> {
        let mut plain = Verifier::new(None, None);
        plain.add_secret(SECRET, None);
        let mut strict = Verifier::new(Some(ISSUER.into()), Some(AUDIENCE.into()));
        strict.add_secret(SECRET, Some("k1".into()));
        // Two secrets: a token signed with the second is tried against the first, refused for
        // its signature, then accepted.
        let mut two = Verifier::new(None, Some(AUDIENCE.into()));
        two.add_secret(b"another-secret-another-secret!!!", None);
        two.add_secret(SECRET, None);
        vec![("plain", plain), ("strict", strict), ("two secrets", two)]
    }

    /// Every token decided the same way by the one-pass check and by jsonwebtoken's `decode`.
    fn agree(tokens: &[String]) -> (usize, usize) {
        let (mut accepted, mut refused) = (0, 0);
        for (name, verifier) in verifiers() {
            for token in tokens {
                // Both within one second of the clock: rows near `exp`'s and `nbf`'s limits
                // may otherwise be decided on either side of a tick.
                let (fast, library) = loop {
                    let second = jsonwebtoken::get_current_timestamp();
                    let pair = (verifier.verify(token), verifier.verify_by_library(token));
                    if jsonwebtoken::get_current_timestamp() == second {
                        break pair;
                    }
                };
                match (&fast, &library) {
                    (Ok(a), Ok(b)) => {
                        let seen = |g: &Grant| {
                            let presence = g.presence.as_ref().map(|p| p.get().to_owned());
                            (g.user.clone(), g.channels.clone(), g.publish.clone(), g.expires_at, presence)
                        };
                        assert_eq!(seen(a), seen(b), "{name}: {token}");
                        accepted += 1;
                    }
                    (Err(a), Err(b)) => {
                        assert_eq!(a, b, "{name}: {token}");
                        refused += 1;
                    }
                    _ => panic!("{name}: one-pass {fast:?}, library {library:?} for {token}"),
                }
            }
        }
        (accepted, refused)
    }

    #[test]
    fn the_one_pass_check_decides_every_claim_as_jsonwebtoken_does() {
        let now = jsonwebtoken::get_current_timestamp();
        let exps = [
            None,
            Some("null".to_string()),
            Some(format!("{}", now + 60)),
            Some(format!("{}", now - 600)),
            Some(format!("{}", now - 3)),
            Some(format!("{}.5", now + 60)),
            Some("\"soon\"".into()),
            Some("-1".into()),
            Some("1e20".into()),
            Some("true".into()),
        ];
        let nbfs = [
            None,
            Some("null".to_string()),
            Some(format!("{}", now - 60)),
            Some(format!("{}", now + 600)),
            Some(format!("{}", now + 3)),
            Some(format!("{}.4", now + 5)),
            Some(format!("{}.6", now + 5)),
            Some("\"x\"".into()),
            Some("-1".into()),
            Some("-0.0".into()),
            Some("1e30".into()),
            Some("[1]".into()),
        ];
        let names = |good: &str| {
            [
                None,
                Some("null".to_string()),
                Some(format!("\"{good}\"")),
                Some("\"evil\"".into()),
                Some(format!("[\"{good}\"]")),
                Some(format!("[\"x\",\"{good}\"]")),
                Some("[]".into()),
                Some("5".into()),
                Some(format!("[\"{good}\",5]")),
                Some("{}".into()),
            ]
        };
        let mut tokens = Vec::new();
        for exp in &exps {
            for nbf in &nbfs {
                for iss in &names(ISSUER) {
                    for aud in &names(AUDIENCE) {
                        let mut fields = vec![r#""sub":"u1""#.to_string()];
                        for (claim, value) in [("exp", exp), ("nbf", nbf), ("iss", iss), ("aud", aud)] {
                            if let Some(value) = value {
                                fields.push(format!("\"{claim}\":{value}"));
                            }
                        }
                        tokens.push(sign(
                            r#"{"alg":"HS256","typ":"JWT"}"#,
                            &format!("{{{}}}", fields.join(",")),
                            SECRET,
                        ));
                    }
                }
            }
        }
        let (accepted, refused) = agree(&tokens);
        assert!(accepted > 100 && refused > 1000, "{accepted} accepted, {refused} refused");
    }

    #[test]
    fn the_one_pass_check_decides_every_malformed_or_mis_signed_token_as_jsonwebtoken_does() {
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let good = format!(r#"{{"sub":"u1","exp":{exp},"iss":"{ISSUER}","aud":"{AUDIENCE}","channels":["a:*"]}}"#);
        let mut tokens = Vec::new();
        for header in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"HS512","kid":"k1"}"#,
            r#"{"alg":"HS256","kid":"nobody"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"none"}"#,
            r#"{"typ":"JWT"}"#,
        ] {
            for claims in [
                good.as_str(),
                r#"{"exp":1}"#,
                &format!(r#"{{"sub":"u1","sub":"u2","exp":{exp}}}"#),
                &format!(r#"{{"sub":"u1","exp":{exp},"nbf":1,"nbf":2}}"#),
                &format!(r#"{{"sub":"u1","exp":{exp},"aud":"{AUDIENCE}","aud":"x"}}"#),
                &format!(r#"{{"sub":"a b","exp":{exp}}}"#),
                &format!(r#"{{"sub":5,"exp":{exp}}}"#),
                &format!(r#"{{"sub":"u1","exp":{exp},"channels":["a>*"]}}"#),
                &format!(r#"{{"sub":"u1","exp":{exp},"presence":{{"name":"A"}}}}"#),
                &format!(r#"{{"sub":"u1","exp":{exp},"presence":"x"}}"#),
                r#"{"sub":"u1","exp":1.5}"#,
                // Arrays: serde would read one as the struct's fields in order; `decode` never
                // accepts one (found by review: accepted by the first version of the one pass).
                &format!(r#"["u1",{exp}]"#),
                &format!(r#"["u1",{exp},0,"{ISSUER}","{AUDIENCE}",["a:*"]]"#),
                &format!(r#" [null,{exp}]"#),
                r#"["u1"]"#,
                "[]",
                "null",
                "{",
                "",
            ] {
                let token = sign(header, claims, SECRET);
                let (message, signature) = token.rsplit_once('.').unwrap();
                tokens.push(token.clone());
                tokens.push(sign(header, claims, b"wrong-secret-wrong-secret-wrong!"));
                tokens.push(format!("{message}.{signature}="));
                tokens.push(format!("{message}.!{signature}"));
                tokens.push(format!("{message}.{}", &signature[1..]));
                tokens.push(format!("{message}."));
                tokens.push(message.to_string());
                tokens.push(format!("x.{token}"));
            }
        }
        tokens.extend(["".into(), ".".into(), "..".into(), "a.b.c".into(), "not.a.jwt".into()]);
        let (accepted, refused) = agree(&tokens);
        assert!(accepted > 0 && refused > 1000, "{accepted} accepted, {refused} refused");
    }
}
