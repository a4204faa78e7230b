//! The floor under opening SSE streams with the gateway's building blocks: actix-web on one
//! worker, one actor per connection, and (with `--nats`) one NATS subscription per connection.
//!
//! It answers `GET /events?user=NAME` (or `?channels=NAME`) with the gateway's response head and
//! a `connected` event, then holds the stream open; each stream has an actor with a heartbeat
//! timer, as a gateway session does, which ends the stream (and its subscription) at the first
//! heartbeat after the client closed its socket, and accepted sockets are tuned as the gateway's
//! are (no Nagle delay, a TCP user timeout). With `--nats URL` each stream first subscribes to its own
//! subject and waits until the `SUB` is written to the server (async-nats's `flush` writes; it
//! does not wait for the server). The gateway also waits for the server to confirm it, so this
//! floor is lower than what the gateway must do. No authentication, no hub, no history cursor,
//! no limits, no metrics. Point the load generator at it as at a dev gateway:
//!
//! ```sh
//! cargo build --release -p herald-gateway --example connect_floor
//! taskset -c 0 target/release/examples/connect_floor --listen 127.0.0.1:18160 &
//! taskset -c 1 target/release/herald-loadtest connect --target http://127.0.0.1:18160 \
//!   --connections 18000 --processes 2 --duration 3
//! ```
//!
//! What it costs per connection is what any gateway built this way pays before doing anything
//! of its own; docs/benchmarks.md compares it with Nchan and the gateway.

use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use futures_util::StreamExt;
use herald_gateway::delivery::peer::{PeerSocket, on_connect};
use herald_gateway::delivery::sse::connected_frame;
use herald_gateway::http::events::stream_response;
use tokio::sync::oneshot;

/// More than the 20,000 open files a process may hold here: the limit is the kernel's.
const MAX_CONNECTIONS: usize = 25_000;

/// The floor under opening a stream (see the top of this file).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18160")]
    listen: String,
    /// Subscribe each stream to its user's subject on this NATS server.
    #[arg(long)]
    nats: Option<String>,
    /// Seconds between a stream's heartbeats, as the gateway's `--heartbeat-secs`.
    #[arg(long, default_value_t = 15)]
    heartbeat_secs: u64,
}

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Stream {
    _subscription: Option<async_nats::Subscriber>,
    peer: Option<PeerSocket>,
    heartbeat: Duration,
    /// Dropped with the actor: the response body then ends.
    _open: oneshot::Sender<()>,
}

impl Actor for Stream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.heartbeat, |stream, ctx| {
            if stream.peer.is_some_and(|peer| peer.closed_by_peer()) {
                ctx.stop();
            }
        });
    }
}

async fn events(
    req: HttpRequest,
    nats: web::Data<Option<async_nats::Client>>,
    heartbeat: web::Data<Duration>,
) -> HttpResponse {
    let query = req.query_string();
    // The user's own subject, as the gateway subscribes one per user (the load generator sends
    // a shared channel too, which the gateway subscribes once for all).
    let param = |key: &str| query.split('&').find_map(|kv| kv.strip_prefix(key)).map(str::to_owned);
    let name = param("user=").or_else(|| param("channels="));
    let valid =
        |n: &str| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    let Some(name) = name.filter(|n| valid(n)) else {
        return HttpResponse::BadRequest().body("?user=NAME or ?channels=NAME (letters, digits, _ and -)");
    };
    let subscription = match nats.get_ref() {
        Some(client) => {
            let Ok(sub) = client.subscribe(format!("herald.live.user.{name}")).await else {
                return HttpResponse::ServiceUnavailable().finish();
            };
            if client.flush().await.is_err() {
                return HttpResponse::ServiceUnavailable().finish();
            }
            Some(sub)
        }
        None => None,
    };
    let (open, closed) = oneshot::channel();
    let peer = req.conn_data::<PeerSocket>().copied();
    let actor = Stream { _subscription: subscription, peer, heartbeat: **heartbeat, _open: open }.start();
    let info = serde_json::json!({"connectionId": "x", "user": name, "channels": [], "resumed": false});
    let connected = connected_frame(3000, None, &info);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(connected) })
        // Open until the actor stops (the client left).
        .chain(futures_util::stream::once(closed).filter_map(|_| async { None }))
        // The body holds the actor's address: when actix drops the body (a write failed), the
        // actor stops and its subscription ends, as a gateway session does.
        .map(move |item| {
            let _ = &actor;
            item
        });
    stream_response().streaming(body)
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    herald_gateway::commands::serve::raise_open_files_limit(MAX_CONNECTIONS);
    actix_web::rt::System::new().block_on(async move {
        let nats = match args.nats {
            Some(url) => Some(connect(&url).await?),
            None => None,
        };
        let nats = web::Data::new(nats);
        let heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
        let data = web::Data::new(heartbeat);
        HttpServer::new(move || {
            App::new().app_data(nats.clone()).app_data(data.clone()).route("/events", web::get().to(events))
        })
        .on_connect(move |conn, ext| on_connect(conn, ext, heartbeat))
        .workers(1)
        .backlog(4096)
        .max_connections(MAX_CONNECTIONS)
        .disable_signals()
        .bind(&args.listen)?
        .run()
        .await
    })
}

/// Connects to NATS, waiting up to 10 s for a server that is still starting.
async fn connect(url: &str) -> std::io::Result<async_nats::Client> {
    let mut attempts = 0;
    loop {
        match async_nats::connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if attempts == 100 => return Err(std::io::Error::other(e)),
            Err(_) => attempts += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
