//! # Node-to-node network faults through userspace proxies
//!
//! Raft membership holds one node-to-node address per node, and every node dials that
//! same address, so faults cannot be put on that address alone if they are to differ per
//! *directed* link. The harness ([`crate::cluster`]) therefore lays nodes out like this:
//!
//! * node `i`'s node-to-node listener binds `127.0.0.(10+i)` ([`node_ip`]; all of
//!   127/8 is loopback on Linux), and the node's outgoing node-to-node connections leave
//!   from that IP too (a node binds its peer connections to its node-to-node listen IP
//!   when that is a specific address);
//! * the address the node advertises (and the bootstrap membership holds) is a proxy on
//!   `127.0.0.1` that this module runs, one per destination node ([`Network`]);
//! * the proxy for node `j` sees a connection come from `127.0.0.(10+i)`
//!   ([`node_of_ip`]), so it knows the connection carries link `i → j` one way and
//!   `j → i` the other, and applies each direction's current [`LinkFault`].
//!
//! Client API traffic goes to the nodes directly and is never proxied.
//!
//! ## What a fault on link `a → b` does
//!
//! A fault on the directed link `a → b` governs the bytes `a` sends to `b`, on every
//! connection between them, whichever of the two opened it: on a connection `a` opened
//! to `b` those are the requests, on a connection `b` opened to `a` the responses. That
//! is what dropping or delaying IP packets from `a` to `b` does. Connection-level effects
//! (a refused connection, a reset) hit every connection between `a` and `b`.
//!
//! * [`LinkFault::Blackhole`]: like dropped packets. Bytes already read are held and
//!   never delivered; nothing more is read (the sender's socket buffers fill up, as they
//!   would). New connections are accepted but carry nothing. When the link leaves the
//!   blackhole, every connection between `a` and `b` is reset, so the peers notice at
//!   once and reconnect instead of waiting for a keep-alive to time out.
//! * [`LinkFault::Reject`]: existing connections between `a` and `b` are reset; new
//!   ones are accepted and reset at once: the client sees `ECONNRESET`, in `connect`
//!   if the reset arrives before the connect completes, otherwise at its first read or
//!   write. (Not `ECONNREFUSED`: the proxy's listener stays open for the other links.)
//! * [`LinkFault::Delay`]: every chunk is delivered `ms ± jitter_ms` after it was read,
//!   in order (a chunk is never delivered before the one read before it).
//! * [`LinkFault::Loss`]: TCP never loses bytes: a lost segment is retransmitted after
//!   a retransmission timeout, and everything behind it waits (head-of-line blocking).
//!   So loss is emulated as what TCP makes of it: each chunk, with probability
//!   `percent`, is delayed by a retransmission timeout ([`LOSS_RTO`], doubling for each
//!   further loss of the same chunk, at most [`MAX_RETRANSMITS`] times), and the chunks
//!   behind it wait for it. A chunk is what one read from the socket returned (up to
//!   [`CHUNK`] bytes), not an IP packet, so this is coarser than real loss.
//! * [`LinkFault::ResetEvery`]: every connection between `a` and `b` is reset (RST,
//!   `SO_LINGER` 0) once it has been open `ms` (counted from when the fault was set, for
//!   older connections); a peer that reconnects is reset again `ms` later.
//!
//! [`Network::reset`] resets connections on demand. Every directed link keeps
//! [`LinkStats`] counters, so a checker can prove a fault actually met traffic.
//!
//! The proxies are tokio tasks on the runtime that called [`Network::start`] (use a
//! multi-threaded runtime if the caller blocks); they stop when the [`Network`] is
//! dropped.

pub mod shapes;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use shapes::{Partition, Shape, ShapeError};

/// A node id (as Keyraft's).
pub type NodeId = u64;

/// The source id of a connection that does not come from a node's address
/// ([`node_of_ip`] does not know it): such connections are forwarded and counted under
/// links from this id.
pub const OUTSIDER: NodeId = 0;

/// The last octet of node 0's address (`127.0.0.10`); node `i` is `127.0.0.(10+i)`.
pub const FIRST_NODE_OCTET: u8 = 10;

/// The largest amount one read takes from a socket.
pub const CHUNK: usize = 64 * 1024;

/// The first retransmission timeout of [`LinkFault::Loss`] (Linux's minimum RTO).
pub const LOSS_RTO: Duration = Duration::from_millis(200);

/// How often one chunk can be "lost" in a row under [`LinkFault::Loss`] before it is
/// delivered anyway.
pub const MAX_RETRANSMITS: u32 = 6;

/// The longest [`LinkFault::Loss`] holds one chunk: every retransmission lost, each
/// timeout twice the one before (12.6 s).
pub const MAX_LOSS_DELAY: Duration =
    Duration::from_millis(LOSS_RTO.as_millis() as u64 * ((1 << MAX_RETRANSMITS) - 1));

/// How long a proxy waits for its node to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Chunks queued between a direction's reader and writer.
const QUEUE: usize = 256;

/// The loopback address node `id`'s node-to-node traffic uses: `127.0.0.(10+id)`.
/// `None` for ids that do not fit in the last octet.
pub fn node_ip(id: NodeId) -> Option<Ipv4Addr> {
    let octet = u8::try_from(id.checked_add(u64::from(FIRST_NODE_OCTET))?).ok()?;
    (octet < 255).then(|| Ipv4Addr::new(127, 0, 0, octet))
}

/// The node whose address is `ip` (see [`node_ip`]), if any.
pub fn node_of_ip(ip: IpAddr) -> Option<NodeId> {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    let [a, b, c, d] = v4.octets();
    (a == 127 && b == 0 && c == 0 && d > FIRST_NODE_OCTET && d < 255)
        .then(|| u64::from(d - FIRST_NODE_OCTET))
}

/// The fault on one directed link (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkFault {
    /// Forward everything at once.
    #[default]
    Pass,
    /// Forward nothing, like dropped packets; connections are reset when it ends.
    Blackhole,
    /// Reset existing connections and every new one.
    Reject,
    /// Deliver every chunk `ms ± jitter_ms` late, in order.
    Delay {
        /// The mean delay in milliseconds.
        ms: u64,
        /// The delay varies uniformly by up to this much either way.
        jitter_ms: u64,
    },
    /// Packet loss as TCP experiences it: retransmission delays on a fraction of chunks.
    Loss {
        /// The percentage of chunks (0 to 100) that are "lost" and retransmitted.
        percent: u8,
    },
    /// Reset every connection once it has been open this long.
    ResetEvery {
        /// A connection's lifetime in milliseconds.
        ms: u64,
    },
}

impl LinkFault {
    /// Whether this is [`LinkFault::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, LinkFault::Pass)
    }
}

impl fmt::Display for LinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFault::Pass => f.write_str("pass"),
            LinkFault::Blackhole => f.write_str("blackhole"),
            LinkFault::Reject => f.write_str("reject"),
            LinkFault::Delay { ms, jitter_ms: 0 } => write!(f, "delay({ms}ms)"),
            LinkFault::Delay { ms, jitter_ms } => write!(f, "delay({ms}ms±{jitter_ms}ms)"),
            LinkFault::Loss { percent } => write!(f, "loss({percent}%)"),
            LinkFault::ResetEvery { ms } => write!(f, "reset-every({ms}ms)"),
        }
    }
}

/// One proxy: connections to `listen` are forwarded to node `node` at `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// The destination node.
    pub node: NodeId,
    /// Where the proxy listens (the node's advertised node-to-node address).
    pub listen: SocketAddr,
    /// The node's real node-to-node listener.
    pub upstream: SocketAddr,
}

/// Counters of one directed link `from → to`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Connections `from` opened to `to`'s proxy (refused ones included).
    pub connections: u64,
    /// Of those, how many were refused (reset at once) by [`LinkFault::Reject`].
    pub refused: u64,
    /// Of those, how many were accepted into a blackhole and never forwarded.
    pub held_connections: u64,
    /// Connections `from` opened to `to` that the proxy reset because of a fault or
    /// [`Network::reset`] (refused ones not included).
    pub resets: u64,
    /// Bytes delivered from `from` to `to`.
    pub bytes: u64,
    /// Chunks delivered from `from` to `to`.
    pub chunks: u64,
    /// Chunks delivered late by [`LinkFault::Delay`].
    pub delayed_chunks: u64,
    /// Chunks delayed by a retransmission under [`LinkFault::Loss`].
    pub retransmitted_chunks: u64,
    /// Chunks read from `from` and never delivered because of a blackhole.
    pub held_chunks: u64,
}

/// A fault and when it was set.
#[derive(Debug, Clone, Copy)]
struct Set {
    fault: LinkFault,
    since: Instant,
}

/// A live connection through a proxy.
struct Conn {
    from: NodeId,
    to: NodeId,
    kill: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// Links whose fault is not `Pass`.
    links: BTreeMap<(NodeId, NodeId), Set>,
    stats: BTreeMap<(NodeId, NodeId), LinkStats>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
}

impl State {
    fn fault(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.links
            .get(&(from, to))
            .map_or(LinkFault::Pass, |s| s.fault)
    }

    fn stats(&mut self, from: NodeId, to: NodeId) -> &mut LinkStats {
        self.stats.entry((from, to)).or_default()
    }

    /// Resets connection `id` unless it is being reset already; counts it if `count`.
    fn kill(&mut self, id: u64, count: bool) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        if *conn.kill.borrow() {
            return false;
        }
        let (from, to) = (conn.from, conn.to);
        conn.kill.send_replace(true);
        if count {
            self.stats(from, to).resets += 1;
        }
        true
    }

    /// Resets every connection between `a` and `b` (either opened it).
    fn kill_between(&mut self, a: NodeId, b: NodeId) -> usize {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| (c.from, c.to) == (a, b) || (c.from, c.to) == (b, a))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter(|id| self.kill(*id, true)).count()
    }

    /// Sets one link's fault, with the connection-level effects of the change.
    fn set(&mut self, from: NodeId, to: NodeId, fault: LinkFault, now: Instant) {
        let old = self.fault(from, to);
        if old == fault {
            return;
        }
        if fault.is_pass() {
            self.links.remove(&(from, to));
        } else {
            self.links.insert((from, to), Set { fault, since: now });
        }
        let leaves_blackhole = old == LinkFault::Blackhole;
        if fault == LinkFault::Reject || leaves_blackhole {
            self.kill_between(from, to);
        }
    }
}

/// What a proxy does with a new connection.
enum Admission {
    /// Reset it at once.
    Refuse,
    /// Accept it, forward nothing until it is reset.
    Hold(u64, watch::Receiver<bool>),
    /// Forward it.
    Forward(u64, watch::Receiver<bool>),
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every fault change (connections re-read their reset deadline).
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, changes: impl IntoIterator<Item = ((NodeId, NodeId), LinkFault)>) {
        let now = Instant::now();
        {
            let mut state = self.lock();
            for ((from, to), fault) in changes {
                state.set(from, to, fault, now);
            }
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn fault(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.lock().fault(from, to)
    }

    fn count(&self, from: NodeId, to: NodeId, f: impl FnOnce(&mut LinkStats)) {
        f(self.lock().stats(from, to))
    }

    fn kill(&self, id: u64, count: bool) {
        self.lock().kill(id, count);
    }

    fn admit(&self, from: NodeId, to: NodeId) -> Admission {
        let mut state = self.lock();
        state.stats(from, to).connections += 1;
        let (there, back) = (state.fault(from, to), state.fault(to, from));
        if there == LinkFault::Reject || back == LinkFault::Reject {
            state.stats(from, to).refused += 1;
            return Admission::Refuse;
        }
        let id = state.next_conn;
        state.next_conn += 1;
        let (kill, rx) = watch::channel(false);
        state.conns.insert(id, Conn { from, to, kill });
        if there == LinkFault::Blackhole || back == LinkFault::Blackhole {
            state.stats(from, to).held_connections += 1;
            Admission::Hold(id, rx)
        } else {
            Admission::Forward(id, rx)
        }
    }

    /// When connection `from → to`, open since `opened`, is to be reset by
    /// [`LinkFault::ResetEvery`] on either of its links.
    fn reset_deadline(&self, from: NodeId, to: NodeId, opened: Instant) -> Option<Instant> {
        let state = self.lock();
        [(from, to), (to, from)]
            .iter()
            .filter_map(|link| match state.links.get(link) {
                Some(Set {
                    fault: LinkFault::ResetEvery { ms },
                    since,
                }) => Some(opened.max(*since) + Duration::from_millis(*ms)),
                _ => None,
            })
            .min()
    }
}

/// Forgets a connection when its task ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.id);
    }
}

/// The proxies of a cluster's node-to-node links, and the fault of every directed link.
///
/// Clones share the proxies. Dropping the last clone stops every proxy and closes every
/// connection through them.
#[derive(Clone)]
pub struct Network {
    shared: Arc<Shared>,
    proxies: Arc<Mutex<BTreeMap<NodeId, Proxy>>>,
    /// The proxies' tasks (dropping the set aborts them, and with them every connection).
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("proxies", &self.proxies())
            .field("faults", &self.faults())
            .finish()
    }
}

impl Network {
    /// Binds every proxy's listener and starts forwarding (every link passes).
    pub async fn start(proxies: impl IntoIterator<Item = Proxy>) -> std::io::Result<Network> {
        let (changed, _) = watch::channel(0);
        let network = Network {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed,
            }),
            proxies: Arc::new(Mutex::new(BTreeMap::new())),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        for proxy in proxies {
            network.add_proxy(proxy).await?;
        }
        Ok(network)
    }

    /// Binds one more proxy (for a node added to the cluster) and starts forwarding
    /// through it; returns it with the port it bound.
    pub async fn add_proxy(&self, proxy: Proxy) -> std::io::Result<Proxy> {
        if self.lock_proxies().contains_key(&proxy.node) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("two proxies for node {}", proxy.node),
            ));
        }
        let listener = TcpListener::bind(proxy.listen)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", proxy.listen)))?;
        let proxy = Proxy {
            listen: listener.local_addr()?,
            ..proxy
        };
        self.lock_proxies().insert(proxy.node, proxy);
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(serve(self.shared.clone(), listener, proxy));
        Ok(proxy)
    }

    fn lock_proxies(&self) -> MutexGuard<'_, BTreeMap<NodeId, Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proxies, by destination node.
    pub fn proxies(&self) -> BTreeMap<NodeId, Proxy> {
        self.lock_proxies().clone()
    }

    /// The address peers dial to reach `node` (its proxy).
    pub fn proxy_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.lock_proxies().get(&node).map(|p| p.listen)
    }

    /// Sets the fault of the directed link `from → to`.
    pub fn set(&self, from: NodeId, to: NodeId, fault: LinkFault) {
        self.shared.update([((from, to), fault)]);
    }

    /// Makes the network exactly `partition`: `fault` (usually [`LinkFault::Blackhole`]
    /// or [`LinkFault::Reject`]) on every blocked link, every other link healed.
    pub fn apply(&self, partition: &Partition, fault: LinkFault) {
        let current: Vec<(NodeId, NodeId)> = self.shared.lock().links.keys().copied().collect();
        let heal = current
            .into_iter()
            .filter(|link| !partition.blocked.contains(link))
            .map(|link| (link, LinkFault::Pass));
        let block = partition.blocked.iter().map(|link| (*link, fault));
        self.shared.update(heal.chain(block).collect::<Vec<_>>());
    }

    /// Heals every link (connections held in a blackhole are reset).
    pub fn heal(&self) {
        let current: Vec<(NodeId, NodeId)> = self.shared.lock().links.keys().copied().collect();
        self.shared
            .update(current.into_iter().map(|link| (link, LinkFault::Pass)));
    }

    /// The fault of the directed link `from → to`.
    pub fn fault(&self, from: NodeId, to: NodeId) -> LinkFault {
        self.shared.fault(from, to)
    }

    /// Every link whose fault is not [`LinkFault::Pass`].
    pub fn faults(&self) -> BTreeMap<(NodeId, NodeId), LinkFault> {
        self.shared
            .lock()
            .links
            .iter()
            .map(|(link, set)| (*link, set.fault))
            .collect()
    }

    /// Resets (RST) every connection between `a` and `b` now; returns how many.
    pub fn reset(&self, a: NodeId, b: NodeId) -> usize {
        self.shared.lock().kill_between(a, b)
    }

    /// Open connections `from` opened to `to`.
    pub fn open_connections(&self, from: NodeId, to: NodeId) -> usize {
        self.shared
            .lock()
            .conns
            .values()
            .filter(|c| (c.from, c.to) == (from, to))
            .count()
    }

    /// The counters of every link that saw a connection.
    pub fn stats(&self) -> BTreeMap<(NodeId, NodeId), LinkStats> {
        self.shared.lock().stats.clone()
    }

    /// The counters of the directed link `from → to`.
    pub fn link_stats(&self, from: NodeId, to: NodeId) -> LinkStats {
        self.shared
            .lock()
            .stats
            .get(&(from, to))
            .copied()
            .unwrap_or_default()
    }
}

/// Accepts connections for one destination node.
async fn serve(shared: Arc<Shared>, listener: TcpListener, proxy: Proxy) {
    // Dropping this set (when the proxy's task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(handle(shared.clone(), stream, peer, proxy));
                }
                Err(e) => {
                    // Out of file descriptors and the like: try again shortly.
                    tracing::warn!(node = proxy.node, error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Returns when `kill` says the connection is to be reset (never if the flag's sender
/// is gone).
async fn killed(kill: &mut watch::Receiver<bool>) {
    if kill.wait_for(|k| *k).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Makes closing `stream` send a reset.
fn abort_on_close(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Forwards one connection `from → proxy.node`.
async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, proxy: Proxy) {
    let from = node_of_ip(peer.ip()).unwrap_or(OUTSIDER);
    let to = proxy.node;
    let _ = client.set_nodelay(true);
    let (id, mut kill, hold) = match shared.admit(from, to) {
        Admission::Refuse => {
            abort_on_close(&client);
            return;
        }
        Admission::Hold(id, kill) => (id, kill, true),
        Admission::Forward(id, kill) => (id, kill, false),
    };
    let _registration = Registration {
        shared: shared.clone(),
        id,
    };
    if hold {
        killed(&mut kill).await;
        abort_on_close(&client);
        return;
    }
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(proxy.upstream));
    let upstream = tokio::select! {
        _ = killed(&mut kill) => None,
        r = connect => r.ok().and_then(Result::ok),
    };
    let Some(upstream) = upstream else {
        // The node is down (or the connection was reset meanwhile): pass the refusal on.
        abort_on_close(&client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let opened = Instant::now();
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let there = Direction {
        shared: shared.clone(),
        conn: id,
        link: (from, to),
        kill: kill.clone(),
    };
    let back = Direction {
        link: (to, from),
        ..there.clone()
    };
    let pipes = async {
        tokio::join!(
            there.pipe(client_read, upstream_write),
            back.pipe(upstream_read, client_write)
        )
    };
    tokio::pin!(pipes);
    let mut changed = shared.changed.subscribe();
    let mut watching = true;
    let mut kill_open = true;
    loop {
        let deadline = if *kill.borrow() {
            None
        } else {
            shared.reset_deadline(from, to, opened)
        };
        tokio::select! {
            _ = &mut pipes => break,
            r = changed.changed(), if watching => watching = r.is_ok(),
            r = kill.changed(), if kill_open => kill_open = r.is_ok(),
            _ = sleep_until(deadline) => shared.kill(id, true),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a direction's reader hands its writer.
enum Chunk {
    /// Bytes to deliver at a time.
    Data(Instant, Vec<u8>),
    /// The sender closed its side: pass the FIN on.
    End,
}

/// One direction of a connection, carrying link `link`.
#[derive(Clone)]
struct Direction {
    shared: Arc<Shared>,
    conn: u64,
    link: (NodeId, NodeId),
    kill: watch::Receiver<bool>,
}

impl Direction {
    async fn pipe(self, from: OwnedReadHalf, to: OwnedWriteHalf) {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::join!(self.clone().read(from, tx), self.write(to, rx));
    }

    /// Reads chunks, decides when each is due and queues it.
    async fn read(mut self, mut half: OwnedReadHalf, tx: mpsc::Sender<Chunk>) {
        let mut buf = vec![0u8; CHUNK];
        let mut last = Instant::now();
        let (a, b) = self.link;
        loop {
            let n = tokio::select! {
                _ = killed(&mut self.kill) => break,
                r = half.read(&mut buf) => r,
            };
            let n = match n {
                Ok(0) => {
                    let _ = tx.send(Chunk::End).await;
                    return;
                }
                Ok(n) => n,
                Err(_) => {
                    // Reset (or broken) on this side: reset the other side too.
                    self.shared.kill(self.conn, false);
                    break;
                }
            };
            let now = Instant::now();
            let due = match self.shared.fault(a, b) {
                LinkFault::Pass | LinkFault::ResetEvery { .. } => now,
                LinkFault::Delay { ms, jitter_ms } => {
                    self.shared.count(a, b, |s| s.delayed_chunks += 1);
                    now + delay(ms, jitter_ms)
                }
                LinkFault::Loss { percent } => {
                    let extra = retransmission_delay(percent);
                    if !extra.is_zero() {
                        self.shared.count(a, b, |s| s.retransmitted_chunks += 1);
                    }
                    now + extra
                }
                LinkFault::Blackhole => {
                    // Held until the blackhole ends, which resets the connection.
                    self.shared.count(a, b, |s| s.held_chunks += 1);
                    killed(&mut self.kill).await;
                    break;
                }
                LinkFault::Reject => {
                    self.shared.kill(self.conn, true);
                    break;
                }
            };
            last = last.max(due);
            let sent = tokio::select! {
                _ = killed(&mut self.kill) => break,
                r = tx.send(Chunk::Data(last, buf[..n].to_vec())) => r,
            };
            if sent.is_err() {
                // The writer is gone (its side failed and reset the connection).
                break;
            }
        }
        abort_on_close(half.as_ref());
    }

    /// Delivers queued chunks when they are due.
    async fn write(mut self, mut half: OwnedWriteHalf, mut rx: mpsc::Receiver<Chunk>) {
        let (a, b) = self.link;
        loop {
            let chunk = tokio::select! {
                _ = killed(&mut self.kill) => break,
                c = rx.recv() => c,
            };
            let (due, bytes) = match chunk {
                Some(Chunk::Data(due, bytes)) => (due, bytes),
                Some(Chunk::End) => {
                    let _ = half.shutdown().await;
                    return;
                }
                None => break,
            };
            let written = tokio::select! {
                _ = killed(&mut self.kill) => break,
                r = async {
                    tokio::time::sleep_until(due).await;
                    half.write_all(&bytes).await
                } => r,
            };
            if written.is_err() {
                self.shared.kill(self.conn, false);
                break;
            }
            self.shared.count(a, b, |s| {
                s.bytes += bytes.len() as u64;
                s.chunks += 1;
            });
        }
        abort_on_close(half.as_ref());
        // Dropping a write half would shut the socket's write side down first: a FIN
        // ahead of the reset. Forgetting it leaves the close (and the RST) to the drop of
        // the socket's read half.
        half.forget();
    }
}

/// A delay of `ms ± jitter_ms` (uniform), at least zero.
fn delay(ms: u64, jitter_ms: u64) -> Duration {
    let jitter = jitter_ms.min(i64::MAX as u64) as i64;
    let offset = if jitter == 0 {
        0
    } else {
        rand::thread_rng().gen_range(-jitter..=jitter)
    };
    let ms = (ms.min(i64::MAX as u64) as i64)
        .saturating_add(offset)
        .max(0);
    Duration::from_millis(ms as u64)
}

/// How long TCP would take to get a chunk through with `percent` % segment loss: one
/// retransmission timeout per loss, doubling each time.
fn retransmission_delay(percent: u8) -> Duration {
    let p = f64::from(percent.min(100)) / 100.0;
    let mut rng = rand::thread_rng();
    let mut total = Duration::ZERO;
    let mut rto = LOSS_RTO;
    for _ in 0..MAX_RETRANSMITS {
        if !rng.gen_bool(p) {
            break;
        }
        total += rto;
        rto *= 2;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_round_trip() {
        assert_eq!(node_ip(1), Some(Ipv4Addr::new(127, 0, 0, 11)));
        assert_eq!(node_ip(244), Some(Ipv4Addr::new(127, 0, 0, 254)));
        assert_eq!(node_ip(245), None);
        assert_eq!(node_ip(u64::MAX), None);
        for id in 1..=244 {
            assert_eq!(node_of_ip(IpAddr::V4(node_ip(id).unwrap())), Some(id));
        }
        assert_eq!(node_of_ip("127.0.0.1".parse().unwrap()), None);
        assert_eq!(node_of_ip("127.0.0.10".parse().unwrap()), None);
        assert_eq!(node_of_ip("10.0.0.11".parse().unwrap()), None);
        assert_eq!(node_of_ip("::ffff:127.0.0.12".parse().unwrap()), Some(2));
    }

    #[test]
    fn delays_stay_within_the_jitter() {
        for _ in 0..1000 {
            let d = delay(100, 20);
            assert!(d >= Duration::from_millis(80) && d <= Duration::from_millis(120));
        }
        assert!(delay(5, 20) <= Duration::from_millis(25));
        assert_eq!(delay(100, 0), Duration::from_millis(100));
    }

    #[test]
    fn loss_is_a_retransmission_delay() {
        assert_eq!(retransmission_delay(0), Duration::ZERO);
        let all = retransmission_delay(100);
        assert_eq!(all, LOSS_RTO * ((1 << MAX_RETRANSMITS) - 1));
        let some = (0..1000)
            .filter(|_| !retransmission_delay(30).is_zero())
            .count();
        assert!((200..400).contains(&some), "{some}");
    }

    #[test]
    fn faults_display_and_serialize() {
        assert_eq!(
            LinkFault::Delay {
                ms: 100,
                jitter_ms: 20
            }
            .to_string(),
            "delay(100ms±20ms)"
        );
        let json = serde_json::to_string(&LinkFault::Loss { percent: 10 }).unwrap();
        assert_eq!(json, r#"{"kind":"loss","percent":10}"#);
        let back: LinkFault = serde_json::from_str(r#"{"kind":"blackhole"}"#).unwrap();
        assert_eq!(back, LinkFault::Blackhole);
    }
}
