//! Token claims (and headers) behind a valid signature: the fuzzer's bytes are the JWT payload,
//! signed with the verifier's secret, so every input reaches the claims parser and the checks
//! on `sub`, `exp`, `nbf`, `iss`, `aud` and `channels`; each verdict must be the one
//! jsonwebtoken's `decode` gives (the gateway checks HMAC-signed tokens in one pass of its own).
//!
//! Input: `payload` (header `{"alg":"HS256","typ":"JWT"}`), or `header\0payload`.
#![no_main]

use herald_gateway::access::tokens::AuthError;
use herald_gateway_fuzz::{
    AUDIENCE, ISSUER, check_grant, check_same_as_library, fields, plain_verifier, sign, strict_verifier,
};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

/// The registered claims the checks below read, as a lenient reader sees them: other claims are
/// skipped unchecked (as the verifier's own parser does), so only these need to be valid JSON.
#[derive(Deserialize)]
struct Subject {
    sub: Option<Value>,
}

#[derive(Deserialize)]
struct Registered {
    iss: Option<Value>,
    aud: Option<Value>,
}

const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 2);
    let (header, payload) = match parts.as_slice() {
        [payload] => (HEADER, *payload),
        [header, payload, ..] => (*header, *payload),
        [] => return,
    };
    let token = sign(header, payload);
    let plain = plain_verifier().verify(&token);
    check_same_as_library(plain_verifier(), &token, &plain);
    for _ in 0..3 {
        assert_eq!(plain.as_ref().err(), plain_verifier().verify(&token).as_ref().err(), "verify is not deterministic");
    }
    match &plain {
        Ok(grant) => {
            check_grant(grant);
            let claims: Subject = serde_json::from_slice(payload).expect("accepted claims without a readable sub");
            assert_eq!(claims.sub.as_ref().and_then(Value::as_str), Some(grant.user.as_str()), "sub mismatch");
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

    let strict = strict_verifier().verify(&token);
    check_same_as_library(strict_verifier(), &token, &strict);
    if let Ok(grant) = strict {
        check_grant(&grant);
        let claims: Registered = serde_json::from_slice(payload).expect("accepted claims without readable iss / aud");
        // A string, or (as jsonwebtoken allows) an array that contains the expected value.
        let names = |claim: &Option<Value>, want: &str| match claim {
            Some(Value::String(v)) => v == want,
            Some(Value::Array(vs)) => vs.iter().any(|v| v.as_str() == Some(want)),
            _ => false,
        };
        assert!(names(&claims.iss, ISSUER), "issuer not enforced: iss {:?}", claims.iss);
        assert!(names(&claims.aud, AUDIENCE), "audience not enforced: aud {:?}", claims.aud);
    }
});
