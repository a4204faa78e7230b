//! The validated configuration: the command line's flags (`flags.rs`) checked and turned
//! into what the gateway runs with.
//!
//! Everything is checked before a port is bound, and every problem is reported at once.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::access::jwks::RemoteKeys;
use crate::access::publish_keys::{KeyAuth, PublishKeys};
use crate::access::tokens::{ChannelPattern, Verifier};
use crate::broker::HistoryLimits;
use crate::broker::nats::{History, NatsOptions, StreamOptions};
use crate::names::validate_name;

/// The command line.
mod flags;

pub use flags::{Cli, Command, CommonArgs, DevArgs, LogFormat, PublishArgs, ServeArgs, Toggle};

/// How clients authenticate.
pub enum ClientAuth {
    /// `dev` mode: the user comes from `?user=`.
    Open,
    Jwt(Arc<Verifier>),
}

/// Tuning shared by both modes, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat: Duration,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_channels: usize,
    pub allowed_origins: Vec<String>,
    pub retry_ms: u64,
    pub max_payload_bytes: usize,
    pub client_queue_bytes: usize,
    pub subject_prefix: String,
    pub history: HistoryLimits,
    pub max_replay: usize,
    pub drain: Duration,
    pub workers: usize,
    pub log_format: LogFormat,
    pub pod_name: Option<String>,
    pub presence_channels: Vec<ChannelPattern>,
    pub presence_ttl: Duration,
    pub client_event_max_bytes: usize,
    pub client_event_rate: u32,
    pub client_event_burst: u32,
    /// Resumes per user: (sustained per second, burst); `None`: no budget.
    pub resume_budget: Option<(u32, u32)>,
}

/// The least `--resume-burst` by default (the default `--max-connections-per-user`).
const DEFAULT_RESUME_BURST: u32 = 100;

/// The entry of `--allowed-origins` that dev mode uses by default: any page served from this
/// machine (`http://localhost:*`, `http://127.0.0.1:*`, `http://[::1]:*`, and https).
pub const LOOPBACK_ORIGINS: &str = "loopback";

/// Whether `origin` (`scheme://host[:port]`) is a page served from this machine.
pub fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.path() == "/" && u.host().is_some_and(|h| is_loopback_host(&h))
    })
}

/// Whether a `Host` header names this machine: `localhost` (or a name under it) or a loopback
/// address, with any port. Anything else reaching a dev gateway is a DNS rebinding.
pub fn is_loopback_host_header(host: &str) -> bool {
    url::Url::parse(&format!("http://{host}/"))
        .is_ok_and(|u| u.path() == "/" && u.username().is_empty() && u.host().is_some_and(|h| is_loopback_host(&h)))
}

fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// The validated configuration of a gateway.
pub struct Config {
    pub dev: bool,
    /// Dev mode only: listen beyond loopback and answer any `Host` (`--allow-remote`).
    pub allow_remote: bool,
    pub listen: SocketAddr,
    /// `None` in dev mode (in-process broker).
    pub nats: Option<NatsOptions>,
    pub client_auth: ClientAuth,
    pub publish_auth: KeyAuth,
    /// `/dashboard`'s keys (`--dashboard-keys-file`).
    pub dashboard_auth: KeyAuth,
    pub settings: Settings,
}

impl Config {
    /// Validates `serve` flags. Returns every problem found.
    pub fn serve(args: Box<ServeArgs>) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let listen = parse_listen(&args.listen, &mut errors);
        let settings = Settings::from_args(args.common, &mut errors);

        let nats = match args.nats_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Some(NatsOptions {
                url: url.to_owned(),
                credentials: args.nats_creds.clone(),
                prefix: settings.subject_prefix.clone(),
                name: format!("herald-gateway {}", hostname()),
                history: match args.history {
                    Toggle::On => {
                        History::Ensure(StreamOptions { limits: settings.history, replicas: args.history_replicas })
                    }
                    Toggle::Off => History::Off,
                },
                // Never longer than the stream remembers message ids: a retry after that could be
                // stored twice.
                publish_retry: Duration::from_secs(args.publish_retry_secs).min(settings.history.dedup_window),
            }),
            _ => {
                errors.push("no NATS URL: set --nats-url or HERALD_NATS_URL (or run `herald-gateway dev`)".into());
                None
            }
        };

        let mut verifier = Verifier::new(args.jwt_issuer.clone(), args.jwt_audience.clone());
        if let Some(path) = &args.jwt_secret_file
            && let Err(e) = verifier.add_secret_file(path)
        {
            errors.push(format!("--jwt-secret-file {e}"));
        }
        for path in &args.jwt_public_key_file {
            if let Err(e) = verifier.add_pem_file(path) {
                errors.push(format!("--jwt-public-key-file {e}"));
            }
        }
        if let Some(path) = &args.jwks_file
            && let Err(e) = verifier.add_jwks_file(path)
        {
            errors.push(format!("--jwks-file {e}"));
        }
        let jwks_urls: Vec<String> = args.jwks_url.iter().filter(|u| !u.trim().is_empty()).cloned().collect();
        if !jwks_urls.is_empty() {
            let every = Duration::from_secs(args.jwks_refresh_secs);
            match RemoteKeys::new(&jwks_urls, every, args.jwks_allow_http) {
                Ok(remote) => verifier.set_remote(Arc::new(remote)),
                Err(e) => errors.push(e),
            }
        }
        let no_key_flags = args.jwt_secret_file.is_none()
            && args.jwt_public_key_file.is_empty()
            && args.jwks_file.is_none()
            && jwks_urls.is_empty();
        if no_key_flags {
            errors.push(
                "no client-token key: set --jwt-secret-file, --jwt-public-key-file, --jwks-file or --jwks-url \
                 (HERALD_JWT_SECRET_FILE, HERALD_JWT_PUBLIC_KEY_FILE, HERALD_JWKS_FILE, HERALD_JWKS_URL)"
                    .into(),
            );
        }

        if args.history == Toggle::Off && !settings.presence_channels.is_empty() {
            errors.push(
                "--presence-channels needs JetStream (presence lives in a key-value bucket): not with --history off"
                    .into(),
            );
        }
        if !(1..=5).contains(&args.history_replicas) {
            errors.push(format!("--history-replicas must be 1..=5, got {}", args.history_replicas));
        }

        let publish_auth = match &args.publish_keys_file {
            Some(path) => match PublishKeys::load(path) {
                Ok(keys) => KeyAuth::Keys(keys),
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| format!("--publish-keys-file {e}")));
                    KeyAuth::Disabled
                }
            },
            None => KeyAuth::Disabled,
        };

        let dashboard_auth = match &args.dashboard_keys_file {
            Some(path) => match PublishKeys::load(path) {
                Ok(keys) => {
                    if let KeyAuth::Keys(publishing) = &publish_auth
                        && let Some((dashboard, publisher)) = keys.shared_secret(publishing)
                    {
                        errors.push(format!(
                            "--dashboard-keys-file: key {dashboard:?} has the secret of publisher key {publisher:?}; \
                             a key typed into a browser must not be one that publishes to every user"
                        ));
                    }
                    KeyAuth::Keys(keys)
                }
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| format!("--dashboard-keys-file {e}")));
                    KeyAuth::Disabled
                }
            },
            None => KeyAuth::Disabled,
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            dev: false,
            allow_remote: false,
            listen: listen.expect("checked above"),
            nats,
            client_auth: ClientAuth::Jwt(Arc::new(verifier)),
            publish_auth,
            dashboard_auth,
            settings,
        })
    }

    /// Validates `dev` flags.
    pub fn dev(args: Box<DevArgs>) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let listen = parse_listen(&args.listen, &mut errors);
        if let Some(addr) = listen.filter(|a| !a.ip().is_loopback())
            && !args.allow_remote
        {
            errors.push(format!(
                "dev mode listens on loopback only: {addr} would let anyone who reaches it read every stream and publish to everyone; use 127.0.0.1, or add --allow-remote"
            ));
        }
        let mut settings = Settings::from_args(args.common, &mut errors);
        if settings.allowed_origins.is_empty() {
            // Pages served from this machine only: not any site the developer's browser visits.
            settings.allowed_origins.push(LOOPBACK_ORIGINS.into());
        }
        if settings.presence_channels.is_empty() {
            settings.presence_channels.push(ChannelPattern::Prefix(String::new()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            dev: true,
            allow_remote: args.allow_remote,
            listen: listen.expect("checked above"),
            nats: None,
            client_auth: ClientAuth::Open,
            publish_auth: KeyAuth::Open,
            dashboard_auth: KeyAuth::Open,
            settings,
        })
    }
}

impl Settings {
    fn from_args(a: CommonArgs, errors: &mut Vec<String>) -> Settings {
        if a.heartbeat_secs == 0 || a.heartbeat_secs > 3600 {
            errors.push(format!("--heartbeat-secs must be 1..=3600, got {}", a.heartbeat_secs));
        }
        if a.max_connections == 0 {
            errors.push("--max-connections must be at least 1".into());
        }
        if a.max_channels == 0 || a.max_channels > 1024 {
            errors.push(format!("--max-channels must be 1..=1024, got {}", a.max_channels));
        }
        if a.retry_ms == 0 || a.retry_ms > 600_000 {
            errors.push(format!("--retry-ms must be 1..=600000, got {}", a.retry_ms));
        }
        if a.max_payload_bytes == 0 || a.max_payload_bytes > 1024 * 1024 {
            errors.push(format!(
                "--max-payload-bytes must be 1..=1048576 (NATS' default limit), got {}",
                a.max_payload_bytes
            ));
        }
        if a.client_queue_bytes < 4096 {
            errors.push(format!("--client-queue-bytes must be at least 4096, got {}", a.client_queue_bytes));
        }
        let max_age = duration_flag("--history-max-age", &a.history_max_age, "90s, 15m, 24h, 7d", errors);
        if a.history_max_per_subject == 0 {
            errors.push("--history-max-per-subject must be at least 1".into());
        }
        let dedup_window =
            duration_flag("--history-dedup-window", &a.history_dedup_window, "90s, 2m, 1h", errors).min(max_age);
        if a.max_replay == 0 {
            errors.push("--max-replay must be at least 1".into());
        }
        if a.drain_secs > 3600 {
            errors.push(format!("--drain-secs must be at most 3600, got {}", a.drain_secs));
        }
        let pod_name = a.pod_name.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
        if let Some(pod) = &pod_name
            && (pod.len() > 253 || pod.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            errors.push(format!("--pod-name must be 1..=253 characters without spaces, got {pod:?}"));
        }
        if let Err(e) = validate_name(&a.subject_prefix) {
            errors.push(format!("--subject-prefix {e}"));
        }
        let mut presence_channels = Vec::new();
        for p in a.presence_channels.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            match ChannelPattern::parse(p) {
                Ok(pattern) => presence_channels.push(pattern),
                Err(e) => errors.push(format!("--presence-channels: pattern {p:?} {e}")),
            }
        }
        if !(3..=3600).contains(&a.presence_ttl_secs) {
            errors.push(format!("--presence-ttl-secs must be 3..=3600, got {}", a.presence_ttl_secs));
        }
        if !(64..=64 * 1024).contains(&a.client_event_max_bytes) {
            errors.push(format!("--client-event-max-bytes must be 64..=65536, got {}", a.client_event_max_bytes));
        }
        if a.client_event_rate == 0 || a.client_event_rate > 10_000 {
            errors.push(format!("--client-event-rate must be 1..=10000, got {}", a.client_event_rate));
        }
        if a.client_event_burst == 0 || a.client_event_burst > 100_000 {
            errors.push(format!("--client-event-burst must be 1..=100000, got {}", a.client_event_burst));
        }
        if a.resume_rate == 0 || a.resume_rate > 10_000 {
            errors.push(format!("--resume-rate must be 1..=10000, got {}", a.resume_rate));
        }
        if let Some(burst) = a.resume_burst
            && (burst == 0 || burst > 100_000)
        {
            errors.push(format!("--resume-burst must be 1..=100000, got {burst}"));
        }
        // By default as many resumes at once as one user may hold streams, so that a gateway's
        // death never throttles its clients' return; none with no per-user limit.
        let resume_burst = a.resume_burst.or_else(|| {
            (a.max_connections_per_user > 0)
                .then(|| u32::try_from(a.max_connections_per_user).unwrap_or(u32::MAX).max(DEFAULT_RESUME_BURST))
        });
        let mut origins = Vec::new();
        for o in a.allowed_origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            if o == "*" {
                // CORS's own `*` never admits credentials; the gateway's streams take a cookie.
                errors.push(
                    "--allowed-origins: \"*\" would let every site a signed-in user visits read their \
                     streams with the herald_token cookie; list the origins of your app"
                        .into(),
                );
            } else if url::Url::parse(o).is_ok_and(|u| u.has_host() && u.path() == "/" && !o.ends_with('/')) {
                origins.push(o.to_owned());
            } else {
                errors.push(format!("--allowed-origins: {o:?} is not an origin like https://app.example.com"));
            }
        }
        Settings {
            heartbeat: Duration::from_secs(a.heartbeat_secs),
            max_connections: a.max_connections,
            max_connections_per_user: a.max_connections_per_user,
            max_channels: a.max_channels,
            allowed_origins: origins,
            retry_ms: a.retry_ms,
            max_payload_bytes: a.max_payload_bytes,
            client_queue_bytes: a.client_queue_bytes,
            subject_prefix: a.subject_prefix,
            history: HistoryLimits { max_age, max_per_subject: a.history_max_per_subject, dedup_window },
            max_replay: a.max_replay,
            drain: Duration::from_secs(a.drain_secs),
            workers: a.workers,
            log_format: a.log_format,
            pod_name,
            presence_channels,
            presence_ttl: Duration::from_secs(a.presence_ttl_secs),
            client_event_max_bytes: a.client_event_max_bytes,
            client_event_rate: a.client_event_rate,
            client_event_burst: a.client_event_burst,
            resume_budget: resume_burst.map(|burst| (a.resume_rate, burst)),
        }
    }
}

/// The value of the duration flag `flag`, at least 1 s; when it is not one, an error that shows
/// the forms it takes (`examples`), and 1 s.
fn duration_flag(flag: &str, value: &str, examples: &str, errors: &mut Vec<String>) -> Duration {
    match parse_duration(value) {
        Some(d) if d >= Duration::from_secs(1) => d,
        _ => {
            errors.push(format!("{flag} {value:?} is not a duration of at least 1s (seconds, or like {examples})"));
            Duration::from_secs(1)
        }
    }
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn parse_listen(s: &str, errors: &mut Vec<String>) -> Option<SocketAddr> {
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        _ => {
            errors.push(format!("--listen {s:?} is not an address like 0.0.0.0:8080"));
            None
        }
    }
}

pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn loopback_origins_and_hosts() {
        for o in [
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "https://127.9.9.9",
            "http://[::1]:3000",
            "http://app.localhost:1",
        ] {
            assert!(is_loopback_origin(o), "{o}");
        }
        for o in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://10.0.0.1",
            "null",
            "file:///x",
            "http://127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_origin(o), "{o}");
        }
        for h in ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST"] {
            assert!(is_loopback_host_header(h), "{h}");
        }
        for h in [
            "attacker.example",
            "attacker.example:8080",
            "127.0.0.1.attacker.example",
            "192.168.1.2:8080",
            "",
            "a@localhost",
        ] {
            assert!(!is_loopback_host_header(h), "{h}");
        }
    }

    /// `herald-gateway serve` with `args`, parsed.
    fn serve_args(args: &[&str]) -> Box<ServeArgs> {
        let mut argv = vec!["herald-gateway", "serve"];
        argv.extend_from_slice(args);
        let Command::Serve(a) = Cli::try_parse_from(argv).expect("flags parse").command else { unreachable!() };
        a
    }

    fn serve(args: &[&str]) -> Result<Config, Vec<String>> {
        Config::serve(serve_args(args))
    }

    #[test]
    fn serve_refuses_without_nats_or_keys_and_names_both() {
        // Flags win over any HERALD_* variables of the environment running the tests.
        let errs = serve(&["--nats-url", "", "--heartbeat-secs", "0", "--max-channels", "0"]).err().unwrap();
        let all = errs.join("\n");
        assert!(all.contains("no NATS URL"), "{all}");
        assert!(all.contains("no client-token key"), "{all}");
        assert!(all.contains("--heartbeat-secs"), "{all}");
        assert!(all.contains("--max-channels"), "{all}");
    }

    /// The settings of `serve` with `args`, and the errors they make.
    fn settings(args: &[&str]) -> (Settings, Vec<String>) {
        let mut errors = Vec::new();
        (Settings::from_args(serve_args(args).common, &mut errors), errors)
    }

    /// The resume budget's burst lets every stream a user may hold resume at once (a gateway
    /// died), at least 100; with no per-user limit there is no budget unless one is asked for.
    #[test]
    fn the_resume_burst_follows_the_per_user_limit() {
        let budget = |args: &[&str]| settings(args).0.resume_budget;
        assert_eq!(budget(&[]), Some((2, 100)));
        assert_eq!(budget(&["--max-connections-per-user", "5"]), Some((2, 100)));
        assert_eq!(budget(&["--max-connections-per-user", "2000"]), Some((2, 2000)));
        assert_eq!(budget(&["--max-connections-per-user", "0"]), None);
        assert_eq!(budget(&["--max-connections-per-user", "0", "--resume-burst", "7"]), Some((2, 7)));
        assert_eq!(budget(&["--resume-rate", "5", "--resume-burst", "10"]), Some((5, 10)));
        let (_, errors) = settings(&["--resume-rate", "0", "--resume-burst", "0"]);
        assert!(errors.iter().any(|e| e.contains("--resume-rate must be 1..=10000")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("--resume-burst must be 1..=100000")), "{errors:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        for bad in ["", "m", "1.5h", "-1", "10 m", "1w", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn any_origin_is_refused() {
        // CORS's `*` with credentials: every site could read a signed-in user's streams.
        let errs = serve(&["--allowed-origins", "https://app.example.com,*"]).err().unwrap();
        assert!(errs.iter().any(|e| e.contains("\"*\"") && e.contains("cookie")), "{errs:?}");
    }

    #[test]
    fn bad_origins_and_listen_are_reported() {
        let errs = serve(&["--listen", "nowhere", "--allowed-origins", "https://ok.example,ftp//bad"]).err().unwrap();
        let all = errs.join("\n");
        assert!(all.contains("--listen \"nowhere\""), "{all}");
        assert!(all.contains("ftp//bad"), "{all}");
        assert!(!all.contains("ok.example"), "{all}");
    }
}
