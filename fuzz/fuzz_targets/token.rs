//! Raw client tokens and where they come from: `pick_token` over the Authorization header, the
//! `?token=` value and the `herald_token` cookie, then `Verifier::verify` on whatever it picks.
//!
//! Input: `authorization[\0query-token[\0cookie]]`; each part is also verified on its own.
#![no_main]

use herald_gateway::access::tokens::{TokenSources, pick_token};
use herald_gateway_fuzz::{check_grant, check_same_as_library, fields, plain_verifier, strict_verifier, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<String> = fields(data, 3).into_iter().map(text).collect();
    let sources = TokenSources {
        authorization: parts.first().map(String::as_str),
        query: parts.get(1).map(String::as_str),
        cookie: parts.get(2).map(String::as_str),
    };

    let picked = pick_token(&sources);
    if let Some(t) = picked {
        assert!(!t.is_empty(), "picked an empty token");
        let within = |s: Option<&str>| s.is_some_and(|s| s.as_bytes().as_ptr_range().contains(&t.as_ptr()));
        assert!(
            within(sources.authorization) || within(sources.query) || within(sources.cookie),
            "picked token is not part of any source"
        );
    }
    // Oracle for the Authorization header, written on bytes.
    if let Some(h) = sources.authorization {
        let h = h.trim();
        let b = h.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            let rest = h[7..].trim();
            if !rest.is_empty() {
                assert_eq!(picked, Some(rest), "bearer token not preferred");
            }
        }
    }

    for token in parts.iter().map(String::as_str).chain(picked) {
        for verifier in [plain_verifier(), strict_verifier()] {
            let first = verifier.verify(token);
            check_same_as_library(verifier, token, &first);
            if let Ok(grant) = &first {
                check_grant(grant);
            }
            // The same token gets the same answer every time (several tries: a random order
            // shows up as a difference in at least one of them with high probability).
            for _ in 0..3 {
                let again = verifier.verify(token);
                assert_eq!(first.as_ref().err(), again.as_ref().err(), "verify is not deterministic");
            }
        }
    }
});
