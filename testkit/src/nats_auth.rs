//! A nats-server that admits only holders of a credentials file, as a NATS run with
//! decentralized authentication does: an operator, its system account, one account with
//! JetStream, and one user
//! whose JWT and seed make the `.creds` file that `--nats-creds` names.
//!
//! The JWTs are made here, with the `nkeys` keys async-nats uses to sign a server's nonce: each
//! is `header.claims.signature`, the claims signed with the issuer's Ed25519 key. The server
//! holds the operator's JWT and, preloaded, the account's; a client proves it holds the user's
//! seed by signing the nonce of the server's `INFO`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

use crate::nats::{Ports, spawn};
use crate::process::Process;

/// A nats-server with JetStream that refuses every connection without the user's credentials.
pub struct NatsWithCredentials {
    _server: Process,
    pub port: u16,
    creds: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsWithCredentials {
    pub fn start() -> NatsWithCredentials {
        let dir = tempfile::tempdir().unwrap();
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let operator_jwt = jwt(
            &operator,
            &operator,
            "herald-test",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        // JetStream needs the system account.
        let system_jwt = jwt(&operator, &system, "SYS", json!({"type": "account", "version": 2}));
        let account_jwt = jwt(
            &operator,
            &account,
            "herald",
            json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                },
            }),
        );
        let user_jwt = jwt(
            &account,
            &user,
            "gateway",
            json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
        );
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {sys}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
                account.public_key(),
                sys = system.public_key(),
            ),
        )
        .unwrap();
        let creds = dir.path().join("user.creds");
        std::fs::write(&creds, creds_file(&user_jwt, &user.seed().unwrap())).unwrap();
        let store = dir.path().join("store").display().to_string();
        let args =
            ["-c", &conf.display().to_string(), "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", &store].map(String::from);
        let (server, Ports { client, .. }) = spawn(&args, dir.path());
        NatsWithCredentials { _server: server, port: client, creds, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The user's `.creds` file: its JWT and its seed.
    pub fn creds_file(&self) -> &Path {
        &self.creds
    }
}

/// A NATS JWT (version 2): `subject`'s claims, signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &KeyPair, name: &str, nats: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    static ISSUED: AtomicU64 = AtomicU64::new(0);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Unique per JWT (nats-server reads it but checks nothing of it; `nsc` puts a hash here).
    let jti = format!("{iat:X}-{:X}-{}", std::process::id(), ISSUED.fetch_add(1, Ordering::Relaxed));
    let claims = json!({
        "jti": jti,
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject.public_key(),
        "nats": nats,
    });
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A `.creds` file as `nsc` writes one.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}
