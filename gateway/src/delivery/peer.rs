//! The client's socket as a session sees it: kernel timeouts set at accept, and a liveness probe.
//!
//! A browser that goes away usually closes its socket (FIN). HTTP allows a half-closed client,
//! so actix keeps streaming to it, and the first write after the FIN still succeeds locally:
//! only the second one fails. Peeking at the socket on each heartbeat finds the FIN at once, so
//! a vanished client is gone within one heartbeat. A client that vanishes with no FIN at all
//! (a dropped network) is cut by `TCP_USER_TIMEOUT` once its heartbeats stay unacknowledged.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use actix_web::dev::Extensions;

/// The raw descriptor of the connection a request arrived on.
///
/// Only used through the session's [`Outbox`](crate::delivery::outbox::Outbox), which forgets it, under
/// its lock, when actix drops the response body. actix drops the body before the socket, so
/// while the outbox still holds the descriptor it is this connection's and no one else's.
#[derive(Clone, Copy, Debug)]
pub struct PeerSocket(RawFd);

/// `HttpServer::on_connect` hook: tunes the accepted socket and records its descriptor.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions, heartbeat: Duration) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let sock = socket2::SockRef::from(tcp);
        // Events are small and latency matters: never wait to coalesce segments.
        let _ = sock.set_nodelay(true);
        let _ = sock.set_tcp_user_timeout(Some(heartbeat * 2 + Duration::from_secs(10)));
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
