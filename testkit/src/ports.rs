//! Ports a test names itself: one where nothing listens, and free ones for a server that
//! cannot choose its own and say which it took.
//!
//! nats-server and `herald-gateway` bind port 0 and report the port they got (see
//! [`crate::nats`] and [`crate::gateway`]), and a proxy binds its own listener. The OTLP
//! receiver of the trace tests (rotel) has no such mode: it panics on port 0. So a port is
//! chosen here, released, and handed to it, and another process may bind that port in
//! between; [`on_free_ports`] then tries again on other ports.

/// A port nothing listens on at 127.0.0.1: port 1, which only root could bind and no service
/// of a test machine uses. A connection there is refused at once.
pub const UNUSED: u16 = 1;

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Calls `start` with `count` ports that were free a moment ago; when it fails (a port was
/// taken before the server bound it), again with others, five times at most. Panics with the
/// last failure.
pub fn on_free_ports<T>(count: usize, mut start: impl FnMut(&[u16]) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..5 {
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
        match start(&ports) {
            Ok(started) => return started,
            Err(why) => last = why,
        }
    }
    panic!("no start on free ports in five tries; the last failure:\n{last}")
}
