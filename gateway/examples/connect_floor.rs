//! The floor under opening SSE streams with the gateway's building blocks: actix-web on one
//! worker, one actor per connection, and (with `--nats`) one NATS subscription per connection.
//!
//! It answers `GET /events?user=NAME` (or `?channels=NAME`) with the gateway's response head and
//! a `connected` event, then holds the stream open; each stream has an actor with a heartbeat
//! timer, as a gateway session does. With `--nats URL` each stream first subscribes to its own
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

use actix::{Actor, AsyncContext, Context};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use futures_util::StreamExt;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Stream {
    _subscription: Option<async_nats::Subscriber>,
}

impl Actor for Stream {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(15), |_, _| {});
    }
}

async fn events(req: HttpRequest, nats: web::Data<Option<async_nats::Client>>) -> HttpResponse {
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
    let actor = Stream { _subscription: subscription }.start();
    let connected = Bytes::from(format!(
        "retry: 3000\nevent: connected\ndata: {{\"connectionId\":\"x\",\"user\":\"{name}\",\"channels\":[],\"resumed\":false}}\n\n"
    ));
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(connected) })
        .chain(futures_util::stream::pending())
        // The body holds the actor's address: when actix drops the body (the client left), the
        // actor stops and its subscription ends, as a gateway session does.
        .map(move |item| {
            let _ = &actor;
            item
        });
    HttpResponse::Ok()
        .insert_header(("content-type", "text/event-stream"))
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:18160".to_owned();
    let mut nats_url = None;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().cloned().unwrap_or_else(|| usage(flag));
        match flag.as_str() {
            "--listen" => listen = value,
            "--nats" => nats_url = Some(value),
            _ => usage(flag),
        }
    }
    raise_nofile();
    actix_web::rt::System::new().block_on(async move {
        let nats = match nats_url {
            Some(url) => Some(connect(&url).await?),
            None => None,
        };
        let nats = web::Data::new(nats);
        HttpServer::new(move || App::new().app_data(nats.clone()).route("/events", web::get().to(events)))
            .workers(1)
            .backlog(4096)
            .max_connections(25_000)
            .disable_signals()
            .bind(&listen)?
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

fn usage(flag: &str) -> ! {
    eprintln!("connect_floor: unexpected {flag}\nusage: connect_floor [--listen ADDR] [--nats URL]");
    std::process::exit(2)
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
