//! `herald-loadtest`: see `docs/loadtest.md`.

use clap::Parser;
use herald_loadtest::cli::{Cli, Command};
use herald_loadtest::proto::Scenario;

fn main() {
    let cli = Cli::parse();
    // One core per process: a current-thread runtime, tasks on a LocalSet.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-loadtest: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        match cli.command {
            Command::Connect(a) => herald_loadtest::run::command(Scenario::Connect, a).await,
            Command::Fanout(a) => herald_loadtest::run::command(Scenario::Fanout, a).await,
            Command::Targeted(a) => herald_loadtest::run::command(Scenario::Targeted, a).await,
            Command::Churn(a) => herald_loadtest::run::command(Scenario::Churn, a).await,
            Command::Resume(a) => herald_loadtest::run::command(Scenario::Resume, a).await,
            Command::Soak(a) => herald_loadtest::run::command(Scenario::Soak, a).await,
            Command::Chaos(a) => herald_loadtest::chaos::command(a).await,
            Command::Run(a) => herald_loadtest::dist::coordinate_main(a).await,
            Command::Worker(a) => herald_loadtest::dist::worker_main(a).await,
            Command::Share => herald_loadtest::run::share_main().await,
        }
    });
    std::process::exit(code);
}
