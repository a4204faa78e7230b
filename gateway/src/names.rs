//! Names of users and channels, and event types: validated at the edge, never mangled.
//!
//! A name is 1–128 ASCII characters from letters, digits and `_ - : @ = + ~`, where `.`
//! separates non-empty segments (`org.42.dashboard`). The dot maps onto NATS subject tokens, so
//! `*`, `>`, spaces and empty segments can never reach a subject.

use std::fmt;
use std::sync::Arc;

/// Longest user or channel name.
pub const MAX_NAME_LEN: usize = 128;
/// Longest event type.
pub const MAX_TYPE_LEN: usize = 64;
/// Event type used when a publisher names none.
pub const DEFAULT_EVENT_TYPE: &str = "message";
/// Event names the gateway itself emits, and `error`, which EventSource uses for its own error
/// events; publishers may not use them.
pub const RESERVED_EVENT_TYPES: &[&str] = &["connected", "reset", "token_expired", "presence", "error"];

/// A validated user or channel name. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// Why a name or event type was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters long (at most {1} allowed)")]
    TooLong(usize, usize),
    #[error(
        "contains {0:?} at position {1}; allowed are ASCII letters, digits and _ - : @ = + ~ with . between segments"
    )]
    InvalidChar(char, usize),
    #[error("contains {0:?} at position {1}; allowed are ASCII letters, digits and _ - : .")]
    InvalidTypeChar(char, usize),
    #[error("has an empty segment (a leading, trailing or doubled '.')")]
    EmptySegment,
    #[error("is reserved for the gateway's own events")]
    Reserved,
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@' | b'=' | b'+' | b'~')
}

impl Name {
    /// Validates `s` as a user or channel name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        validate_name(s)?;
        Ok(Name(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks the name grammar without allocating.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'.' {
            if i == 0 || i + 1 == bytes.len() || bytes[i - 1] == b'.' {
                return Err(NameError::EmptySegment);
            }
        } else if !is_name_char(b) {
            let ch = s[i..].chars().next().unwrap_or('?');
            return Err(NameError::InvalidChar(ch, i));
        }
    }
    // After the characters: every one allowed is ASCII, so the length in bytes checked here is
    // the length in characters the error reports.
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(s.len(), MAX_NAME_LEN));
    }
    Ok(())
}

/// Validates an event type: 1–64 characters of letters, digits and `_ - : .`, not reserved.
pub fn validate_event_type(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    for (i, b) in s.bytes().enumerate() {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.')) {
            let ch = s[i..].chars().next().unwrap_or('?');
            return Err(NameError::InvalidTypeChar(ch, i));
        }
    }
    if s.len() > MAX_TYPE_LEN {
        return Err(NameError::TooLong(s.len(), MAX_TYPE_LEN));
    }
    if RESERVED_EVENT_TYPES.contains(&s) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_table() {
        let long = "a".repeat(MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("u1", Ok(())),
            ("booking:42", Ok(())),
            ("org.42.dashboard", Ok(())),
            ("a_b-c:d@e=f+g~h", Ok(())),
            (&long, Ok(())),
            ("", Err(NameError::Empty)),
            (&too_long, Err(NameError::TooLong(129, 128))),
            ("a..b", Err(NameError::EmptySegment)),
            (".a", Err(NameError::EmptySegment)),
            ("a.", Err(NameError::EmptySegment)),
            ("a*", Err(NameError::InvalidChar('*', 1))),
            ("a>", Err(NameError::InvalidChar('>', 1))),
            ("a b", Err(NameError::InvalidChar(' ', 1))),
            ("a\nb", Err(NameError::InvalidChar('\n', 1))),
            ("a,b", Err(NameError::InvalidChar(',', 1))),
            ("é", Err(NameError::InvalidChar('é', 0))),
            ("a/b", Err(NameError::InvalidChar('/', 1))),
            // Too long in bytes, not in characters: the character is what is wrong (before:
            // "65 characters long (at most 128 allowed)").
            (&"é".repeat(65), Err(NameError::InvalidChar('é', 0))),
            (&format!("{}é", "a".repeat(MAX_NAME_LEN)), Err(NameError::InvalidChar('é', MAX_NAME_LEN))),
        ];
        for (input, want) in cases {
            assert_eq!(&validate_name(input), want, "input {input:?}");
            assert_eq!(Name::parse(input).is_ok(), want.is_ok());
        }
    }

    #[test]
    fn event_type_table() {
        assert!(validate_event_type("booking_update").is_ok());
        assert!(validate_event_type("agent.status").is_ok());
        assert_eq!(validate_event_type(""), Err(NameError::Empty));
        assert_eq!(validate_event_type("connected"), Err(NameError::Reserved));
        assert_eq!(validate_event_type("a\rb"), Err(NameError::InvalidTypeChar('\r', 1)));
        assert_eq!(validate_event_type("a b"), Err(NameError::InvalidTypeChar(' ', 1)));
        // The message names exactly what a type may hold: not a name's @ = + ~.
        let e = validate_event_type("a@b").unwrap_err();
        assert_eq!(e.to_string(), "contains '@' at position 1; allowed are ASCII letters, digits and _ - : .");
        assert!(validate_event_type(&"x".repeat(65)).is_err());
        assert_eq!(validate_event_type(&"é".repeat(33)), Err(NameError::InvalidTypeChar('é', 0)));
    }
}
