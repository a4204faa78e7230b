use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald_operator::crd::RealtimeGateway;
use herald_operator::lease::LeaderLease;
use herald_operator::metrics::Metrics;
use herald_operator::scaling::{self, Policy};
use herald_operator::{controller, crd, resources};

#[derive(Parser)]
#[command(name = "herald-operator", version, about = "Runs and scales Herald gateways from their connection counts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator in a cluster.
    Run(RunArgs),
    /// Print the RealtimeGateway CRD as YAML.
    Crdgen,
    /// Show what the operator would decide, without a cluster.
    Plan(PlanArgs),
    /// Print the Deployment, Service and PodDisruptionBudget the operator applies for a
    /// resource, as YAML, without a cluster.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// A RealtimeGateway manifest (YAML).
    #[arg(long)]
    resource: std::path::PathBuf,
    /// Replicas of the Deployment (default: the resource's minimum).
    #[arg(long)]
    replicas: Option<u32>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "HERALD_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Seconds between evaluations of each resource.
    #[arg(long, env = "HERALD_OPERATOR_INTERVAL_SECS", default_value_t = 15)]
    interval_secs: u64,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "HERALD_OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: String,
    /// Name of the leader lease.
    #[arg(long, env = "HERALD_OPERATOR_LEASE_NAME", default_value = "herald-operator")]
    lease_name: String,
    /// Namespace of the leader lease (default: the operator's own namespace).
    #[arg(long, env = "HERALD_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the lease: must differ between replicas (default: the pod
    /// name, from POD_NAME or HOSTNAME).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log lines as text, or as one JSON object per line (for a log pipeline).
    #[arg(long, env = "HERALD_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// A RealtimeGateway manifest (YAML).
    #[arg(long)]
    resource: std::path::PathBuf,
    /// Replicas running now.
    #[arg(long)]
    current: u32,
    /// One connection count per ready pod, `?` for a pod whose count is missing: `900,1200,?`.
    #[arg(long, default_value = "")]
    connections: String,
    /// Earlier recommendations: `s:d,…` (s seconds ago the desired count was d).
    #[arg(long, default_value = "")]
    history: String,
    /// Print JSON: {"desired":N,"reason":…}.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Crdgen => {
            print!("{}", crd::crd_yaml());
            0
        }
        Command::Plan(args) => plan(args),
        Command::Render(args) => render(args),
        Command::Run(args) => {
            // Colours only for a person at a terminal: a log collector would store the escapes.
            let logs = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            match args.log_format {
                LogFormat::Text => logs.init(),
                LogFormat::Json => logs.json().flatten_event(true).init(),
            }
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            match runtime.block_on(run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}

fn render(args: RenderArgs) -> i32 {
    let result = (|| -> Result<String, String> {
        let text = std::fs::read_to_string(&args.resource).map_err(|e| format!("{}: {e}", args.resource.display()))?;
        let rtgw: RealtimeGateway =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", args.resource.display()))?;
        crd::validate(&rtgw.spec)
            .map_err(|problems| format!("{}: {}", args.resource.display(), problems.join("; ")))?;
        let replicas = args.replicas.unwrap_or(rtgw.spec.replicas.min);
        let yaml = |v: Result<String, serde_yaml::Error>| v.map_err(|e| e.to_string());
        Ok([
            yaml(serde_yaml::to_string(&resources::deployment(&rtgw, replicas)))?,
            yaml(serde_yaml::to_string(&resources::service(&rtgw)))?,
            yaml(serde_yaml::to_string(&resources::pdb(&rtgw)))?,
        ]
        .join("---\n"))
    })();
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("herald-operator render: {e}");
            2
        }
    }
}

fn plan(args: PlanArgs) -> i32 {
    let result = (|| -> Result<scaling::Decision, String> {
        let text = std::fs::read_to_string(&args.resource).map_err(|e| format!("{}: {e}", args.resource.display()))?;
        let rtgw: RealtimeGateway =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", args.resource.display()))?;
        let connections = scaling::parse_connections(&args.connections)?;
        let history = scaling::parse_history(&args.history)?;
        crd::validate(&rtgw.spec)
            .map_err(|problems| format!("{}: {}", args.resource.display(), problems.join("; ")))?;
        Ok(scaling::decide(&Policy::from_spec(&rtgw.spec), args.current, &connections, &history))
    })();
    match result {
        Ok(d) if args.json => {
            println!("{}", serde_json::json!({ "desired": d.desired, "reason": d.reason }));
            0
        }
        Ok(d) => {
            println!("desired: {}\nreason: {}", d.desired, d.reason);
            0
        }
        Err(e) => {
            eprintln!("herald-operator plan: {e}");
            2
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(&args.metrics_listen).await?;
    tokio::spawn(herald_operator::metrics::serve(listener, metrics.clone()));

    let identity = args
        .identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no lease identity: set POD_NAME (or --identity) to the pod's name"))?;
    let lease_namespace = args.lease_namespace.unwrap_or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| client.default_namespace().to_owned())
    });
    let lease = Arc::new(LeaderLease::new(
        kube::Api::namespaced(client.clone(), &lease_namespace),
        &args.lease_name,
        &identity,
        Duration::from_secs(15),
    ));
    let renew = lease.duration / 3;
    while !lease.try_acquire().await.unwrap_or(false) {
        tokio::time::sleep(renew).await;
    }
    metrics.leader.set(1);
    tracing::info!(identity, "leading");
    let renewer = tokio::spawn({
        let lease = lease.clone();
        async move {
            let mut renewed = std::time::Instant::now();
            loop {
                tokio::time::sleep(renew).await;
                match lease.try_acquire().await {
                    Ok(true) => renewed = std::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("lost the leader lease; exiting so only one replica acts");
                        std::process::exit(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the leader lease");
                        // Step down well before another replica may take over (after `duration`).
                        if renewed.elapsed() >= lease.duration * 2 / 3 {
                            tracing::error!("cannot renew the leader lease; exiting so only one replica acts");
                            std::process::exit(1);
                        }
                    }
                }
            }
        }
    });

    let ctx = controller::Context::new(
        client,
        metrics.clone(),
        Duration::from_secs(args.interval_secs.max(1)),
        Some(identity),
    );
    // Runs until SIGTERM or Ctrl-C; then hand the lease over at once.
    controller::run(ctx, args.namespace).await;
    renewer.abort();
    metrics.leader.set(0);
    if let Err(e) = lease.release().await {
        tracing::warn!(error = %e, "could not give up the leader lease; a standby takes over when it runs out");
    }
    tracing::info!("stopped");
    Ok(())
}
