//! `herald-gateway publish`: one event from a shell, through NATS or a gateway's HTTP API.
//! The request is validated exactly as `POST /v1/publish` validates it.

use std::io::Read;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::broker::Broker;
use crate::broker::nats::{History, NatsBroker, NatsOptions};
use crate::config::PublishArgs;
use crate::http::publish::validate;

/// Give up on a publish that has not completed after this long.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(25);

/// How long a publish through NATS is retried while the stream cannot store it (the gateway's
/// default `--publish-retry-secs`), within [`PUBLISH_TIMEOUT`].
const PUBLISH_RETRY: Duration = Duration::from_secs(20);

/// Runs the command; returns the process exit code.
pub fn publish(args: PublishArgs) -> i32 {
    match run(args) {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("herald-gateway publish: {e}");
            1
        }
    }
}

fn run(args: PublishArgs) -> Result<String, String> {
    let data = if args.data == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading standard input: {e}"))?;
        s
    } else {
        args.data.clone()
    };
    let data: Box<RawValue> = serde_json::from_str(data.trim()).map_err(|e| format!("--data is not JSON: {e}"))?;
    let body = serde_json::to_vec(&serde_json::json!({
        "type": args.event_type,
        "data": data,
        "users": args.users,
        "channels": args.channels,
        "broadcast": args.broadcast,
        "durable": !args.ephemeral,
        "id": args.id,
    }))
    .map_err(|e| e.to_string())?;
    // The gateway enforces its own payload limit; here only the NATS maximum applies.
    let valid = validate(&body, 1024 * 1024).map_err(|e| e.message)?;

    if let Some(url) = &args.url {
        let key = match (&args.key, &args.key_file) {
            (Some(k), _) => Some(k.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let endpoint = format!("{}/v1/publish", url.trim_end_matches('/'));
        crate::access::jwks::install_crypto();
        let runtime = current_thread_runtime()?;
        return runtime.block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(PUBLISH_TIMEOUT)
                .user_agent(crate::USER_AGENT)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            let mut req = client.post(&endpoint).header(reqwest::header::CONTENT_TYPE, "application/json");
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            let res = req.body(body).send().await.map_err(|e| format!("POST {endpoint}: {}", e.without_url()))?;
            let status = res.status();
            let text = res.text().await.map_err(|e| format!("reading the response: {}", e.without_url()))?;
            if status.is_success() { Ok(text) } else { Err(format!("{status}: {text}")) }
        });
    }

    let Some(nats_url) = args.nats_url.filter(|u| !u.trim().is_empty()) else {
        return Err("say where to publish: --url <gateway> (HTTP) or --nats-url <nats://…> (NATS)".into());
    };
    let opts = NatsOptions {
        url: nats_url,
        credentials: args.nats_creds,
        prefix: args.subject_prefix,
        name: "herald-gateway publish".into(),
        history: if args.ephemeral { History::Off } else { History::Existing },
        publish_retry: PUBLISH_RETRY,
    };
    current_thread_runtime()?.block_on(async move {
        tokio::time::timeout(PUBLISH_TIMEOUT, async move {
            let broker = NatsBroker::connect(&opts).await.map_err(|e| e.to_string())?;
            let ids = broker.publish(valid.targets, valid.event).await.map_err(|e| e.to_string())?;
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            Ok(serde_json::json!({ "ids": ids }).to_string())
        })
        .await
        .map_err(|_| format!("NATS did not accept the event within {}s", PUBLISH_TIMEOUT.as_secs()))?
    })
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}
