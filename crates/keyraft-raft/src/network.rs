//! The node-to-node transport: openraft's `RaftNetworkV2` over tonic, and the server side
//! that hands incoming messages to the local Raft.
//!
//! Messages are openraft's own types encoded with bincode inside
//! `keyraft.v1.internal.RaftMessage`, so the proto file does not shadow openraft's
//! structs. Every call is signed by [`ClusterAuth`] with the cluster secret and names its
//! target node: a stranger cannot append to the log, and a message sent to the wrong node
//! (an address reused by another node) is refused instead of confusing its Raft.
//!
//! Replication goes over one long-lived `AppendStream` call per session rather than a
//! unary call per AppendEntries: the call is signed when it opens, each request carries
//! a MAC bound to the stream and its place in it, and the follower hands the requests to
//! openraft's `Raft::stream_append`, which answers them in order. Up to
//! `STREAM_IN_FLIGHT` (2) requests await their answers; each answer must come within the
//! timeout a unary call would have had, or the election timeout's minimum if that is
//! longer ([`Network::with_stream_patience`]). A stream of a single request (a heartbeat)
//! goes as a unary call.
//!
//! Snapshots are streamed as the leader reads its state: a first chunk with the vote, the
//! snapshot metadata and a random id of the transfer (covered by the call's signature),
//! then the records in chunks of about 1 MiB, then an end chunk with the MAC of the
//! data's SHA-256 under the cluster secret, bound to the transfer's id. The receiver
//! writes the records into its second state tree as they come
//! ([`keyraft_state::Incoming`]) and installs nothing unless the end chunk came and its
//! MAC matches. It refuses to fill its disk: a transfer that would leave less free than
//! [`SNAPSHOT_RESERVE_MIN`] (or [`SNAPSHOT_RESERVE_PERCENT`] of the disk, if more) is
//! refused with `RESOURCE_EXHAUSTED`, its partial tree dropped, and the node goes on as
//! it was; the leader asks again after [`REFUSED_SNAPSHOT_PAUSE`]. Unlike appends,
//! openraft puts no deadline on a snapshot transfer, so we enforce [`SNAPSHOT_TIMEOUT`]
//! and honour openraft's cancel signal.
//!
//! Outgoing node-to-node connections leave from the node's own node-to-node address when
//! that listener is bound to a specific IP (see [`source_ip`]): on a multi-homed host,
//! peer traffic then stays on the node-to-node network, and a peer (or a proxy in front
//! of it) sees which node a connection comes from.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use keyraft_proto::auth;
use keyraft_proto::v1::internal::raft_service_client::RaftServiceClient;
use keyraft_proto::v1::internal::raft_service_server::RaftService;
use keyraft_proto::v1::internal::{snapshot_chunk, RaftMessage, SnapshotChunk, StreamMessage};
use keyraft_state::{Incoming, StateError, StateMachine, StateView};
use keyraft_types::NodeId;

use crate::compaction::SnapshotTransfers;
use crate::leader_watch::LeaderContact;
use crate::state_machine::{encode_record, RecordReader, SnapshotData};
use crate::typ::{Snapshot, SnapshotMeta, Vote};
use crate::{from_bytes, to_bytes, NodeAddr, Raft, TypeConfig};

/// The longest a snapshot transfer may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The least free space a snapshot being received leaves on the disk of the node's data:
/// the node needs room beside it for its log and its state's own writes.
pub const SNAPSHOT_RESERVE_MIN: u64 = 64 << 20;

/// The share of the disk, in percent, a snapshot being received leaves free if that is
/// more than [`SNAPSHOT_RESERVE_MIN`].
pub const SNAPSHOT_RESERVE_PERCENT: u64 = 5;

/// How long a leader waits before it offers a snapshot again to a follower that refused
/// one for want of disk.
pub const REFUSED_SNAPSHOT_PAUSE: Duration = Duration::from_secs(5);
/// Snapshot data chunk size.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// How many snapshot chunks are read ahead of the transfer.
const SNAPSHOT_CHUNKS_AHEAD: usize = 4;
/// Largest message a node accepts from a peer.
pub const MAX_MESSAGE: usize = 64 << 20;
/// How many streams a peer may reset before the node accepted them, on one connection,
/// before the node's HTTP/2 server closes it (h2's default is 20). A leader's
/// heartbeats give up after 100 ms, about ten a second, so a node busy for two seconds
/// reached 20 and lost its connection to the leader; a thousand is a hundred seconds of
/// that.
pub const PEER_RESET_STREAMS: usize = 1000;
const TARGET_HEADER: &str = "x-keyraft-target-node";
/// The id of a replication stream, which its opening signature covers.
const STREAM_HEADER: &str = "x-keyraft-stream";
/// How many AppendEntries requests of a replication stream may await their answer.
///
/// Two let the next request travel while the follower syncs the previous one, which
/// hides a network round trip between real hosts. On one machine, CreateKey at 64
/// callers ran no faster with a window of 4 or 64 than with 1 or 2: all four were within
/// the noise of each other, in rate and in CPU per call.
const STREAM_IN_FLIGHT: usize = 2;

/// Signs and verifies node-to-node calls with the cluster secret.
#[derive(Clone)]
pub struct ClusterAuth {
    node_id: NodeId,
    secret: Arc<Vec<u8>>,
}

impl ClusterAuth {
    /// Credentials of node `node_id`.
    pub fn new(node_id: NodeId, secret: &[u8]) -> ClusterAuth {
        ClusterAuth {
            node_id,
            secret: Arc::new(secret.to_vec()),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Signs `req` for `target` over `body`.
    pub fn sign<T>(&self, req: &mut Request<T>, method: &str, target: NodeId, body: &[u8]) {
        let nonce = random_nonce();
        let bound = bind_target(method, target);
        let now = now_ms();
        let md = req.metadata_mut();
        // Both strings are ASCII we generate, so attaching cannot fail.
        let _ = auth::attach(
            md,
            &format!("node:{}", self.node_id),
            &self.secret,
            &bound,
            now,
            &nonce,
            &auth::body_digest(body),
        );
        if let Ok(v) = target.to_string().parse() {
            md.insert(TARGET_HEADER, v);
        }
    }

    /// Verifies a call made to this node; returns the sender's node id.
    #[allow(clippy::result_large_err)]
    pub fn verify<T>(&self, req: &Request<T>, method: &str, body: &[u8]) -> Result<NodeId, Status> {
        let md = req.metadata();
        let headers = auth::read(md).map_err(|e| Status::unauthenticated(e.message))?;
        let sender = headers
            .access_key_id
            .strip_prefix("node:")
            .and_then(|s| s.parse::<NodeId>().ok())
            .ok_or_else(|| Status::unauthenticated("not a cluster node"))?;
        let target: NodeId = md
            .get(TARGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Status::unauthenticated("missing target node"))?;
        if !auth::is_fresh(headers.timestamp_ms, now_ms()) {
            return Err(Status::unauthenticated("stale cluster signature"));
        }
        if !auth::verify(
            &self.secret,
            &bind_target(method, target),
            &headers,
            &auth::body_digest(body),
        ) {
            return Err(Status::unauthenticated("bad cluster signature"));
        }
        if target != self.node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}",
                self.node_id
            )));
        }
        Ok(sender)
    }

    /// The MAC of message `seq` of stream `stream_id`.
    fn stream_mac(&self, stream_id: &str, seq: u64, body: &[u8]) -> Vec<u8> {
        auth::stream_mac(&self.secret, stream_id, seq, body)
    }

    /// Whether `mac` is that of message `seq` of stream `stream_id`.
    fn verify_stream_mac(&self, stream_id: &str, seq: u64, body: &[u8], mac: &[u8]) -> bool {
        auth::verify_stream_mac(&self.secret, stream_id, seq, body, mac)
    }
}

fn bind_target(method: &str, target: NodeId) -> String {
    format!("{method}@node:{target}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh 32-hex-character nonce.
pub fn random_nonce() -> String {
    hex::encode(rand::thread_rng().gen::<[u8; 16]>())
}

/// The source IP for outgoing node-to-node connections of a node whose node-to-node
/// listener is bound to `listen`: the listener's IP when it is a specific address, `None`
/// (the kernel chooses, by route) when it is unspecified (`0.0.0.0`, `::`).
pub fn source_ip(listen: SocketAddr) -> Option<IpAddr> {
    let ip = listen.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Whether `addr` (`host:port`) names a loopback destination.
fn is_loopback_destination(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The source IP for a connection to `addr` (`host:port`): `source`, unless it is a
/// loopback address and the destination is not, which a loopback address cannot reach.
pub(crate) fn usable_source(addr: &str, source: Option<IpAddr>) -> Option<IpAddr> {
    source.filter(|ip| !ip.is_loopback() || is_loopback_destination(addr))
}

/// A lazily connected channel to a peer's node-to-node address.
///
/// With `source` set, the connection's local address is bound to that IP (any port).
/// Two cases keep the kernel's choice instead: a source of the other address family
/// than the destination (the connector skips it), and a loopback source with a
/// destination that is not loopback, which a loopback address cannot reach.
pub fn peer_channel(
    raft_addr: &str,
    source: Option<IpAddr>,
) -> Result<Channel, tonic::transport::Error> {
    let source = usable_source(raft_addr, source);
    Ok(Endpoint::from_shared(format!("http://{raft_addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .local_address(source)
        .connect_lazy())
}

/// Creates connections to peers, sharing one HTTP/2 channel per address.
///
/// Every node-to-node client of a node (Raft, join, forwarding, read index) goes through
/// [`Network::channel`], so all of them leave from the same source IP.
#[derive(Clone)]
pub struct Network {
    auth: ClusterAuth,
    source: Option<IpAddr>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    patience: Duration,
    transfers: SnapshotTransfers,
}

impl Network {
    /// A network that signs with `auth`; the kernel chooses each connection's source
    /// address.
    pub fn new(auth: ClusterAuth) -> Network {
        Network {
            auth,
            source: None,
            channels: Arc::new(Mutex::new(HashMap::new())),
            patience: Duration::ZERO,
            transfers: SnapshotTransfers::default(),
        }
    }

    /// How long a replication stream waits for a follower's answer, at least: openraft
    /// gives each AppendEntries the heartbeat interval (100 ms by default), and a stream
    /// that misses it is closed and opened again, re-sending what was in flight. A
    /// follower busy for a moment (writing a snapshot, a slow sync) then got the
    /// same entries again, and replication stopped while the stream was re-opened, which
    /// stalled every write. Give the election timeout's minimum: a follower that does not
    /// answer within it counts as gone anyway. Heartbeats and other calls keep openraft's
    /// timeout.
    pub fn with_stream_patience(mut self, patience: Duration) -> Network {
        self.patience = patience;
        self
    }

    /// Binds outgoing connections to `source` (see [`source_ip`] and [`peer_channel`]).
    /// Applies to channels created afterwards.
    pub fn with_source_ip(mut self, source: Option<IpAddr>) -> Network {
        self.source = source;
        self
    }

    /// The source IP outgoing connections are bound to, if any.
    pub fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// The record of the snapshots this network sends, by target, for
    /// [`crate::compaction::run`].
    pub fn snapshot_transfers(&self) -> SnapshotTransfers {
        self.transfers.clone()
    }

    /// The shared channel to `raft_addr`.
    pub fn channel(&self, raft_addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(raft_addr) {
            return Ok(c.clone());
        }
        let c = peer_channel(raft_addr, self.source)?;
        channels.insert(raft_addr.to_string(), c.clone());
        Ok(c)
    }

    /// The signer.
    pub fn auth(&self) -> &ClusterAuth {
        &self.auth
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection {
        Connection {
            target,
            client: self.channel(&node.raft_addr).map(raft_client),
            raft_addr: node.raft_addr.clone(),
            source: self.source,
            auth: self.auth.clone(),
            patience: self.patience,
            transfers: self.transfers.clone(),
        }
    }
}

/// A connection to one peer.
pub struct Connection {
    target: NodeId,
    client: Result<RaftServiceClient<Channel>, tonic::transport::Error>,
    /// The peer's address and our source IP, for a snapshot's connection of its own.
    raft_addr: String,
    source: Option<IpAddr>,
    auth: ClusterAuth,
    /// The least time a replication stream waits for an answer (see
    /// [`Network::with_stream_patience`]).
    patience: Duration,
    /// Where the snapshots sent to `target` are recorded.
    transfers: SnapshotTransfers,
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn raft_client(channel: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
}

fn unreachable(e: &(impl std::error::Error + 'static)) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(e))
}

fn status_to_rpc(status: Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            unreachable(&status)
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn io_to_rpc(e: std::io::Error) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

impl Connection {
    fn client(&self) -> RpcResult<RaftServiceClient<Channel>> {
        match &self.client {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(e.to_string()),
            ))),
        }
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &str,
        req: &Req,
        timeout: Duration,
        call: F,
    ) -> RpcResult<Resp>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<Response<RaftMessage>, Status>>,
    {
        let data = to_bytes(req).map_err(io_to_rpc)?;
        let mut request = Request::new(RaftMessage { data: Vec::new() });
        self.auth.sign(&mut request, method, self.target, &data);
        request.get_mut().data = data;
        request.set_timeout(timeout);
        let client = self.client()?;
        let reply = tokio::time::timeout(timeout, call(client, request))
            .await
            .map_err(|_| self.timeout_error(openraft::network::RPCTypes::AppendEntries, timeout))?
            .map_err(status_to_rpc)?;
        from_bytes(&reply.into_inner().data).map_err(io_to_rpc)
    }
}

/// The requests of a replication stream sent and not yet answered: when each was sent.
#[derive(Default)]
struct InFlight {
    sent: Mutex<VecDeque<Instant>>,
    /// Wakes a reader that waits with nothing in flight when a request goes out.
    more: Notify,
    /// Wakes the sender waiting for room when an answer comes in.
    room: Notify,
}

impl InFlight {
    fn sent(&self) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Instant::now());
        self.more.notify_one();
    }

    fn answered(&self) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        self.room.notify_one();
    }

    /// Returns once fewer than `max` requests are unanswered. One task waits here (the
    /// stream's sender), so a wake-up that comes before it waits is kept, not lost.
    async fn wait_for_room(&self, max: usize) {
        loop {
            let unanswered = self.sent.lock().unwrap_or_else(|p| p.into_inner()).len();
            if unanswered < max {
                return;
            }
            self.room.notified().await;
        }
    }

    /// When the oldest unanswered request times out, if one is in flight.
    fn deadline(&self, timeout: Duration) -> Option<Instant> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.front().map(|t| *t + timeout)
    }
}

impl Connection {
    fn timeout_error(
        &self,
        action: openraft::network::RPCTypes,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        RPCError::Timeout(openraft::errors::Timeout {
            action,
            id: self.auth.node_id(),
            target: self.target,
            timeout,
        })
    }

    /// Opens an AppendStream call that carries `input`, each request signed with its
    /// place in the stream; returns the answers in order. An answer that takes longer
    /// than `timeout` after its request went out ends the stream with a timeout, as a
    /// unary call's would, so a partitioned follower is noticed.
    async fn open_append_stream<S>(
        &mut self,
        input: S,
        timeout: Duration,
    ) -> RpcResult<BoxStream<'static, RpcResult<StreamAppendResult<TypeConfig>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let mut client = self.client()?;
        let stream_id = random_nonce();
        let in_flight = Arc::new(InFlight::default());
        let outgoing = {
            let auth = self.auth.clone();
            let stream_id = stream_id.clone();
            let in_flight = in_flight.clone();
            futures::stream::unfold((input, 0u64), move |(mut input, seq)| {
                let (auth, stream_id, in_flight) =
                    (auth.clone(), stream_id.clone(), in_flight.clone());
                async move {
                    // openraft builds a request when it is taken: one taken later carries
                    // every entry appended meanwhile.
                    in_flight.wait_for_room(STREAM_IN_FLIGHT).await;
                    let req = input.next().await?;
                    let data = match to_bytes(&req) {
                        Ok(data) => data,
                        Err(e) => {
                            // bincode does not refuse these types; if it did, the stream
                            // ends and the next session sends the entries again.
                            tracing::error!(error = %e, "cannot encode an AppendEntries request");
                            return None;
                        }
                    };
                    let seq = seq + 1;
                    let mac = auth.stream_mac(&stream_id, seq, &data);
                    in_flight.sent();
                    Some((StreamMessage { data, mac }, (input, seq)))
                }
            })
        };
        let mut request = Request::new(outgoing);
        // The id is random hex, always a valid header value.
        if let Ok(v) = stream_id.parse() {
            request.metadata_mut().insert(STREAM_HEADER, v);
        }
        self.auth.sign(
            &mut request,
            methods::APPEND_STREAM,
            self.target,
            stream_id.as_bytes(),
        );
        let action = openraft::network::RPCTypes::AppendEntries;
        let answers = tokio::time::timeout(timeout, client.append_stream(request))
            .await
            .map_err(|_| self.timeout_error(action, timeout))?
            .map_err(status_to_rpc)?
            .into_inner();
        let timed_out = self.timeout_error(action, timeout);
        let answers = futures::stream::unfold(Some(answers), move |state| {
            let in_flight = in_flight.clone();
            let timed_out = timed_out.clone();
            async move {
                let mut answers = state?;
                let next = loop {
                    match in_flight.deadline(timeout) {
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline, answers.message()).await {
                                Ok(next) => break next,
                                Err(_) => return Some((Err(timed_out), None)),
                            }
                        }
                        // Nothing in flight: wait for an answer (none should come) or for
                        // a request to go out, which starts its clock.
                        None => tokio::select! {
                            next = answers.message() => break next,
                            () = in_flight.more.notified() => {}
                        },
                    }
                };
                match next {
                    Ok(Some(msg)) => {
                        in_flight.answered();
                        let answer = from_bytes(&msg.data).map_err(io_to_rpc);
                        let more = answer.is_ok().then_some(answers);
                        Some((answer, more))
                    }
                    Ok(None) => None,
                    Err(status) => Some((Err(status_to_rpc(status)), None)),
                }
            }
        });
        Ok(Box::pin(answers) as BoxStream<'static, _>)
    }
}

/// Method names used for signing (the gRPC paths).
pub mod methods {
    /// AppendEntries.
    pub const APPEND: &str = "/keyraft.v1.internal.RaftService/AppendEntries";
    /// AppendStream.
    pub const APPEND_STREAM: &str = "/keyraft.v1.internal.RaftService/AppendStream";
    /// Vote.
    pub const VOTE: &str = "/keyraft.v1.internal.RaftService/Vote";
    /// PreVote.
    pub const PRE_VOTE: &str = "/keyraft.v1.internal.RaftService/PreVote";
    /// TransferLeader.
    pub const TRANSFER_LEADER: &str = "/keyraft.v1.internal.RaftService/TransferLeader";
    /// InstallSnapshot.
    pub const SNAPSHOT: &str = "/keyraft.v1.internal.RaftService/InstallSnapshot";
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        self.unary(
            methods::APPEND,
            &rpc,
            option.hard_ttl(),
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    /// Replication: one long-lived stream per session (openraft keeps a session open as
    /// long as this node leads and the follower keeps up), on which requests go out as
    /// the log grows, without waiting for the previous answer. A stream of one request (a
    /// heartbeat) goes as a unary call, which is cheaper than opening a stream.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, RpcResult<BoxStream<'s, RpcResult<StreamAppendResult<TypeConfig>>>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if input.size_hint().1 == Some(1) {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let timeout = option.hard_ttl().max(self.patience);
            let answers = self.open_append_stream(input, timeout).await?;
            Ok(answers as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.unary(
            methods::VOTE,
            &rpc,
            option.hard_ttl(),
            |mut c, r| async move { c.vote(r).await },
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.unary(
            methods::PRE_VOTE,
            &rpc,
            option.hard_ttl(),
            |mut c, r| async move { c.pre_vote(r).await },
        )
        .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        self.unary(
            methods::TRANSFER_LEADER,
            &req,
            option.hard_ttl(),
            |mut c, r| async move { c.transfer_leader(r).await },
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        fn network<E: std::error::Error + 'static>(e: &E) -> StreamingError<TypeConfig> {
            StreamingError::Network(NetworkError::new(e))
        }
        let SnapshotData::Local(view) = snapshot.snapshot else {
            let e = std::io::Error::other("only a node's own state is sent as a snapshot");
            return Err(network(&e));
        };
        let _sending = self.transfers.start(self.target);
        let transfer = random_nonce();
        let head = to_bytes(&(vote, snapshot.meta, &transfer)).map_err(|e| network(&e))?;
        let (chunks, queued) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        let first = SnapshotChunk {
            kind: Some(snapshot_chunk::Kind::Meta(head.clone())),
        };
        // The channel is new and has room, so the first chunk always goes in.
        let _ = chunks.try_send(first);
        let auth = self.auth.clone();
        let records =
            tokio::task::spawn_blocking(move || send_records(&view, &auth, &transfer, &chunks));
        let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(queued));
        self.auth
            .sign(&mut request, methods::SNAPSHOT, self.target, &head);
        // A connection of its own: on the shared one, a follower too busy installing or
        // syncing to accept the heartbeats the leader then gives up on answers with a
        // GOAWAY ("too_many_resets"), and a keep-alive that times out closes it too,
        // either of which cut the transfer off and had the whole state sent again.
        let mut client = peer_channel(&self.raft_addr, self.source)
            .map(raft_client)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let send = async {
            tokio::time::timeout(SNAPSHOT_TIMEOUT, client.install_snapshot(request)).await
        };
        let mut cancel = std::pin::pin!(cancel);
        let reply = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let reply = reply.map_err(|_| {
            StreamingError::Timeout(openraft::errors::Timeout {
                action: openraft::network::RPCTypes::InstallSnapshot,
                id: self.auth.node_id(),
                target: self.target,
                timeout: SNAPSHOT_TIMEOUT,
            })
        })?;
        let reply = match reply {
            Ok(reply) => reply,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tracing::warn!(target = self.target, error = %status.message(), "a follower refused a snapshot");
                tokio::select! {
                    closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                    () = tokio::time::sleep(REFUSED_SNAPSHOT_PAUSE) => {}
                }
                return Err(StreamingError::Unreachable(Unreachable::new(&status)));
            }
            Err(status) => {
                // If reading the state failed, that is why the follower refused: the
                // records ended without their end chunk. (The reader has returned by
                // then; the deadline only guards against waiting on a reader still
                // blocked on a body the call has not dropped yet, whose error would
                // only say the transfer ended.)
                let read = tokio::time::timeout(Duration::from_secs(1), records).await;
                if let Ok(Ok(Err(e))) = read {
                    if e.kind() != TRANSFER_ENDED {
                        tracing::warn!(error = %e, "reading the state for a snapshot failed");
                        return Err(network(&e));
                    }
                }
                return Err(match status_to_rpc(status) {
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    other => network(&other),
                });
            }
        };
        from_bytes(&reply.into_inner().data).map_err(|e| network(&e))
    }
}

/// The error of [`send_records`] when the transfer ended first (the call failed, or was
/// cancelled): not the reason it failed.
const TRANSFER_ENDED: std::io::ErrorKind = std::io::ErrorKind::BrokenPipe;

/// Reads `view`'s records into snapshot chunks of about [`SNAPSHOT_CHUNK`] bytes and
/// sends them to `out`, then the end chunk: the MAC of the data's SHA-256 under the
/// cluster secret, bound to `transfer`. Stops when the transfer does (`out` closed).
fn send_records(
    view: &StateView,
    auth: &ClusterAuth,
    transfer: &str,
    out: &tokio::sync::mpsc::Sender<SnapshotChunk>,
) -> std::io::Result<()> {
    let send = |kind| {
        out.blocking_send(SnapshotChunk { kind: Some(kind) })
            .map_err(|_| std::io::Error::new(TRANSFER_ENDED, "the snapshot transfer ended"))
    };
    let mut digest = Sha256::new();
    let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK + 4096);
    for record in view.records() {
        let (key, value) = record?;
        encode_record(&key, &value, &mut chunk)?;
        if chunk.len() >= SNAPSHOT_CHUNK {
            digest.update(&chunk);
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(SNAPSHOT_CHUNK + 4096));
            send(snapshot_chunk::Kind::Data(full))?;
        }
    }
    if !chunk.is_empty() {
        digest.update(&chunk);
        send(snapshot_chunk::Kind::Data(chunk))?;
    }
    let mac = auth.stream_mac(transfer, 0, &digest.finalize());
    send(snapshot_chunk::Kind::End(mac))
}

/// Reads the data chunks of a snapshot transfer and its end chunk from `chunks` into
/// `incoming`, and returns it, sealed ([`Incoming::seal`]), if the end chunk came last
/// and holds the MAC of the data for `transfer`. Refuses the transfer rather than leave
/// the disk of `data_dir` with less free than the reserve ([`SNAPSHOT_RESERVE_MIN`]).
/// Calls `progress` with the size of each data chunk as it arrives.
async fn read_snapshot_data<S>(
    auth: &ClusterAuth,
    transfer: &str,
    mut chunks: S,
    incoming: Incoming,
    data_dir: &Path,
    mut progress: impl FnMut(usize),
) -> Result<Incoming, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let mut digest = Sha256::new();
    let mut end = None;
    let mut receiving = (incoming, RecordReader::default());
    while let Some(chunk) = chunks.next().await {
        match (chunk?.kind, &end) {
            (Some(snapshot_chunk::Kind::Data(d)), None) => {
                progress(d.len());
                digest.update(&d);
                let dir = data_dir.to_path_buf();
                let (mut incoming, mut reader) = receiving;
                receiving = tokio::task::spawn_blocking(move || {
                    check_room(&dir, d.len() as u64)?;
                    incoming.write(reader.feed(&d)).map_err(|e| {
                        Status::internal(format!("writing the received snapshot: {e}"))
                    })?;
                    Ok::<_, Status>((incoming, reader))
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
            }
            (Some(snapshot_chunk::Kind::End(mac)), None) => end = Some(mac),
            _ => return Err(Status::invalid_argument("unexpected snapshot chunk")),
        }
    }
    let Some(mac) = end else {
        return Err(Status::data_loss(
            "the snapshot ended before its last chunk",
        ));
    };
    if !auth.verify_stream_mac(transfer, 0, &digest.finalize(), &mac) {
        return Err(Status::data_loss("snapshot data does not match its MAC"));
    }
    let (mut incoming, reader) = receiving;
    reader
        .finish()
        .map_err(|e| Status::data_loss(e.to_string()))?;
    incoming
        .seal()
        .map_err(|e| Status::aborted(e.to_string()))?;
    Ok(incoming)
}

/// Fails with `RESOURCE_EXHAUSTED` if writing `more` bytes to the disk of `dir` would
/// leave less free than a snapshot must leave ([`SNAPSHOT_RESERVE_MIN`],
/// [`SNAPSHOT_RESERVE_PERCENT`]).
#[allow(clippy::result_large_err)]
fn check_room(dir: &Path, more: u64) -> Result<(), Status> {
    let disk = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Status::internal(format!("reading the free space of the data disk: {e}")))?;
    let unit = disk.fragment_size() as u64;
    let free = (disk.blocks_available() as u64).saturating_mul(unit);
    let size = (disk.blocks() as u64).saturating_mul(unit);
    let reserve = SNAPSHOT_RESERVE_MIN.max(size / 100 * SNAPSHOT_RESERVE_PERCENT);
    if free < reserve.saturating_add(more) {
        return Err(Status::resource_exhausted(format!(
            "the data disk has {} MiB free and a snapshot must leave {} MiB",
            free >> 20,
            reserve >> 20
        )));
    }
    Ok(())
}

/// The server side: hands verified messages to the local Raft.
pub struct RaftServer {
    raft: Raft,
    auth: ClusterAuth,
    contact: LeaderContact,
    stop: watch::Receiver<bool>,
    state: Arc<StateMachine>,
    data_dir: PathBuf,
}

impl RaftServer {
    /// Serves `raft`, accepting calls signed with `auth`'s secret, and records in
    /// `contact` when a leader's AppendEntries or snapshot arrived. A snapshot is
    /// received into `state`'s second tree (see [`Incoming`]), and refused if it would
    /// leave the disk of `data_dir`, where `state` is, without its reserve.
    ///
    /// When `stop` turns true (or its sender is dropped) every open replication stream
    /// ends. A leader keeps its stream open for as long as it replicates, so without this
    /// a graceful shutdown, which waits for open calls to finish, would never end.
    pub fn new(
        raft: Raft,
        auth: ClusterAuth,
        contact: LeaderContact,
        stop: watch::Receiver<bool>,
        state: Arc<StateMachine>,
        data_dir: PathBuf,
    ) -> RaftServer {
        RaftServer {
            raft,
            auth,
            contact,
            stop,
            state,
            data_dir,
        }
    }

    /// The tonic service.
    pub fn into_service(
        self,
    ) -> keyraft_proto::v1::internal::raft_service_server::RaftServiceServer<RaftServer> {
        keyraft_proto::v1::internal::raft_service_server::RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
    }
}

#[allow(clippy::result_large_err)]
fn decode_request<T: serde::de::DeserializeOwned>(
    auth: &ClusterAuth,
    req: &Request<RaftMessage>,
    method: &str,
) -> Result<T, Status> {
    auth.verify(req, method, &req.get_ref().data)?;
    from_bytes(&req.get_ref().data).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[allow(clippy::result_large_err)]
fn encode_reply<T: serde::Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
) -> Result<Response<RaftMessage>, Status> {
    let value = result.map_err(|e| Status::unavailable(format!("raft: {e}")))?;
    let data = to_bytes(&value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { data }))
}

/// Message `seq` of replication stream `stream_id`, if its MAC is that message's and it
/// decodes.
fn accept_stream_message(
    auth: &ClusterAuth,
    stream_id: &str,
    seq: u64,
    msg: &StreamMessage,
) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    if !auth.verify_stream_mac(stream_id, seq, &msg.data, &msg.mac) {
        return Err("a message whose MAC does not verify".into());
    }
    from_bytes(&msg.data).map_err(|e| format!("an undecodable message: {e}"))
}

/// The answers of an AppendStream call.
type AnswerStream = Pin<Box<dyn Stream<Item = Result<StreamMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftServer {
    type AppendStreamStream = AnswerStream;

    /// Hands a leader's stream of requests to the local Raft, which appends each as it
    /// arrives; the answers go back in order. A request whose MAC does not verify ends the
    /// stream: the leader opens another. So does this node's shutdown.
    async fn append_stream(
        &self,
        request: Request<Streaming<StreamMessage>>,
    ) -> Result<Response<AnswerStream>, Status> {
        let stream_id = request
            .metadata()
            .get(STREAM_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing stream id"))?
            .to_string();
        self.auth
            .verify(&request, methods::APPEND_STREAM, stream_id.as_bytes())?;
        let auth = self.auth.clone();
        let contact = self.contact.clone();
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let requests = futures::stream::unfold((request.into_inner(), 0u64), move |state| {
            let auth = auth.clone();
            let contact = contact.clone();
            let stream_id = stream_id.clone();
            async move {
                let (mut incoming, seq) = state;
                let msg = incoming.message().await.ok()??;
                let seq = seq + 1;
                match accept_stream_message(&auth, &stream_id, seq, &msg) {
                    Ok(req) => {
                        contact.touch();
                        Some((req, (incoming, seq)))
                    }
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "closing a replication stream");
                        None
                    }
                }
            }
        })
        // Once the requests end, Raft answers those it holds and ends the answers.
        .take_until(stopped);
        let answers = self.raft.stream_append(requests).map(|answer| {
            let answer = answer.map_err(|fatal| Status::unavailable(format!("raft: {fatal}")))?;
            let data = to_bytes(&answer).map_err(|e| Status::internal(e.to_string()))?;
            Ok(StreamMessage {
                data,
                mac: Vec::new(),
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(&self.auth, &request, methods::APPEND)?;
        self.contact.touch();
        encode_reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(&self.auth, &request, methods::VOTE)?;
        encode_reply(self.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode_request(&self.auth, &request, methods::PRE_VOTE)?;
        let candidate_log = rpc.last_log_id;
        let reply = self.raft.pre_vote(rpc).await;
        if matches!(&reply, Ok(r) if !r.vote_granted && r.last_log_id > candidate_log) {
            self.contact.candidate_behind();
        }
        encode_reply(reply)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(&self.auth, &request, methods::TRANSFER_LEADER)?;
        encode_reply(self.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let (metadata, extensions, mut stream) = request.into_parts();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(snapshot_chunk::Kind::Meta(meta_bytes)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first snapshot chunk must be metadata",
            ));
        };
        let check = Request::from_parts(metadata, extensions, ());
        self.auth.verify(&check, methods::SNAPSHOT, &meta_bytes)?;
        self.contact.touch();
        let (vote, meta, transfer): (Vote, SnapshotMeta, String) =
            from_bytes(&meta_bytes).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot_id = meta
            .last_log_id
            .map_or_else(|| "none".to_string(), |id| id.to_string());
        let (state, dir) = (self.state.clone(), self.data_dir.clone());
        let incoming = tokio::task::spawn_blocking(move || {
            check_room(&dir, 0)?;
            state.receive().map_err(|e| match e {
                StateError::InstallPending => Status::unavailable(e.to_string()),
                e => Status::internal(format!("preparing to receive a snapshot: {e}")),
            })
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
        .and_then(|r| r)
        .inspect_err(
            |e| tracing::warn!(snapshot = %snapshot_id, error = %e, "refused a snapshot"),
        )?;
        tracing::info!(snapshot = %snapshot_id, "receiving a snapshot");
        let started = Instant::now();
        let contact = &self.contact;
        let mut bytes = 0;
        let incoming = read_snapshot_data(
            &self.auth,
            &transfer,
            stream,
            incoming,
            &self.data_dir,
            |n| {
                bytes += n;
                contact.touch();
            },
        )
        .await
        .inspect_err(
            |e| tracing::warn!(snapshot = %snapshot_id, error = %e, "a snapshot transfer failed"),
        )?;
        tracing::info!(
            snapshot = %snapshot_id,
            mib = bytes >> 20,
            seconds = format!("{:.1}", started.elapsed().as_secs_f32()),
            "received a snapshot whole"
        );
        let snapshot = Snapshot {
            meta,
            snapshot: SnapshotData::Received(incoming),
        };
        encode_reply(self.raft.install_full_snapshot(vote, snapshot).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks `send_records` makes of a state installed with `records`, for
    /// `transfer`, and the records of that state.
    async fn snapshot_chunks(
        auth: &ClusterAuth,
        transfer: &str,
        records: &[(&str, &str)],
    ) -> (Vec<SnapshotChunk>, Vec<(String, String)>) {
        let dir = tempfile::tempdir().unwrap();
        let durable = keyraft_state::Durable::open(dir.path()).unwrap();
        let sm = keyraft_state::StateMachine::open(&durable).unwrap();
        let records: Vec<_> = records
            .iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
            .collect();
        sm.install(records, Vec::new(), Vec::new()).unwrap();
        let view = sm.pin().unwrap();
        let state = view.records().map(|r| text(r.unwrap())).collect();
        let (auth, transfer) = (auth.clone(), transfer.to_string());
        let (tx, mut rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        let sender =
            tokio::task::spawn_blocking(move || send_records(&view, &auth, &transfer, &tx));
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        sender.await.unwrap().unwrap();
        (chunks, state)
    }

    fn text((k, v): (Vec<u8>, Vec<u8>)) -> (String, String) {
        (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
    }

    /// The state a node that receives `chunks` of `transfer` installs; if it refuses
    /// them, why, once it has dropped what it received.
    async fn read(
        auth: &ClusterAuth,
        transfer: &str,
        chunks: Vec<SnapshotChunk>,
    ) -> Result<Vec<(String, String)>, tonic::Code> {
        let stream = futures::stream::iter(chunks.into_iter().map(Ok));
        let dir = tempfile::tempdir().unwrap();
        let durable = keyraft_state::Durable::open(dir.path()).unwrap();
        let sm = StateMachine::open(&durable).unwrap();
        let incoming = sm.receive().unwrap();
        let read = read_snapshot_data(auth, transfer, stream, incoming, dir.path(), |_| ()).await;
        let incoming = match read {
            Ok(incoming) => incoming,
            Err(status) => {
                // The partial tree goes (on a thread of its own).
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while durable.db().tree_names().len() > 2 {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the partial tree stays"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Err(status.code());
            }
        };
        sm.install_received(incoming, Vec::new(), Vec::new())
            .unwrap();
        let view = sm.pin().unwrap();
        let state = view.records().map(|r| text(r.unwrap())).collect();
        Ok(state)
    }

    /// `chunks` with their data cut into pieces of `size` bytes: records across pieces.
    fn recut(chunks: &[SnapshotChunk], size: usize) -> Vec<SnapshotChunk> {
        let mut data = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            match &chunk.kind {
                Some(snapshot_chunk::Kind::Data(d)) => data.extend_from_slice(d),
                _ => {
                    out.extend(data.chunks(size).map(|piece| SnapshotChunk {
                        kind: Some(snapshot_chunk::Kind::Data(piece.to_vec())),
                    }));
                    data.clear();
                    out.push(chunk.clone());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_snapshot_is_installed_only_as_its_sender_sent_it() {
        let auth = ClusterAuth::new(1, b"cluster secret");
        let records = [("a", "1"), ("b", "22"), ("c", "")];
        let (chunks, state) = snapshot_chunks(&auth, "t-1", &records).await;
        for (k, v) in records {
            assert!(state.contains(&(k.to_string(), v.to_string())));
        }
        assert_eq!(read(&auth, "t-1", chunks.clone()).await, Ok(state.clone()));
        // However the data is cut, as long as it is all there.
        assert_eq!(read(&auth, "t-1", recut(&chunks, 3)).await, Ok(state));

        // Another transfer's end chunk, or another cluster's secret, does not verify.
        assert_eq!(
            read(&auth, "t-2", chunks.clone()).await,
            Err(tonic::Code::DataLoss)
        );
        let stranger = ClusterAuth::new(1, b"another secret");
        assert_eq!(
            read(&stranger, "t-1", chunks.clone()).await,
            Err(tonic::Code::DataLoss)
        );
        // Data changed on the way, or cut short of its end chunk, is refused.
        let mut changed = chunks.clone();
        if let Some(snapshot_chunk::Kind::Data(d)) = &mut changed[0].kind {
            d[5] ^= 1;
        }
        assert_eq!(
            read(&auth, "t-1", changed).await,
            Err(tonic::Code::DataLoss)
        );
        let mut cut = chunks.clone();
        cut.pop();
        assert_eq!(read(&auth, "t-1", cut).await, Err(tonic::Code::DataLoss));
        // So is data that ends inside a record, even under a MAC that matches.
        assert_eq!(chunks.len(), 2, "one data chunk and the end");
        let mut inside = chunks.clone();
        let Some(snapshot_chunk::Kind::Data(d)) = &mut inside[0].kind else {
            panic!("the first chunk holds records");
        };
        d.pop();
        let data = d.clone();
        let mac = auth.stream_mac("t-1", 0, &Sha256::digest(&data));
        inside[1].kind = Some(snapshot_chunk::Kind::End(mac));
        assert_eq!(read(&auth, "t-1", inside).await, Err(tonic::Code::DataLoss));
        // Nothing may follow the end chunk.
        let mut more = chunks.clone();
        more.push(chunks[0].clone());
        assert_eq!(
            read(&auth, "t-1", more).await,
            Err(tonic::Code::InvalidArgument)
        );
    }

    /// A snapshot may not take a disk's last free space.
    #[test]
    fn a_snapshot_that_would_fill_the_disk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = check_room(dir.path(), u64::MAX / 2).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("MiB free"),
            "{}",
            refused.message()
        );
    }

    #[test]
    fn the_source_is_the_listen_ip_unless_unspecified() {
        assert_eq!(source_ip("0.0.0.0:7201".parse().unwrap()), None);
        assert_eq!(source_ip("[::]:7201".parse().unwrap()), None);
        assert_eq!(
            source_ip("10.0.0.1:7201".parse().unwrap()),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            source_ip("127.0.0.12:7201".parse().unwrap()),
            Some("127.0.0.12".parse().unwrap())
        );
    }

    #[test]
    fn loopback_destinations_are_recognised() {
        assert!(is_loopback_destination("127.0.0.1:7201"));
        assert!(is_loopback_destination("127.9.9.9:7201"));
        assert!(is_loopback_destination("[::1]:7201"));
        assert!(is_loopback_destination("localhost:7201"));
        assert!(!is_loopback_destination("10.0.0.2:7201"));
        assert!(!is_loopback_destination("[fd00::2]:7201"));
        assert!(!is_loopback_destination("node2.example:7201"));
    }

    /// Connects through a channel built with `source` to a local listener; returns the
    /// connection's peer IP as the listener sees it.
    async fn peer_ip_seen(source: Option<IpAddr>) -> IpAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let channel = peer_channel(&addr, source).unwrap();
        let call = tokio::spawn(async move {
            let mut client = RaftServiceClient::new(channel);
            let _ = client.vote(RaftMessage { data: Vec::new() }).await;
        });
        let (_stream, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the channel connects")
            .unwrap();
        call.abort();
        peer.ip()
    }

    #[tokio::test]
    async fn outgoing_connections_leave_from_the_source_ip() {
        let source: IpAddr = "127.0.0.23".parse().unwrap();
        assert_eq!(peer_ip_seen(Some(source)).await, source);
        assert_eq!(
            peer_ip_seen(None).await,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    /// A follower takes from a replication stream only what the stream's opener signed,
    /// in the place it signed it.
    #[test]
    fn a_stream_message_is_accepted_only_with_its_own_mac() {
        let leader = ClusterAuth::new(1, b"0123456789abcdef");
        let follower = ClusterAuth::new(2, b"0123456789abcdef");
        let stranger = ClusterAuth::new(1, b"not-the-secret!!");
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let data = to_bytes(&req).unwrap();
        let signed = |auth: &ClusterAuth, stream: &str, seq| StreamMessage {
            data: data.clone(),
            mac: auth.stream_mac(stream, seq, &data),
        };
        let got = accept_stream_message(&follower, "s1", 2, &signed(&leader, "s1", 2)).unwrap();
        assert_eq!(got.vote, req.vote);
        for (msg, why) in [
            (signed(&stranger, "s1", 2), "another secret"),
            (signed(&leader, "s2", 2), "another stream"),
            (signed(&leader, "s1", 1), "another place"),
        ] {
            assert!(
                accept_stream_message(&follower, "s1", 2, &msg).is_err(),
                "{why}"
            );
        }
        let mut tampered = signed(&leader, "s1", 2);
        tampered.data.push(0);
        assert!(accept_stream_message(&follower, "s1", 2, &tampered).is_err());
        let garbage = StreamMessage {
            data: vec![1, 2, 3],
            mac: leader.stream_mac("s1", 2, &[1, 2, 3]),
        };
        assert!(accept_stream_message(&follower, "s1", 2, &garbage).is_err());
    }

    #[test]
    fn a_network_keeps_its_source_ip() {
        let network = Network::new(ClusterAuth::new(1, b"0123456789abcdef"))
            .with_source_ip(Some("127.0.0.11".parse().unwrap()));
        assert_eq!(network.source(), Some("127.0.0.11".parse().unwrap()));
        assert_eq!(Network::new(ClusterAuth::new(1, b"x")).source(), None);
    }
}
