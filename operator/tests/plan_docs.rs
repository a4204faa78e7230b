//! The `herald-operator plan` examples of docs/operations.md and docs/capacity.md print what
//! the docs say.

use std::process::{Command, Output};

#[test]
fn the_documented_plan_examples_hold() {
    assert_eq!(plan_examples_hold("docs/operations.md"), 3, "three examples in operations.md");
    assert_eq!(plan_examples_hold("docs/capacity.md"), 1, "one example in capacity.md");
}

/// Runs every `herald-operator plan` line of `doc` (followed by its `# desired: N` line), as
/// text and as JSON, and returns how many there were.
fn plan_examples_hold(doc: &str) -> usize {
    let doc = std::fs::read_to_string(herald_testkit::workspace_root().join(doc)).unwrap();
    let mut examples = 0;
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(args) = line.strip_prefix("herald-operator plan ") else { continue };
        let expected = lines.next().and_then(|l| l.strip_prefix("# desired: ")).expect("an expected `# desired:` line");
        let out = operator(&["plan"], args, &[]);
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with(&format!("desired: {expected}\nreason: ")), "{line}\nprinted {stdout}");
        let json = operator(&["plan"], args, &["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(v["desired"].to_string(), expected);
        examples += 1;
    }
    examples
}

/// Runs `herald-operator <command> <documented args> <extra>` from the repository's root.
fn operator(command: &[&str], documented: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald-operator"))
        .current_dir(herald_testkit::workspace_root())
        .args(command)
        .args(documented.split_whitespace())
        .args(extra)
        .output()
        .unwrap()
}

/// The `herald-operator render` example of docs/operations.md prints the kinds it says.
#[test]
fn the_documented_render_example_holds() {
    let doc = std::fs::read_to_string(herald_testkit::workspace_root().join("docs/operations.md")).unwrap();
    let mut lines = doc.lines();
    let args = lines.find_map(|l| l.strip_prefix("herald-operator render ")).expect("a render example");
    let expected = lines.next().and_then(|l| l.strip_prefix("# kinds: ")).expect("an expected `# kinds:` line");
    let out = operator(&["render"], args, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(kinds.join(", "), expected);
    assert!(stdout.contains("replicas: 3"), "{stdout}");
}
