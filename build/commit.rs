//! Build script of the gateway and the operator: names the commit they are built from, as
//! `HERALD_COMMIT`, for `herald_build_info`. From the `HERALD_COMMIT` environment variable
//! when set (an image build, where the repository's history is not in the context), else from
//! git, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("HERALD_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=HERALD_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
