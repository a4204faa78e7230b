//! `herald-operator run`'s log lines: JSON objects with `--log-format json`, and plain text
//! without colour escapes when stderr is not a terminal (a log collector's pipe). The run has no
//! cluster to reach, so it logs why and exits 1.

use std::process::Command;

fn run(format: &str) -> (i32, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald-operator"))
        .args(["run", "--log-format", format, "--metrics-listen", "127.0.0.1:0"])
        // No cluster: no kubeconfig, no in-cluster service account.
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("none"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (code, stderr) = run("json");
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"level\":\"ERROR\"")), "the reason it stopped: {stderr}");
}

#[test]
fn text_logs_to_a_pipe_have_no_escape_codes() {
    let (code, stderr) = run("text");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes in: {stderr:?}");
}
