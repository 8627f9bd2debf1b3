//! # Partition shapes
//!
//! Pure functions from a cluster's node ids (and, for some shapes, its leader) to the
//! set of *directed* links a partition blocks: a blocked link `(a, b)` means nothing `a`
//! sends reaches `b`. [`Network::apply`](super::Network::apply) puts a
//! [`Partition`] into effect.
//!
//! The shapes are the ones Jepsen's nemeses use:
//!
//! * [`isolate`]: one node cut off both ways;
//! * [`one_way`]: one directed link cut (`a` cannot reach `b`, `b` still reaches `a`);
//! * [`one_way_from`] and [`one_way_to`]: a node that cannot be heard, or cannot hear;
//! * [`split`] and [`halves`]: two groups that cannot talk to each other;
//! * [`leader_minority`]: the leader and at most one other node on the minority side;
//! * [`majorities_ring`]: every node hears from a majority, no two the same majority;
//! * [`bridge`]: two halves, with one node that talks to both.
//!
//! Node lists are taken as sets (order and duplicates do not matter); shapes that pick
//! nodes pick them in ascending id order, so a shape is a function of its input.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// The directed links a partition blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The shape, for people (e.g. `isolate(2)`).
    pub name: String,
    /// Blocked directed links `(from, to)`.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
}

impl Partition {
    /// A partition that blocks nothing.
    pub fn none() -> Partition {
        Partition {
            name: "none".into(),
            blocked: BTreeSet::new(),
        }
    }

    /// Whether nothing `from` sends reaches `to`.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// The nodes among `nodes` whose messages reach `node`, `node` included.
    pub fn hears(&self, nodes: &[NodeId], node: NodeId) -> BTreeSet<NodeId> {
        nodes
            .iter()
            .copied()
            .filter(|n| *n == node || !self.is_blocked(*n, node))
            .collect()
    }

    /// Every node with at least one blocked link.
    pub fn affected(&self) -> BTreeSet<NodeId> {
        self.blocked.iter().flat_map(|(a, b)| [*a, *b]).collect()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why a shape cannot be made of the given nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A node named is not one of the cluster's.
    #[error("node {0} is not in the cluster")]
    UnknownNode(NodeId),
    /// The shape needs more nodes.
    #[error("{shape} needs at least {needed} nodes, the cluster has {have}")]
    TooFewNodes {
        /// The shape.
        shape: &'static str,
        /// How many it needs.
        needed: usize,
        /// How many there are.
        have: usize,
    },
    /// The shape needs the current leader and none is known.
    #[error("{0} needs the current leader and none is known")]
    NoLeader(&'static str),
    /// The arguments make no partition.
    #[error("{0}")]
    Invalid(String),
}

/// A shape named in an experiment, resolved against the cluster when the fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case")]
pub enum Shape {
    /// [`isolate`] a given node.
    Isolate {
        /// The node.
        node: NodeId,
    },
    /// [`isolate`] the current leader.
    IsolateLeader,
    /// [`one_way`]: `from` cannot reach `to`.
    OneWay {
        /// The sender whose messages are dropped.
        from: NodeId,
        /// The receiver.
        to: NodeId,
    },
    /// [`one_way_from`] a given node.
    OneWayFrom {
        /// The node nobody hears.
        node: NodeId,
    },
    /// [`one_way_to`] a given node.
    OneWayTo {
        /// The node that hears nobody.
        node: NodeId,
    },
    /// [`leader_minority`].
    LeaderMinority,
    /// [`majorities_ring`].
    MajoritiesRing,
    /// [`bridge`].
    Bridge,
    /// [`halves`].
    Halves,
}

impl Shape {
    /// The partition this shape makes of `nodes` when `leader` leads.
    pub fn partition(
        &self,
        nodes: &[NodeId],
        leader: Option<NodeId>,
    ) -> Result<Partition, ShapeError> {
        match *self {
            Shape::Isolate { node } => isolate(nodes, node),
            Shape::IsolateLeader => {
                isolate(nodes, leader.ok_or(ShapeError::NoLeader("isolate-leader"))?)
            }
            Shape::OneWay { from, to } => one_way(nodes, from, to),
            Shape::OneWayFrom { node } => one_way_from(nodes, node),
            Shape::OneWayTo { node } => one_way_to(nodes, node),
            Shape::LeaderMinority => leader_minority(
                nodes,
                leader.ok_or(ShapeError::NoLeader("leader-minority"))?,
            ),
            Shape::MajoritiesRing => majorities_ring(nodes),
            Shape::Bridge => bridge(nodes),
            Shape::Halves => halves(nodes),
        }
    }
}

fn sorted(nodes: &[NodeId]) -> Vec<NodeId> {
    nodes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn need(shape: &'static str, nodes: &[NodeId], needed: usize) -> Result<(), ShapeError> {
    if nodes.len() < needed {
        return Err(ShapeError::TooFewNodes {
            shape,
            needed,
            have: nodes.len(),
        });
    }
    Ok(())
}

fn member(nodes: &[NodeId], node: NodeId) -> Result<(), ShapeError> {
    if nodes.contains(&node) {
        Ok(())
    } else {
        Err(ShapeError::UnknownNode(node))
    }
}

/// Both directions of every link between `left` and `right`.
fn cut(left: &[NodeId], right: &[NodeId]) -> BTreeSet<(NodeId, NodeId)> {
    left.iter()
        .flat_map(|a| right.iter().flat_map(move |b| [(*a, *b), (*b, *a)]))
        .collect()
}

fn list(nodes: &[NodeId]) -> String {
    let ids: Vec<String> = nodes.iter().map(NodeId::to_string).collect();
    format!("[{}]", ids.join(","))
}

/// `node` cut off from every other node, both ways.
pub fn isolate(nodes: &[NodeId], node: NodeId) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    member(&nodes, node)?;
    need("isolate", &nodes, 2)?;
    let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != node).collect();
    Ok(Partition {
        name: format!("isolate({node})"),
        blocked: cut(&[node], &rest),
    })
}

/// Nothing `from` sends reaches `to`; what `to` sends `from` passes. Over TCP that
/// still breaks `to`'s calls to `from`: they arrive, but their answers do not come back.
pub fn one_way(nodes: &[NodeId], from: NodeId, to: NodeId) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    member(&nodes, from)?;
    member(&nodes, to)?;
    if from == to {
        return Err(ShapeError::Invalid(format!(
            "a one-way partition needs two nodes, not {from} twice"
        )));
    }
    Ok(Partition {
        name: format!("one-way({from}->{to})"),
        blocked: BTreeSet::from([(from, to)]),
    })
}

/// Nothing `node` sends reaches any other node; it still hears everyone.
pub fn one_way_from(nodes: &[NodeId], node: NodeId) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    member(&nodes, node)?;
    need("one-way-from", &nodes, 2)?;
    Ok(Partition {
        name: format!("one-way-from({node})"),
        blocked: nodes
            .iter()
            .filter(|n| **n != node)
            .map(|n| (node, *n))
            .collect(),
    })
}

/// Nothing any other node sends reaches `node`; what it sends still gets through.
pub fn one_way_to(nodes: &[NodeId], node: NodeId) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    member(&nodes, node)?;
    need("one-way-to", &nodes, 2)?;
    Ok(Partition {
        name: format!("one-way-to({node})"),
        blocked: nodes
            .iter()
            .filter(|n| **n != node)
            .map(|n| (*n, node))
            .collect(),
    })
}

/// `side` and the other nodes cannot talk to each other; within each group everything
/// passes.
pub fn split(nodes: &[NodeId], side: &[NodeId]) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    let side = sorted(side);
    for n in &side {
        member(&nodes, *n)?;
    }
    let rest: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| !side.contains(n))
        .collect();
    if side.is_empty() || rest.is_empty() {
        return Err(ShapeError::Invalid(format!(
            "a split needs nodes on both sides, not {} | {}",
            list(&side),
            list(&rest)
        )));
    }
    Ok(Partition {
        name: format!("split({}|{})", list(&side), list(&rest)),
        blocked: cut(&side, &rest),
    })
}

/// The lower `n/2` ids against the rest (for an odd count, a minority against a
/// majority).
pub fn halves(nodes: &[NodeId]) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    need("halves", &nodes, 2)?;
    let (left, right) = nodes.split_at(nodes.len() / 2);
    Ok(Partition {
        name: format!("halves({}|{})", list(left), list(right)),
        blocked: cut(left, right),
    })
}

/// The leader, with at most one other node (the next id after it, wrapping; only when
/// the two are still a minority), cut off from the majority.
pub fn leader_minority(nodes: &[NodeId], leader: NodeId) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    member(&nodes, leader)?;
    need("leader-minority", &nodes, 2)?;
    let size = ((nodes.len() - 1) / 2).clamp(1, 2);
    let at = nodes.iter().position(|n| *n == leader).unwrap_or(0);
    let minority: Vec<NodeId> = (0..size).map(|k| nodes[(at + k) % nodes.len()]).collect();
    let majority: Vec<NodeId> = nodes
        .iter()
        .copied()
        .filter(|n| !minority.contains(n))
        .collect();
    Ok(Partition {
        name: format!(
            "leader-minority(leader {leader}: {}|{})",
            list(&minority),
            list(&majority)
        ),
        blocked: cut(&minority, &majority),
    })
}

/// Every node hears from a majority (itself included), and no two nodes hear from the
/// same majority: the nodes sit on a ring in id order, and each hears only from its
/// `n/2` nearest neighbours (for an odd `n/2`, one more on the side of the higher ids).
/// With 5 nodes every node hears its two ring neighbours and the links are cut both
/// ways; with other counts some cuts are one-way.
pub fn majorities_ring(nodes: &[NodeId]) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    need("majorities-ring", &nodes, 3)?;
    let n = nodes.len();
    let others = n / 2;
    let ahead = others.div_ceil(2);
    let behind = others / 2;
    let mut blocked = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let hears: BTreeSet<usize> = (1..=ahead)
            .map(|k| (i + k) % n)
            .chain((1..=behind).map(|k| (i + n - k) % n))
            .collect();
        for (j, other) in nodes.iter().enumerate() {
            if j != i && !hears.contains(&j) {
                blocked.insert((*other, *node));
            }
        }
    }
    Ok(Partition {
        name: format!("majorities-ring({})", list(&nodes)),
        blocked,
    })
}

/// Two halves that cannot talk to each other, and the middle id, which talks to both.
pub fn bridge(nodes: &[NodeId]) -> Result<Partition, ShapeError> {
    let nodes = sorted(nodes);
    need("bridge", &nodes, 3)?;
    let middle = nodes.len() / 2;
    let (left, rest) = nodes.split_at(middle);
    let (bridge, right) = (rest[0], &rest[1..]);
    Ok(Partition {
        name: format!("bridge({bridge}: {}|{})", list(left), list(right)),
        blocked: cut(left, right),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [NodeId; 3] = [1, 2, 3];
    const FIVE: [NodeId; 5] = [1, 2, 3, 4, 5];

    fn majority(n: usize) -> usize {
        n / 2 + 1
    }

    /// Whether `a` and `b` can talk both ways.
    fn connected(p: &Partition, a: NodeId, b: NodeId) -> bool {
        !p.is_blocked(a, b) && !p.is_blocked(b, a)
    }

    #[test]
    fn isolate_cuts_one_node_both_ways() {
        let p = isolate(&FIVE, 3).unwrap();
        assert_eq!(p.name, "isolate(3)");
        assert_eq!(p.blocked.len(), 8);
        for n in [1, 2, 4, 5] {
            assert!(p.is_blocked(3, n) && p.is_blocked(n, 3));
            for m in [1, 2, 4, 5] {
                assert!(connected(&p, n, m));
            }
        }
        assert_eq!(p.hears(&FIVE, 3), BTreeSet::from([3]));
        assert_eq!(isolate(&FIVE, 9), Err(ShapeError::UnknownNode(9)));
        assert!(matches!(
            isolate(&[1], 1),
            Err(ShapeError::TooFewNodes { .. })
        ));
    }

    #[test]
    fn one_way_cuts_exactly_one_direction() {
        let p = one_way(&THREE, 1, 2).unwrap();
        assert_eq!(p.blocked, BTreeSet::from([(1, 2)]));
        assert!(!p.is_blocked(2, 1));
        assert_eq!(p.affected(), BTreeSet::from([1, 2]));
        assert!(matches!(one_way(&THREE, 2, 2), Err(ShapeError::Invalid(_))));
        assert_eq!(one_way(&THREE, 1, 7), Err(ShapeError::UnknownNode(7)));
    }

    #[test]
    fn one_way_from_and_to_cut_a_node_in_one_direction() {
        let p = one_way_from(&THREE, 2).unwrap();
        assert_eq!(p.blocked, BTreeSet::from([(2, 1), (2, 3)]));
        assert_eq!(p.hears(&THREE, 2), BTreeSet::from(THREE));
        assert_eq!(p.hears(&THREE, 1), BTreeSet::from([1, 3]));
        let p = one_way_to(&THREE, 2).unwrap();
        assert_eq!(p.blocked, BTreeSet::from([(1, 2), (3, 2)]));
        assert_eq!(p.hears(&THREE, 2), BTreeSet::from([2]));
        assert_eq!(one_way_to(&THREE, 4), Err(ShapeError::UnknownNode(4)));
        assert!(one_way_from(&[1], 1).is_err());
    }

    #[test]
    fn halves_split_a_minority_from_a_majority() {
        let p = halves(&[5, 3, 1, 4, 2, 2]).unwrap();
        assert_eq!(p.name, "halves([1,2]|[3,4,5])");
        assert_eq!(p.blocked.len(), 2 * 2 * 3);
        assert!(connected(&p, 1, 2) && connected(&p, 3, 5));
        assert!(p.is_blocked(2, 3) && p.is_blocked(3, 2));
        let even = halves(&[1, 2, 3, 4]).unwrap();
        assert_eq!(even.hears(&[1, 2, 3, 4], 1), BTreeSet::from([1, 2]));
        assert!(halves(&[1]).is_err());
    }

    #[test]
    fn split_takes_any_side() {
        let p = split(&FIVE, &[2, 4]).unwrap();
        assert_eq!(p.name, "split([2,4]|[1,3,5])");
        assert!(connected(&p, 2, 4) && connected(&p, 1, 5));
        assert!(p.is_blocked(4, 5) && p.is_blocked(1, 2));
        assert!(split(&FIVE, &[]).is_err());
        assert!(split(&FIVE, &FIVE).is_err());
        assert_eq!(split(&FIVE, &[6]), Err(ShapeError::UnknownNode(6)));
    }

    #[test]
    fn leader_minority_keeps_the_leader_on_the_minority_side() {
        // Three nodes: the leader alone.
        let p = leader_minority(&THREE, 2).unwrap();
        assert_eq!(p.hears(&THREE, 2), BTreeSet::from([2]));
        assert!(connected(&p, 1, 3));
        // Five nodes: the leader and the next id, wrapping.
        let p = leader_minority(&FIVE, 5).unwrap();
        assert_eq!(p.name, "leader-minority(leader 5: [5,1]|[2,3,4])");
        assert_eq!(p.hears(&FIVE, 5), BTreeSet::from([1, 5]));
        assert_eq!(p.hears(&FIVE, 3), BTreeSet::from([2, 3, 4]));
        // Seven nodes: still at most one other.
        let seven: Vec<NodeId> = (1..=7).collect();
        let p = leader_minority(&seven, 4).unwrap();
        assert_eq!(p.hears(&seven, 4), BTreeSet::from([4, 5]));
        for n in &seven {
            let side = p.hears(&seven, *n);
            assert!(side.contains(&4) == (side.len() < majority(7)));
        }
        assert_eq!(leader_minority(&FIVE, 6), Err(ShapeError::UnknownNode(6)));
    }

    #[test]
    fn majorities_ring_gives_every_node_its_own_majority() {
        for n in 3..=9u64 {
            let nodes: Vec<NodeId> = (1..=n).collect();
            let p = majorities_ring(&nodes).unwrap();
            let mut seen = BTreeSet::new();
            for node in &nodes {
                let hears = p.hears(&nodes, *node);
                assert_eq!(hears.len(), majority(nodes.len()), "n={n} node={node}");
                assert!(
                    seen.insert(hears),
                    "two nodes hear the same majority (n={n})"
                );
            }
        }
        // Five nodes: each hears its two ring neighbours, every cut is two-way.
        let p = majorities_ring(&FIVE).unwrap();
        assert_eq!(p.hears(&FIVE, 1), BTreeSet::from([5, 1, 2]));
        assert_eq!(p.hears(&FIVE, 3), BTreeSet::from([2, 3, 4]));
        assert_eq!(p.blocked.len(), 10);
        for (a, b) in &p.blocked {
            assert!(p.is_blocked(*b, *a));
        }
        assert!(majorities_ring(&[1, 2]).is_err());
    }

    #[test]
    fn bridge_connects_two_halves_through_the_middle_node() {
        let p = bridge(&FIVE).unwrap();
        assert_eq!(p.name, "bridge(3: [1,2]|[4,5])");
        assert_eq!(p.hears(&FIVE, 3), BTreeSet::from(FIVE));
        assert_eq!(p.hears(&FIVE, 1), BTreeSet::from([1, 2, 3]));
        assert_eq!(p.hears(&FIVE, 5), BTreeSet::from([3, 4, 5]));
        assert_eq!(p.blocked.len(), 8);
        let p = bridge(&THREE).unwrap();
        assert_eq!(p.blocked, BTreeSet::from([(1, 3), (3, 1)]));
        assert!(bridge(&[1, 2]).is_err());
    }

    #[test]
    fn shapes_resolve_against_the_cluster_and_its_leader() {
        let p = Shape::IsolateLeader.partition(&THREE, Some(2)).unwrap();
        assert_eq!(p, isolate(&THREE, 2).unwrap());
        assert_eq!(
            Shape::LeaderMinority.partition(&THREE, None),
            Err(ShapeError::NoLeader("leader-minority"))
        );
        let shape: Shape = serde_json::from_str(r#"{"shape":"one_way","from":1,"to":3}"#).unwrap();
        assert_eq!(shape, Shape::OneWay { from: 1, to: 3 });
        assert_eq!(
            shape.partition(&THREE, None).unwrap().blocked,
            BTreeSet::from([(1, 3)])
        );
        assert_eq!(Partition::none().blocked.len(), 0);
    }
}
