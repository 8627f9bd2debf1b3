//! # The client's view of the cluster, and where each call goes
//!
//! A client starts from its seed endpoints and learns the rest from `ClusterStatus`
//! (see `discovery.rs`): each member's id and client endpoint, and who leads. That view
//! decides where an attempt goes:
//!
//! - **mutations** go to the leader, so they cost one network hop instead of two (a
//!   follower would forward them). If no leader is known, or it is benched, any healthy
//!   node takes them and forwards — a stale view costs a hop, never an error.
//! - **cryptography and reads** are spread over the healthy members, by
//!   [`Balance`](crate::Balance): round-robin, or least outstanding requests. A node
//!   being added (a learner) is not among them until it is a voter.
//! - **node-addressed calls** (`advance_clock`; `cluster_status` prefers them) go to the
//!   configured endpoints, because they ask *that* node.
//!
//! A node whose attempt fails in transport (refused, reset, keepalive timeout), or that
//! says its HSM lacks the domain key, is **benched** for a backoff that doubles with
//! each failure (`bench_initial` up to `bench_max`). With discovery on, a benched node
//! comes back only after a health probe answers; without it, when its bench expires.
//! If every candidate is benched, the one due back first is tried anyway: a client
//! never refuses to try.
//!
//! Each node has one long-lived HTTP/2 channel with keepalive pings, made lazily from
//! inside the runtime (so a `Client` can be built outside one). A transport failure
//! replaces the channel, which also recovers a client whose first runtime has gone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::options::{Balance, ClientOptions};
use crate::types::ClusterStatusResponse;
use crate::Error;

/// The role `ClusterStatus` gives a node that is joining.
const LEARNER: &str = "Learner";

/// Where a call should go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Route {
    /// The leader if known and healthy, else any node (mutations, membership).
    Leader,
    /// Any healthy member, balanced (cryptography, reads).
    Any,
    /// A configured endpoint if one is healthy, else any member.
    PreferSeeds,
    /// Only the configured endpoints, and no retry once a request may have reached
    /// one (calls that are neither idempotent nor deduplicated).
    Seeds,
}

/// Per-node counters, updated without the view's lock.
#[derive(Default)]
pub(crate) struct NodeStats {
    pub(crate) outstanding: AtomicUsize,
    pub(crate) attempts: AtomicU64,
    pub(crate) failures: AtomicU64,
}

/// Counts an attempt as outstanding until dropped.
pub(crate) struct InFlight(Arc<NodeStats>);

impl InFlight {
    pub(crate) fn start(stats: &Arc<NodeStats>) -> InFlight {
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        InFlight(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Node {
    pub(crate) endpoint: String,
    template: Endpoint,
    channel: Option<Channel>,
    generation: u64,
    pub(crate) id: Option<u64>,
    pub(crate) seed: bool,
    pub(crate) member: bool,
    pub(crate) bench_until: Option<Instant>,
    pub(crate) bench_failures: u32,
    pub(crate) probing: bool,
    pub(crate) stats: Arc<NodeStats>,
}

/// The node an attempt goes to.
pub(crate) struct Target {
    pub(crate) endpoint: String,
    pub(crate) channel: Channel,
    pub(crate) generation: u64,
    pub(crate) stats: Arc<NodeStats>,
}

/// The shared view; lives behind a mutex in the client.
pub(crate) struct View {
    pub(crate) nodes: Vec<Node>,
    pub(crate) leader: Option<String>,
    pub(crate) leader_id: Option<u64>,
    pub(crate) term: u64,
    pub(crate) region: Option<String>,
    pub(crate) region_mismatch: Option<String>,
    pub(crate) discovered: bool,
    pub(crate) refreshed_at: Option<Instant>,
    next: usize,
}

/// Builds the connection settings of one node.
pub(crate) fn endpoint(url: &str, options: &ClientOptions) -> Result<Endpoint, Error> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config(format!("bad endpoint {url}: {e}")))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true))
}

impl View {
    pub(crate) fn new(seeds: &[String], options: &ClientOptions) -> Result<View, Error> {
        let mut view = View {
            nodes: Vec::new(),
            leader: None,
            leader_id: None,
            term: 0,
            region: None,
            region_mismatch: None,
            discovered: false,
            refreshed_at: None,
            next: 0,
        };
        for url in seeds {
            if view.find(url).is_none() {
                let template = endpoint(url, options)?;
                view.nodes.push(Node::new(url, template, true));
            }
        }
        if view.nodes.is_empty() {
            return Err(Error::Config("at least one endpoint is needed".into()));
        }
        Ok(view)
    }

    pub(crate) fn find(&self, endpoint: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.endpoint == endpoint)
    }

    /// Adds a node the cluster named (a member or a leader hint); false if the URL is
    /// unusable.
    fn ensure(&mut self, url: &str, options: &ClientOptions) -> Option<usize> {
        if let Some(i) = self.find(url) {
            return Some(i);
        }
        let template = endpoint(url, options).ok()?;
        self.nodes.push(Node::new(url, template, false));
        Some(self.nodes.len() - 1)
    }

    /// Chooses the node for the next attempt of a call.
    pub(crate) fn choose(
        &mut self,
        route: Route,
        now: Instant,
        options: &ClientOptions,
    ) -> Option<usize> {
        let discovery = options.discovery;
        let usable = |n: &Node| match n.bench_until {
            None => true,
            Some(t) => !discovery && t <= now,
        };
        if route == Route::Leader {
            if let Some(i) = self.leader.as_deref().and_then(|l| self.find(l)) {
                if usable(&self.nodes[i]) {
                    return Some(i);
                }
            }
        }
        let seeds: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].seed)
            .collect();
        let spread: Vec<usize> = if !discovery {
            seeds.clone()
        } else if self.discovered && self.nodes.iter().any(|n| n.member) {
            (0..self.nodes.len())
                .filter(|&i| self.nodes[i].member)
                .collect()
        } else {
            (0..self.nodes.len()).collect()
        };
        let pool = match route {
            Route::Seeds => seeds,
            Route::PreferSeeds if seeds.iter().any(|&i| usable(&self.nodes[i])) => seeds,
            _ => spread,
        };
        let healthy: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| usable(&self.nodes[i]))
            .collect();
        if healthy.is_empty() {
            // Everything is benched: try the node due back first rather than nobody.
            return pool
                .into_iter()
                .min_by_key(|&i| self.nodes[i].bench_until.unwrap_or(now));
        }
        let turn = self.next;
        self.next = self.next.wrapping_add(1);
        let chosen = match options.balance {
            Balance::RoundRobin => healthy[turn % healthy.len()],
            Balance::LeastOutstanding => {
                // One reading per node: other calls change the counters meanwhile.
                let loads: Vec<(usize, usize)> = healthy
                    .iter()
                    .map(|&i| (i, self.nodes[i].stats.outstanding.load(Ordering::Relaxed)))
                    .collect();
                let least = loads.iter().map(|&(_, l)| l).min().unwrap_or(0);
                let ties: Vec<usize> = loads
                    .into_iter()
                    .filter(|&(_, l)| l == least)
                    .map(|(i, _)| i)
                    .collect();
                ties.get(turn % ties.len().max(1))
                    .copied()
                    .unwrap_or(healthy[0])
            }
        };
        Some(chosen)
    }

    /// The channel of node `i`, made on first use (inside the runtime).
    pub(crate) fn target(&mut self, i: usize) -> Target {
        let node = &mut self.nodes[i];
        let channel = match &node.channel {
            Some(c) => c.clone(),
            None => {
                let c = node.template.connect_lazy();
                node.channel = Some(c.clone());
                c
            }
        };
        Target {
            endpoint: node.endpoint.clone(),
            channel,
            generation: node.generation,
            stats: node.stats.clone(),
        }
    }

    /// The node answered: it is healthy.
    pub(crate) fn mark_ok(&mut self, endpoint: &str) {
        if let Some(i) = self.find(endpoint) {
            let n = &mut self.nodes[i];
            n.bench_until = None;
            n.bench_failures = 0;
        }
    }

    /// The node failed: bench it, and replace its channel if `reset` and nobody has yet.
    pub(crate) fn mark_failed(
        &mut self,
        endpoint: &str,
        generation: u64,
        reset: bool,
        now: Instant,
        options: &ClientOptions,
    ) {
        let Some(i) = self.find(endpoint) else {
            return;
        };
        let n = &mut self.nodes[i];
        n.stats.failures.fetch_add(1, Ordering::Relaxed);
        if reset && n.generation == generation {
            n.channel = None;
            n.generation += 1;
        }
        n.bench_failures = n.bench_failures.saturating_add(1);
        n.bench_until = Some(now + bench_time(n.bench_failures, options));
        if self.leader.as_deref() == Some(endpoint) {
            self.leader = None;
        }
    }

    /// Remembers the leader a `NotLeader` answer named.
    pub(crate) fn learn_leader(&mut self, url: &str, id: Option<u64>, options: &ClientOptions) {
        if let Some(i) = self.ensure(url, options) {
            if id.is_some() {
                self.nodes[i].id = id;
            }
            self.leader = Some(url.to_string());
            self.leader_id = id.or(self.nodes[i].id);
        }
    }

    pub(crate) fn forget_leader(&mut self) {
        self.leader = None;
        self.leader_id = None;
    }

    /// Takes in a `ClusterStatus` answer: members, their endpoints, the leader.
    pub(crate) fn merge(
        &mut self,
        status: &ClusterStatusResponse,
        configured_region: &str,
        now: Instant,
        options: &ClientOptions,
    ) {
        let mut members = Vec::new();
        for m in &status.members {
            // A learner is a node still joining: until it has caught up and holds the
            // domain key, a call sent there waits for it or fails. It is spread to once
            // it is a voter.
            if m.endpoint.is_empty() || m.role == LEARNER {
                continue;
            }
            if let Some(i) = self.ensure(&m.endpoint, options) {
                self.nodes[i].id = Some(m.id);
                members.push(i);
            }
        }
        if !members.is_empty() {
            for (i, n) in self.nodes.iter_mut().enumerate() {
                n.member = members.contains(&i);
            }
            // Nodes that left the cluster are forgotten, unless configured.
            self.nodes.retain(|n| n.member || n.seed);
            self.discovered = true;
        }
        let leader = status
            .members
            .iter()
            .find(|m| status.leader != 0 && m.id == status.leader && !m.endpoint.is_empty())
            .map(|m| m.endpoint.clone());
        if status.term >= self.term || leader.is_some() {
            self.leader_id = leader.as_ref().map(|_| status.leader);
            self.leader = leader;
            self.term = self.term.max(status.term);
        }
        if !status.region.is_empty() {
            self.region = Some(status.region.clone());
            self.region_mismatch =
                (!configured_region.is_empty() && configured_region != status.region).then(|| {
                    format!(
                        "the cluster serves region {}, but this client is configured for {}",
                        status.region, configured_region
                    )
                });
        }
        self.refreshed_at = Some(now);
    }

    /// The benched nodes whose bench is over and that nobody probes yet; marks them
    /// as being probed.
    pub(crate) fn due_for_probe(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !n.probing && n.bench_until.is_some_and(|t| t <= now) {
                n.probing = true;
                due.push(i);
            }
        }
        due
    }

    /// Forgets probes in flight (their task died with an earlier runtime).
    pub(crate) fn reset_probes(&mut self) {
        for n in &mut self.nodes {
            n.probing = false;
        }
    }

    pub(crate) fn probe_done(&mut self, endpoint: &str) {
        if let Some(i) = self.find(endpoint) {
            self.nodes[i].probing = false;
        }
    }

    /// When the next benched node is due for a probe.
    pub(crate) fn next_probe_at(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter(|n| !n.probing)
            .filter_map(|n| n.bench_until)
            .min()
    }

    /// Discovery candidates: the leader, then healthy nodes, then the rest.
    pub(crate) fn refresh_order(&mut self, now: Instant) -> Vec<usize> {
        let mut order: Vec<usize> = Vec::new();
        if let Some(l) = self.leader.as_deref().and_then(|l| self.find(l)) {
            order.push(l);
        }
        let start = self.next;
        self.next = self.next.wrapping_add(1);
        let len = self.nodes.len();
        let rotated = (0..len).map(|k| (start + k) % len);
        let (healthy, benched): (Vec<usize>, Vec<usize>) = rotated
            .filter(|i| !order.contains(i))
            .partition(|&i| self.nodes[i].bench_until.is_none_or(|t| t <= now));
        order.extend(healthy);
        order.extend(benched);
        order
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|n| NodeView {
                endpoint: n.endpoint.clone(),
                id: n.id,
                seed: n.seed,
                member: n.member,
                leader: self.leader.as_deref() == Some(n.endpoint.as_str()),
                healthy: n.bench_until.is_none(),
                benched_for: n.bench_until.map(|t| t.saturating_duration_since(now)),
                outstanding: n.stats.outstanding.load(Ordering::Relaxed),
                attempts: n.stats.attempts.load(Ordering::Relaxed),
                failures: n.stats.failures.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Node {
    fn new(url: &str, template: Endpoint, seed: bool) -> Node {
        Node {
            endpoint: url.to_string(),
            template,
            channel: None,
            generation: 0,
            id: None,
            seed,
            member: false,
            bench_until: None,
            bench_failures: 0,
            probing: false,
            stats: Arc::new(NodeStats::default()),
        }
    }
}

fn bench_time(failures: u32, options: &ClientOptions) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    options
        .bench_initial
        .saturating_mul(1u32 << doublings)
        .min(options.bench_max)
}

/// A snapshot of what a client knows about the cluster ([`Client::view`](crate::Client::view)).
///
/// ```no_run
/// # fn demo(client: &keyraft_client::Client) {
/// let view = client.view();
/// println!("leader {:?}, {} nodes", view.leader, view.nodes.len());
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterView {
    /// The leader's client endpoint, if known.
    pub leader: Option<String>,
    /// The leader's node id, if known.
    pub leader_id: Option<u64>,
    /// The highest Raft term seen.
    pub term: u64,
    /// The region the cluster reported.
    pub region: Option<String>,
    /// How long ago the view was last refreshed from the cluster (`None`: never).
    pub refreshed: Option<Duration>,
    /// Retry tokens left in the client's budget.
    pub retry_tokens: f64,
    /// Every node the client knows.
    pub nodes: Vec<NodeView>,
}

impl ClusterView {
    /// The node with this endpoint.
    ///
    /// ```no_run
    /// # fn demo(client: &keyraft_client::Client) {
    /// let healthy = client.view().node("http://127.0.0.1:7101").is_some_and(|n| n.healthy);
    /// # let _ = healthy;
    /// # }
    /// ```
    pub fn node(&self, endpoint: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.endpoint == endpoint)
    }
}

/// One node as a client sees it.
///
/// ```no_run
/// # fn demo(client: &keyraft_client::Client) {
/// for n in client.view().nodes {
///     println!("{} healthy={} attempts={}", n.endpoint, n.healthy, n.attempts);
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeView {
    /// The client API URL.
    pub endpoint: String,
    /// The node id, once the cluster named it.
    pub id: Option<u64>,
    /// Whether it is one of the configured endpoints.
    pub seed: bool,
    /// Whether the last `ClusterStatus` listed it as a member.
    pub member: bool,
    /// Whether it is the leader as far as the client knows.
    pub leader: bool,
    /// Whether calls are sent to it (it is not benched).
    pub healthy: bool,
    /// How much longer it stays benched (zero: waiting for a probe).
    pub benched_for: Option<Duration>,
    /// Calls in flight to it from this client.
    pub outstanding: usize,
    /// Attempts of calls sent to it (health probes and discovery not counted).
    pub attempts: u64,
    /// Attempts and probes that failed in transport or found its HSM unready.
    pub failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::MemberStatus;

    fn view(seeds: &[&str], options: &ClientOptions) -> View {
        let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
        View::new(&seeds, options).unwrap()
    }

    fn status(leader: u64, term: u64, members: &[(u64, &str)]) -> ClusterStatusResponse {
        ClusterStatusResponse {
            leader,
            term,
            members: members
                .iter()
                .map(|(id, e)| MemberStatus {
                    id: *id,
                    endpoint: e.to_string(),
                    ..Default::default()
                })
                .collect(),
            region: "r".into(),
        }
    }

    fn ep(v: &View, i: usize) -> &str {
        &v.nodes[i].endpoint
    }

    fn pick(v: &mut View, route: Route, now: Instant, o: &ClientOptions) -> String {
        let i = v.choose(route, now, o).unwrap();
        v.nodes[i].endpoint.clone()
    }

    #[test]
    fn discovery_from_one_seed_spreads_over_members_and_mutations_go_to_the_leader() {
        let o = ClientOptions {
            balance: Balance::RoundRobin,
            ..ClientOptions::default()
        };
        let mut v = view(&["http://b"], &o);
        let now = Instant::now();
        assert_eq!(v.choose(Route::Leader, now, &o), Some(0));
        v.merge(
            &status(1, 3, &[(1, "http://a"), (2, "http://b"), (3, "http://c")]),
            "r",
            now,
            &o,
        );
        assert_eq!(v.nodes.len(), 3);
        assert_eq!(v.leader.as_deref(), Some("http://a"));
        for _ in 0..5 {
            let i = v.choose(Route::Leader, now, &o).unwrap();
            assert_eq!(ep(&v, i), "http://a");
        }
        let mut seen: Vec<String> = (0..6)
            .map(|_| {
                let i = v.choose(Route::Any, now, &o).unwrap();
                ep(&v, i).to_string()
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
        // Node-addressed calls stay on the seed.
        for _ in 0..3 {
            let i = v.choose(Route::Seeds, now, &o).unwrap();
            assert_eq!(ep(&v, i), "http://b");
        }
    }

    #[test]
    fn a_joining_node_gets_calls_only_once_it_is_a_voter() {
        let o = ClientOptions {
            balance: Balance::RoundRobin,
            ..ClientOptions::default()
        };
        let mut v = view(&["http://a"], &o);
        let now = Instant::now();
        let mut joining = status(
            1,
            3,
            &[
                (1, "http://a"),
                (2, "http://b"),
                (3, "http://c"),
                (4, "http://d"),
            ],
        );
        joining.members[3].role = "Learner".into();
        v.merge(&joining, "r", now, &o);
        for _ in 0..8 {
            assert_ne!(pick(&mut v, Route::Any, now, &o), "http://d");
        }
        joining.members[3].role = "Follower".into();
        v.merge(&joining, "r", now, &o);
        let seen: Vec<String> = (0..8).map(|_| pick(&mut v, Route::Any, now, &o)).collect();
        assert!(seen.iter().any(|e| e == "http://d"), "{seen:?}");
    }

    #[test]
    fn a_failed_node_is_benched_with_a_doubling_backoff_and_the_leader_forgotten() {
        let o = ClientOptions::default();
        let mut v = view(&["http://a", "http://b"], &o);
        let now = Instant::now();
        v.merge(
            &status(1, 1, &[(1, "http://a"), (2, "http://b")]),
            "",
            now,
            &o,
        );
        v.mark_failed("http://a", 0, true, now, &o);
        assert_eq!(v.leader, None);
        assert_eq!(
            v.nodes[0].bench_until,
            Some(now + Duration::from_millis(250))
        );
        for _ in 0..4 {
            let i = v.choose(Route::Leader, now, &o).unwrap();
            assert_eq!(ep(&v, i), "http://b");
        }
        for (k, expect) in [(2, 500), (3, 1000), (4, 1000)] {
            v.mark_failed("http://a", 0, true, now, &o);
            assert_eq!(v.nodes[0].bench_failures, k);
            assert_eq!(
                v.nodes[0].bench_until,
                Some(now + Duration::from_millis(expect))
            );
        }
        // With discovery, an expired bench waits for a probe; a probe is due.
        let later = now + Duration::from_secs(2);
        for _ in 0..4 {
            let i = v.choose(Route::Any, later, &o).unwrap();
            assert_eq!(ep(&v, i), "http://b");
        }
        assert_eq!(v.due_for_probe(later), vec![0]);
        assert!(v.due_for_probe(later).is_empty(), "one probe at a time");
        v.mark_ok("http://a");
        v.probe_done("http://a");
        assert!(v.nodes[0].bench_until.is_none());
    }

    #[test]
    fn pinned_clients_use_only_seeds_and_return_to_a_node_when_its_bench_ends() {
        let o = ClientOptions::pinned();
        let mut v = view(&["http://a"], &o);
        let now = Instant::now();
        v.merge(
            &status(2, 1, &[(1, "http://a"), (2, "http://b")]),
            "",
            now,
            &o,
        );
        assert_eq!(pick(&mut v, Route::Any, now, &o), "http://a");
        assert_eq!(pick(&mut v, Route::Leader, now, &o), "http://b");
        v.mark_failed("http://a", 0, true, now, &o);
        // Benched, but the only candidate: tried anyway.
        assert_eq!(pick(&mut v, Route::Any, now, &o), "http://a");
        assert!(v.nodes[0].bench_until.is_some());
    }

    #[test]
    fn everything_benched_tries_the_node_due_back_first() {
        let o = ClientOptions::default();
        let mut v = view(&["http://a", "http://b"], &o);
        let now = Instant::now();
        v.mark_failed("http://a", 0, true, now, &o);
        v.mark_failed("http://a", 0, true, now, &o);
        v.mark_failed("http://b", 0, true, now, &o);
        assert_eq!(pick(&mut v, Route::Any, now, &o), "http://b");
    }

    #[test]
    fn least_outstanding_avoids_the_busy_node() {
        let o = ClientOptions::default();
        let mut v = view(&["http://a", "http://b", "http://c"], &o);
        let now = Instant::now();
        let busy = InFlight::start(&v.nodes[1].stats);
        let _busy2 = InFlight::start(&v.nodes[1].stats);
        let _one = InFlight::start(&v.nodes[0].stats);
        for _ in 0..5 {
            assert_eq!(pick(&mut v, Route::Any, now, &o), "http://c");
        }
        drop(busy);
        assert_eq!(v.nodes[1].stats.outstanding.load(Ordering::Relaxed), 1);
        assert_eq!(v.nodes[1].stats.attempts.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn members_that_left_are_forgotten_seeds_are_kept_and_regions_checked() {
        let o = ClientOptions::default();
        let mut v = view(&["http://seed"], &o);
        let now = Instant::now();
        v.merge(
            &status(1, 1, &[(1, "http://a"), (2, "http://b")]),
            "r",
            now,
            &o,
        );
        assert_eq!(v.nodes.len(), 3);
        assert!(!v.nodes[0].member);
        v.merge(&status(1, 2, &[(1, "http://a")]), "r", now, &o);
        let eps: Vec<&str> = v.nodes.iter().map(|n| n.endpoint.as_str()).collect();
        assert_eq!(eps, ["http://seed", "http://a"]);
        // Spread goes to members only once discovered.
        for _ in 0..3 {
            assert_eq!(pick(&mut v, Route::Any, now, &o), "http://a");
        }
        assert!(v.region_mismatch.is_none());
        v.merge(&status(1, 2, &[(1, "http://a")]), "other", now, &o);
        assert!(v.region_mismatch.is_some());
    }

    #[test]
    fn a_stale_answer_without_a_leader_does_not_erase_a_newer_one() {
        let o = ClientOptions::default();
        let mut v = view(&["http://a"], &o);
        let now = Instant::now();
        v.merge(
            &status(2, 5, &[(1, "http://a"), (2, "http://b")]),
            "",
            now,
            &o,
        );
        v.merge(
            &status(0, 4, &[(1, "http://a"), (2, "http://b")]),
            "",
            now,
            &o,
        );
        assert_eq!(v.leader.as_deref(), Some("http://b"));
        v.merge(
            &status(0, 6, &[(1, "http://a"), (2, "http://b")]),
            "",
            now,
            &o,
        );
        assert_eq!(v.leader, None);
    }

    #[test]
    fn bad_seed_urls_are_configuration_errors() {
        let o = ClientOptions::default();
        assert!(matches!(
            View::new(&["not a url".to_string()], &o),
            Err(Error::Config(_))
        ));
        assert!(matches!(View::new(&[], &o), Err(Error::Config(_))));
    }
}
