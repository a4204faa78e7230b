//! Client-token keys from JWKS URLs (`--jwks-url`, an identity provider's
//! `/.well-known/jwks.json`), so that a provider's key rotation needs no restart.
//!
//! Each URL is fetched at start, and again every `--jwks-refresh-secs`. A token that names a key
//! id no loaded key has sends every URL to be fetched at once, then is verified again, so a
//! token signed with a brand-new key is accepted on its first request; such fetches happen at
//! most once per [`ON_DEMAND_EVERY`] per URL, however many tokens name unknown ids (a client
//! cannot make the gateway hammer the provider). A failed fetch keeps the keys of the last good
//! one, and is logged and counted (`herald_jwks_fetches_total{result="error"}`). Until every URL
//! has been fetched once, `/readyz` answers 503: a gateway that would refuse every token signed
//! by the provider takes no traffic.
//!
//! Fetches run on a thread of their own ("herald-keys"), outside the HTTP workers and the hub.
//!
//! The keys of a JWKS document, a file's or a URL's, are read here too ([`keys_of_jwks`]). A URL's
//! document is public: the shared secrets in it are skipped ([`KeySet::Published`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use parking_lot::RwLock;

use crate::access::keys::VerifyKey;
use crate::ops::metrics::Metrics;

/// Least time between two fetches of one URL for tokens naming unknown key ids.
pub const ON_DEMAND_EVERY: Duration = Duration::from_secs(10);
/// Longest one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest key set accepted (a provider's holds a few keys: a few KB).
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Retry delays after a failed fetch: from the first, doubling up to the last (and never beyond
/// the refresh period).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Every JWKS URL of a gateway and the keys last fetched from each.
pub struct RemoteKeys {
    sources: Vec<Source>,
    client: reqwest::Client,
    refresh_every: Duration,
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    metrics: std::sync::OnceLock<Arc<Metrics>>,
}

struct Source {
    url: reqwest::Url,
    /// The URL as logs show it: no user info, query or fragment.
    shown: String,
    keys: RwLock<Arc<Vec<VerifyKey>>>,
    loaded: AtomicBool,
    /// When this URL's last fetch for an unknown key id started, then when it ended. Held
    /// across that fetch, so that the tokens arriving meanwhile wait for its keys instead of
    /// fetching again.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
    /// The key ids of the shared secrets its last good document held (and this gateway
    /// skipped): warned of when they change, not at every fetch.
    secrets_skipped: parking_lot::Mutex<Vec<String>>,
}

impl RemoteKeys {
    /// Checks the URLs: `https`, or `http` to a loopback address (or anywhere with
    /// `allow_http`: keys fetched in the clear can be swapped by anyone on the path).
    pub fn new(urls: &[String], refresh_every: Duration, allow_http: bool) -> Result<RemoteKeys, String> {
        install_crypto();
        let mut sources = Vec::with_capacity(urls.len());
        for raw in urls {
            // Not named whole: user info or a query may hold a credential, as in every log line.
            let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("--jwks-url {}: {e}", shown_raw(raw)))?;
            let shown = shown(&url);
            match url.scheme() {
                "https" => {}
                "http" if allow_http || is_loopback(&url) => {}
                "http" => {
                    return Err(format!(
                        "--jwks-url {shown}: plain http lets anyone on the path swap the keys; use https \
                         (or --jwks-allow-http for a provider reachable only inside the cluster)"
                    ));
                }
                other => return Err(format!("--jwks-url {shown}: scheme {other:?} is not http(s)")),
            }
            sources.push(Source {
                url,
                shown,
                keys: RwLock::new(Arc::new(Vec::new())),
                loaded: AtomicBool::new(false),
                on_demand: tokio::sync::Mutex::new(None),
                secrets_skipped: Default::default(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(crate::USER_AGENT)
            .build()
            .map_err(|e| format!("--jwks-url: cannot build the HTTP client: {e}"))?;
        Ok(RemoteKeys {
            sources,
            client,
            refresh_every: refresh_every.max(Duration::from_secs(1)),
            runtime: Default::default(),
            metrics: Default::default(),
        })
    }

    /// Starts fetching, on a thread of its own.
    pub fn start(self: &Arc<Self>, metrics: Arc<Metrics>) -> std::io::Result<()> {
        let _ = self.metrics.set(metrics);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("herald-keys").build()?;
        let _ = self.runtime.set(runtime.handle().clone());
        for index in 0..self.sources.len() {
            let this = self.clone();
            runtime.spawn(async move { this.keep_fresh(index).await });
        }
        std::thread::Builder::new()
            .name("herald-keys".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(())
    }

    /// Whether every URL has been fetched at least once.
    pub fn loaded(&self) -> bool {
        self.sources.iter().all(|s| s.loaded.load(Ordering::Acquire))
    }

    /// The keys of every URL, as last fetched.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Vec<VerifyKey>>> {
        self.sources.iter().map(|s| s.keys.read().clone()).collect()
    }

    /// Fetches every URL that was not fetched for an unknown key id within [`ON_DEMAND_EVERY`],
    /// or waits for the fetch under way. Answers whether any URL was fetched meanwhile (the
    /// token is then worth verifying again).
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) -> bool {
        let Some(runtime) = self.runtime.get() else { return false };
        let mut fetched = false;
        for (index, source) in self.sources.iter().enumerate() {
            let asked = Instant::now();
            let mut last = source.on_demand.lock().await;
            if last.is_some_and(|t| t.elapsed() < ON_DEMAND_EVERY) {
                // Fetched lately, maybe while this caller waited for the lock.
                fetched |= last.is_some_and(|t| t >= asked);
                continue;
            }
            // Stamped as the fetch starts, so that one whose caller goes away (its future
            // dropped mid-fetch) still counts against the limit; and again as it ends, so that
            // every caller that waited for it asked before the stamp, and verifies its token
            // again with the keys it brought.
            *last = Some(Instant::now());
            let this = self.clone();
            // On the keys' runtime: the HTTP client's connections live there.
            fetched |= runtime.spawn(async move { this.fetch(index).await }).await.unwrap_or(false);
            *last = Some(Instant::now());
        }
        fetched
    }

    async fn keep_fresh(self: Arc<Self>, index: usize) {
        let mut retry = RETRY_FIRST;
        loop {
            let wait = if self.fetch(index).await {
                retry = RETRY_FIRST;
                self.refresh_every
            } else {
                let wait = retry.min(self.refresh_every);
                retry = (retry * 2).min(RETRY_MAX);
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetches URL `index` and, on success, replaces its keys. Answers whether it succeeded.
    async fn fetch(&self, index: usize) -> bool {
        let source = &self.sources[index];
        let result = fetch_document(&self.client, &source.url)
            .await
            .and_then(|body| keys_of_jwks(&body, KeySet::Published).map_err(|e| format!("not a usable key set: {e}")));
        let ok = result.is_ok();
        if let Some(metrics) = self.metrics.get() {
            metrics.jwks_fetched(ok);
        }
        match result {
            Ok(Keys { keys, secrets_skipped }) => {
                let mut skipped = source.secrets_skipped.lock();
                if !secrets_skipped.is_empty() && *skipped != secrets_skipped {
                    // Named by key id only: logs never carry keys, published or not.
                    tracing::warn!(
                        url = %source.shown,
                        kids = ?secrets_skipped,
                        "skipping the shared secrets (kty \"oct\") of a published key set: anyone who can read it \
                         could sign tokens with them; give HMAC secrets to the gateway with --jwt-secret-file or --jwks-file"
                    );
                }
                *skipped = secrets_skipped;
                drop(skipped);
                let kids = |keys: &[VerifyKey]| {
                    let mut kids: Vec<String> = keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect();
                    kids.sort();
                    kids
                };
                let changed = kids(&source.keys.read()) != kids(&keys);
                let count = keys.len();
                *source.keys.write() = Arc::new(keys);
                let first = !source.loaded.swap(true, Ordering::AcqRel);
                if first || changed {
                    tracing::info!(url = %source.shown, keys = count, "client-token keys fetched");
                }
                true
            }
            Err(e) => {
                let kept = source.keys.read().len();
                tracing::warn!(url = %source.shown, error = %e, kept, "cannot fetch client-token keys; keeping the last ones");
                false
            }
        }
    }
}

async fn fetch_document(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json, application/jwk-set+json")
        .send()
        .await
        .map_err(describe)?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
        return Err(format!("the key set is larger than {MAX_DOCUMENT} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(format!("the key set is larger than {MAX_DOCUMENT} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error without the URL (which the log line names already, redacted).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn shown(url: &reqwest::Url) -> String {
    if !url.has_host() {
        // Not a URL of a server (`user:pw@host`): its path may be anything.
        return format!("{}:…", url.scheme());
    }
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

/// A URL that does not parse, as errors show it: its scheme and host only (quoted, so that
/// stray spaces show). User info ends at the last `@`, since a password that makes the URL
/// unparsable may well hold a `/`, `?` or `#`.
fn shown_raw(raw: &str) -> String {
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let shown = if scheme.is_empty() { host.to_owned() } else { format!("{scheme}://{host}") };
    format!("{shown:?}")
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Makes ring rustls's process-wide crypto (the HTTP clients of the key fetcher and the trace
/// exporter build their TLS on it). Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where a JWKS document comes from, which decides what it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySet {
    /// The operator's own file (`--jwks-file`): every key must be usable, HMAC secrets included.
    File,
    /// An identity provider's document, fetched from `--jwks-url`: a public document. Keys that
    /// cannot verify tokens here (encryption keys, unsupported curves) are skipped rather than
    /// refused, and so is every shared secret (`kty` `oct`): published there, it would let
    /// anyone who reads the document sign tokens for any user. At least one key must remain.
    Published,
}

/// What a JWKS document yields.
pub(crate) struct Keys {
    pub keys: Vec<VerifyKey>,
    /// The key ids of the shared secrets a [`KeySet::Published`] document held, skipped.
    pub secrets_skipped: Vec<String>,
}

/// The keys of a JWKS document from `origin`.
pub(crate) fn keys_of_jwks(text: &[u8], origin: KeySet) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    let mut secrets = Vec::new();
    for jwk in &set.keys {
        if origin == KeySet::Published && matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            secrets.push(jwk.common.key_id.clone().unwrap_or_default());
            continue;
        }
        let usable = || -> Result<VerifyKey, String> {
            if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm
                && !matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384)
            {
                return Err(format!("unsupported curve {:?}", p.curve));
            }
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                return Err(format!("key {:?} is for encryption", jwk.common.key_id));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
            Ok(VerifyKey::new(jwk.common.key_id.clone(), key))
        };
        match usable() {
            Ok(key) => keys.push(key),
            Err(e) if origin == KeySet::Published => tracing::debug!(error = %e, "skipping a key of the key set"),
            Err(e) => return Err(e),
        }
    }
    if keys.is_empty() {
        let skipped = match secrets.len() {
            0 => String::new(),
            n => format!(" ({n} shared secret(s) skipped: a published key set may hold public keys only)"),
        };
        return Err(format!("the key set has no key to verify tokens with{skipped}"));
    }
    Ok(Keys { keys, secrets_skipped: secrets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback_or_allowed() {
        let every = Duration::from_secs(300);
        for ok in [
            "https://id.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]/k",
        ] {
            assert!(RemoteKeys::new(&[ok.into()], every, false).is_ok(), "{ok}");
        }
        let err = RemoteKeys::new(&["http://keycloak.auth.svc/certs".into()], every, false).err().unwrap();
        assert!(err.contains("--jwks-allow-http"), "{err}");
        assert!(RemoteKeys::new(&["http://keycloak.auth.svc/certs".into()], every, true).is_ok());
        assert!(RemoteKeys::new(&["ftp://x/keys".into()], every, true).is_err());
        assert!(RemoteKeys::new(&["not a url".into()], every, true).is_err());
    }

    /// "logs name a JWKS URL without its user info or query" (docs/security.md): also when the
    /// URL is refused at start because it does not parse (here: a port out of range; before, it
    /// was echoed whole, credentials and query included, into the start-up error).
    #[test]
    fn a_refused_url_is_reported_without_its_credentials() {
        let raw = "https://user:s3cret@id.example:99999/jwks?token=abc";
        let err = RemoteKeys::new(&[raw.into()], Duration::from_secs(300), false).err().unwrap();
        assert!(!err.contains("s3cret") && !err.contains("token=abc"), "{err}");
        assert!(err.contains("\"https://id.example:99999\""), "{err}");
        let err = RemoteKeys::new(&["user:pw@host:x/k?q".into()], Duration::from_secs(300), false).err().unwrap();
        assert!(!err.contains("pw") && !err.contains("?q"), "{err}");
        // A password with a character reserved in URLs is what makes one unparsable.
        for raw in [
            "https://ana:s3cr#et@id.example/jwks",
            "https://ana:s3cr/et@id.example/jwks",
            "https://ana:s3cr?et@id.example/jwks",
        ] {
            let err = RemoteKeys::new(&[raw.into()], Duration::from_secs(300), false).err().unwrap();
            assert!(!err.contains("s3cr") && !err.contains("ana"), "{raw} -> {err}");
        }
    }

    #[test]
    fn logs_show_no_credentials_or_query() {
        let url = reqwest::Url::parse("https://user:secret@id.example:8443/jwks?token=abc#x").unwrap();
        assert_eq!(shown(&url), "https://id.example:8443/jwks");
    }

    /// A JWKS server on loopback that answers `doc` after `delay_ms`, counting in `asked` the
    /// requests it has read.
    async fn key_server(
        doc: Arc<parking_lot::Mutex<String>>,
        delay_ms: Arc<std::sync::atomic::AtomicU64>,
        asked: Arc<std::sync::atomic::AtomicUsize>,
    ) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (doc, delay_ms, asked) = (doc.clone(), delay_ms.clone(), asked.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    asked.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst))).await;
                    let body = doc.lock().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// Waits, with a deadline, until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A JWK holding the HMAC secret `secret` under key id `kid`.
    fn oct(kid: &str, secret: &[u8]) -> serde_json::Value {
        serde_json::from_str(&herald_testkit::oct_jwk(kid, secret)).unwrap()
    }

    /// The fixture key set's keys with these key ids.
    fn fixture_keys(kids: &[&str]) -> Vec<serde_json::Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/jwks.json");
        let set: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let keys = set["keys"].as_array().unwrap().iter();
        keys.filter(|k| kids.contains(&k["kid"].as_str().unwrap())).cloned().collect()
    }

    /// The fixture key set's keys with these key ids, as a JWKS document.
    fn published(kids: &[&str]) -> String {
        serde_json::json!({ "keys": fixture_keys(kids) }).to_string()
    }

    /// A token for user `u1` signed with the fixture Ed25519 key, naming its key id.
    fn ed_token() -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let pem = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/ed-private.pem");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed-jwks".into());
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let key = EncodingKey::from_ed_pem(&std::fs::read(pem).unwrap()).unwrap();
        encode(&header, &serde_json::json!({"sub":"u1","exp":exp}), &key).unwrap()
    }

    /// A shared secret is the operator's to give in a file; in a published key set it is public,
    /// and is skipped, the set's public keys kept. A published set of secrets alone is refused.
    #[test]
    fn a_published_key_set_keeps_its_public_keys_and_skips_its_secrets() {
        let secret = oct("s", b"0123456789abcdef0123456789abcdef");
        let mixed = serde_json::json!({ "keys": [secret.clone(), fixture_keys(&["rsa-jwks"])[0].clone()] }).to_string();
        let Keys { keys, secrets_skipped } = keys_of_jwks(mixed.as_bytes(), KeySet::Published).unwrap();
        assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("rsa-jwks")]);
        assert!(keys[0].hmac.is_none());
        assert_eq!(secrets_skipped, ["s"]);
        let file = keys_of_jwks(mixed.as_bytes(), KeySet::File).unwrap();
        assert_eq!((file.keys.len(), file.secrets_skipped.len()), (2, 0), "a file's secrets are kept");
        let alone = serde_json::json!({ "keys": [secret] }).to_string();
        let err = keys_of_jwks(alone.as_bytes(), KeySet::Published).err().unwrap();
        assert!(err.contains("public keys only"), "{err}");
    }

    /// HMAC secrets, from a key set or not, are keyed for the one-pass check; public keys are not.
    #[test]
    fn hmac_keys_and_only_they_are_keyed_for_the_one_pass_check() {
        let octs = serde_json::json!({ "keys": [oct("k", b"0123456789abcdef0123456789abcdef")] }).to_string();
        let octs = keys_of_jwks(octs.as_bytes(), KeySet::File).unwrap().keys;
        assert!(octs[0].hmac.is_some());
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys/jwks.json");
        let public = keys_of_jwks(&std::fs::read(fixtures).unwrap(), KeySet::File).unwrap().keys;
        assert!(!public.is_empty() && public.iter().all(|k| k.hmac.is_none()));
        let secret = VerifyKey::new(None, DecodingKey::from_secret(b"0123456789abcdef"));
        assert!(secret.hmac.is_some());
    }

    /// Two browsers arrive with a token signed by a key the provider has just added: the first
    /// starts the on-demand fetch; the second arrives while that fetch is out, waits for it,
    /// and is verified with the keys it brought (before: refused, as the fetch it waited for
    /// had started before it asked; a 401, which EventSource does not retry).
    #[tokio::test]
    async fn a_token_arriving_during_an_on_demand_fetch_is_verified_with_its_keys() {
        use crate::access::tokens::Verifier;
        let doc = Arc::new(parking_lot::Mutex::new(published(&["rsa-jwks"])));
        let delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = key_server(doc.clone(), delay.clone(), asked.clone()).await;
        let remote =
            Arc::new(RemoteKeys::new(&[format!("http://{addr}/jwks")], Duration::from_secs(300), false).unwrap());
        remote.start(Arc::new(Metrics::new())).unwrap();
        until("the first keys", || remote.loaded()).await;
        let mut verifier = Verifier::new(None, None);
        verifier.set_remote(remote.clone());
        let verifier = Arc::new(verifier);

        // The provider rotates in a new key; its JWKS answers in 1 s.
        *doc.lock() = published(&["rsa-jwks", "ed-jwks"]);
        delay.store(1000, Ordering::SeqCst);
        let token = ed_token();

        let (v1, t1) = (verifier.clone(), token.clone());
        let first = tokio::spawn(async move { v1.verify_or_refresh(&t1).await.map(|g| g.user.to_string()) });
        until("the fetch for the new key is out", || asked.load(Ordering::SeqCst) == 2).await;
        let second = verifier.verify_or_refresh(&token).await.map(|g| g.user.to_string());
        let first = first.await.unwrap();
        assert_eq!(first, Ok("u1".to_string()), "the token that started the fetch");
        assert_eq!(second, Ok("u1".to_string()), "the token that waited for the same fetch");
    }

    /// A token naming an unknown `kid` whose client goes away while the fetch it started is out
    /// (its request's future dropped) still spends the URL's one fetch per 10 s: the tokens
    /// after it do not fetch again (before: each such client, signing nothing, made the gateway
    /// fetch the provider's keys again).
    #[tokio::test]
    async fn a_fetch_whose_caller_went_away_still_counts_against_the_limit() {
        let doc = Arc::new(parking_lot::Mutex::new(published(&["rsa-jwks"])));
        let delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = key_server(doc, delay.clone(), asked.clone()).await;
        let remote =
            Arc::new(RemoteKeys::new(&[format!("http://{addr}/jwks")], Duration::from_secs(300), false).unwrap());
        remote.start(Arc::new(Metrics::new())).unwrap();
        until("the first keys", || remote.loaded()).await;
        delay.store(1000, Ordering::SeqCst);
        let gone = tokio::spawn({
            let remote = remote.clone();
            async move { remote.refresh_for_unknown_kid().await }
        });
        until("the fetch is out", || asked.load(Ordering::SeqCst) == 2).await;
        gone.abort();
        let _ = gone.await;
        for _ in 0..5 {
            assert!(!remote.refresh_for_unknown_kid().await, "no fetch within 10 s of the last");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2, "one on-demand fetch");
    }
}
