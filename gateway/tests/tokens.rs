//! Asymmetric client tokens: RS256, ES256 and EdDSA from PEM files and a JWKS document,
//! several keys at once, selected by `kid`.

use std::path::PathBuf;

use herald_gateway::access::tokens::{AuthError, Verifier};
use herald_testkit::oct_jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

fn sign(alg: Algorithm, kid: Option<&str>, private: &str) -> String {
    let pem = std::fs::read(key(private)).unwrap();
    let enc = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => unreachable!(),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({"sub":"u1","exp":get_current_timestamp()+60,"channels":["booking:*"]});
    encode(&header, &claims, &enc).unwrap()
}

#[test]
fn pem_keys_of_every_family_verify_with_and_without_kid() {
    let mut v = Verifier::new(None, None);
    for f in ["rsa.pem", "ec.pem", "ed.pem"] {
        v.add_pem_file(&key(f)).unwrap();
    }
    for (alg, private, kid) in [
        (Algorithm::RS256, "rsa-private.pem", "rsa"),
        (Algorithm::ES256, "ec-private.pem", "ec"),
        (Algorithm::EdDSA, "ed-private.pem", "ed"),
    ] {
        let g = v.verify(&sign(alg, None, private)).unwrap();
        assert_eq!(g.user.as_str(), "u1");
        assert!(v.verify(&sign(alg, Some(kid), private)).is_ok(), "{alg:?} with kid");
    }
    // A kid that names no key is refused, not tried against everything.
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, Some("retired"), "rsa-private.pem")).unwrap_err(),
        AuthError::UnknownKeyId("retired".into())
    );
}

#[test]
fn jwks_keys_are_selected_by_kid() {
    let mut v = Verifier::new(None, None);
    assert_eq!(v.add_jwks_file(&key("jwks.json")).unwrap(), 2);
    assert!(v.verify(&sign(Algorithm::RS256, Some("rsa-jwks"), "rsa-private.pem")).is_ok());
    assert!(v.verify(&sign(Algorithm::EdDSA, Some("ed-jwks"), "ed-private.pem")).is_ok());
    // The right family but a key id that belongs to another key: refused.
    assert_eq!(
        v.verify(&sign(Algorithm::EdDSA, Some("rsa-jwks"), "ed-private.pem")).unwrap_err(),
        AuthError::NoKeyForAlgorithm("EdDSA".into())
    );
}

#[test]
fn a_token_signed_by_an_unknown_key_is_refused() {
    let mut v = Verifier::new(None, None);
    v.add_pem_file(&key("ed.pem")).unwrap();
    // Only an Ed25519 key is configured: RS256 has no key at all.
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, None, "rsa-private.pem")).unwrap_err(),
        AuthError::NoKeyForAlgorithm("RS256".into())
    );
    // An HMAC token can't be verified with a public key (no algorithm confusion).
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"u1","exp":get_current_timestamp()+60}),
        &EncodingKey::from_secret(&std::fs::read(key("ed.pem")).unwrap()),
    )
    .unwrap();
    assert_eq!(v.verify(&hs).unwrap_err(), AuthError::NoKeyForAlgorithm("HS256".into()));
}

#[test]
fn key_files_that_are_not_keys_are_reported() {
    let mut v = Verifier::new(None, None);
    let err = v.add_pem_file(&key("README.md")).unwrap_err().to_string();
    assert!(err.contains("not a PEM public key"), "{err}");
    let err = v.add_jwks_file(&key("rsa.pem")).unwrap_err().to_string();
    assert!(err.contains("not a JWKS document"), "{err}");
}

/// HMAC secrets of a JWKS document (`oct` keys) take the one-pass check, selected by `kid` as
/// other keys are, and decide each token as jsonwebtoken's `decode` does.
#[test]
fn oct_keys_of_a_key_set_are_checked_in_one_pass_as_the_library_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let old: &[u8] = b"old-secret-old-secret-old-secret";
    let new: &[u8] = b"new-secret-new-secret-new-secret";
    std::fs::write(&path, format!(r#"{{"keys":[{},{}]}}"#, oct_jwk("old", old), oct_jwk("new", new))).unwrap();
    let mut v = Verifier::new(None, None);
    assert_eq!(v.add_jwks_file(&path).unwrap(), 2);
    let hs = |kid: Option<&str>, secret: &[u8], exp: u64| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        let claims = json!({"sub":"u1","exp":exp,"channels":["booking:*"]});
        encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let now = get_current_timestamp();
    let cases = [
        (hs(Some("new"), new, now + 60), Ok("u1")),
        (hs(Some("old"), old, now + 60), Ok("u1")),
        (hs(Some("old"), new, now + 60), Err(AuthError::BadSignature)),
        (hs(Some("new"), new, now - 600), Err(AuthError::Expired)),
        (hs(Some("gone"), new, now + 60), Err(AuthError::UnknownKeyId("gone".into()))),
        // No kid: every HMAC key is tried in turn.
        (hs(None, new, now + 60), Ok("u1")),
    ];
    for (token, want) in cases {
        let fast = v.verify(&token).map(|g| g.user);
        assert_eq!(fast.as_ref().map(|user| user.as_str()).map_err(Clone::clone), want);
        assert_eq!(fast, v.verify_by_library(&token).map(|g| g.user));
    }
}

/// The measurement docs/benchmarks.md quotes runs, and both paths accept the load generator's
/// tokens.
#[test]
fn the_verify_cost_example_measures_both_paths() {
    let bin = herald_testkit::bins::workspace_example("herald-gateway", "verify_cost");
    let out = std::process::Command::new(bin).args(["--rounds", "1", "--tokens", "20"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("sub, exp, channels") && text.contains("and iss, aud checked"), "{text}");
}
