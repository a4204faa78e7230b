//! The client's socket as a session sees it: kernel options inherited from the listener, and a
//! liveness probe.
//!
//! A browser that goes away usually closes its socket (FIN). HTTP allows a half-closed client,
//! so actix keeps streaming to it, and the first write after the FIN still succeeds locally:
//! only the second one fails. Peeking at the socket on each heartbeat finds the FIN at once, so
//! a vanished client is gone within one heartbeat. A client that vanishes with no FIN at all
//! (a dropped network) is cut by `TCP_USER_TIMEOUT` once its heartbeats stay unacknowledged.

use std::any::Any;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use actix_web::dev::Extensions;
use socket2::{Domain, Protocol, Socket, Type};

/// The raw descriptor of the connection a request arrived on.
///
/// Only used through the session's [`Outbox`](crate::delivery::outbox::Outbox), which forgets it, under
/// its lock, when actix drops the response body. actix drops the body before the socket, so
/// while the outbox still holds the descriptor it is this connection's and no one else's.
#[derive(Clone, Copy, Debug)]
pub struct PeerSocket(RawFd);

/// The gateway's listening socket, with the two options every client connection needs set on
/// it once: Linux copies both into each connection the listener accepts, so no connection pays
/// for its own `setsockopt` calls as it opens (two per connection before, about 2% of the
/// gateway's CPU in opening one: docs/benchmarks.md, "Opening a connection beside its floor").
///
/// - `TCP_NODELAY`: events are small and latency matters: never wait to coalesce segments.
/// - `TCP_USER_TIMEOUT`: a client that vanished without a FIN is cut once data (a heartbeat)
///   stays unacknowledged this long.
pub fn listener(addr: SocketAddr, backlog: i32, heartbeat: Duration) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Either one refused (a kernel without it): the streams work without, as they did where
    // each connection set them and ignored a refusal; said once here rather than never.
    if let Err(e) = socket.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY on the listener: small events may wait to be coalesced");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(user_timeout(heartbeat))) {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT on the listener: a client gone without a FIN is found by its heartbeats' writes only");
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// How long a connection's data may stay unacknowledged before the kernel drops it.
fn user_timeout(heartbeat: Duration) -> Duration {
    heartbeat * 2 + Duration::from_secs(10)
}

/// `HttpServer::on_connect` hook: records the accepted socket's descriptor (its options come
/// from the [`listener`]).
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        ext.insert(PeerSocket(tcp.as_raw_fd()));
    }
}

impl PeerSocket {
    /// Shuts the connection down in both directions: a blocked write fails at once, so actix
    /// drops the connection even when the client has stopped reading.
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on a descriptor we know to be this connection's (see above).
        unsafe {
            libc::shutdown(self.0, libc::SHUT_RDWR);
        }
    }

    /// True when the peer has closed its side (or the socket has failed).
    pub fn closed_by_peer(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local buffer; MSG_DONTWAIT never blocks.
        let n = unsafe { libc::recv(self.0, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        match n {
            0 => true,
            n if n > 0 => false,
            _ => {
                let err = std::io::Error::last_os_error();
                !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection the listener accepts has both options, though nothing sets them on it.
    #[test]
    fn accepted_connections_inherit_the_listeners_options() {
        let heartbeat = Duration::from_secs(15);
        let listener = listener("127.0.0.1:0".parse().unwrap(), 16, heartbeat).unwrap();
        for _ in 0..3 {
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let accepted = socket2::SockRef::from(&accepted);
            assert!(accepted.nodelay().unwrap(), "TCP_NODELAY");
            assert_eq!(accepted.tcp_user_timeout().unwrap(), Some(user_timeout(heartbeat)), "TCP_USER_TIMEOUT");
        }
    }
}
