use clap::Parser;
use herald_gateway::commands::{publish, selftest, serve};
use herald_gateway::config::{Cli, Command, Config};
use herald_gateway::ops::telemetry;

// jemalloc rather than the system allocator: it gives the memory of closed connections back to
// the kernel (after ~10 s of decay), where glibc keeps a pod's peak heap resident after a burst
// of connections has gone (docs/benchmarks.md has the numbers).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Before any HTTP client is built (JWKS fetches, the trace exporter): their TLS uses it.
    herald_gateway::access::jwks::install_crypto();
    let cli = Cli::parse();
    let (config, log_format) = match cli.command {
        Command::Publish(args) => std::process::exit(publish::publish(args)),
        Command::Selftest(args) => std::process::exit(selftest::run(args)),
        Command::Serve(args) => {
            let format = args.common.log_format;
            (Config::serve(args), format)
        }
        Command::Dev(args) => {
            let format = args.common.log_format;
            (Config::dev(args), format)
        }
    };
    let telemetry = telemetry::init(log_format);
    let config = match config {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("herald-gateway: refusing to start:");
            for e in errors {
                eprintln!("  - {e}");
            }
            telemetry.shutdown();
            std::process::exit(2);
        }
    };
    let result = serve::run(config);
    if let Err(e) = &result {
        tracing::error!("gateway stopped: {e}");
    }
    // After the drain: the spans of the last connections and publishes go out before exit.
    telemetry.shutdown();
    if result.is_err() {
        std::process::exit(1);
    }
}
