//! Start-up and wiring: limits, the hub runtime, the broker, the hub, the HTTP server.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_cors::Cors;
use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};

use crate::access::admission::Admission;
use crate::access::tokens::redact_query;
use crate::broker::nats::History;
use crate::broker::{Broker, MemoryBroker, NatsBroker};
use crate::config::{Config, LOOPBACK_ORIGINS, hostname, is_loopback_host_header, is_loopback_origin};
use crate::delivery::hub::Hub;
use crate::http::{self, AppState};
use crate::ops::dashboard::{self, Fleet};
use crate::ops::metrics::Metrics;
use crate::presence::Presence;
use crate::presence::store::{MemoryPresence, NatsPresence, PresenceStore};

/// Runs a gateway until it is stopped.
pub fn run(config: Config) -> std::io::Result<()> {
    raise_open_files_limit(config.settings.max_connections);

    // The hub runtime: one thread that owns the broker connection and the dispatcher (the
    // ordering argument in `delivery/hub/mod.rs` depends on it being single-threaded).
    let hub_runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("herald-hub").build()?;
    let handle = hub_runtime.handle().clone();
    std::thread::Builder::new()
        .name("herald-hub".into())
        .spawn(move || hub_runtime.block_on(std::future::pending::<()>()))?;

    let settings = config.settings.clone();
    let (broker, presence_store): (Arc<dyn Broker>, Arc<dyn PresenceStore>) = match &config.nats {
        Some(opts) => {
            let replicas = match opts.history {
                History::Ensure(stream) => stream.replicas,
                _ => 1,
            };
            let opts = opts.clone();
            let connecting = handle.spawn(async move { NatsBroker::connect(&opts).await });
            let broker = handle.block_on(connecting).map_err(std::io::Error::other)?.map_err(std::io::Error::other)?;
            let store: Arc<dyn PresenceStore> = match broker.jetstream() {
                Some(js) => Arc::new(NatsPresence::new(js.clone(), settings.presence_ttl, replicas)),
                // Live-only: configuration refuses presence there, so nothing is ever written.
                None => MemoryPresence::new(),
            };
            (Arc::new(broker), store)
        }
        None => (MemoryBroker::start(&handle, settings.history), MemoryPresence::new()),
    };
    let metrics = Arc::new(Metrics::new());
    if let crate::config::ClientAuth::Jwt(verifier) = &config.client_auth
        && let Some(remote) = verifier.remote()
    {
        remote.start(metrics.clone())?;
    }
    let hub = Hub::start(broker.clone(), metrics.clone(), &handle);
    let fleet = Fleet::new();
    let instance = format!("{:08x}", rand::random::<u32>());
    let presence = Presence::start(
        settings.presence_channels.clone(),
        // Unique per process: a restarted pod starts over, and its old entries expire.
        format!("{}-{instance}", settings.pod_name.as_deref().unwrap_or_else(|| hostname_static())),
        settings.presence_ttl,
        presence_store,
        hub.clone(),
        metrics.clone(),
        &handle,
    );

    let admission = Admission::new(settings.max_connections, settings.max_connections_per_user, settings.retry_ms);
    let state = web::Data::new(AppState {
        hub,
        broker,
        admission: admission.clone(),
        client_auth: config.client_auth,
        publish_auth: config.publish_auth,
        dashboard_auth: config.dashboard_auth,
        settings: settings.clone(),
        instance,
        presence: presence.clone(),
        client_events: crate::access::rate::RateLimiter::new(settings.client_event_rate, settings.client_event_burst),
        presence_reads: crate::access::rate::RateLimiter::new(http::presence::READ_RATE, http::presence::READ_BURST),
        resumes: settings.resume_budget.map(|(rate, burst)| crate::access::rate::RateLimiter::new(rate, burst)),
        next_connection: AtomicU64::new(0),
        metrics: metrics.clone(),
        fleet: fleet.clone(),
    });
    let reporting = dashboard::Sources {
        fleet: fleet.clone(),
        broker: state.broker.clone(),
        hub: state.hub.clone(),
        admission: admission.clone(),
        metrics,
    };
    let dev = config.dev;
    let allow_remote = config.allow_remote;
    let host_check = dev && !allow_remote;
    let listen = config.listen;

    actix_web::rt::System::new().block_on(async move {
        let origins = settings.allowed_origins.clone();
        let heartbeat = settings.heartbeat;
        let mut server = HttpServer::new(move || {
            // Called once on each worker's thread.
            state.broker.attach_worker();
            App::new()
                .app_data(state.clone())
                .wrap(cors(&origins))
                .wrap(actix_web::middleware::Condition::new(
                    host_check,
                    actix_web::middleware::from_fn(loopback_host_only),
                ))
                .wrap_fn(|req, srv| {
                    // Copied (and the query redacted) only while the request log is on: every
                    // new stream paid for them.
                    let logged = tracing::enabled!(tracing::Level::DEBUG)
                        .then(|| (req.method().clone(), req.path().to_owned(), redact_query(req.query_string())));
                    let fut = srv.call(req);
                    // Boxed: actix-http keeps room for the request's future inside each
                    // connection for the connection's whole life, and an event stream is one
                    // request that lasts as long as its connection. Boxed, the future (about
                    // 330 bytes) is freed once the response starts instead of held by every
                    // idle stream (docs/benchmarks.md, "Where an idle connection's memory goes").
                    Box::pin(async move {
                        let res = fut.await?;
                        if let Some((method, path, query)) = logged {
                            tracing::debug!(%method, %path, %query, status = res.status().as_u16(), "request");
                        }
                        Ok(res)
                    })
                })
                .configure(|cfg| http::routes(cfg, dev))
        })
        .on_connect(crate::delivery::peer::on_connect)
        // A client that closes its side of the connection is gone: its stream ends at once and
        // frees its slot, instead of at its next heartbeat (a browser reloading a page closes
        // the old stream as it opens the new one). Nobody half-closes a request to Herald.
        .h1_allow_half_closed(false)
        .max_connections(settings.max_connections.max(1024))
        .shutdown_timeout(1)
        .disable_signals();
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let listener = crate::delivery::peer::listener(listen, 4096, heartbeat)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
        let server = server.listen(listener)?;
        for addr in server.addrs() {
            tracing::info!("listening on http://{addr}");
        }
        let port = server.addrs().first().map_or(0, |a| a.port());
        fleet.set_this_pod(settings.pod_name.clone().unwrap_or_else(|| format!("{}:{port}", hostname())));
        // On this thread, not the hub's: the hub thread is kept for the dispatcher.
        actix_web::rt::spawn(dashboard::run(reporting));
        if dev {
            warn_dev_mode(&server.addrs(), allow_remote);
        }
        let server = server.run();
        actix_web::rt::spawn(crate::ops::drain::on_signal(admission, settings.drain, server.handle()));
        server.await
    })?;
    // Streams are closed: take this pod's members out of presence now rather than after the TTL.
    handle.block_on(presence.clear(std::time::Duration::from_secs(2)));
    Ok(())
}

fn hostname_static() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(hostname)
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "OPTIONS"])
        .allowed_headers(["authorization", "content-type", "last-event-id", "cache-control"])
        .expose_headers(["retry-after"])
        .supports_credentials()
        .max_age(3600);
    for origin in origins {
        cors = if origin == LOOPBACK_ORIGINS {
            cors.allowed_origin_fn(|origin, _| origin.to_str().is_ok_and(is_loopback_origin))
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// Dev mode's answer to a request whose `Host` is not this machine (a DNS rebinding: a page on
/// another site whose name resolves to 127.0.0.1): 403.
async fn loopback_host_only(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<actix_web::body::EitherBody<impl actix_web::body::MessageBody>>,
    actix_web::Error,
> {
    let host = req.headers().get(actix_web::http::header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(is_loopback_host_header) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let error = crate::http::ApiError::new(
        actix_web::http::StatusCode::FORBIDDEN,
        "host_not_allowed",
        "dev mode answers requests for localhost and loopback addresses only (start it with --allow-remote to answer any Host)",
    );
    let res = actix_web::ResponseError::error_response(&error);
    Ok(req.into_response(res).map_into_right_body())
}

fn warn_dev_mode(addrs: &[std::net::SocketAddr], allow_remote: bool) {
    let url = addrs.first().map(|a| format!("http://{a}/")).unwrap_or_default();
    tracing::warn!("DEVELOPMENT MODE: no authentication, in-process broker, events kept in memory only.");
    tracing::warn!("Do not expose this gateway. Use `herald-gateway serve` in production.");
    if allow_remote {
        tracing::warn!(
            "--allow-remote: anyone who reaches {url} can read any user's stream (/events?user=…), publish to everyone (POST /v1/publish, no key), send client events as anyone, and read /metrics and /dashboard; any Host is answered"
        );
    }
    tracing::info!("demo page: {url}  stream: curl -N '{url}events?user=alice'");
}

/// Raises the soft open-files limit to the hard limit: each SSE connection holds a socket.
pub fn raise_open_files_limit(wanted: usize) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        if (lim.rlim_cur as usize) < wanted + 64 {
            tracing::warn!(
                open_files = lim.rlim_cur,
                max_connections = wanted,
                "the open-files limit is below --max-connections; connections beyond it will fail"
            );
        }
    }
}
