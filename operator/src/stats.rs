//! Reading a gateway pod's `/stats` (`{"connections":n,"maxConnections":m,"draining":b,
//! "subjects":k}`) over the pod IP, with a short timeout: a pod that doesn't answer counts as
//! missing, which blocks scaling down.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resources::HTTP_PORT;

/// How long one pod gets to answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub connections: u64,
    pub max_connections: u64,
    pub draining: bool,
}

/// Whether a pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A running pod's address (`ip:port`, port from the container port named `http`), or `None`
/// for a pod that has no IP yet, is being deleted, or no longer runs (evicted or failed: its
/// IP may be another pod's by now). Ready or not: a gateway whose readiness fails (NATS
/// unreachable, say) still holds its streams, and they count.
pub fn address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some() || status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_ref()?;
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .map_or(HTTP_PORT, |p| p.container_port);
    Some(format!("{ip}:{port}"))
}

/// Fetches `/stats` from `addr`; `None` when the pod does not answer in time or answers nonsense.
pub async fn fetch(addr: &str) -> Option<Stats> {
    tokio::time::timeout(TIMEOUT, get(addr)).await.ok().flatten()
}

async fn get(addr: &str) -> Option<Stats> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request =
        format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::with_capacity(512);
    stream.take(64 * 1024).read_to_end(&mut raw).await.ok()?;
    parse_response(&raw)
}

/// Parses a complete `Connection: close` HTTP response carrying the stats JSON.
pub fn parse_response(raw: &[u8]) -> Option<Stats> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    serde_json::from_slice(&raw[end + 4..]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"connections\":7,\"maxConnections\":10,\"draining\":false,\"subjects\":3}";
        assert_eq!(parse_response(ok), Some(Stats { connections: 7, max_connections: 10, draining: false }));
        assert_eq!(parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}"), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json"), None);
        assert_eq!(parse_response(b"garbage"), None);
    }
}
