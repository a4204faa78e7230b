//! What the test suites of the gateway, the load tester and the operator share: real
//! nats-server and `herald-gateway` processes on loopback, killed when a test ends however it
//! ends; a raw HTTP and SSE client that parses the wire format itself (so the tests check
//! bytes, not a library's reading of them); and what fault tests need around them.
//!
//! One module per concern:
//! - [`bins`]: where the binaries under test are.
//! - [`process`]: child processes killed on drop.
//! - [`wait`]: waiting for a condition with a deadline.
//! - [`ports`]: a port nothing listens on, and free ports for the one server that cannot
//!   choose its own.
//! - [`nats`]: a nats-server on the ports it picks itself.
//! - [`nats_auth`]: a nats-server that admits only the holders of a credentials file.
//! - [`cluster`]: a three-node NATS cluster whose routes can be cut and slowed.
//! - [`proxy`]: a TCP proxy that cuts, refuses and delays what passes through it.
//! - [`tokens`]: the test secret, publisher and dashboard keys, and client tokens.
//! - [`gateway`]: `herald-gateway` processes, started through one builder.
//! - [`http`]: one HTTP/1.1 request and its parsed response.
//! - [`sse`]: a streaming SSE client, and the marker that shows nothing more arrived.
//! - [`follower`]: a client that follows its stream across gateways as the browser client does.
//! - [`delivery`]: the ledger of a fault test, and the exactly-once check against it.
//! - [`loadtest`]: runs `herald-loadtest` and reads its JSON summary.
//! - `kube_api` (with the `kube` feature): kube's mock API server, as the operator's tests
//!   script it.

use std::path::{Path, PathBuf};

pub mod bins;
pub mod cluster;
pub mod delivery;
pub mod follower;
pub mod gateway;
pub mod http;
#[cfg(feature = "kube")]
pub mod kube_api;
pub mod loadtest;
pub mod nats;
pub mod nats_auth;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod sse;
pub mod tokens;
pub mod wait;

pub use self::http::{Response, http, try_http, try_publish};
pub use cluster::NatsCluster;
pub use follower::Follower;
pub use gateway::Gateway;
pub use nats::{Nats, subscribe_confirmed};
pub use nats_auth::NatsWithCredentials;
pub use proxy::Proxy;
pub use sse::{Event, Sse, epoch_of, seq_of};
pub use tokens::{DASHBOARD_KEY, PUBLISH_KEY, SECRET, oct_jwk, token, token_with};
pub use wait::eventually;

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the testkit sits in the workspace").to_path_buf()
}
