//! Ports and file descriptors: what the node claims from the operating system at start.
//!
//! - **A port already in use.** libp2p-tcp sets `SO_REUSEPORT` on its listening sockets (so that
//!   dials can leave from the listening port, which hole punching needs), and the kernel then lets
//!   a second process bind the same port and take half of its inbound connections. Before a fixed
//!   TCP port is handed to libp2p, [`check_port_free`] binds it once with a plain socket (no
//!   `SO_REUSEPORT`): if anyone listens there, that bind fails and the node refuses to start.
//!   Port reuse for dials is left as libp2p sets it. (QUIC's UDP sockets have no reuse flag, and
//!   fail to bind on their own.)
//! - **The file limit.** Every TCP connection is a file descriptor; with the default soft limit
//!   of 1024, idle peer connections could leave none for the HTTP API, the database and blob
//!   files. [`raise_fd_limit`] lifts the soft limit to the hard one, and [`fit_to_fd_limit`] caps
//!   the connection limits (established and pending) below the limit in force, with headroom.

use std::net::{IpAddr, SocketAddr, TcpListener};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use crate::config::Config;

/// The TCP socket address of `addr` when it is `/ip4|ip6/../tcp/PORT` with a fixed port (not
/// 0) and nothing after the port but `/p2p/..`.
pub(crate) fn fixed_tcp(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip: Option<IpAddr> = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) if ip.is_none() => ip = Some(a.into()),
            Protocol::Ip6(a) if ip.is_none() => ip = Some(a.into()),
            Protocol::Tcp(n) if ip.is_some() && port.is_none() => port = Some(n),
            Protocol::P2p(_) => {}
            _ => return None,
        }
    }
    match (ip, port) {
        (Some(ip), Some(port)) if port != 0 => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// Fails with `AddrInUse` when another socket listens on `addr` (whatever its `SO_REUSEPORT`).
pub fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    TcpListener::bind(addr).map(drop)
}

/// Which transport a port is picked for by [`free_loopback_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A TCP port (P2P listener, consensus, HTTP API).
    Tcp,
    /// A UDP port (QUIC).
    Udp,
}

/// A port free on 127.0.0.1 now, for a process started a little later (devnets, tests).
///
/// Picked below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), so
/// that no outgoing connection of this machine can be given the same port as its source port
/// between this check and the other process's bind: asking the kernel for port 0 would hand
/// out a port from that range, where any `connect()` may take it in the meantime.
///
/// A port is handed out once: this process never picks it again (tests pick ports for several
/// networks at once, and a killed node's ports are free until it restarts on them), and other
/// processes skip it for [`RESERVATION`] because a marker file for it is left in
/// `$TMPDIR/agora-ports` (devnets and test processes pick beside each other).
pub fn free_loopback_port(kind: PortKind) -> std::io::Result<u16> {
    use rand::Rng as _;
    let low = ephemeral_low().unwrap_or(32_768);
    let range = low.saturating_sub(16_384).max(1_024)..low.max(1_025);
    let mut rng = rand::thread_rng();
    for _ in 0..1024 {
        let port = rng.gen_range(range.clone());
        let free = match kind {
            PortKind::Tcp => TcpListener::bind(("127.0.0.1", port)).is_ok(),
            PortKind::Udp => std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        };
        if free && reserve(port) {
            return Ok(port);
        }
    }
    // Everything below the ephemeral range is taken: fall back to the kernel's choice.
    match kind {
        PortKind::Tcp => TcpListener::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port()),
        PortKind::Udp => std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port()),
    }
}

/// How long a port handed out by [`free_loopback_port`] is kept from other processes.
pub const RESERVATION: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Claims `port` for this process: false when this process handed it out already, or another
/// process did less than [`RESERVATION`] ago.
fn reserve(port: u16) -> bool {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static TAKEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let mut taken = TAKEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if taken.contains(&port) {
        return false;
    }
    let dir = std::env::temp_dir().join("agora-ports");
    let marker = dir.join(port.to_string());
    let fresh = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < RESERVATION);
    if fresh {
        return false;
    }
    // Best effort: without a writable temp dir only this process's own picks are kept apart.
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&marker, std::process::id().to_string());
    taken.insert(port);
    true
}

/// The first port of the kernel's ephemeral range, where it is known.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Raises the soft limit on open files to the hard limit where allowed (capped at 2^20, the
/// kernel's usual `nr_open`). Returns the soft limit in force afterwards, `None` where unknown.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        let target = hard.min(1 << 20);
        if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
            return Some(target);
        }
        Some(soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The soft limit on open files in force, `None` where unknown.
pub fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit};
        getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors kept out of the peer connections' reach for a limit of `fd_limit`: 64 (API
/// connections, the database, blob files, consensus) plus an eighth of the limit.
pub fn fd_headroom(fd_limit: u64) -> u64 {
    64 + fd_limit / 8
}

/// Caps `config`'s connection limits so that peer connections, established and pending, fit in
/// `fd_limit` less [`fd_headroom`]. Returns whether anything was lowered.
pub fn fit_to_fd_limit(config: &mut Config, fd_limit: u64) -> bool {
    let budget = fd_limit.saturating_sub(fd_headroom(fd_limit)).max(8);
    let budget = u32::try_from(budget).unwrap_or(u32::MAX);
    let pending = (budget / 4).max(4);
    let established = budget.saturating_sub(pending).max(4);
    let before = (config.max_pending_incoming, config.max_connections);
    config.max_pending_incoming = config.max_pending_incoming.min(pending);
    config.max_connections = config.max_connections.min(established);
    before != (config.max_pending_incoming, config.max_connections)
}

/// Established inbound connections allowed: all but a reserve for our own dials (a quarter of
/// the total at most, up to `target_peers`), so inbound peers cannot take every slot.
pub(crate) fn max_established_incoming(config: &Config) -> u32 {
    let reserve = u32::try_from(config.target_peers)
        .unwrap_or(u32::MAX)
        .min(config.max_connections / 4);
    config.max_connections.saturating_sub(reserve).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_tcp_ports_only() {
        let p = |s: &str| fixed_tcp(&s.parse().unwrap());
        assert_eq!(
            p("/ip4/127.0.0.1/tcp/7470"),
            Some("127.0.0.1:7470".parse().unwrap())
        );
        assert_eq!(p("/ip4/127.0.0.1/tcp/0"), None);
        assert_eq!(p("/ip4/127.0.0.1/udp/7470/quic-v1"), None);
        assert_eq!(p("/dns4/example.com/tcp/7470"), None);
        assert_eq!(p("/ip6/::1/tcp/9/ws"), None);
    }

    #[test]
    fn a_port_someone_listens_on_is_not_free() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = check_port_free(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        drop(taken);
        check_port_free(addr).unwrap();
    }

    #[test]
    fn connection_limits_fit_the_fd_limit() {
        let mut c = Config::local();
        assert!(
            !fit_to_fd_limit(&mut c, 65_536),
            "a large limit changes nothing"
        );
        assert_eq!((c.max_connections, c.max_pending_incoming), (256, 64));
        for limit in [64u64, 128, 256, 1024] {
            let mut c = Config::production();
            fit_to_fd_limit(&mut c, limit);
            let used = u64::from(c.max_connections + c.max_pending_incoming);
            assert!(
                used <= limit.saturating_sub(fd_headroom(limit)).max(8),
                "{limit}: {used}"
            );
            assert!(c.max_connections >= 4 && c.max_pending_incoming >= 4);
        }
        let c = Config::local();
        assert_eq!(max_established_incoming(&c), 256 - 32);
    }

    #[test]
    fn picked_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let port = free_loopback_port(PortKind::Tcp).unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
            let marker = std::env::temp_dir()
                .join("agora-ports")
                .join(port.to_string());
            assert!(marker.exists(), "no reservation marker for {port}");
            // Another process would skip it: the marker is fresh.
            assert!(!reserve(port));
        }
    }
}
