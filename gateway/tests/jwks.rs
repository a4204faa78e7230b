//! Client-token keys from a JWKS URL, as an identity provider publishes them: fetched at start
//! (`/readyz` fails until then), rotated by the provider without a restart (at once for a token
//! naming a new `kid`, within one refresh otherwise), and kept while the provider is down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_testkit::{Gateway, Nats, Sse, eventually, http, oct_jwk, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The public halves of the test key pairs in `tests/fixtures/keys`, as JWKs.
const RSA_A: &str = r#"{"kty":"RSA","kid":"rsa-jwks","use":"sig","alg":"RS256","n":"p3uECxKfH5TGdYn4emoAQE21Q6J9QWIYckDSzJMJfUyFxBBe_Gs5IS9BA6gvguuigNYKPJ4Wa-s1A24HRM0y3FTxJju38KaL0UAEhf1VbB7Q87Ust3KHlPFc5RHgsWyXn4dwURMa5DbtwduM_Udm51M2xWRcxp88zpaKl-74u4vEIOvcbgTT-zSzuXArbCbvEKcDG267F4BV4mE0uoMgiuXpbldnPhAbHJOg42rDszGd5vJQZ7TWjW-v95TWWdhLaQOvt9nB77pXHsG1CoynIA4dFajk4LyGYjBvjZ6IfwYqhjo8IqDK3D6KGIUpPnyhuLCK2x_rgvp5GT2k9oadXQ","e":"AQAB"}"#;
const ED_B: &str =
    r#"{"kty":"OKP","crv":"Ed25519","kid":"ed-jwks","alg":"EdDSA","x":"rErHHqEAOvfMo-zTO79CQdX0NA2niqYoVTS6OBUbLC4"}"#;
/// No `kid`: tokens signed with it name none, so only a scheduled refresh can bring it in.
const EC_C: &str = r#"{"kty":"EC","crv":"P-256","x":"ppD0OZf5PaIhqFmFhtyN923zUjbvJmCEoBK_60pgTIc","y":"2qRhMz8CpQYNw9Fwiv1oy79M9d0YOfuNA8ZAAXoqfAs"}"#;

/// An identity provider's JWKS endpoint that the test rotates, or takes down (503).
struct KeyServer {
    addr: SocketAddr,
    document: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    async fn start() -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document: Arc<Mutex<Option<String>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let current = doc.lock().unwrap().clone();
                    let response = match current {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => {
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                        }
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        KeyServer { addr, document, fetches, task }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, keys: &[&str]) {
        *self.document.lock().unwrap() = Some(format!(r#"{{"keys":[{}]}}"#, keys.join(",")));
    }

    fn down(&self) {
        *self.document.lock().unwrap() = None;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signed(alg: Algorithm, kid: Option<&str>, user: &str) -> String {
    let private = |name: &str| {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)).unwrap()
    };
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&private("rsa-private.pem")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&private("ec-private.pem")),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&private("ed-private.pem")),
        _ => unreachable!(),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &json!({"sub": user, "exp": get_current_timestamp() + 600}), &key).unwrap()
}

/// Opens a stream with `token`: its status, and for a 200 the first event's name.
async fn open(gw: &Gateway, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    match Sse::open(gw.addr, "/events", &[("Authorization", &auth)]).await {
        Ok(mut s) => (200, s.next().await.event),
        Err(res) => (res.status, String::from_utf8_lossy(&res.body).into_owned()),
    }
}

async fn readyz(gw: &Gateway) -> (u16, String) {
    let res = http(gw.addr, "GET", "/readyz", &[], None).await;
    (res.status, String::from_utf8_lossy(&res.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_rotate_without_a_restart_and_outlive_the_provider() {
    let keys = KeyServer::start().await;
    keys.down();
    let nats = Nats::start();
    // One gateway refreshes every second; the other every 5 minutes, so that only the
    // unknown-`kid` path can bring it a new key within this test.
    let fast = Gateway::serve(&nats).args(&["--jwks-url", &keys.url(), "--jwks-refresh-secs", "1"]).start();
    let slow = Gateway::serve(&nats).args(&["--jwks-url", &keys.url()]).start();

    // Before the first fetch: not ready, and saying why.
    for gw in [&fast, &slow] {
        eventually("the gateway waits for its keys", Duration::from_secs(15), || async {
            let (status, body) = readyz(gw).await;
            status == 503 && body.contains("client-token keys")
        })
        .await;
    }
    keys.serve(&[RSA_A]);
    fast.ready().await;
    slow.ready().await;
    assert_eq!(open(&slow, &signed(Algorithm::RS256, Some("rsa-jwks"), "ann")).await, (200, "connected".into()));
    // The secret beside the URL still verifies its tokens.
    assert_eq!(open(&slow, &token("bob", &[], 600)).await, (200, "connected".into()));

    // The provider adds key B: a token naming it is accepted on its first request.
    keys.serve(&[RSA_A, ED_B]);
    let before = keys.fetches();
    assert_eq!(open(&slow, &signed(Algorithm::EdDSA, Some("ed-jwks"), "cat")).await, (200, "connected".into()));
    assert_eq!(keys.fetches(), before + 1, "one fetch, for the unknown kid");

    // However many tokens name unknown key ids, the provider is asked at most once per 10 s.
    let before = keys.fetches();
    for i in 0..20 {
        let (status, body) = open(&slow, &signed(Algorithm::EdDSA, Some(&format!("forged-{i}")), "eve")).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("forged-"), "{body}");
    }
    assert!(keys.fetches() <= before + 1, "{} fetches for 20 unknown kids", keys.fetches() - before);

    // A key without a kid comes in with the scheduled refresh.
    let ec = signed(Algorithm::ES256, None, "dan");
    assert_eq!(open(&fast, &ec).await.0, 401, "no EC key yet");
    keys.serve(&[RSA_A, ED_B, EC_C]);
    eventually("the refresh brings the EC key in", Duration::from_secs(5), || async {
        open(&fast, &ec).await == (200, "connected".into())
    })
    .await;

    // The provider goes down: the failures are counted and the last keys kept.
    keys.down();
    eventually("a failed fetch is counted", Duration::from_secs(10), || async {
        fast.metric("herald_jwks_fetches_total{result=\"error\"}").await.unwrap_or(0.0) >= 2.0
    })
    .await;
    for gw in [&fast, &slow] {
        assert_eq!(open(gw, &signed(Algorithm::RS256, Some("rsa-jwks"), "ann")).await, (200, "connected".into()));
        assert_eq!(readyz(gw).await.0, 200, "still ready on the last good keys");
    }
    fast.wait_for_log("cannot fetch client-token keys; keeping the last ones").await;
    assert!(fast.metric("herald_jwks_fetches_total{result=\"ok\"}").await.unwrap_or(0.0) >= 2.0);
}

/// A key set at a URL is a public document: a shared secret in it (`kty` `oct`) would let anyone
/// who reads it sign tokens for any user. The gateway skips such keys and says so, keeps the
/// provider's public keys, and a URL with nothing but secrets never makes it ready (before: a
/// token signed with the published secret opened anyone's stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_secret_published_at_a_jwks_url_signs_no_token() {
    const PUBLISHED: &[u8] = b"published-secret-published-secret";
    let forged = |user: &str| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("shared".into());
        let claims = json!({"sub": user, "exp": get_current_timestamp() + 600});
        encode(&header, &claims, &EncodingKey::from_secret(PUBLISHED)).unwrap()
    };
    let nats = Nats::start();
    let keys = KeyServer::start().await;
    keys.serve(&[&oct_jwk("shared", PUBLISHED), RSA_A]);
    let gw = Gateway::serve(&nats).args(&["--jwks-url", &keys.url(), "--jwks-refresh-secs", "1"]).start();
    gw.ready().await;
    let (status, body) = open(&gw, &forged("mallory")).await;
    assert_eq!(status, 401, "a token signed with the published secret: {body}");
    assert_eq!(open(&gw, &signed(Algorithm::RS256, Some("rsa-jwks"), "ann")).await, (200, "connected".into()));
    gw.wait_for_log("skipping the shared secrets").await;
    let log = gw.log_text();
    let warning = log.lines().find(|l| l.contains("skipping the shared secrets")).unwrap();
    assert!(warning.contains(&keys.url()) && warning.contains("\"shared\""), "names the URL and the kid: {warning}");
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, PUBLISHED);
    assert!(!log.contains("published-secret") && !log.contains(&encoded), "no secret in the log");
    // Said once, not at every refresh: two more fetches, then a stream's close as the marker
    // that the log has been read past them.
    eventually("two more fetches", Duration::from_secs(10), || async {
        gw.metric("herald_jwks_fetches_total{result=\"ok\"}").await.unwrap_or(0.0) >= 3.0
    })
    .await;
    assert_eq!(open(&gw, &signed(Algorithm::RS256, Some("rsa-jwks"), "marker")).await.0, 200);
    gw.wait_for_log("user=marker").await;
    assert_eq!(gw.log_text().matches("skipping the shared secrets").count(), 1, "warned once");

    // Nothing but a secret: no key to verify tokens with, so never ready.
    let only = KeyServer::start().await;
    only.serve(&[&oct_jwk("shared", PUBLISHED)]);
    let lone = Gateway::serve(&nats).args(&["--jwks-url", &only.url(), "--jwks-refresh-secs", "1"]).start();
    lone.wait_for_log("a published key set may hold public keys only").await;
    let (status, body) = readyz(&lone).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(open(&lone, &forged("mallory")).await.0, 401);
}

#[tokio::test]
async fn a_jwks_url_in_the_clear_beyond_loopback_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .args(["serve", "--nats-url", "nats://127.0.0.1:1", "--jwks-url", "http://keycloak.auth.svc/certs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--jwks-allow-http"), "{stderr}");
}
