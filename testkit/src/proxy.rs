//! A TCP proxy on 127.0.0.1 that can cut every connection through it and refuse new ones, to
//! take a link down while both of its ends stay up (a gateway's link to NATS, a route between
//! two NATS nodes); and that can hold back what it passes on, to slow a NATS route down.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::nats::NatsUrl;

/// How a NATS server opens the route that carries only its system account (in its `INFO`),
/// which [`Proxy::delay`] leaves alone.
const SYSTEM_ACCOUNT_ROUTE: &[u8] = br#""route_account":"$SYS""#;

pub struct Proxy {
    pub port: u16,
    /// Where connections go; 0 until known (connections are refused until then).
    target: Arc<AtomicU16>,
    up: Arc<AtomicBool>,
    /// Milliseconds each chunk waits before it is passed on (0: none).
    delay_ms: Arc<AtomicU64>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target_port` on 127.0.0.1.
    pub async fn start(target_port: u16) -> Proxy {
        let proxy = Self::unpointed().await;
        proxy.point_to(target_port);
        proxy
    }

    /// A proxy that refuses connections until [`Proxy::point_to`] says where they go: for a
    /// server that must know the proxy's port before it starts and picks its own port.
    pub async fn unpointed() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (target2, up2, links2, delay2) = (target.clone(), up.clone(), links.clone(), delay_ms.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target_port = target2.load(SeqCst);
                if !up2.load(SeqCst) || target_port == 0 {
                    continue; // dropped: refused
                }
                let delay = delay2.clone();
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        let exempt = Arc::new(AtomicBool::new(false));
                        let (from_in, to_in) = inbound.into_split();
                        let (from_out, to_out) = outbound.into_split();
                        tokio::join!(
                            pass_on(from_in, to_out, delay.clone(), exempt.clone(), true),
                            pass_on(from_out, to_in, delay, exempt, false),
                        );
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Proxy { port, target, up, delay_ms, links, accept }
    }

    /// Sends the connections from now on to `target_port` on 127.0.0.1.
    pub fn point_to(&self, target_port: u16) {
        self.target.store(target_port, SeqCst);
    }

    /// The proxy as a NATS URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Takes new connections again after [`Proxy::cut`].
    pub fn restore(&self) {
        self.up.store(true, SeqCst);
    }

    /// Holds back everything passed on, both ways, by `delay` (in order; zero ends it), except
    /// on a NATS route of the system account alone: JetStream's API requests and answers
    /// travel there at full speed while the interest and messages of the other accounts lag.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, SeqCst);
    }
}

impl NatsUrl for Proxy {
    fn nats_url(&self) -> String {
        self.url()
    }
}

/// Copies `from` to `to`, each chunk held back by the proxy's delay at the time it was read.
/// `sniff`: this is the opener's side, whose first bytes tell a system account route.
async fn pass_on(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    exempt: Arc<AtomicBool>,
    sniff: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut opening = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if sniff && opening.len() < 8192 {
                opening.extend_from_slice(&buf[..n]);
                if opening.windows(SYSTEM_ACCOUNT_ROUTE.len()).any(|w| w == SYSTEM_ACCOUNT_ROUTE) {
                    exempt.store(true, SeqCst);
                }
            }
            let held = if exempt.load(SeqCst) { 0 } else { delay_ms.load(SeqCst) };
            let due = tokio::time::Instant::now() + Duration::from_millis(held);
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
