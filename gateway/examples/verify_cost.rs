//! What verifying one client token costs: the gateway's one-pass check of HMAC-signed tokens
//! (`access/tokens/hmac.rs`) beside jsonwebtoken's `decode` (`Verifier::verify_by_library`), on
//! the token the load generator sends (`sub`, `exp` and one channel, HS256), and on one with an
//! issuer and an audience to check. Rounds alternate between the two paths; it prints each
//! path's median over the rounds, in nanoseconds per token, and the ratio.
//!
//! ```sh
//! cargo run --release -p herald-gateway --example verify_cost
//! cargo run --release -p herald-gateway --example verify_cost -- --rounds 21 --tokens 20000
//! ```

use std::time::Instant;

use clap::Parser;
use herald_gateway::access::tokens::Verifier;
use jsonwebtoken::{EncodingKey, Header, encode};

#[derive(Parser)]
struct Args {
    /// Rounds per path; the median is reported.
    #[arg(long, default_value_t = 11)]
    rounds: usize,
    /// Tokens verified per round (each a different user, as on a connect storm).
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
}

const SECRET: &[u8] = b"verify-cost-secret-0123456789abc";
const ISSUER: &str = "https://auth.example";
const AUDIENCE: &str = "herald";

fn main() {
    let args = Args::parse();
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    let key = EncodingKey::from_secret(SECRET);
    let sign = |claims: serde_json::Value| encode(&Header::default(), &claims, &key).expect("signs");
    let plain: Vec<String> = (0..args.tokens)
        .map(|i| sign(serde_json::json!({"sub": format!("u{i}"), "exp": exp, "channels": [format!("c{i}")]})))
        .collect();
    let strict: Vec<String> = (0..args.tokens)
        .map(|i| {
            sign(serde_json::json!({
                "sub": format!("u{i}"), "exp": exp, "channels": [format!("c{i}")], "iss": ISSUER, "aud": AUDIENCE,
            }))
        })
        .collect();
    let mut plain_verifier = Verifier::new(None, None);
    plain_verifier.add_secret(SECRET, None);
    let mut strict_verifier = Verifier::new(Some(ISSUER.into()), Some(AUDIENCE.into()));
    strict_verifier.add_secret(SECRET, None);

    println!("{:<40} {:>12} {:>12} {:>7}", "ns per token (median)", "one pass", "jsonwebtoken", "ratio");
    for (name, verifier, tokens) in
        [("sub, exp, channels", &plain_verifier, &plain), ("and iss, aud checked", &strict_verifier, &strict)]
    {
        let (mut fast, mut library) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            fast.push(time(tokens, |t| verifier.verify(t).is_ok()));
            library.push(time(tokens, |t| verifier.verify_by_library(t).is_ok()));
        }
        let (fast, library) = (median(fast), median(library));
        println!("{name:<40} {fast:>12.0} {library:>12.0} {:>7.2}", fast / library);
    }
}

/// Nanoseconds per token; every token must be accepted.
fn time(tokens: &[String], verify: impl Fn(&str) -> bool) -> f64 {
    let start = Instant::now();
    let accepted = tokens.iter().filter(|t| verify(t)).count();
    let elapsed = start.elapsed();
    assert_eq!(accepted, tokens.len(), "a token was refused");
    elapsed.as_nanos() as f64 / tokens.len() as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
