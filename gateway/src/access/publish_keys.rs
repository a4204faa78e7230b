//! Keys files of `name:secret` lines, separate from client tokens: the publisher keys
//! (`--publish-keys-file`) and the dashboard keys (`--dashboard-keys-file`).
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time against every key,
//! so neither timing nor an early exit reveals which key (or how much of one) matched.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest secret accepted in a keys file.
const MIN_SECRET_LEN: usize = 16;

#[derive(Clone)]
struct Key {
    name: String,
    digest: [u8; 32],
}

/// The loaded publisher keys.
#[derive(Clone, Default)]
pub struct PublishKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for PublishKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("PublishKeys").field("names", &names).finish()
    }
}

impl PublishKeys {
    /// Parses the keys file format: one `name:secret` per line; blank lines and `#` comments
    /// ignored. Every problem is reported with its line number, without echoing secrets.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let Some((name, secret)) = line.split_once(':') else {
                errors.push(format!("line {n}: expected name:secret"));
                continue;
            };
            let (name, secret) = (name.trim(), secret.trim());
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                errors.push(format!("line {n}: key name must be letters, digits, _ - ."));
            } else if secret.len() < MIN_SECRET_LEN {
                errors.push(format!("line {n}: secret of key {name:?} is shorter than {MIN_SECRET_LEN} characters"));
            } else if keys.iter().any(|k: &Key| k.name == name) {
                errors.push(format!("line {n}: key {name:?} is defined twice"));
            } else {
                keys.push(Key { name: name.to_owned(), digest: Sha256::digest(secret.as_bytes()).into() });
            }
        }
        if errors.is_empty() { Ok(PublishKeys { keys }) } else { Err(errors) }
    }

    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let keys = Self::parse(&text)
            .map_err(|errs| errs.into_iter().map(|e| format!("{}: {e}", path.display())).collect::<Vec<_>>())?;
        if keys.is_empty() {
            return Err(vec![format!("{}: no keys defined", path.display())]);
        }
        Ok(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A key of this file with the same secret as one of `other`: their names.
    pub fn shared_secret<'a>(&'a self, other: &'a PublishKeys) -> Option<(&'a str, &'a str)> {
        self.keys.iter().find_map(|mine| {
            other.keys.iter().find(|theirs| theirs.digest == mine.digest).map(|t| (mine.name.as_str(), t.name.as_str()))
        })
    }

    /// Returns the name of the key whose secret is `presented`, if any.
    pub fn check(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key.name.as_str());
            }
        }
        found
    }
}

/// How an endpoint guarded by a keys file (`POST /v1/publish`, `/dashboard`) authenticates.
pub enum KeyAuth {
    /// `dev` mode: no key needed.
    Open,
    Keys(PublishKeys),
    /// No keys configured: the endpoint is refused.
    Disabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_two_files_share_is_found() {
        let publishing = PublishKeys::parse("backend:0123456789abcdef-one\nother:0123456789abcdef-two").unwrap();
        let reused = PublishKeys::parse("ops:0123456789abcdef-two").unwrap();
        assert_eq!(reused.shared_secret(&publishing), Some(("ops", "other")));
        let own = PublishKeys::parse("ops:0123456789abcdef-three").unwrap();
        assert_eq!(own.shared_secret(&publishing), None);
    }

    #[test]
    fn parse_and_check() {
        let keys = PublishKeys::parse("# backends\nbilling: s3cret-billing-key-1\n\n bookings:another-long-secret \n")
            .unwrap();
        assert_eq!(keys.check("s3cret-billing-key-1"), Some("billing"));
        assert_eq!(keys.check("another-long-secret"), Some("bookings"));
        assert_eq!(keys.check("another-long-secreT"), None);
        assert_eq!(keys.check(""), None);
    }

    #[test]
    fn errors_name_lines_not_secrets() {
        let errs =
            PublishKeys::parse("nocolon\nx:short\nbad name:0123456789abcdef\nok:0123456789abcdef\nok:0123456789abcdeg")
                .unwrap_err();
        assert_eq!(
            errs,
            vec![
                "line 1: expected name:secret",
                "line 2: secret of key \"x\" is shorter than 16 characters",
                "line 3: key name must be letters, digits, _ - .",
                "line 5: key \"ok\" is defined twice",
            ]
        );
        assert!(errs.iter().all(|e| !e.contains("0123456789")));
    }
}
