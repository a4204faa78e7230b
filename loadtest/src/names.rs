//! Herald's name rules (users, channels), checked before a run rather than learned from 400s:
//! 1–128 ASCII letters, digits and `_ - : @ = + ~`, with `.` between non-empty segments.

pub fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .split('.')
            .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:@=+~".contains(&b)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn follows_the_gateway_rules() {
        for ok in ["loadtest", "lt-5", "org.42.dash", "a:b@c=d+e~f_g"] {
            assert!(super::valid(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a*", "a>", &"x".repeat(129)] {
            assert!(!super::valid(bad), "{bad}");
        }
    }
}
