//! The operating system's side: the open-file limit, this process's CPU time, a gateway's
//! resident memory (found by pid, or by the port it listens on), and opening many loopback
//! connections without running out of cheap source ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Loopback source addresses a load generator's connections are spread over.
const LOOPBACK_SOURCES: u8 = 32;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// User plus system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage with a valid, owned struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// How many CPUs this process may run on (its affinity mask; processes it starts inherit it).
pub fn allowed_cpus() -> usize {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_getaffinity of this process into a zeroed, owned cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (libc::CPU_COUNT(&set) as usize).max(1);
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// The pid of the local process listening on TCP `port`, from `/proc/net/tcp{,6}` and the
/// processes' file descriptors (only processes this user may inspect are found).
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue; // not LISTEN
            }
            let local_port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// Opens connection `i` to `authority` (`host:port`).
///
/// All connections from one address to one server share one range of ephemeral ports (28,232 by
/// default), and the kernel looks for a free one by probing: past ~10,000 connections the probing
/// took 70 % of the load generator's CPU (`__inet_hash_connect`, `__inet_check_established` in
/// `perf`), so the generator, not the server, set the connection rate. To a loopback IPv4 server
/// the connections therefore leave from 32 source addresses of 127.0.0.0/8 in turn (Linux routes
/// all of it to the loopback interface), each with its own free ports; elsewhere, as the system
/// chooses.
pub async fn connect(authority: &str, i: u64) -> std::io::Result<TcpStream> {
    match authority.parse::<SocketAddr>() {
        Ok(server @ SocketAddr::V4(v4)) if cfg!(target_os = "linux") && v4.ip().is_loopback() => {
            let source = Ipv4Addr::new(127, 0, 1, 1 + (i % u64::from(LOOPBACK_SOURCES)) as u8);
            let socket = TcpSocket::new_v4()?;
            bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            socket.connect(server).await
        }
        _ => TcpStream::connect(authority).await,
    }
}

/// Lets `connect` choose the source port (`IP_BIND_ADDRESS_NO_PORT`) after a `bind` to an
/// address with port 0, so the port is picked for the whole four-tuple instead of reserved at
/// `bind`. Best effort: without it the bind reserves a port, which still works.
fn bind_address_no_port(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on an open socket this function borrows, with a valid int option.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_connections_leave_from_several_source_addresses() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = l.local_addr().unwrap().to_string();
        let mut sources = std::collections::HashSet::new();
        for i in 0..40 {
            let (client, accepted) = tokio::join!(connect(&authority, i), l.accept());
            let client = client.unwrap();
            let (_, peer) = accepted.unwrap();
            assert_eq!(client.local_addr().unwrap(), peer);
            sources.insert(peer.ip());
        }
        assert_eq!(sources.len(), LOOPBACK_SOURCES as usize, "{sources:?}");
        // Not loopback-by-address: the system's choice.
        let s = connect(&format!("localhost:{}", l.local_addr().unwrap().port()), 0).await;
        assert!(s.is_ok());
    }

    #[test]
    fn finds_its_own_listener_and_memory() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(raise_nofile() > 0);
    }
}
