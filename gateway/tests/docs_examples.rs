//! The shell examples of docs/protocol.md run against a real gateway and NATS. A `# {…}` line
//! under a command is its expected JSON answer.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::{Gateway, Nats, PUBLISH_KEY, eventually, token, workspace_root};

fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Structural equality where the string `"…"` in `expected` stands for any string.
fn matches(expected: &serde_json::Value, got: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (expected, got) {
        (String(e), String(_)) if e == "…" => true,
        (Array(e), Array(g)) => e.len() == g.len() && e.iter().zip(g).all(|(e, g)| matches(e, g)),
        (Object(e), Object(g)) => e.len() == g.len() && e.iter().all(|(k, v)| g.get(k).is_some_and(|g| matches(v, g))),
        _ => expected == got,
    }
}

fn shell(block: &str, env: &[(&str, String)]) -> Command {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_herald-gateway")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["-o", "pipefail", "-c", block]).env("PATH", path).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_examples_work() {
    let doc = std::fs::read_to_string(workspace_root().join("docs/protocol.md")).unwrap();
    let blocks = sh_blocks(&doc);
    assert!(blocks.len() >= 6, "found {} sh blocks", blocks.len());

    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let env = [
        ("HERALD", format!("http://{}", gw.addr)),
        ("TOKEN", token("u1", &["booking:*", "agent:*"], 600)),
        ("KEY", PUBLISH_KEY.to_owned()),
    ];

    let (streams, others): (Vec<_>, Vec<_>) = blocks.iter().partition(|b| b.contains("curl -sN"));
    assert_eq!(streams.len(), 1, "one streaming example");
    let mut stream = shell(streams[0], &env).spawn().unwrap();
    eventually("the example stream is connected", Duration::from_secs(10), || async {
        gw.stats().await["connections"] == 1
    })
    .await;

    for block in others {
        let out = shell(block, &env).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "example failed:\n{block}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
        if let Some(expected) = block.lines().find_map(|l| l.trim().strip_prefix("# {")) {
            let expected: serde_json::Value = serde_json::from_str(&format!("{{{expected}")).unwrap();
            let got: serde_json::Value =
                serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("{block}\nprinted {stdout}"));
            assert!(matches(&expected, &got), "example:\n{block}\nprinted {got}");
        }
    }

    let _ = stream.wait();
    let mut streamed = String::new();
    stream.stdout.take().unwrap().read_to_string(&mut streamed).unwrap();
    assert!(streamed.contains("event: connected"), "{streamed}");
    assert!(streamed.contains("event: booking_update"), "{streamed}");
    assert!(streamed.contains(r#""target":"channel""#), "{streamed}");
}
