//! Fast failover when the leader's process is gone.
//!
//! Raft notices a dead leader only by its silence: a follower waits for its election
//! timeout, and openraft's voters also refuse to vote while the lease they gave the old
//! leader runs (`election_timeout_max`). With the defaults a new leader is elected 1.5–2 s
//! after the old one died, whatever the cause.
//!
//! Most leaders that die are processes that ended — a crash, an OOM kill, `kill -9`, a
//! restart — on a machine that is still up, and such a machine refuses a TCP connection
//! to the dead process's port at once. So each voting follower watches its leader: once
//! no AppendEntries has arrived for [`SILENT_HEARTBEATS`] heartbeats, it tries to connect
//! to the leader's node-to-node address. Only a refused connection counts as "the leader
//! process is gone"; a timeout (a partition, a machine that is down) or a successful
//! connection (a slow leader) changes nothing, and the election timeout stays in charge.
//!
//! A follower that found its leader gone gives up its own lease on that leader (openraft's
//! leader-transfer message, addressed to the old leader, which does only that), so it
//! grants votes at once. Then it asks for an election with a pre-vote: the pre-vote
//! succeeds only once a quorum has given up the lease too, that is, once a quorum has
//! seen the leader's port refuse; otherwise nothing changes and it asks again a tick
//! later. To keep two followers from splitting the vote, the surviving voters go in
//! order of node id, each [`STAGGER_HEARTBEATS`] heartbeats after the one before — except
//! that a follower that has just refused a pre-vote from a candidate with a shorter log
//! than its own, which cannot win, goes at once.
//!
//! Safety does not depend on any of this: elections are Raft's, and Keyraft's reads use
//! ReadIndex, not the lease. A wrong "gone" (a port refused while the leader lives, e.g.
//! a firewall that rejects) costs at most an election.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use openraft::ServerState;

use crate::network::usable_source;
use crate::Raft;

/// A follower probes its leader after this many heartbeat intervals without
/// AppendEntries.
pub const SILENT_HEARTBEATS: u32 = 2;

/// The n-th surviving voter (by node id) starts asking for an election this many
/// heartbeat intervals after the (n-1)-th.
pub const STAGGER_HEARTBEATS: u32 = 2;

/// When this node last heard from a leader (AppendEntries or a snapshot), and whether a
/// candidate that cannot win asked it for a vote: shared by the node-to-node server, which
/// records both, and [`run`], which reads them.
#[derive(Clone)]
pub struct LeaderContact {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    candidate_behind: Arc<tokio::sync::Notify>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            candidate_behind: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl LeaderContact {
    /// Records that this node refused a pre-vote to a candidate whose log is behind its
    /// own: that candidate cannot win, so this node need not wait for its turn.
    pub fn candidate_behind(&self) {
        self.candidate_behind.notify_one();
    }

    /// Records a message from a leader, now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// How long since the last message from a leader (or since this was made).
    pub fn silent_for(&self) -> Duration {
        self.silent_at(Instant::now())
    }

    fn touch_at(&self, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.start).as_millis());
        self.last_ms
            .fetch_max(ms.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn silent_at(&self, now: Instant) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(self.start)
            .saturating_sub(last)
    }
}

/// What a probe of the leader's address found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Something accepted the connection: the leader may be slow, but it is there.
    Accepted,
    /// The connection was refused: nothing listens there any more.
    Refused,
    /// No answer in time, or another error: nothing can be concluded.
    Unknown,
}

/// Tries to connect to `addr` (`host:port`), leaving from `source` when it is set and can
/// reach the destination (as [`crate::network::peer_channel`] does), and closes the
/// connection at once.
pub async fn probe(addr: &str, source: Option<std::net::IpAddr>, timeout: Duration) -> Probe {
    let attempt = async {
        let target: SocketAddr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let socket = if target.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let source = usable_source(addr, source).filter(|ip| ip.is_ipv4() == target.is_ipv4());
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(target).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_stream)) => Probe::Accepted,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        _ => Probe::Unknown,
    }
}

/// Watches this node's leader and, when its process is gone, gets an election going
/// (see the module documentation). Runs until the node shuts down.
pub async fn run(
    raft: Raft,
    contact: LeaderContact,
    source: Option<std::net::IpAddr>,
    heartbeat: Duration,
) {
    let mut tick = tokio::time::interval(heartbeat / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The leader (and its term) this node has already given up.
    let mut given_up: Option<(u64, u64)> = None;
    loop {
        let hurry = tokio::select! {
            _ = tick.tick() => false,
            _ = contact.candidate_behind.notified() => true,
        };
        // On a follower that hears from its leader (the usual case) a tick costs one
        // atomic load.
        let silent = contact.silent_for();
        if silent < heartbeat * SILENT_HEARTBEATS {
            continue;
        }
        let m = raft.metrics().borrow_watched().clone();
        if m.running_state.is_err() {
            return;
        }
        let Some(leader) = m.current_leader else {
            continue;
        };
        let voters: Vec<u64> = m.membership_config.voter_ids().collect();
        if m.state != ServerState::Follower || leader == m.id || !voters.contains(&m.id) {
            continue;
        }
        let Some(addr) = m.membership_config.get_node(&leader) else {
            continue;
        };
        if probe(&addr.raft_addr, source, heartbeat).await != Probe::Refused {
            continue;
        }
        if given_up != Some((leader, m.current_term)) {
            tracing::warn!(
                leader,
                silent_ms = silent.as_millis() as u64,
                "the leader's node-to-node port refuses connections: giving up its lease"
            );
            let release = TransferLeaderRequest::new(m.vote, leader, None);
            if raft.handle_transfer_leader(release).await.is_err() {
                return;
            }
            given_up = Some((leader, m.current_term));
        }
        let rank = voters
            .iter()
            .filter(|v| **v != leader && **v < m.id)
            .count();
        let rank = if hurry { 0 } else { rank as u32 };
        let turn = heartbeat * (SILENT_HEARTBEATS + STAGGER_HEARTBEATS * rank);
        if silent >= turn && raft.trigger().elect(true).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener never accepts: so a paused or overloaded leader, whose kernel still
    /// completes the handshake, counts as there.
    #[tokio::test]
    async fn a_closed_port_is_refused_and_an_open_one_accepted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let wait = Duration::from_secs(2);
        assert_eq!(probe(&addr, None, wait).await, Probe::Accepted);
        drop(listener);
        assert_eq!(probe(&addr, None, wait).await, Probe::Refused);
    }

    #[test]
    fn contact_measures_silence_since_the_latest_touch() {
        let contact = LeaderContact::default();
        let at = |ms| contact.start + Duration::from_millis(ms);
        assert_eq!(contact.silent_at(at(300)), Duration::from_millis(300));
        contact.touch_at(at(200));
        assert_eq!(contact.silent_at(at(300)), Duration::from_millis(100));
        // A late record of an older message does not make the silence longer.
        contact.touch_at(at(150));
        assert_eq!(contact.silent_at(at(300)), Duration::from_millis(100));
    }
}
