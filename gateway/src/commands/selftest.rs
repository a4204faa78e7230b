//! `herald-gateway selftest`: a real round trip against a running gateway — mint a short-lived
//! client token, open `/events`, publish through `/v1/publish`, wait for the event. Exits 0 on
//! success. Used by the Helm chart's `helm test`, and handy after any deployment.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// The gateway's base URL (http://host:port).
    #[arg(long, env = "HERALD_URL")]
    pub url: String,
    /// The HS256 secret the gateway verifies client tokens with.
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: PathBuf,
    /// A file whose first line is a publisher key (the secret, not `name:secret`).
    #[arg(long, env = "HERALD_PUBLISH_KEY_FILE")]
    pub publish_key_file: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 20)]
    pub timeout_secs: u64,
}

pub fn run(args: SelftestArgs) -> i32 {
    match selftest(&args) {
        Ok(ms) => {
            println!("selftest passed: published and received an event in {ms} ms");
            0
        }
        Err(e) => {
            eprintln!("selftest failed: {e}");
            1
        }
    }
}

fn selftest(args: &SelftestArgs) -> Result<u128, String> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let hostport =
        args.url.strip_prefix("http://").ok_or("--url must start with http://")?.trim_end_matches('/').to_owned();
    let mut secret =
        std::fs::read(&args.jwt_secret_file).map_err(|e| format!("{}: {e}", args.jwt_secret_file.display()))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
    }
    let key = std::fs::read_to_string(&args.publish_key_file)
        .map_err(|e| format!("{}: {e}", args.publish_key_file.display()))?
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let nonce = format!("{:016x}", rand::random::<u64>());
    let channel = format!("herald-selftest:{nonce}");
    let exp = jsonwebtoken::get_current_timestamp() + 120;
    let claims = serde_json::json!({"sub": "herald-selftest", "exp": exp, "channels": [channel]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .map_err(|e| e.to_string())?;

    let connect = || -> Result<TcpStream, String> {
        let addr = hostport.to_socket_addrs().map_err(|e| format!("{hostport}: {e}"))?.next().ok_or("no address")?;
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connecting to {hostport}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
        Ok(s)
    };
    let mut stream = connect()?;
    let request = format!(
        "GET /events?channels={channel} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, "event: connected", deadline)?;

    let started = Instant::now();
    let body = serde_json::json!({"type": "selftest", "data": {"nonce": nonce}, "channels": [channel]}).to_string();
    let mut publish = connect()?;
    let post = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    publish.write_all(post.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    read_until(&mut publish, &mut answer, "\r\n\r\n", deadline)?;
    let head = String::from_utf8_lossy(&answer).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        let _ = publish.read_to_end(&mut answer);
        return Err(format!("publish refused: {}", String::from_utf8_lossy(&answer)));
    }
    read_until(&mut stream, &mut seen, &format!("\"nonce\":\"{nonce}\""), deadline)?;
    Ok(started.elapsed().as_millis())
}

fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &str, deadline: Instant) -> Result<(), String> {
    let mut chunk = [0u8; 8192];
    while !String::from_utf8_lossy(buf).contains(needle) {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {needle:?}; got: {}", String::from_utf8_lossy(buf)));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("connection closed before {needle:?}; got: {}", String::from_utf8_lossy(buf))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
