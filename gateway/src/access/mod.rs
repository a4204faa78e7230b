//! Who may connect and publish.

pub(crate) mod admission;
pub mod jwks;
pub mod publish_keys;
pub(crate) mod rate;
pub mod tokens;
