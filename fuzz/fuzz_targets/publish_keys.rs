//! The publisher keys file through `PublishKeys::parse` and `check`: errors never depend on (and
//! so never echo) a secret, and every loaded secret authenticates as a key of that secret.
#![no_main]

use herald_gateway::access::publish_keys::PublishKeys;
use herald_gateway_fuzz::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = text(data);
    let parsed = PublishKeys::parse(&file);
    let masked = PublishKeys::parse(&mask_secrets(&file));
    match (&parsed, &masked) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "error messages depend on the secrets"),
        _ => panic!("validity depends on the content of the secrets: {:?} vs {:?}", parsed.is_ok(), masked.is_ok()),
    }
    let Ok(keys) = parsed else { return };

    let entries = entries(&file);
    assert_eq!(keys.is_empty(), entries.is_empty());
    for (_, secret) in &entries {
        let found = keys.check(secret).unwrap_or_else(|| panic!("a loaded secret does not authenticate"));
        assert!(entries.iter().any(|(n, s)| *n == found && s == secret), "secret authenticates as key {found:?}");
    }
    assert_eq!(keys.check(""), None);
    for (_, secret) in &entries {
        let wrong = format!("{secret}!");
        if !entries.iter().any(|(_, s)| *s == wrong) {
            assert_eq!(keys.check(&wrong), None, "a longer secret authenticates");
        }
    }
});

/// The `(name, secret)` lines of a file that parsed, read as the format describes them.
fn entries(file: &str) -> Vec<(&str, &str)> {
    file.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, s)| (n.trim(), s.trim()))
        .collect()
}

/// The same file with every secret replaced by as many `x` (or `y`) bytes.
fn mask_secrets(file: &str) -> String {
    let mut out = String::with_capacity(file.len());
    for chunk in file.split_inclusive('\n') {
        let content = chunk.strip_suffix('\n').map(|c| c.strip_suffix('\r').unwrap_or(c)).unwrap_or(chunk);
        let ending = &chunk[content.len()..];
        let line = content.trim();
        let Some(colon) = content.find(':').filter(|_| !line.is_empty() && !line.starts_with('#')) else {
            out.push_str(chunk);
            continue;
        };
        let raw = &content[colon + 1..];
        let secret = raw.trim();
        let start = colon + 1 + (raw.len() - raw.trim_start().len());
        let fill = if secret.bytes().all(|b| b == b'x') { "y" } else { "x" };
        out.push_str(&content[..start]);
        out.push_str(&fill.repeat(secret.len()));
        out.push_str(&content[start + secret.len()..]);
        out.push_str(ending);
    }
    out
}
