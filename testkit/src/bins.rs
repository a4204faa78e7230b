//! Where the binaries under test are: the workspace's own, of the same build profile as the
//! running test (so that `cargo test --release` runs release binaries), and the pinned
//! nats-server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::workspace_root;

/// `herald-gateway`, or the binary `HERALD_GATEWAY_BIN` names.
pub fn gateway() -> PathBuf {
    match std::env::var_os("HERALD_GATEWAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_bin("herald-gateway", "herald-gateway"),
    }
}

/// `herald-loadtest`.
pub fn loadtest() -> PathBuf {
    workspace_bin("herald-loadtest", "herald-loadtest")
}

/// The pinned nats-server installed by `scripts/test` into `.venv`, or the one
/// `HERALD_TEST_NATS_SERVER` names.
pub fn nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_TEST_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let local = workspace_root().join(".venv/bin/nats-server");
    assert!(
        local.exists(),
        "nats-server not found: run ./scripts/test (it installs the pinned server into .venv), or set HERALD_TEST_NATS_SERVER"
    );
    local
}

/// The directory of the running test's build profile, `target/<profile>/`: a test runs from
/// `target/<profile>/deps/`, and the workspace's binaries are linked beside that.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("target/<profile>/deps/<test>");
    let dir = if deps.file_name().is_some_and(|name| name == "deps") { deps.parent() } else { Some(deps) };
    dir.expect("target/<profile>/").to_path_buf()
}

/// The binary `bin` of the workspace package `package`, from this test's profile directory.
/// `cargo test --workspace` builds it along with the tests; a test of another package run on
/// its own (`cargo test -p …`) builds it here, with the same profile, when it is missing.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    built(package, "--bin", bin, &profile_dir().join(bin))
}

/// The example `name` of the workspace package `package`, from this test's profile directory
/// (`target/<profile>/examples/`), built as [`workspace_bin`] builds a binary when missing.
pub fn workspace_example(package: &str, name: &str) -> PathBuf {
    built(package, "--example", name, &profile_dir().join("examples").join(name))
}

/// `path`, the target `name` of kind `kind` (`--bin` or `--example`) of `package`, built first
/// when it is missing.
fn built(package: &str, kind: &str, name: &str, path: &Path) -> PathBuf {
    // One build at a time: the test threads of one binary may all ask at once.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !path.exists() {
        build(package, kind, name, &profile_dir());
    }
    assert!(
        path.exists(),
        "{} is not built: cargo build -p {package} {kind} {name} with the same profile",
        path.display()
    );
    path.to_path_buf()
}

/// `cargo build -p <package> <--bin|--example> <name>` with the profile of `dir` (`debug` is the
/// dev profile).
fn build(package: &str, kind: &str, name: &str, dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "-q", "-p", package, kind, name]).current_dir(workspace_root());
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
        None => panic!("no profile in {}", dir.display()),
    }
    let status = command.status().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(status.success(), "{command:?} failed");
}
