//! The gateway binary's subcommands.

pub mod publish;
pub mod selftest;
pub mod serve;
