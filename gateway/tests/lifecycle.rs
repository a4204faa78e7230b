//! Connections come and go: dead clients are found by heartbeats, and churn leaks nothing.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use herald_testkit::{Gateway, Nats, Sse, eventually, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_and_vanished_clients_are_dropped_within_two_intervals() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start();
    gw.ready().await;

    let mut live = Sse::with_token(gw.addr, &token("alive", &[], 600), &[]).await;
    assert!(live.wait_comments(2, Duration::from_secs(5)).await, "heartbeat comments every second");

    // One client resets its socket, one just stops reading after a half-close; neither says goodbye at the HTTP level.
    let reset = Sse::with_token(gw.addr, &token("gone1", &[], 600), &[]).await;
    let quiet = Sse::with_token(gw.addr, &token("gone2", &[], 600), &[]).await;
    eventually("three connections", Duration::from_secs(5), || async { gw.stats().await["connections"] == 3 }).await;
    let vanished_at = Instant::now();
    reset.vanish();
    drop(quiet);
    eventually("vanished clients gone from /stats", Duration::from_secs(10), || async {
        gw.stats().await["connections"] == 1
    })
    .await;
    let took = vanished_at.elapsed();
    assert!(took <= Duration::from_secs(2), "took {took:?}, more than two heartbeat intervals");
    // The survivor keeps streaming.
    let before = live.comments;
    assert!(live.wait_comments(before + 1, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start();
    gw.ready().await;

    for round in 0..20 {
        let cycles = (0..50).map(|i| {
            let addr = gw.addr;
            async move {
                let user = format!("churn{}", (round * 50 + i) % 97);
                let channel = format!("room:{}", i % 7);
                let mut s = Sse::with_token(addr, &token(&user, &["room:*"], 600), &[&channel]).await;
                assert_eq!(s.next().await.event, "connected");
                if i % 2 == 0 { s.vanish() } else { drop(s) }
            }
        });
        futures_util::future::join_all(cycles).await;
    }
    eventually("connection gauge and subscriptions back to zero", Duration::from_secs(10), || async {
        let s = gw.stats().await;
        s["connections"] == 0 && s["subjects"] == 0
    })
    .await;
    assert!(!gw.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_stream_with_token_expired() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("brief", &[], 2), &[]).await;
    assert_eq!(s.next().await.event, "connected");
    let opened = Instant::now();
    let events = s.read_to_end(Duration::from_secs(10)).await;
    assert!(s.ended, "the server ended the stream");
    let last = events.last().expect("a final event");
    assert_eq!((last.event.as_str(), last.id.as_deref()), ("token_expired", None));
    assert!(opened.elapsed() >= Duration::from_secs(1), "not before the token's exp");
    eventually("the session is gone", Duration::from_secs(5), || async { gw.stats().await["connections"] == 0 }).await;
    gw.wait_for_log("reason=\"token_expired\"").await;
}

/// Every connection the gateway accepts sends each event at once (`TCP_NODELAY`) and is cut by
/// the kernel once its data stays unacknowledged for two heartbeats and 10 s
/// (`TCP_USER_TIMEOUT`, for a client gone without a FIN). Read from the gateway's own sockets,
/// so it holds whichever way the gateway sets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_connection_has_no_nagle_delay_and_a_user_timeout() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "7"]).start();
    gw.ready().await;
    let _a = Sse::with_token(gw.addr, &token("a", &[], 600), &[]).await;
    let _b = Sse::with_token(gw.addr, &token("b", &[], 600), &[]).await;
    let accepted = accepted_sockets(gw.pid(), gw.addr);
    assert!(accepted.len() >= 2, "the two streams' sockets among the gateway's: {accepted:?}");
    for (peer, nodelay, user_timeout) in accepted {
        assert!(nodelay, "TCP_NODELAY on the connection from {peer}");
        assert_eq!(
            user_timeout,
            Some(Duration::from_secs(7 * 2 + 10)),
            "TCP_USER_TIMEOUT on the connection from {peer}"
        );
    }
}

/// The sockets of process `pid` that its listener at `addr` accepted: each one's peer, and its
/// `TCP_NODELAY` and `TCP_USER_TIMEOUT`, read from a copy of the descriptor (`pidfd_getfd`).
fn accepted_sockets(pid: u32, addr: SocketAddr) -> Vec<(SocketAddr, bool, Option<Duration>)> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, owned here.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just opened, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !socket {
            continue;
        }
        // SAFETY: pidfd_getfd duplicates the target's descriptor into this process; on
        // success the copy is a new descriptor, owned here.
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if copy < 0 {
            continue; // closed meanwhile
        }
        // SAFETY: as above.
        let sock = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(copy as i32) });
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else { continue };
        if local.as_socket() == Some(addr) {
            found.push((peer.as_socket().unwrap(), sock.nodelay().unwrap(), sock.tcp_user_timeout().unwrap()));
        }
    }
    found
}
