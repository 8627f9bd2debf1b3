//! When a node snapshots its state and compacts its Raft log.
//!
//! A snapshot is cheap: the state is in sled, so it is a flush and a sync of what was
//! applied (see [`crate::state_machine`]), after which the log before it may go. What
//! costs is the state a follower is sent when the log it needs is gone: a walk of the
//! whole state on the leader, a transfer and an install. So a node snapshots once both
//! hold:
//!
//! - at least `every_logs` entries were applied since its last snapshot (openraft's
//!   usual rule, which keeps small states compacting often), and
//! - the log written since then is at least `log_percent` percent of the state's size
//!   on disk.
//!
//! The second rule keeps as much log as it would cost to send the state (with 50%, half
//! its size), so a follower that falls behind by less catches up from the log. The
//! price is a longer log on disk (up to `log_percent` percent of the state, plus
//! `keep_logs_after_snapshot` entries). (When a snapshot still copied the whole state
//! the same rule kept that copy's cost proportional to the writes: near a million
//! unpruned audit events, a node had copied a ~3 GB state every few seconds.)
//!
//! openraft's own policy is set to `Never`; [`run`] watches the node and calls
//! `trigger().snapshot()`. openraft purges the log after each snapshot as before.
//!
//! A leader holds its next snapshot off (for [`CATCH_UP_GRACE`] at most) while a member
//! it replicates to has not yet reached the point that snapshot would purge the log to
//! (what is applied, less `keep_logs_after_snapshot`): that member would need a snapshot
//! to catch up. The members it holds for are learners (nodes being added), voters that
//! answered in the last 3 s, and members it is sending a snapshot to or sent one in the
//! last 30 s ([`SnapshotTransfers`]); a voter that is down gets a snapshot when it is
//! back, and holding the log for it would only grow the log. (A node busy writing a
//! whole state answers heartbeats late: counted as down, it had the log purged past the
//! snapshot it was installing, and was sent another as soon as it was done, and again.
//! A running sled does not reuse the space of the tree each install drops, so
//! back-to-back installs ran a node out of disk.)
//!
//! openraft purges the log when the leader snapshots and only spares entries in flight,
//! not a snapshot in flight, so a new node whose transfer and install took longer than
//! the cluster took to write the kept log found the log after its snapshot purged, and
//! was sent a newer snapshot, and again: it never caught up. (A hold only while a member
//! was behind the *current* snapshot ended the moment the new node installed one, and
//! the snapshot due then purged past it while it caught up from the log: a node joining
//! an 850 MB state under load was sent three snapshots.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;

use keyraft_types::NodeId;

use crate::Raft;

/// How often [`run`] looks at the node.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// A snapshot requested this long ago without one appearing is requested again (the
/// request may have been dropped, e.g. while a snapshot was being installed).
const REQUEST_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// The longest a leader holds a due snapshot off for a member that still needs the log
/// it would purge. A learner that went down does not catch up at all; past this, the
/// log is compacted anyway.
pub const CATCH_UP_GRACE: Duration = Duration::from_secs(120);

/// A voter whose last answer to the leader is older than this counts as down, and the
/// log is not held for it.
const ANSWERED_LATELY: Duration = Duration::from_secs(3);

/// A member sent a snapshot this long ago or less counts as catching up: it installs the
/// snapshot and then needs the log after it.
const SENT_A_SNAPSHOT_LATELY: Duration = Duration::from_secs(30);

/// The snapshots this node sends, by target, for [`run`] to tell a member busy with
/// one from a member that is down. The transport records each transfer
/// ([`SnapshotTransfers::start`]); clones share the record.
#[derive(Clone, Default)]
pub struct SnapshotTransfers(Arc<Mutex<HashMap<NodeId, Transfers>>>);

#[derive(Default)]
struct Transfers {
    /// Transfers under way.
    sending: usize,
    /// When the last one ended.
    ended: Option<Instant>,
}

/// A transfer under way; it ends when this drops.
pub struct Sending {
    transfers: SnapshotTransfers,
    target: NodeId,
}

impl SnapshotTransfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Transfers>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a transfer to `target` until the returned guard drops.
    pub fn start(&self, target: NodeId) -> Sending {
        self.lock().entry(target).or_default().sending += 1;
        Sending {
            transfers: self.clone(),
            target,
        }
    }

    /// Whether a transfer to `target` is under way or ended less than `within` ago.
    pub fn lately(&self, target: NodeId, within: Duration) -> bool {
        self.lock()
            .get(&target)
            .is_some_and(|t| t.sending > 0 || t.ended.is_some_and(|at| at.elapsed() < within))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut transfers = self.transfers.lock();
        let t = transfers.entry(self.target).or_default();
        t.sending = t.sending.saturating_sub(1);
        t.ended = Some(Instant::now());
    }
}

/// Whether a snapshot now would purge log a member still needs: some member's matched
/// log index (`None` for nothing matched yet) is below `purge_to`, the index the log
/// would be purged through (`None`: nothing would be). `replication` is openraft's
/// leader metric (none on a follower).
pub fn would_purge_what_a_member_needs(
    purge_to: Option<u64>,
    replication: impl IntoIterator<Item = Option<u64>>,
) -> bool {
    let Some(purge_to) = purge_to else {
        return false;
    };
    replication
        .into_iter()
        .any(|matched| matched.is_none_or(|m| m < purge_to))
}

/// When a node snapshots; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Least entries applied since the last snapshot.
    pub every_logs: u64,
    /// Least log bytes written since the last snapshot, as a percentage of the state's
    /// size on disk; 0 leaves only `every_logs`.
    pub log_percent: u64,
    /// Log entries openraft keeps behind a snapshot (`max_in_snapshot_log_to_keep`).
    pub keep_logs: u64,
}

impl CompactionPolicy {
    /// Whether a node that applied `entries_since` entries and wrote `log_bytes_since`
    /// bytes of log since its last snapshot, with a state of `snapshot_bytes` bytes on
    /// disk, should snapshot.
    pub fn due(&self, entries_since: u64, log_bytes_since: u64, snapshot_bytes: u64) -> bool {
        let wanted = u128::from(snapshot_bytes) * u128::from(self.log_percent);
        entries_since >= self.every_logs && u128::from(log_bytes_since) * 100 >= wanted
    }
}

/// Watches `raft` and asks it for a snapshot whenever `policy` says one is due, until the
/// task is dropped or Raft stops.
///
/// `log_bytes` counts the bytes appended to the log since the process started
/// ([`crate::log_store::LogStore::appended_bytes`]); `snapshot_bytes` is the size of the
/// node's state on disk as of its last snapshot
/// ([`crate::state_machine::StateMachineStore::snapshot_bytes`]); `transfers` are the
/// snapshots the node's transport sends ([`crate::network::Network::snapshot_transfers`]).
pub async fn run(
    raft: Raft,
    policy: CompactionPolicy,
    log_bytes: Arc<AtomicU64>,
    snapshot_bytes: Arc<AtomicU64>,
    transfers: SnapshotTransfers,
) {
    let metrics = raft.metrics();
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The log bytes written before the snapshot last seen; after a restart, the count
    // starts again from zero, which at worst delays the first snapshot.
    let mut seen_snapshot: Option<u64> = None;
    let mut baseline: u64 = 0;
    let mut requested: Option<Instant> = None;
    // Since when a due snapshot has been held off for a member catching up.
    let mut holding: Option<Instant> = None;
    loop {
        interval.tick().await;
        let (applied, snapshot, catching_up) = {
            let m = metrics.borrow_watched();
            if m.running_state.is_err() {
                return; // Raft has stopped.
            }
            let snapshot = m.snapshot.map(|l| l.index);
            let purge_to = m
                .last_applied
                .and_then(|l| l.index.checked_sub(policy.keep_logs));
            // Learners (nodes being added), voters that answered lately and members busy
            // with a snapshot: a voter that is down catches up from nothing, so holding
            // the log for it only grows it.
            let membership = m.membership_config.membership();
            let answered_lately = |id: &u64| {
                m.heartbeat
                    .as_ref()
                    .and_then(|h| h.get(id))
                    .and_then(|at| at.as_ref())
                    .is_some_and(|at| at.elapsed() < ANSWERED_LATELY)
            };
            let catching_up = m.replication.as_ref().is_some_and(|r| {
                let matched = r
                    .iter()
                    .filter(|(id, _)| {
                        membership.learner_ids().any(|l| l == **id)
                            || answered_lately(id)
                            || transfers.lately(**id, SENT_A_SNAPSHOT_LATELY)
                    })
                    .map(|(_, l)| l.as_ref().map(|l| l.index));
                would_purge_what_a_member_needs(purge_to, matched)
            });
            (m.last_applied.map(|l| l.index), snapshot, catching_up)
        };
        let written = log_bytes.load(Ordering::Relaxed);
        if snapshot != seen_snapshot {
            seen_snapshot = snapshot;
            baseline = written;
            requested = None;
        }
        let Some(applied) = applied else { continue };
        let entries_since = match snapshot {
            Some(s) => applied.saturating_sub(s),
            None => applied.saturating_add(1),
        };
        if requested.is_some_and(|at| at.elapsed() < REQUEST_AGAIN_AFTER) {
            continue;
        }
        let due = policy.due(
            entries_since,
            written.saturating_sub(baseline),
            snapshot_bytes.load(Ordering::Relaxed),
        );
        if !catching_up {
            holding = None;
        }
        if due && catching_up {
            let since = *holding.get_or_insert_with(|| {
                tracing::info!(
                    "a snapshot is due; holding it off while a member still needs the log it would purge"
                );
                Instant::now()
            });
            if since.elapsed() < CATCH_UP_GRACE {
                continue;
            }
        }
        if due {
            holding = None;
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "could not request a snapshot");
                return;
            }
            requested = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_both_the_entries_and_the_log_bytes() {
        let p = CompactionPolicy {
            every_logs: 10_000,
            log_percent: 50,
            keep_logs: 1_000,
        };
        // A small state: the entry count decides.
        assert!(!p.due(9_999, 10 << 20, 1 << 20));
        assert!(p.due(10_000, 512 << 10, 1 << 20));
        // A 2 GiB state: 10 000 entries of 100 KiB are not enough, 1 GiB of log is.
        assert!(!p.due(10_000, 10_000 * (100 << 10), 2 << 30));
        assert!(p.due(10_000, 1 << 30, 2 << 30));
        // No snapshot yet: entries alone.
        assert!(p.due(10_000, 0, 0));
    }

    #[test]
    fn a_member_below_the_purge_point_still_needs_the_log() {
        assert!(!would_purge_what_a_member_needs(None, [None, Some(3)]));
        assert!(!would_purge_what_a_member_needs(
            Some(100),
            [Some(100), Some(250)]
        ));
        assert!(would_purge_what_a_member_needs(
            Some(100),
            [Some(250), Some(99)]
        ));
        assert!(would_purge_what_a_member_needs(
            Some(100),
            [Some(250), None]
        ));
        assert!(!would_purge_what_a_member_needs(Some(100), []));
    }

    /// A member counts as busy with a snapshot while one is sent to it and for a while
    /// after, and only that member.
    #[test]
    fn a_member_sent_a_snapshot_lately_is_catching_up() {
        let transfers = SnapshotTransfers::default();
        assert!(!transfers.lately(2, Duration::from_secs(30)));
        let first = transfers.start(2);
        let second = transfers.start(2);
        assert!(transfers.lately(2, Duration::ZERO));
        assert!(!transfers.lately(3, Duration::from_secs(30)));
        drop(first);
        assert!(transfers.lately(2, Duration::ZERO), "one still under way");
        drop(second);
        assert!(transfers.lately(2, Duration::from_secs(30)));
        assert!(!transfers.lately(2, Duration::ZERO));
    }

    #[test]
    fn zero_percent_is_the_entry_count_alone() {
        let p = CompactionPolicy {
            every_logs: 20,
            log_percent: 0,
            keep_logs: 0,
        };
        assert!(p.due(20, 0, u64::MAX));
        assert!(!p.due(19, u64::MAX, 0));
    }
}
