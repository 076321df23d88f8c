//! Keeps bootstrap and static peers dialed, with exponential backoff.
//!
//! A pure state machine: the network task asks it which targets are [`Dialer::due`], dials them,
//! and reports what happened. A bootstrap target is done once it has answered (it is then an
//! ordinary candidate of the connection manager) until the node finds itself isolated
//! ([`Dialer::rebootstrap`]); a static target is re-dialed every time its connection drops.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Due(Instant),
    Dialing(ConnectionId),
    Connected,
    Done,
}

#[derive(Debug)]
struct Target {
    addr: Multiaddr,
    peer: Option<PeerId>,
    keep: bool,
    state: State,
    backoff: Duration,
    failures: u32,
}

/// A target to dial now.
pub(crate) struct Due {
    pub index: usize,
    pub addr: Multiaddr,
    pub peer: Option<PeerId>,
}

/// A failed dial, for the log.
pub(crate) struct Failure {
    pub addr: Multiaddr,
    pub retry_in: Duration,
    pub failures: u32,
    pub bootstrap: bool,
}

pub(crate) struct Dialer {
    targets: Vec<Target>,
    base: Duration,
    max: Duration,
}

/// Splits `/p2p/<id>` off an address.
pub(crate) fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(peer)) => (a, Some(peer)),
        Some(other) => {
            a.push(other);
            (a, None)
        }
        None => (a, None),
    }
}

impl Dialer {
    pub fn new(
        bootstrap: &[Multiaddr],
        static_peers: &[Multiaddr],
        base: Duration,
        max: Duration,
        now: Instant,
    ) -> Self {
        let mk = |a: &Multiaddr, keep: bool| {
            let (addr, peer) = split_peer(a);
            Target {
                addr,
                peer,
                keep,
                state: State::Due(now),
                backoff: base,
                failures: 0,
            }
        };
        let targets = bootstrap
            .iter()
            .map(|a| mk(a, false))
            .chain(static_peers.iter().map(|a| mk(a, true)))
            .collect();
        Dialer { targets, base, max }
    }

    /// Targets whose time has come; each is then reported with [`Dialer::dialing`].
    pub fn due(&self, now: Instant) -> Vec<Due> {
        self.targets
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.state, State::Due(at) if at <= now))
            .map(|(index, t)| Due {
                index,
                addr: t.addr.clone(),
                peer: t.peer,
            })
            .collect()
    }

    /// When the next target falls due, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.targets
            .iter()
            .filter_map(|t| match t.state {
                State::Due(at) => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn dialing(&mut self, index: usize, conn: ConnectionId) {
        if let Some(t) = self.targets.get_mut(index) {
            t.state = State::Dialing(conn);
        }
    }

    /// A dial could not even start; treat it as a failure.
    pub fn dial_error(&mut self, index: usize, now: Instant) -> Option<Failure> {
        self.fail(index, now)
    }

    /// A connection is up; returns whether `peer` is a static target (to protect).
    pub fn established(&mut self, conn: ConnectionId, peer: PeerId) -> bool {
        let mut is_static = false;
        for t in &mut self.targets {
            let ours = t.state == State::Dialing(conn) || t.peer == Some(peer);
            is_static |= ours && t.keep;
            if ours && t.state != State::Done {
                t.peer = Some(peer);
                t.failures = 0;
                t.backoff = self.base;
                t.state = if t.keep {
                    State::Connected
                } else {
                    State::Done
                };
            }
        }
        is_static
    }

    /// The node is isolated: every bootstrap target that answered once is due again, with a
    /// fresh backoff (those still being retried keep their schedule).
    pub fn rebootstrap(&mut self, now: Instant) {
        for t in &mut self.targets {
            if !t.keep && t.state == State::Done {
                t.state = State::Due(now);
                t.backoff = self.base;
                t.failures = 0;
            }
        }
    }

    pub fn failed(&mut self, conn: ConnectionId, now: Instant) -> Option<Failure> {
        let index = self
            .targets
            .iter()
            .position(|t| t.state == State::Dialing(conn))?;
        self.fail(index, now)
    }

    fn fail(&mut self, index: usize, now: Instant) -> Option<Failure> {
        let t = self.targets.get_mut(index)?;
        t.failures += 1;
        let retry_in = t.backoff;
        t.backoff = (t.backoff * 2).min(self.max);
        t.state = State::Due(now + retry_in);
        Some(Failure {
            addr: t.addr.clone(),
            retry_in,
            failures: t.failures,
            bootstrap: !t.keep,
        })
    }

    /// The last connection to `peer` closed: static targets are dialed again soon.
    pub fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        for t in &mut self.targets {
            if t.keep && t.peer.as_ref() == Some(peer) && t.state == State::Connected {
                t.state = State::Due(now + self.base);
            }
        }
    }

    /// Whether any bootstrap target is configured.
    pub fn has_bootstrap(&self) -> bool {
        self.targets.iter().any(|t| !t.keep)
    }

    /// True while no bootstrap target has answered yet (and there is at least one).
    pub fn bootstrap_pending(&self) -> bool {
        let mut boot = self.targets.iter().filter(|t| !t.keep).peekable();
        boot.peek().is_some() && boot.all(|t| t.state != State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_static_redials() {
        let now = Instant::now();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let mut d = Dialer::new(
            std::slice::from_ref(&a),
            &[],
            Duration::from_millis(100),
            Duration::from_millis(300),
            now,
        );
        assert!(d.bootstrap_pending());
        let due = d.due(now);
        assert_eq!(due.len(), 1);
        let c = ConnectionId::new_unchecked(1);
        d.dialing(0, c);
        assert!(d.due(now).is_empty());
        let f = d.failed(c, now).unwrap();
        assert_eq!(f.retry_in, Duration::from_millis(100));
        assert!(d.due(now).is_empty());
        assert_eq!(d.due(now + Duration::from_millis(100)).len(), 1);
        d.dialing(0, c);
        assert_eq!(
            d.failed(c, now).unwrap().retry_in,
            Duration::from_millis(200)
        );
        d.dialing(0, c);
        assert_eq!(
            d.failed(c, now).unwrap().retry_in,
            Duration::from_millis(300)
        );
        d.dialing(0, c);
        assert_eq!(
            d.failed(c, now).unwrap().retry_in,
            Duration::from_millis(300)
        );
        d.dialing(0, c);
        assert!(
            !d.established(c, PeerId::random()),
            "a bootstrap peer is not static"
        );
        assert!(!d.bootstrap_pending());
        assert!(
            d.due(now + Duration::from_secs(60)).is_empty(),
            "done once answered"
        );
        // Isolated: the bootstrap peer is due again at once.
        d.rebootstrap(now);
        assert_eq!(d.due(now).len(), 1);

        let p = PeerId::random();
        let s: Multiaddr = format!("/ip4/127.0.0.1/tcp/2/p2p/{p}").parse().unwrap();
        let mut d = Dialer::new(
            &[],
            &[s],
            Duration::from_millis(50),
            Duration::from_secs(1),
            now,
        );
        let due = d.due(now);
        assert_eq!(due[0].peer, Some(p));
        d.dialing(0, c);
        assert!(d.established(c, p));
        assert!(d.due(now + Duration::from_secs(5)).is_empty());
        d.rebootstrap(now);
        assert!(
            d.due(now).is_empty(),
            "static targets are not bootstrap targets"
        );
        d.disconnected(&p, now);
        assert_eq!(d.due(now + Duration::from_millis(50)).len(), 1);
    }
}
