//! The credentials a test gateway is started with: the client-token secret, a publisher key
//! and a dashboard key; client tokens signed with that secret; and the files that hand them to
//! a gateway (and to the load tester, which signs its own tokens).

use std::path::Path;

/// The HS256 secret client tokens are signed with.
pub const SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
/// The publisher key (`POST /v1/publish`).
pub const PUBLISH_KEY: &str = "test-publisher-key-0123456789";
/// The dashboard key (`/dashboard`).
pub const DASHBOARD_KEY: &str = "test-dashboard-key-0123456789";

/// A signed HS256 client token for `user` on `channels`, expiring `exp_in_secs` from now
/// (negative: already expired).
pub fn token(user: &str, channels: &[&str], exp_in_secs: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_in_secs;
    token_with(serde_json::json!({"sub": user, "exp": exp, "channels": channels}))
}

/// A signed HS256 client token with these claims (`exp` ten minutes from now when missing).
pub fn token_with(mut claims: serde_json::Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = serde_json::json!(jsonwebtoken::get_current_timestamp() + 600);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A JWK holding the HMAC secret `secret` (`kty` `oct`) under key id `kid`, as a key set lists it.
pub fn oct_jwk(kid: &str, secret: &[u8]) -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    serde_json::json!({ "kty": "oct", "kid": kid, "k": k }).to_string()
}

/// [`SECRET`], [`PUBLISH_KEY`] and [`DASHBOARD_KEY`] written to files in a directory of their
/// own, as `serve` reads them; the paths as command-line arguments.
pub struct KeyFiles {
    dir: tempfile::TempDir,
}

impl KeyFiles {
    pub fn new() -> KeyFiles {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &[u8]| std::fs::write(dir.path().join(name), text).unwrap();
        write("jwt.secret", &[SECRET, b"\n"].concat());
        write("publish.keys", format!("# test\ntests:{PUBLISH_KEY}\n").as_bytes());
        write("dashboard.keys", format!("ops:{DASHBOARD_KEY}\n").as_bytes());
        KeyFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// For `--jwt-secret-file`.
    pub fn jwt_secret(&self) -> String {
        self.path("jwt.secret")
    }

    /// For `--publish-keys-file`.
    pub fn publish_keys(&self) -> String {
        self.path("publish.keys")
    }

    /// For `--dashboard-keys-file`.
    pub fn dashboard_keys(&self) -> String {
        self.path("dashboard.keys")
    }

    /// The directory they are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for KeyFiles {
    fn default() -> Self {
        Self::new()
    }
}
