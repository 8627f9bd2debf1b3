//! [`NodeCore`]: what every service of a node shares, and the request pipeline —
//! propose (or forward) a command, commit audit records in batches, read barriers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{Request, Response, Status};

use keyraft_hsm::Hsm;
use keyraft_proto::v1::internal::node_service_client::NodeServiceClient;
use keyraft_proto::v1::internal::{RaftMessage, ReadIndexRequest};
use keyraft_proto::{status_from_error, LeaderHint};
use keyraft_raft::network::{now_ms, ClusterAuth, Network, MAX_MESSAGE};
use keyraft_raft::{NodeAddr, Raft};
use keyraft_state::{Command, Op, Reply, Response as StateResponse, StateMachine};
use keyraft_types::{
    AuditRecord, EncryptionContext, ErrorCode, EventType, KmsError, NodeId, Region,
    RequestParameters, UserIdentity,
};

use crate::authn::{Authenticator, Principal};
use crate::config::Config;
use crate::failpoints;

/// gRPC method paths of the internal node service, used for signing.
pub(crate) mod node_methods {
    pub const PROPOSE: &str = "/keyraft.v1.internal.NodeService/Propose";
    pub const NODE_STATUS: &str = "/keyraft.v1.internal.NodeService/NodeStatus";
    pub const JOIN_INFO: &str = "/keyraft.v1.internal.NodeService/JoinInfo";
    pub const REQUEST_DOMAIN_KEY: &str = "/keyraft.v1.internal.NodeService/RequestDomainKey";
    pub const READ_INDEX: &str = "/keyraft.v1.internal.NodeService/ReadIndex";
}

type AuditVerdict = Result<Option<KmsError>, KmsError>;

/// What the group commit puts into the next entry.
// Records are the common job: boxing them would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum CommitJob {
    /// The record of a request this node served, answered with apply's verdict on it.
    Record {
        record: AuditRecord,
        reply: oneshot::Sender<AuditVerdict>,
    },
    /// A mutation a caller asked this node for, answered with apply's response.
    Mutation {
        cmd: Command,
        reply: oneshot::Sender<Result<StateResponse, KmsError>>,
    },
    /// A command another node forwarded to this one as its leader (an audit batch or a
    /// mutation), answered with apply's response to it.
    Forwarded {
        cmd: Command,
        reply: oneshot::Sender<Result<StateResponse, KmsError>>,
    },
}

impl CommitJob {
    /// How many records the job adds to a batch.
    fn records(&self) -> usize {
        match self {
            CommitJob::Record { .. } | CommitJob::Mutation { .. } => 1,
            CommitJob::Forwarded { cmd, .. } => match &cmd.op {
                Op::AuditBatch { records } => records.len(),
                _ => 1,
            },
        }
    }
}

/// The service clock: the system clock plus an offset that only development mode can
/// move. It stamps what this node proposes (creation dates, deletion schedules, audit
/// event times, the tick); apply never reads a clock. Request signatures are checked
/// against the real clock.
#[derive(Default)]
pub struct Clock {
    offset_ms: std::sync::atomic::AtomicU64,
}

impl Clock {
    /// Milliseconds since the Unix epoch, as this service sees them.
    pub fn now_ms(&self) -> u64 {
        now_ms().saturating_add(self.offset_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Moves the clock forward (tests; development mode only).
    pub fn advance(&self, ms: u64) -> u64 {
        self.offset_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
        self.now_ms()
    }
}

/// Everything a node's services share.
pub struct NodeCore {
    /// This node's id.
    pub id: NodeId,
    /// The validated configuration.
    pub config: Config,
    /// The region (from the configuration; checked against the replicated one).
    pub region: Region,
    /// The Raft node.
    pub raft: Raft,
    /// The local replica of the state.
    pub state: Arc<StateMachine>,
    /// This node's HSM.
    pub hsm: Arc<dyn Hsm>,
    /// Channels to peers and the cluster signer.
    pub network: Network,
    /// The service clock.
    pub clock: Clock,
    pub(crate) authn: Authenticator,
    commit_tx: mpsc::Sender<CommitJob>,
    /// One membership change at a time (per node; openraft refuses concurrent ones too).
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
}

/// Writes a request handler for [`NodeCore::run`]: `handler!(|core, call, req| { ... })`
/// gives the body `core: Arc<NodeCore>`, `call: &mut Call` and the request message, and
/// hands the call back to `run` with the body's result.
macro_rules! handler {
    (|$core:ident, $call:ident, $req:ident| $body:block) => {
        |$core: std::sync::Arc<$crate::core::NodeCore>, mut call_value: $crate::core::Call, $req| async move {
            let result = async {
                let $call = &mut call_value;
                $body
            }
            .await;
            (call_value, result)
        }
    };
}
pub(crate) use handler;

/// What a handler fills in about its request, for the audit record.
pub(crate) struct Call {
    /// The authenticated caller.
    pub principal: Principal,
    /// The record, pre-filled with who, when, where.
    pub record: AuditRecord,
    /// Set when the handler put the record into a mutation command itself.
    pub audited: bool,
    /// The action the next key authorization checks, if not `kms:<event name>`
    /// (ReEncrypt checks `kms:ReEncryptFrom` and `kms:ReEncryptTo`), with the encryption
    /// context its conditions see.
    pub action: Option<(&'static str, Option<EncryptionContext>)>,
}

impl NodeCore {
    pub(crate) fn new(
        config: Config,
        region: Region,
        raft: Raft,
        state: Arc<StateMachine>,
        hsm: Arc<dyn Hsm>,
        network: Network,
    ) -> (Arc<NodeCore>, mpsc::Receiver<CommitJob>) {
        let (commit_tx, commit_rx) = mpsc::channel(4096);
        let authn = Authenticator::new(state.clone(), hsm.clone());
        let core = Arc::new(NodeCore {
            id: config.node_id,
            config,
            region,
            raft,
            state,
            hsm,
            network,
            clock: Clock::default(),
            authn,
            commit_tx,
            membership_lock: tokio::sync::Mutex::new(()),
        });
        (core, commit_rx)
    }

    /// The cluster signer.
    pub fn cluster_auth(&self) -> &ClusterAuth {
        self.network.auth()
    }

    fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.config.commit_timeout_ms)
    }

    /// A snapshot of this node's Raft metrics.
    pub fn metrics(&self) -> keyraft_raft::typ::RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader as this node knows it.
    pub fn leader(&self) -> (Option<NodeId>, Option<NodeAddr>) {
        let m = self.metrics();
        let leader = m.current_leader;
        let addr = leader.and_then(|l| m.membership_config.get_node(&l).cloned());
        (leader, addr)
    }

    /// The status for an error; `NotLeaderException` carries the leader hint.
    pub(crate) fn status(&self, err: &KmsError) -> Status {
        if err.code == ErrorCode::NotLeader {
            return keyraft_proto::not_leader_status_for(&self.leader_hint());
        }
        status_from_error(err)
    }

    /// The leader hint a NotLeader answer carries.
    pub fn leader_hint(&self) -> LeaderHint {
        let (id, addr) = self.leader();
        LeaderHint {
            id,
            endpoint: addr.map(|a| a.api_endpoint),
        }
    }

    /// A client for a peer's node service.
    pub(crate) fn peer(
        &self,
        raft_addr: &str,
    ) -> Result<NodeServiceClient<tonic::transport::Channel>, KmsError> {
        let channel = self.network.channel(raft_addr).map_err(|e| {
            KmsError::new(
                ErrorCode::Validation,
                format!("bad peer address {raft_addr}: {e}"),
            )
        })?;
        Ok(NodeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
    }

    /// Signs an internal request to `target`.
    pub(crate) fn signed<T: prost::Message>(
        &self,
        msg: T,
        method: &str,
        target: NodeId,
    ) -> Request<T> {
        let body = msg.encode_to_vec();
        let mut req = Request::new(msg);
        self.cluster_auth().sign(&mut req, method, target, &body);
        req.set_timeout(self.commit_timeout());
        req
    }

    /// Proposes a command on the leader — here, or forwarded — and returns apply's
    /// response. Every command carries a request id (a group's commands each carry theirs)
    /// and apply deduplicates them, so a proposal whose outcome is unknown (a forward
    /// that timed out, a leader that changed) is retried until the deadline without
    /// acting twice.
    pub async fn propose(&self, mut cmd: Command) -> Result<StateResponse, KmsError> {
        if cmd.request_id.is_empty() && !matches!(cmd.op, Op::Group { .. }) {
            cmd.request_id = keyraft_types::new_id();
        }
        let deadline = Instant::now() + self.commit_timeout();
        let mut backoff = Duration::from_millis(20);
        loop {
            let (leader, addr) = self.leader();
            let attempt = match (leader, addr) {
                (Some(l), _) if l == self.id => self.propose_local(cmd.clone()).await,
                (Some(l), Some(addr)) => self.forward(l, &addr.raft_addr, &cmd).await,
                _ => Err(KmsError::new(ErrorCode::NotLeader, "no leader known")),
            };
            match attempt {
                Ok(resp) => return Ok(resp),
                Err(e) if !e.code.is_retryable() => return Err(e),
                Err(e) => {
                    if Instant::now() + backoff > deadline {
                        tracing::warn!(error = %e, "proposal did not commit in time");
                        return Err(KmsError::new(
                            ErrorCode::DependencyTimeout,
                            "the cluster could not commit the request in time (no quorum?); retry with the same request id",
                        ));
                    }
                    // Wait for a leader change or a short backoff, whichever comes first.
                    let mut metrics = self.raft.metrics();
                    let _ = tokio::time::timeout(backoff, metrics.changed()).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }

    /// Proposes on this node, which believes it leads.
    pub(crate) async fn propose_local(&self, cmd: Command) -> Result<StateResponse, KmsError> {
        match tokio::time::timeout(self.commit_timeout(), self.raft.client_write(cmd.into())).await
        {
            Err(_) => Err(KmsError::new(
                ErrorCode::DependencyTimeout,
                "commit timed out",
            )),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))))
            | Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(KmsError::new(ErrorCode::NotLeader, "leadership changed"))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "client_write failed");
                Err(KmsError::internal())
            }
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        raft_addr: &str,
        cmd: &Command,
    ) -> Result<StateResponse, KmsError> {
        let data = bincode::serialize(cmd).map_err(|_| KmsError::internal())?;
        let mut client = self.peer(raft_addr)?;
        let req = self.signed(RaftMessage { data }, node_methods::PROPOSE, leader);
        match client.propose(req).await {
            Ok(resp) => {
                bincode::deserialize(&resp.into_inner().data).map_err(|_| KmsError::internal())
            }
            Err(status) => Err(
                keyraft_proto::error_from_status(&status).unwrap_or_else(|| {
                    KmsError::new(
                        ErrorCode::NotLeader,
                        format!("forward to node {leader}: {}", status.message()),
                    )
                }),
            ),
        }
    }

    /// Waits until this node's replica reflects every write that committed before the
    /// call (ReadIndex on the leader, then local apply up to it).
    pub async fn read_barrier(&self) -> Result<(), KmsError> {
        let deadline = Instant::now() + self.commit_timeout();
        loop {
            let (leader, addr) = self.leader();
            let attempt = match (leader, addr) {
                (Some(l), _) if l == self.id => self.read_index_local().await.map(|_| ()),
                (Some(l), Some(addr)) => match self.remote_read_index(l, &addr.raft_addr).await {
                    Ok(index) => self.wait_applied(index, deadline).await,
                    Err(e) => Err(e),
                },
                _ => Err(KmsError::new(ErrorCode::NotLeader, "no leader known")),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if !e.code.is_retryable() => return Err(e),
                Err(_) if Instant::now() >= deadline => {
                    return Err(KmsError::new(
                        ErrorCode::DependencyTimeout,
                        "could not confirm a consistent read in time (no quorum?)",
                    ))
                }
                Err(_) => {
                    let mut metrics = self.raft.metrics();
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
                }
            }
        }
    }

    /// On the leader: confirms leadership and returns the index reads must wait for
    /// (openraft also waits for the local state machine to reach it).
    pub(crate) async fn read_index_local(&self) -> Result<u64, KmsError> {
        match tokio::time::timeout(
            self.commit_timeout(),
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(read)) => Ok(read.index()),
            Ok(Err(_)) => Err(KmsError::new(ErrorCode::NotLeader, "not the leader")),
            Err(_) => Err(KmsError::new(
                ErrorCode::DependencyTimeout,
                "read index timed out",
            )),
        }
    }

    async fn remote_read_index(&self, leader: NodeId, raft_addr: &str) -> Result<u64, KmsError> {
        let mut client = self.peer(raft_addr)?;
        let req = self.signed(ReadIndexRequest {}, node_methods::READ_INDEX, leader);
        match client.read_index(req).await {
            Ok(resp) => Ok(resp.into_inner().index),
            Err(status) => Err(
                keyraft_proto::error_from_status(&status).unwrap_or_else(|| {
                    KmsError::new(ErrorCode::NotLeader, status.message().to_string())
                }),
            ),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), KmsError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| {
                KmsError::new(ErrorCode::DependencyTimeout, "this node is not catching up")
            })
    }

    /// Commits an audit record (batched with others) and returns apply's verdict.
    pub(crate) async fn audit(&self, record: AuditRecord) -> AuditVerdict {
        failpoints::check(failpoints::BEFORE_AUDIT_APPEND, &record.event_name)?;
        self.batch(|reply| CommitJob::Record { record, reply })
            .await
    }

    /// Commits a caller's mutation in the next entry of the group commit (see
    /// [`NodeCore::run_group_commit`]) and returns apply's response. The command must
    /// carry its request id: a group may be proposed again after an unknown outcome.
    pub(crate) async fn commit_mutation(&self, cmd: Command) -> Result<StateResponse, KmsError> {
        self.batch(|reply| CommitJob::Mutation { cmd, reply }).await
    }

    /// On the leader: commits a command another node forwarded (an audit batch or a
    /// mutation, with its request id) in the same entry as this node's next batch.
    pub(crate) async fn commit_forwarded(&self, cmd: Command) -> Result<StateResponse, KmsError> {
        self.batch(|reply| CommitJob::Forwarded { cmd, reply })
            .await
    }

    /// Hands a job to the group commit and waits for its answer.
    async fn batch<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, KmsError>>) -> CommitJob,
    ) -> Result<T, KmsError> {
        let (tx, rx) = oneshot::channel();
        self.commit_tx
            .send(job(tx))
            .await
            .map_err(|_| KmsError::internal())?;
        rx.await.map_err(|_| KmsError::internal())?
    }

    /// The group commit loop: drains waiting jobs — audit records, callers' mutations,
    /// commands other nodes forwarded — into one entry while up to `max_in_flight`
    /// earlier entries are still committing. The fuller the pipe, the bigger the
    /// batches: batching comes from load, not from a timer.
    ///
    /// Other nodes forward their batches to the leader, where they join the leader's own
    /// in one [`Op::Group`] entry. Without that, every node taking requests had its own
    /// entries in flight, each a third of the size, and every entry has its own cost
    /// (replication, a sync on every node, an apply). Mutations took an entry each until
    /// they joined the group too: with 64 callers creating keys, the leader's log
    /// synced about four of them at a time, each with its own stored audit chunk and
    /// its own completion on every node.
    pub(crate) async fn run_group_commit(self: Arc<Self>, mut rx: mpsc::Receiver<CommitJob>) {
        let slots = Arc::new(Semaphore::new(self.config.audit.max_in_flight));
        while let Some(first) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut size = first.records();
            let mut jobs = vec![first];
            while size < self.config.audit.max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        size += job.records();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let core = self.clone();
            tokio::spawn(async move {
                core.commit_jobs(jobs).await;
                drop(permit);
            });
        }
    }

    /// Commits one batch of jobs and answers each.
    async fn commit_jobs(&self, jobs: Vec<CommitJob>) {
        let mut records = Vec::new();
        let mut record_replies = Vec::new();
        let mut own = Vec::new();
        let mut own_replies = Vec::new();
        let mut forwarded = Vec::new();
        let mut forwarded_replies = Vec::new();
        for job in jobs {
            match job {
                CommitJob::Record { record, reply } => {
                    records.push(record);
                    record_replies.push(reply);
                }
                CommitJob::Mutation { cmd, reply } => {
                    own.push(cmd);
                    own_replies.push(reply);
                }
                CommitJob::Forwarded { cmd, reply } => {
                    forwarded.push(cmd);
                    forwarded_replies.push(reply);
                }
            }
        }
        // The records go first, as one audit batch. Its own request id makes the batch
        // safe to propose again after an unknown outcome, alone or inside a group.
        let with_records = !records.is_empty();
        if with_records {
            own.insert(
                0,
                Command {
                    request_id: keyraft_types::new_id(),
                    time_ms: self.clock.now_ms(),
                    op: Op::AuditBatch { records },
                },
            );
        }
        let own_responses = if forwarded.is_empty() {
            self.propose_all(own).await
        } else {
            let n_own = own.len();
            let mut commands = own.clone();
            commands.extend(forwarded);
            match self.propose_local(self.group(commands)).await {
                Ok(Ok(Reply::Group(mut responses)))
                    if responses.len() == n_own + forwarded_replies.len() =>
                {
                    let theirs = responses.split_off(n_own);
                    for (reply, response) in forwarded_replies.into_iter().zip(theirs) {
                        let _ = reply.send(Ok(response));
                    }
                    responses.into_iter().map(Ok).collect()
                }
                Ok(other) => {
                    tracing::error!(?other, "unexpected response to a group of commands");
                    for reply in forwarded_replies {
                        let _ = reply.send(Err(KmsError::internal()));
                    }
                    vec![Ok(Err(KmsError::internal())); n_own]
                }
                Err(e) => {
                    // The forwarding nodes retry theirs; this node's own commands go the
                    // usual way, to whichever node leads now.
                    for reply in forwarded_replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                    self.propose_all(own).await
                }
            }
        };
        let mut own_responses = own_responses.into_iter();
        if with_records {
            let n = record_replies.len();
            let verdicts: Vec<AuditVerdict> = match own_responses.next() {
                Some(Ok(Ok(Reply::Audit(v)))) if v.len() == n => v.into_iter().map(Ok).collect(),
                Some(Err(e)) => (0..n).map(|_| Err(e.clone())).collect(),
                other => {
                    tracing::error!(?other, "unexpected audit batch response");
                    (0..n).map(|_| Err(KmsError::internal())).collect()
                }
            };
            for (reply, verdict) in record_replies.into_iter().zip(verdicts) {
                let _ = reply.send(verdict);
            }
        }
        for (reply, response) in own_replies.into_iter().zip(own_responses) {
            let _ = reply.send(response);
        }
    }

    /// Proposes this node's own commands, to whichever node leads: one alone, several
    /// as a group. Answers each, in order.
    async fn propose_all(
        &self,
        mut commands: Vec<Command>,
    ) -> Vec<Result<StateResponse, KmsError>> {
        let n = commands.len();
        if n <= 1 {
            return match commands.pop() {
                Some(cmd) => vec![self.propose(cmd).await],
                None => Vec::new(),
            };
        }
        match self.propose(self.group(commands)).await {
            Ok(Ok(Reply::Group(responses))) if responses.len() == n => {
                responses.into_iter().map(Ok).collect()
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected response to a group of commands");
                vec![Ok(Err(KmsError::internal())); n]
            }
            Err(e) => vec![Err(e); n],
        }
    }

    /// One entry holding `commands`. The group has no request id of its own: each
    /// command carries one, so proposing the group again applies none of them twice.
    fn group(&self, commands: Vec<Command>) -> Command {
        Command {
            request_id: String::new(),
            time_ms: self.clock.now_ms(),
            op: Op::Group { commands },
        }
    }

    /// Whether this node serves client calls: only a voter that holds the domain key
    /// does. A node being added (a learner), or started and not added yet, has neither
    /// the whole state nor the key: it would refuse a caller's credentials it has not
    /// received yet (`UnrecognizedClientException`, which a client does not retry) or
    /// hold the call until it caught up. It answers `KeyUnavailableException` instead,
    /// which clients retry on another node; so does a removed node, once its own log
    /// holds the membership without it (no one tells it otherwise).
    fn serving(&self) -> Result<(), KmsError> {
        let voter = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.id);
        if voter && self.hsm.has_domain_key() {
            return Ok(());
        }
        Err(KmsError::new(
            ErrorCode::KeyUnavailable,
            format!(
                "node {} does not serve calls: it is not a voter of the cluster holding the \
                 domain key (it is joining, was not added, or was removed)",
                self.id
            ),
        ))
    }

    /// Runs one client request through authentication, the handler and the audit log.
    ///
    /// `handler` gets the authenticated [`Call`] and the message; it fills in the audit
    /// record's parameters (and, for cryptography, the key check). Unless the handler
    /// committed the record inside a mutation, the record is committed here and only
    /// apply's verdict is released.
    ///
    /// The request runs in its own task, so it completes — and leaves its audit event —
    /// even if the caller disconnects or its deadline passes half-way.
    pub(crate) async fn run<Req, Resp, F, Fut>(
        self: &Arc<Self>,
        request: Request<Req>,
        event_name: &'static str,
        method: &'static str,
        read_only: bool,
        handler: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(Arc<NodeCore>, Call, Req) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (Call, Result<Resp, KmsError>)> + Send + 'static,
    {
        if let Err(e) = self.serving() {
            return Err(self.status(&e));
        }
        let core = self.clone();
        let task = tokio::spawn(async move {
            core.run_to_completion(request, event_name, method, read_only, handler)
                .await
        });
        match task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "request task failed");
                Err(status_from_error(&KmsError::internal()))
            }
        }
    }

    async fn run_to_completion<Req, Resp, F, Fut>(
        self: Arc<Self>,
        request: Request<Req>,
        event_name: &str,
        method: &str,
        read_only: bool,
        handler: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        F: FnOnce(Arc<NodeCore>, Call, Req) -> Fut,
        Fut: std::future::Future<Output = (Call, Result<Resp, KmsError>)>,
    {
        let mut record = AuditRecord {
            event_id: keyraft_types::new_id(),
            event_time_ms: self.clock.now_ms(),
            event_name: event_name.to_string(),
            request_id: keyraft_types::new_id(),
            event_type: EventType::AwsApiCall,
            read_only,
            user_identity: UserIdentity::default(),
            source_ip: request
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            user_agent: request
                .metadata()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .chars()
                .take(256)
                .collect(),
            node_id: self.id,
            request_parameters: RequestParameters::default(),
            resources: Vec::new(),
            error: None,
            key_checks: Vec::new(),
            authz_checks: Vec::new(),
        };
        let now = self.clock.now_ms();
        let mut authenticated = self.authn.authenticate(&request, method, &mut record, now);
        if matches!(&authenticated, Err(e) if e.code == ErrorCode::UnrecognizedClient) {
            // A credential (or principal) made moments ago may not be applied on this
            // replica yet: refuse only on a view at least as new as the request.
            if self.read_barrier().await.is_ok() {
                authenticated = self.authn.authenticate(&request, method, &mut record, now);
            }
        }
        let principal = match authenticated {
            Ok(p) => p,
            Err(err) => {
                record.error = Some((err.code, err.message.clone()));
                // A refusal is audited too; if even that cannot commit, the caller still
                // only learns that authentication failed.
                if let Err(e) = self.audit(record).await {
                    tracing::warn!(error = %e, "could not audit an authentication failure");
                }
                return Err(self.status(&err));
            }
        };
        let call = Call {
            principal,
            record,
            audited: false,
            action: None,
        };
        let (mut call, result) = handler(self.clone(), call, request.into_inner()).await;
        if call.audited {
            return result.map(Response::new).map_err(|e| self.status(&e));
        }
        if let Err(e) = &result {
            call.record.error = Some((e.code, e.message.clone()));
            call.record.key_checks.clear();
            call.record.authz_checks.clear();
        }
        if result.is_ok()
            && !call.record.key_checks.is_empty()
            && self.config.audit.crypto_mode == crate::config::AuditMode::Async
        {
            // Explicitly weaker mode (see AuditConfig::crypto_mode): the event commits
            // behind the answer.
            let core = self.clone();
            tokio::spawn(async move {
                if let Err(e) = core.audit(call.record).await {
                    tracing::warn!(error = %e, "an asynchronous audit event did not commit");
                }
            });
            return result.map(Response::new).map_err(|e| self.status(&e));
        }
        let verdict = self.audit(call.record).await;
        if verdict.is_ok() {
            failpoints::check(failpoints::AFTER_COMMIT_BEFORE_RESPONSE, event_name)
                .map_err(|e| self.status(&e))?;
        }
        match verdict {
            Ok(None) => result.map(Response::new).map_err(|e| self.status(&e)),
            Ok(Some(verdict)) => Err(self.status(&verdict)),
            Err(e) => Err(self.status(&e)),
        }
    }
}
