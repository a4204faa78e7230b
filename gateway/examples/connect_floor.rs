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
//!
//! With `--fanout` (and `--nats`) it is also the floor under a broadcast made of these blocks:
//! one subscription to every channel's live subject, and each message, rendered once as the
//! gateway renders an event, queued on every open stream's body (an unbounded channel per
//! stream). Everything runs on the HTTP worker's thread, the NATS connection's reads included
//! (the worker opens its own), so no delivery crosses a thread. No hub thread, no outbox, no
//! ordering, no limits: what is left of a broadcast's latency is actix-web's path from a body
//! to the socket and the write itself. The load generator's fanout scenario runs against it as
//! against a gateway:
//!
//! ```sh
//! taskset -c 0 target/release/examples/connect_floor --listen 127.0.0.1:18160 \
//!   --nats nats://127.0.0.1:4222 --fanout &
//! taskset -c 1 target/release/herald-loadtest fanout --target http://127.0.0.1:18160 \
//!   --nats-url nats://127.0.0.1:4222 --connections 10000 --rate 5
//! ```
//!
//! With `--targeted` (and `--nats`) each stream subscribes to its user's and its channel's live
//! subjects, as the gateway does, and its body carries what they bring, rendered as the gateway
//! renders an event, on the worker's own NATS connection as with `--fanout`: the floor under
//! targeted delivery through actix-web (the load generator's `targeted` scenario). Without
//! either, the streams subscribe on a connection opened before the server starts, on the main
//! thread, as the connect floor always has.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use herald_gateway::delivery::peer::{PeerSocket, listener, on_connect};
use herald_gateway::delivery::sse::{connected_frame, event_frame};
use herald_gateway::event::{SubjectKind, Target};
use herald_gateway::http::events::stream_response;
use slab::Slab;
use tokio::sync::{mpsc, oneshot};

/// More than the 20,000 open files a process may hold here: the limit is the kernel's.
const MAX_CONNECTIONS: usize = 25_000;

/// The floor under opening a stream (see the top of this file).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18160")]
    listen: std::net::SocketAddr,
    /// Subscribe each stream to its user's subject on this NATS server.
    #[arg(long)]
    nats: Option<String>,
    /// Seconds between a stream's heartbeats, as the gateway's `--heartbeat-secs`.
    #[arg(long, default_value_t = 15)]
    heartbeat_secs: u64,
    /// Also deliver what is published to any channel's live subject to every open stream.
    #[arg(long, requires = "nats", conflicts_with = "targeted")]
    fanout: bool,
    /// Subscribe each stream to its user's and its channel's live subjects, as the gateway
    /// does, and deliver what arrives on them to that stream alone.
    #[arg(long, requires = "nats")]
    targeted: bool,
}

/// What a stream carries after its `connected` event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing: the stream holds its user's subscription, unread.
    Connect,
    /// Every message of every channel (`--fanout`).
    Fanout,
    /// What its own subscriptions bring (`--targeted`).
    Targeted,
}

thread_local! {
    /// The open streams' bodies, on the worker's thread (`--fanout`).
    static BODIES: RefCell<Slab<mpsc::UnboundedSender<Bytes>>> = const { RefCell::new(Slab::new()) };
    /// The worker's own NATS connection (`--fanout`, `--targeted`): its reads, and every
    /// delivery, stay on the worker's thread.
    static WORKER_NATS: Rc<tokio::sync::OnceCell<async_nats::Client>> = Rc::new(tokio::sync::OnceCell::new());
    /// Whether this worker started its fan-out (actix builds the app once per bound address).
    static FANNING_OUT: Cell<bool> = const { Cell::new(false) };
}

/// Where the floor reaches NATS.
struct Nats {
    url: Option<String>,
    /// The connection made before the server started, on the main thread (the connect floor,
    /// as measured since 2026-12-02).
    shared: Option<async_nats::Client>,
}

impl Nats {
    /// The connection a stream in `mode` subscribes with: the worker's own when it delivers.
    async fn client(&self, mode: Mode) -> Option<async_nats::Client> {
        match mode {
            Mode::Connect => self.shared.clone(),
            Mode::Fanout | Mode::Targeted => {
                let url = self.url.as_deref()?;
                let cell = WORKER_NATS.with(Rc::clone);
                cell.get_or_try_init(|| connect(url)).await.ok().cloned()
            }
        }
    }
}

/// Takes a stream's body out of [`BODIES`] when the body is dropped.
struct Listed(usize);

impl Drop for Listed {
    fn drop(&mut self) {
        // `try_with`: a body dropped while the thread's locals are torn down has nothing to leave.
        let _ = BODIES.try_with(|bodies| bodies.borrow_mut().try_remove(self.0));
    }
}

/// Queues every message of the channels' live subjects on every open stream (`--fanout`).
async fn fan_out(nats: web::Data<Nats>) {
    let subscribed = match nats.client(Mode::Fanout).await {
        Some(client) => client.subscribe("herald.live.channel.*").await.ok().zip(Some(client)),
        None => None,
    };
    let Some((mut messages, client)) = subscribed else {
        eprintln!("connect_floor: cannot subscribe to the channels");
        std::process::exit(1);
    };
    let _ = client.flush().await;
    while let Some(message) = messages.next().await {
        let Some(target) = Target::from_subject("herald", SubjectKind::Live, &message.subject) else { continue };
        let frame = event_frame(None, "message", &target, None, &message.payload);
        BODIES.with(|bodies| {
            for (_, body) in bodies.borrow().iter() {
                let _ = body.send(frame.clone());
            }
        });
    }
}

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Stream {
    /// The stream's subscriptions while nothing reads them (without `--targeted`).
    _subscriptions: Vec<async_nats::Subscriber>,
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
    nats: web::Data<Nats>,
    heartbeat: web::Data<Duration>,
    mode: web::Data<Mode>,
) -> HttpResponse {
    let query = req.query_string();
    // The user's own subject, as the gateway subscribes one per user (the load generator sends
    // a shared channel too, which the gateway subscribes once for all).
    let param = |key: &str| query.split('&').find_map(|kv| kv.strip_prefix(key)).map(str::to_owned);
    let channel = param("channels=");
    let name = param("user=").or_else(|| channel.clone());
    let valid =
        |n: &str| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    let Some(name) = name.filter(|n| valid(n)) else {
        return HttpResponse::BadRequest().body("?user=NAME or ?channels=NAME (letters, digits, _ and -)");
    };
    let mut subjects = vec![format!("herald.live.user.{name}")];
    if **mode == Mode::Targeted
        && let Some(channel) = channel.filter(|c| valid(c))
    {
        subjects.push(format!("herald.live.channel.{channel}"));
    }
    let mut subscriptions = Vec::new();
    if nats.url.is_some() {
        let Some(client) = nats.client(**mode).await else {
            return HttpResponse::ServiceUnavailable().finish();
        };
        for subject in subjects {
            let Ok(sub) = client.subscribe(subject).await else {
                return HttpResponse::ServiceUnavailable().finish();
            };
            subscriptions.push(sub);
        }
        if client.flush().await.is_err() {
            return HttpResponse::ServiceUnavailable().finish();
        }
    }
    let (open, closed) = oneshot::channel();
    let peer = req.conn_data::<PeerSocket>().copied();
    let events = match **mode {
        Mode::Connect => futures_util::stream::pending().boxed_local(),
        Mode::Fanout => {
            let (tx, rx) = mpsc::unbounded_channel();
            let listed = Listed(BODIES.with(|bodies| bodies.borrow_mut().insert(tx)));
            futures_util::stream::unfold((rx, listed), |(mut rx, listed)| async move {
                rx.recv().await.map(|frame| (Ok(frame), (rx, listed)))
            })
            .boxed_local()
        }
        Mode::Targeted => futures_util::stream::select_all(std::mem::take(&mut subscriptions))
            .filter_map(|message| async move {
                let target = Target::from_subject("herald", SubjectKind::Live, &message.subject)?;
                Some(Ok(event_frame(None, "message", &target, None, &message.payload)))
            })
            .boxed_local(),
    };
    let actor = Stream { _subscriptions: subscriptions, peer, heartbeat: **heartbeat, _open: open }.start();
    let info = serde_json::json!({"connectionId": "x", "user": name, "channels": [], "resumed": false});
    let connected = connected_frame(3000, None, &info);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(connected) })
        // Open until the actor stops (the client left).
        .chain(events.take_until(closed))
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
        let shared = match &args.nats {
            Some(url) if !args.fanout && !args.targeted => Some(connect(url).await?),
            _ => None,
        };
        let nats = web::Data::new(Nats { url: args.nats.clone(), shared });
        let heartbeat = Duration::from_secs(args.heartbeat_secs.max(1));
        let data = web::Data::new(heartbeat);
        let mode = web::Data::new(match (args.fanout, args.targeted) {
            (true, _) => Mode::Fanout,
            (_, true) => Mode::Targeted,
            _ => Mode::Connect,
        });
        HttpServer::new(move || {
            // Called on the worker's thread: the fan-out runs beside the streams it feeds.
            if **mode == Mode::Fanout && !FANNING_OUT.replace(true) {
                actix_web::rt::spawn(fan_out(nats.clone()));
            }
            App::new()
                .app_data(nats.clone())
                .app_data(data.clone())
                .app_data(mode.clone())
                .route("/events", web::get().to(events))
        })
        .on_connect(on_connect)
        .workers(1)
        .max_connections(MAX_CONNECTIONS)
        .disable_signals()
        // The gateway's listener: its connections get their socket options as the gateway's do.
        .listen(listener(args.listen, 4096, heartbeat)?)?
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
