//! Token claims (and headers) behind a valid signature: the fuzzer's bytes are the JWT payload,
//! signed with the verifier's secret, so every input reaches the claims parser and the checks
//! on `sub`, `exp`, `nbf`, `iss`, `aud` and `channels`.
//!
//! Input: `payload` (header `{"alg":"HS256","typ":"JWT"}`), or `header\0payload`.
#![no_main]

use herald_gateway::auth::AuthError;
use herald_gateway_fuzz::{AUDIENCE, ISSUER, check_grant, fields, plain_verifier, sign, strict_verifier};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 2);
    let (header, payload) = match parts.as_slice() {
        [payload] => (HEADER, *payload),
        [header, payload, ..] => (*header, *payload),
        [] => return,
    };
    let token = sign(header, payload);
    let claims: Option<Value> = serde_json::from_slice(payload).ok();

    let plain = plain_verifier().verify(&token);
    match &plain {
        Ok(grant) => {
            check_grant(grant);
            let claims = claims.as_ref().expect("a token whose claims are not JSON was accepted");
            assert_eq!(claims.get("sub").and_then(Value::as_str), Some(grant.user.as_str()), "sub mismatch");
        }
        Err(e) => assert!(!matches!(e, AuthError::TooLong | AuthError::Missing), "{e:?} for a short token"),
    }
    if header == HEADER {
        // A correctly signed HS256 token is never refused for its signature or algorithm.
        if let Err(e) = &plain {
            assert!(
                !matches!(e, AuthError::BadSignature | AuthError::NoKeyForAlgorithm(_) | AuthError::UnknownKeyId(_)),
                "correctly signed token refused with {e:?}"
            );
        }
    }

    if let Ok(grant) = strict_verifier().verify(&token) {
        check_grant(&grant);
        let claims = claims.as_ref().expect("a token whose claims are not JSON was accepted");
        assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER), "issuer not enforced");
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
            _ => false,
        };
        assert!(aud_ok, "audience not enforced: {:?}", claims.get("aud"));
    }
});
