//! # The nemesis: injects one fault, and heals it
//!
//! [`Nemesis::inject`] resolves a fault's target against the cluster as it is now (who
//! leads, which nodes are protected, how many may be faulty at once), acts, and records
//! a `start` event naming the nodes; [`Nemesis::heal`] undoes it and records the `stop`.
//! A fault that cannot be injected (no leader to aim at, a binary without fail points)
//! records nothing, so the coverage checker reports the run `unknown` rather than
//! letting it pass without the fault.
//!
//! Nodes that exit on their own (a fail point's `panic`, a fatal fsync error) are
//! counted as crashes and restarted when the fault window closes.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cluster::ChaosCluster;
use crate::experiment::{BlastRadius, Fault, Shape, Target};
use crate::history::Phase;
use crate::net::{shapes, LinkFault};
use crate::workload::Recorder;

/// A fault in effect, and how to undo it.
#[derive(Debug)]
pub struct Active {
    fault: Fault,
    nodes: Vec<u64>,
    detail: String,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    HealNetwork,
    Failpoint { node: u64, name: String },
    Unfill(u64),
    Nothing,
}

/// Injects and heals faults on a [`ChaosCluster`], recording each window.
pub struct Nemesis {
    recorder: Arc<Recorder>,
    blast: BlastRadius,
    rng: StdRng,
    /// Nodes that exited on their own so far.
    pub crashes: u32,
}

impl Nemesis {
    /// A nemesis recording into `recorder`, drawing random targets from `seed`.
    pub fn new(recorder: Arc<Recorder>, blast: BlastRadius, seed: u64) -> Nemesis {
        Nemesis {
            recorder,
            blast,
            rng: StdRng::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            crashes: 0,
        }
    }

    /// Resolves a fault's target to a node id; also returns the leader when the fault
    /// needed to know it (asking every node costs up to 15 s without a majority, so a
    /// fault aimed at a given or random node does not ask).
    async fn resolve(
        &mut self,
        cluster: &ChaosCluster,
        fault: &Fault,
    ) -> Result<(u64, Option<u64>), String> {
        let target = fault.target();
        let allowed: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| !self.blast.protect.contains(id))
            .collect();
        let needs_leader = matches!(target, Target::Leader | Target::Follower)
            || matches!(
                fault,
                Fault::Partition {
                    shape: Shape::LeaderMinority,
                    ..
                }
            );
        let leader = if needs_leader {
            cluster.leader(Duration::from_secs(15)).await.ok()
        } else {
            None
        };
        let pick = |rng: &mut StdRng, from: Vec<u64>| -> Result<u64, String> {
            from.choose(rng)
                .copied()
                .ok_or_else(|| "no node may be targeted (all protected?)".to_string())
        };
        match target {
            Target::Node(n) => Ok((*n, leader)),
            Target::Leader => {
                let l = leader.ok_or("no leader to target")?;
                if self.blast.protect.contains(&l) {
                    return Err(format!("the leader (node {l}) is protected"));
                }
                Ok((l, leader))
            }
            Target::Follower => {
                let l = leader.ok_or("no leader, so no follower to target")?;
                let followers = allowed.into_iter().filter(|id| *id != l).collect();
                pick(&mut self.rng, followers).map(|f| (f, leader))
            }
            Target::Random => pick(&mut self.rng, allowed).map(|r| (r, leader)),
        }
    }

    /// Injects `fault`; records its start. An error means nothing was injected.
    pub async fn inject(
        &mut self,
        cluster: &mut ChaosCluster,
        fault: &Fault,
    ) -> Result<Active, String> {
        let (node, leader) = self.resolve(cluster, fault).await?;
        let (nodes, detail, undo) = match fault {
            Fault::Kill { .. } => {
                cluster.kill(node).map_err(|e| e.to_string())?;
                (
                    vec![node],
                    format!("kill -9 node {node}"),
                    Undo::Restart(vec![node]),
                )
            }
            Fault::Pause { .. } => {
                cluster.pause(node).map_err(|e| e.to_string())?;
                (
                    vec![node],
                    format!("SIGSTOP node {node}"),
                    Undo::Resume(vec![node]),
                )
            }
            Fault::Restart { .. } => {
                let by_itself = cluster
                    .stop(node, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
                cluster.start_node(node).map_err(|e| e.to_string())?;
                let how = if by_itself {
                    "SIGTERM"
                } else {
                    "SIGTERM (did not stop within 10 s: kill -9)"
                };
                (
                    vec![node],
                    format!("{how} and start node {node}"),
                    Undo::Nothing,
                )
            }
            Fault::Partition { shape, .. } => {
                let network = cluster.network().map_err(|e| e.to_string())?.clone();
                let ids = cluster.ids();
                let blocked = partition_links(*shape, &ids, node, leader.unwrap_or(node))?;
                for (from, to) in &blocked {
                    network.set(*from, *to, LinkFault::Blackhole);
                }
                let cut = cut_off(&ids, &blocked);
                (
                    cut,
                    format!("{shape:?} around node {node}: blocked {blocked:?}"),
                    Undo::HealNetwork,
                )
            }
            Fault::Delay { ms, jitter_ms, .. } => {
                let network = cluster.network().map_err(|e| e.to_string())?;
                for (from, to) in links_of(&cluster.ids(), node) {
                    network.set(
                        from,
                        to,
                        LinkFault::Delay {
                            ms: *ms,
                            jitter_ms: *jitter_ms,
                        },
                    );
                }
                (
                    vec![node],
                    format!("{ms} ms +- {jitter_ms} ms on node {node}'s links"),
                    Undo::HealNetwork,
                )
            }
            Fault::Loss { percent, .. } => {
                let network = cluster.network().map_err(|e| e.to_string())?;
                for (from, to) in links_of(&cluster.ids(), node) {
                    network.set(from, to, LinkFault::Loss { percent: *percent });
                }
                (
                    vec![node],
                    format!("{percent}% loss on node {node}'s links"),
                    Undo::HealNetwork,
                )
            }
            Fault::Reset { .. } => {
                let network = cluster.network().map_err(|e| e.to_string())?;
                for (from, to) in links_of(&cluster.ids(), node) {
                    network.set(from, to, LinkFault::ResetEvery { ms: 500 });
                }
                (
                    vec![node],
                    format!("resets on node {node}'s links every 500 ms"),
                    Undo::HealNetwork,
                )
            }
            Fault::Failpoint { name, actions, .. } => {
                let client = cluster.client_of(node).map_err(|e| e.to_string())?;
                let armed = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.set_failpoint(name, actions),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(keyraft_client::Error::Transport(
                        "no answer within 5 s".into(),
                    ))
                });
                if let Err(e) = armed {
                    // Arming is itself audited, through Raft: a point on the apply or
                    // log path can fire on the arming call's own entry and take the
                    // node down before it answers. The node exiting is the fault.
                    if !exits_soon(cluster, node).await {
                        return Err(format!("arming {name} on node {node}: {e}"));
                    }
                }
                (
                    vec![node],
                    format!("{name}={actions} on node {node}"),
                    Undo::Failpoint {
                        node,
                        name: name.clone(),
                    },
                )
            }
            Fault::Replace { .. } => {
                let began = std::time::Instant::now();
                let new = cluster
                    .replace(node, Duration::from_secs(180))
                    .await
                    .map_err(|e| format!("replacing node {node}: {e}"))?;
                (
                    vec![node],
                    format!(
                        "node {node} removed and wiped; node {new} joined in its place \
                         (took {:.1} s)",
                        began.elapsed().as_secs_f64()
                    ),
                    Undo::Nothing,
                )
            }
            Fault::DiskFull { .. } => {
                let ballast = cluster.fill_disk(node).map_err(|e| e.to_string())?;
                (
                    vec![node],
                    format!(
                        "node {node}'s data filesystem filled ({} MiB of ballast)",
                        ballast >> 20
                    ),
                    Undo::Unfill(node),
                )
            }
            Fault::ClockSkew { offset, .. } => {
                cluster
                    .client_of(node)
                    .map_err(|e| e.to_string())?
                    .advance_clock(u64::try_from(offset.as_millis()).unwrap_or(u64::MAX))
                    .await
                    .map_err(|e| format!("moving node {node}'s clock: {e}"))?;
                (
                    vec![node],
                    format!(
                        "node {node}'s clock {} ahead",
                        humantime::format_duration(*offset)
                    ),
                    Undo::Nothing,
                )
            }
        };
        if nodes.len() > self.blast.limit(cluster.ids().len()) {
            // Put it back at once: the experiment asked for more than it may break.
            let active = Active {
                fault: fault.clone(),
                nodes: nodes.clone(),
                detail,
                undo,
            };
            self.undo(cluster, active).await;
            return Err(format!(
                "{} would make {} nodes faulty; the blast radius allows {}",
                fault.name(),
                nodes.len(),
                self.blast.limit(cluster.ids().len())
            ));
        }
        self.recorder
            .nemesis(Phase::Start, fault.name(), &nodes, &detail);
        Ok(Active {
            fault: fault.clone(),
            nodes,
            detail,
            undo,
        })
    }

    /// Heals a fault; records its stop. Nodes that died meanwhile are restarted.
    pub async fn heal(&mut self, cluster: &mut ChaosCluster, active: Active) {
        let (name, nodes, detail) = (
            active.fault.name(),
            active.nodes.clone(),
            active.detail.clone(),
        );
        self.undo(cluster, active).await;
        self.restart_crashed(cluster);
        self.recorder
            .nemesis(Phase::Stop, name, &nodes, &format!("healed: {detail}"));
    }

    async fn undo(&mut self, cluster: &mut ChaosCluster, active: Active) {
        match active.undo {
            Undo::Restart(nodes) => {
                for n in nodes {
                    if let Err(e) = cluster.start_node(n) {
                        tracing::warn!(node = n, error = %e, "restart failed");
                    }
                }
            }
            Undo::Resume(nodes) => {
                for n in nodes {
                    if let Err(e) = cluster.resume(n) {
                        tracing::warn!(node = n, error = %e, "resume failed");
                    }
                }
            }
            Undo::HealNetwork => {
                if let Ok(network) = cluster.network() {
                    network.heal();
                }
            }
            Undo::Failpoint { node, name } => {
                // A node the point crashed lost it with its memory; one that hangs
                // must not hold up the heal.
                if cluster.is_running(node) {
                    if let Ok(c) = cluster.client_of(node) {
                        let off = c.set_failpoint(&name, "off");
                        if !matches!(
                            tokio::time::timeout(Duration::from_secs(3), off).await,
                            Ok(Ok(_))
                        ) {
                            tracing::warn!(node, point = %name, "could not disarm");
                        }
                    }
                }
            }
            Undo::Unfill(node) => {
                if let Err(e) = cluster.unfill_disk(node) {
                    tracing::warn!(node, error = %e, "could not empty the disk");
                }
            }
            Undo::Nothing => {}
        }
    }

    /// Counts and restarts nodes that exited on their own; each crash goes into the
    /// history as a `crash` window that closes when the node is started again.
    pub fn restart_crashed(&mut self, cluster: &mut ChaosCluster) -> Vec<u64> {
        let crashed = cluster.crashed();
        for n in &crashed {
            self.crashes += 1;
            let detail = format!("node {n} exited on its own");
            self.recorder.nemesis(Phase::Start, "crash", &[*n], &detail);
            let restarted = match cluster.start_node(*n) {
                Ok(()) => format!("node {n} restarted"),
                Err(e) => format!("node {n} could not be restarted: {e}"),
            };
            self.recorder
                .nemesis(Phase::Stop, "crash", &[*n], &restarted);
        }
        crashed
    }
}

/// Whether `node`'s process exits within a couple of seconds.
async fn exits_soon(cluster: &mut ChaosCluster, node: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if !cluster.is_running(node) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every directed node-to-node link touching `node`.
fn links_of(ids: &[u64], node: u64) -> Vec<(u64, u64)> {
    ids.iter()
        .filter(|id| **id != node)
        .flat_map(|id| [(node, *id), (*id, node)])
        .collect()
}

/// The directed links a partition shape blocks.
fn partition_links(
    shape: Shape,
    ids: &[u64],
    target: u64,
    leader: u64,
) -> Result<Vec<(u64, u64)>, String> {
    let partition = match shape {
        Shape::Isolate => shapes::isolate(ids, target),
        Shape::OneWayFrom => shapes::one_way_from(ids, target),
        Shape::OneWayTo => shapes::one_way_to(ids, target),
        Shape::LeaderMinority => shapes::leader_minority(ids, leader),
        Shape::Halves => shapes::halves(ids),
        Shape::Bridge => shapes::bridge(ids),
        Shape::MajoritiesRing => shapes::majorities_ring(ids),
    }
    .map_err(|e| e.to_string())?;
    if partition.blocked.is_empty() {
        return Err(format!("{shape:?} blocks nothing in a cluster of {ids:?}"));
    }
    Ok(partition.blocked.into_iter().collect())
}

/// The nodes a partition leaves without a majority they can talk to both ways (the
/// "faulty" side for the blast radius).
fn cut_off(ids: &[u64], blocked: &[(u64, u64)]) -> Vec<u64> {
    let majority = ids.len() / 2 + 1;
    ids.iter()
        .copied()
        .filter(|a| {
            let reachable = ids
                .iter()
                .filter(|b| {
                    *a == **b || !(blocked.contains(&(*a, **b)) || blocked.contains(&(**b, *a)))
                })
                .count();
            reachable < majority
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faulty_side_of_a_partition_is_whoever_lacks_a_majority() {
        let ids = [1, 2, 3, 4, 5];
        let isolate: Vec<(u64, u64)> = links_of(&ids, 3);
        assert_eq!(cut_off(&ids, &isolate), vec![3]);
        let halves: Vec<(u64, u64)> = [1, 2]
            .iter()
            .flat_map(|a| [3, 4, 5].iter().flat_map(move |b| [(*a, *b), (*b, *a)]))
            .collect();
        assert_eq!(cut_off(&ids, &halves), vec![1, 2]);
        assert!(cut_off(&ids, &[]).is_empty());
    }
}
