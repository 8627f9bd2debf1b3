//! `AdminService`: cluster status, membership changes (one at a time, node ids never
//! reused), leadership transfer, the audit trail and fail points (see
//! [`crate::failpoints`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::{Request, Response, Status};

use keyraft_proto::v1::admin_service_server::AdminService;
use keyraft_proto::v1::internal::{NodeStatusRequest, NodeStatusResponse};
use keyraft_proto::v1::*;
use keyraft_raft::NodeAddr;
use keyraft_state::{Command, NodeRecord, Op, QuotaUsage, Reply};
use keyraft_types::{
    AccountId, AliasName, ErrorCode, KeyId, KeyManager, KeyMetadata, KeySpec, KeyState, KeyUsage,
    KmsError, NodeId, Origin,
};

use crate::audit_json::{event_json, AuditFilter};
use crate::core::{handler, node_methods, Call, NodeCore};
use crate::join::service_record;
use crate::kms::internal;

pub(crate) struct AdminApi {
    core: Arc<NodeCore>,
}

impl AdminApi {
    pub(crate) fn new(core: Arc<NodeCore>) -> AdminApi {
        AdminApi { core }
    }
}

macro_rules! method {
    ($name:literal) => {
        concat!("/keyraft.v1.AdminService/", $name)
    };
}

/// How long a new node may take to catch up and receive the domain key.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a membership change (the joint configuration, then the new one) may take to
/// commit before the caller is told its outcome is unknown. openraft goes on with a
/// change whose caller stopped waiting, so the change may still take effect.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Learner => "Learner",
        ServerState::Candidate => "Candidate",
        ServerState::Shutdown => "Shutdown",
    }
}

fn membership_error<E: std::fmt::Display>(
    e: RaftError<keyraft_raft::TypeConfig, ClientWriteError<keyraft_raft::TypeConfig>>,
    what: E,
) -> KmsError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_))
        | RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => KmsError::new(
            ErrorCode::NotLeader,
            "leadership changed during the membership change",
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            KmsError::new(ErrorCode::Conflict, format!("{what}: {c}"))
        }
        other => {
            tracing::error!(error = %other, "membership change failed");
            KmsError::internal()
        }
    }
}

/// The account a quota call is about: the caller's unless another is named, which only
/// the region's administrator may do.
fn quota_account(core: &NodeCore, call: &Call, given: &str) -> Result<AccountId, KmsError> {
    if given.is_empty() || given == call.principal.account.as_str() {
        return Ok(call.principal.account.clone());
    }
    core.require_region_admin(call)?;
    AccountId::parse(given)
}

fn quota_response(account: &AccountId, q: &QuotaUsage) -> QuotaResponse {
    QuotaResponse {
        account: account.to_string(),
        keys_limit: q.keys_limit,
        keys_used: q.keys_used,
        aliases_limit: q.aliases_limit,
        aliases_used: q.aliases_used,
        grants_per_key_limit: q.grants_per_key_limit,
    }
}

fn failpoint_list(points: Vec<(String, String)>) -> Vec<Failpoint> {
    points
        .into_iter()
        .map(|(name, actions)| Failpoint { name, actions })
        .collect()
}

/// The purpose an audit checkpoint is sealed under.
const CHECKPOINT_PURPOSE: &[u8] = b"keyraft-audit-checkpoint";

impl NodeCore {
    /// Refuses anyone but the region's administrator (the credential made at bootstrap).
    /// Principals and policies arrive with their own issue; until then this is the one
    /// administrative identity.
    pub(crate) fn require_region_admin(&self, call: &Call) -> Result<(), KmsError> {
        let admin = self
            .state
            .cluster_config()
            .map_err(internal)?
            .map(|c| format!("arn:keyraft:iam::{}:user/admin", c.account));
        if admin.as_deref() == Some(call.principal.arn.as_str()) {
            Ok(())
        } else {
            Err(KmsError::new(
                ErrorCode::AccessDenied,
                format!(
                    "User: {} is not the region's administrator",
                    call.principal.arn
                ),
            ))
        }
    }

    /// This node's own status line.
    pub(crate) fn local_status(&self) -> NodeStatusResponse {
        let m = self.metrics();
        let learner = m
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == self.id);
        NodeStatusResponse {
            id: self.id,
            role: if learner {
                "Learner"
            } else {
                role_name(m.state)
            }
            .to_string(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader.unwrap_or(0),
            has_domain_key: self.hsm.has_domain_key(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            service_time_ms: self.clock.now_ms(),
        }
    }

    /// A service time that a majority of the voters' clocks has reached: the leader's
    /// tick carries it, so one node whose clock runs ahead (a bad NTP step, a VM resumed
    /// with a wrong clock) cannot destroy keys pending deletion, expire imported
    /// material or rotate keys early. `None` when too few voters answered.
    pub(crate) async fn quorum_time_ms(&self) -> Option<u64> {
        let m = self.metrics();
        let voters: Vec<(NodeId, NodeAddr)> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter_map(|id| {
                m.membership_config
                    .nodes()
                    .find(|(n, _)| **n == id)
                    .map(|(_, a)| (id, a.clone()))
            })
            .collect();
        let asks = voters.iter().map(|(id, addr)| async move {
            if *id == self.id {
                return Some(self.clock.now_ms());
            }
            let mut client = self.peer(&addr.raft_addr).ok()?;
            let mut req = self.signed(NodeStatusRequest {}, node_methods::NODE_STATUS, *id);
            req.set_timeout(Duration::from_millis(800));
            let status = client.node_status(req).await.ok()?.into_inner();
            // A peer too old to report its clock does not vote for a time.
            (status.service_time_ms > 0).then_some(status.service_time_ms)
        });
        let times: Vec<u64> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        quorum_time(&times, voters.len())
    }

    /// The cluster as this node sees it, each member asked for its own numbers.
    pub(crate) async fn cluster_status(&self) -> ClusterStatusResponse {
        let m = self.metrics();
        let members: Vec<(NodeId, NodeAddr)> = m
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let learners: BTreeSet<NodeId> = m.membership_config.membership().learner_ids().collect();
        let learners = &learners;
        let asks = members.into_iter().map(|(id, addr)| async move {
            let status = if id == self.id {
                Some(self.local_status())
            } else {
                match self.peer(&addr.raft_addr) {
                    Ok(mut client) => {
                        let mut req =
                            self.signed(NodeStatusRequest {}, node_methods::NODE_STATUS, id);
                        req.set_timeout(Duration::from_millis(800));
                        client.node_status(req).await.ok().map(|r| r.into_inner())
                    }
                    Err(_) => None,
                }
            };
            let role = match &status {
                Some(_) if learners.contains(&id) => "Learner".to_string(),
                Some(s) => s.role.clone(),
                None => "Unreachable".to_string(),
            };
            MemberStatus {
                id,
                endpoint: addr.api_endpoint,
                raft_addr: addr.raft_addr,
                role,
                last_log_index: status.as_ref().map_or(0, |s| s.last_log_index),
                last_applied: status.as_ref().map_or(0, |s| s.last_applied),
                reachable: status.is_some(),
                term: status.as_ref().map_or(0, |s| s.term),
                has_domain_key: status.as_ref().is_some_and(|s| s.has_domain_key),
                snapshot_index: status.as_ref().map_or(0, |s| s.snapshot_index),
                purged_index: status.as_ref().map_or(0, |s| s.purged_index),
            }
        });
        let members = futures::future::join_all(asks).await;
        ClusterStatusResponse {
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            members,
            region: self.region.to_string(),
        }
    }

    fn require_leader(&self) -> Result<(), KmsError> {
        if self.raft.is_leader() {
            Ok(())
        } else {
            Err(KmsError::new(
                ErrorCode::NotLeader,
                "membership changes run on the leader",
            ))
        }
    }

    async fn add_node(&self, req: AddNodeRequest) -> Result<(), KmsError> {
        let id = req.node_id;
        if id == 0 {
            return Err(KmsError::validation("node_id must be at least 1"));
        }
        if !req.endpoint.starts_with("http://") && !req.endpoint.starts_with("https://") {
            return Err(KmsError::validation(
                "endpoint must be an http:// or https:// URL",
            ));
        }
        if req.raft_addr.is_empty() || req.raft_addr.contains('/') {
            return Err(KmsError::validation("raft_addr must be host:port"));
        }
        let _one_at_a_time = self.one_membership_change()?;
        self.require_leader()?;
        let m = self.metrics();
        // A voter is done; a learner is a join that did not finish (the node restarted
        // before it received the domain key, say): resume it.
        if m.membership_config.voter_ids().any(|v| v == id) {
            return Err(KmsError::new(
                ErrorCode::AlreadyExists,
                format!("node {id} is already a member"),
            ));
        }
        if self
            .state
            .node(id)
            .map_err(internal)?
            .is_some_and(|n| n.retired)
        {
            return Err(KmsError::new(
                ErrorCode::AlreadyExists,
                format!("node id {id} was used before and retired; node ids are never reused"),
            ));
        }
        let record = NodeRecord {
            node_id: id,
            api_endpoint: req.endpoint.clone(),
            raft_addr: req.raft_addr.clone(),
            retired: false,
        };
        self.authorize_join(&record, service_record(self, "AuthorizeJoin", Some(id)))
            .await?;
        let addr = NodeAddr {
            api_endpoint: req.endpoint,
            raft_addr: req.raft_addr,
        };
        match tokio::time::timeout(JOIN_TIMEOUT, self.raft.add_learner(id, addr, true)).await {
            Err(_) => {
                return Err(KmsError::new(
                    ErrorCode::DependencyTimeout,
                    format!("node {id} did not catch up in time"),
                ))
            }
            Ok(Err(e)) => return Err(membership_error(e, "add learner")),
            Ok(Ok(_)) => {}
        }
        // The learner now replicates the authorisation and fetches the domain key.
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            match self.join_info(id, &record.raft_addr).await {
                Ok(info) if info.has_domain_key => break,
                Err(e) if e.code == ErrorCode::Validation => return Err(e),
                _ if Instant::now() > deadline => {
                    return Err(KmsError::new(
                        ErrorCode::DependencyTimeout,
                        format!(
                            "node {id} did not receive the domain key in time; it stays a learner"
                        ),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let voters = BTreeSet::from([id]);
        self.change_membership(ChangeMembers::AddVoterIds(voters), "promote to voter")
            .await?;
        tracing::info!(node = id, "node joined as a voter");
        Ok(())
    }

    /// Holds off other membership changes on this node while one runs. A second change
    /// is refused at once rather than queued: an add waits for the new node to catch up,
    /// which can take a minute, and a caller behind it would only see a timeout.
    fn one_membership_change(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, KmsError> {
        self.membership_lock.try_lock().map_err(|_| {
            KmsError::new(
                ErrorCode::Conflict,
                "another membership change is in progress; retry when it has finished",
            )
        })
    }

    /// Changes the membership and waits, for [`CHANGE_TIMEOUT`] at most, until the new
    /// configuration has committed.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, NodeAddr>,
        what: &str,
    ) -> Result<(), KmsError> {
        match tokio::time::timeout(CHANGE_TIMEOUT, self.raft.change_membership(change, false)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(membership_error(e, what)),
            Err(_) => Err(KmsError::new(
                ErrorCode::DependencyTimeout,
                format!(
                    "{what}: the new membership did not commit within {} s; it may still \
                     take effect: check the cluster status, then retry",
                    CHANGE_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn remove_node(&self, id: NodeId) -> Result<(), KmsError> {
        let _one_at_a_time = self.one_membership_change()?;
        self.require_leader()?;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            // A removal whose membership change committed but whose caller never heard
            // (a timeout, a leader change) has not retired the id yet: finish it.
            let known = self.state.node(id).map_err(internal)?;
            if known.is_none_or(|n| n.retired) {
                return Err(KmsError::new(
                    ErrorCode::NotFound,
                    format!("node {id} is not a member"),
                ));
            }
        } else {
            let is_voter = membership.voter_ids().any(|v| v == id);
            if is_voter && membership.voter_ids().count() <= 1 {
                return Err(KmsError::validation("cannot remove the last voter"));
            }
            let change = if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            self.change_membership(change, "remove node").await?;
        }
        crate::failpoints::check(crate::failpoints::BEFORE_RETIRE_NODE, "RemoveNode")?;
        let cmd = Command {
            request_id: keyraft_types::new_id(),
            time_ms: self.clock.now_ms(),
            op: Op::RetireNode {
                node_id: id,
                audit: Box::new(service_record(self, "RetireNode", Some(id))),
            },
        };
        self.propose(cmd).await??;
        tracing::info!(node = id, "node removed; its id is retired");
        Ok(())
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.core
            .run(
                request,
                "ClusterStatus",
                method!("ClusterStatus"),
                true,
                handler!(|core, _call, _req| { Ok(core.cluster_status().await) }),
            )
            .await
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        self.core
            .run(
                request,
                "AddNode",
                method!("AddNode"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    call.record.request_parameters.node_id = Some(req.node_id);
                    core.add_node(req).await?;
                    Ok(AddNodeResponse {
                        status: Some(core.cluster_status().await),
                    })
                }),
            )
            .await
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.core
            .run(
                request,
                "RemoveNode",
                method!("RemoveNode"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    call.record.request_parameters.node_id = Some(req.node_id);
                    core.remove_node(req.node_id).await?;
                    Ok(RemoveNodeResponse {
                        status: Some(core.cluster_status().await),
                    })
                }),
            )
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        self.core
            .run(
                request,
                "TransferLeader",
                method!("TransferLeader"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    let to = req.node_id;
                    call.record.request_parameters.node_id = Some(to);
                    core.require_leader()?;
                    let m = core.metrics();
                    if !m
                        .membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == to)
                    {
                        return Err(KmsError::new(
                            ErrorCode::NotFound,
                            format!("node {to} is not a voter"),
                        ));
                    }
                    if to != core.id {
                        core.raft
                            .trigger()
                            .transfer_leader(to)
                            .await
                            .map_err(|_| KmsError::internal())?;
                        core.raft
                            .wait(Some(Duration::from_secs(10)))
                            .current_leader(to, "transfer leader")
                            .await
                            .map_err(|_| {
                                KmsError::new(
                                    ErrorCode::DependencyTimeout,
                                    format!("node {to} did not take over in time"),
                                )
                            })?;
                    }
                    Ok(TransferLeaderResponse { leader: to })
                }),
            )
            .await
    }

    async fn audit_tail(
        &self,
        request: Request<AuditTailRequest>,
    ) -> Result<Response<AuditTailResponse>, Status> {
        self.core
            .run(
                request,
                "AuditTail",
                method!("AuditTail"),
                true,
                handler!(|core, call, req| {
                    // The trail spans every account of the region.
                    core.require_region_admin(call)?;
                    let limit = match req.limit {
                        0 => 20,
                        n @ 1..=1000 => n as usize,
                        n => {
                            return Err(KmsError::validation(format!(
                                "limit must be 1 to 1000, not {n}"
                            )))
                        }
                    };
                    core.read_barrier().await?;
                    let events = core.state.audit_tail(limit).map_err(internal)?;
                    let (head_sequence, head_hash) = core.state.audit_head().map_err(internal)?;
                    let chain_ok = events.windows(2).all(|w| w[1].verify(&w[0].hash))
                        && events.first().is_none_or(|e| e.hash == e.compute_hash());
                    let region = core.region.to_string();
                    Ok(AuditTailResponse {
                        events_json: events
                            .iter()
                            .map(|e| event_json(e, &region).to_string())
                            .collect(),
                        chain_ok,
                        head_sequence,
                        head_hash,
                    })
                }),
            )
            .await
    }

    async fn advance_clock(
        &self,
        request: Request<AdvanceClockRequest>,
    ) -> Result<Response<AdvanceClockResponse>, Status> {
        self.core
            .run(
                request,
                "AdvanceClock",
                method!("AdvanceClock"),
                false,
                handler!(|core, _call, req| {
                    if !core.config.dev_mode {
                        return Err(KmsError::new(
                            ErrorCode::UnsupportedOperation,
                            "AdvanceClock is only available in development mode",
                        ));
                    }
                    Ok(AdvanceClockResponse {
                        now: core.clock.advance(req.advance_ms),
                    })
                }),
            )
            .await
    }

    async fn set_failpoint(
        &self,
        request: Request<SetFailpointRequest>,
    ) -> Result<Response<SetFailpointResponse>, Status> {
        self.core
            .run(
                request,
                "SetFailpoint",
                method!("SetFailpoint"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    // Logged where it is set; audited with its caller like every call.
                    let configured = crate::failpoints::set(&req.name, &req.actions)?;
                    Ok(SetFailpointResponse {
                        configured: failpoint_list(configured),
                    })
                }),
            )
            .await
    }

    async fn list_failpoints(
        &self,
        request: Request<ListFailpointsRequest>,
    ) -> Result<Response<ListFailpointsResponse>, Status> {
        self.core
            .run(
                request,
                "ListFailpoints",
                method!("ListFailpoints"),
                true,
                handler!(|core, call, _req| {
                    core.require_region_admin(call)?;
                    let (configured, known) = crate::failpoints::list()?;
                    Ok(ListFailpointsResponse {
                        configured: failpoint_list(configured),
                        known: known.into_iter().map(str::to_string).collect(),
                        node_id: core.id,
                    })
                }),
            )
            .await
    }

    async fn get_quota(
        &self,
        request: Request<GetQuotaRequest>,
    ) -> Result<Response<QuotaResponse>, Status> {
        self.core
            .run(
                request,
                "GetQuota",
                method!("GetQuota"),
                true,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    let account = quota_account(&core, call, &req.account)?;
                    core.read_barrier().await?;
                    let q = core.state.quota(&account).map_err(internal)?;
                    Ok(quota_response(&account, &q))
                }),
            )
            .await
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<QuotaResponse>, Status> {
        self.core
            .run(
                request,
                "SetQuota",
                method!("SetQuota"),
                false,
                handler!(|core, call, req| {
                    let account = quota_account(&core, call, &req.account)?;
                    core.require_region_admin(call)?;
                    if req.keys == 0 && req.aliases == 0 && req.grants_per_key == 0 {
                        return Err(KmsError::validation(
                            "give keys, aliases and/or grants per key",
                        ));
                    }
                    let (keys, aliases, grants_per_key) = (
                        (req.keys != 0).then_some(req.keys),
                        (req.aliases != 0).then_some(req.aliases),
                        (req.grants_per_key != 0).then_some(req.grants_per_key),
                    );
                    let reply = core
                        .mutate(call, req.request_id, |audit| Op::SetQuota {
                            account: account.clone(),
                            keys,
                            aliases,
                            grants_per_key,
                            audit,
                        })
                        .await?;
                    match reply {
                        Reply::Quota(q) => Ok(quota_response(&account, &q)),
                        other => {
                            tracing::error!(?other, "unexpected reply to SetQuota");
                            Err(KmsError::internal())
                        }
                    }
                }),
            )
            .await
    }

    async fn create_service_key(
        &self,
        request: Request<CreateServiceKeyRequest>,
    ) -> Result<Response<CreateServiceKeyResponse>, Status> {
        self.core
            .run(
                request,
                "CreateServiceKey",
                method!("CreateServiceKey"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    let account = quota_account(&core, call, &req.account)?;
                    let ok = !req.service.is_empty()
                        && req.service.len() <= 64
                        && req
                            .service
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                    if !ok {
                        return Err(KmsError::validation(
                            "service must be 1 to 64 characters of [a-z0-9-]",
                        ));
                    }
                    let alias = AliasName::parse(&format!("alias/keyraft/{}", req.service))?;
                    call.record.request_parameters.alias_name = Some(alias.to_string());
                    let key_id = KeyId::generate();
                    let material = core.hsm.generate_key_material(&key_id, 1)?;
                    let now = core.clock.now_ms();
                    let key = KeyMetadata {
                        arn: core.region.key_arn(&account, &key_id),
                        key_id,
                        account,
                        description: format!(
                            "Default key that protects my {} data when no other key is defined",
                            req.service
                        ),
                        key_state: KeyState::Enabled,
                        key_spec: KeySpec::SymmetricDefault,
                        key_usage: KeyUsage::EncryptDecrypt,
                        origin: Origin::Kms,
                        key_manager: KeyManager::Service,
                        creation_date_ms: now,
                        epoch: 1,
                        current_version: 1,
                        deletion_date_ms: None,
                        rotation_period_days: Some(365),
                        next_rotation_ms: None,
                        valid_to_ms: None,
                    };
                    let alias_for_op = alias.clone();
                    let key = crate::kms::expect_key(
                        core.mutate(call, req.request_id, |audit| Op::CreateServiceKey {
                            key: Box::new(key),
                            material: material.0,
                            alias: alias_for_op,
                            audit,
                        })
                        .await,
                    )?;
                    Ok(CreateServiceKeyResponse {
                        key_metadata: Some((&key).into()),
                        alias_name: alias.to_string(),
                    })
                }),
            )
            .await
    }

    async fn audit_query(
        &self,
        request: Request<AuditQueryRequest>,
    ) -> Result<Response<AuditQueryResponse>, Status> {
        self.core
            .run(
                request,
                "AuditQuery",
                method!("AuditQuery"),
                true,
                handler!(|core, call, req| {
                    // The region's administrator reads the whole trail; anyone else
                    // needs cloudtrail:LookupEvents and sees its own account only.
                    let account = if core.require_region_admin(call).is_ok() {
                        None
                    } else {
                        core.authorize_action(call, "cloudtrail:LookupEvents", "*")
                            .await?;
                        Some(call.principal.account.to_string())
                    };
                    let limit = match req.limit {
                        0 => 100,
                        n @ 1..=1000 => n as usize,
                        n => {
                            return Err(KmsError::validation(format!(
                                "limit must be 1 to 1000, not {n}"
                            )))
                        }
                    };
                    let outcome = match req.outcome.as_str() {
                        "" => None,
                        "success" => Some(true),
                        "failure" => Some(false),
                        other => {
                            return Err(KmsError::validation(format!(
                                "outcome must be success or failure, not '{}'",
                                other.chars().take(32).collect::<String>()
                            )))
                        }
                    };
                    let filter = AuditFilter {
                        start_ms: req.start_time,
                        end_ms: req.end_time,
                        key_id: req.key_id,
                        principal_arn: req.principal_arn,
                        event_name: req.event_name,
                        outcome,
                        event_id: req.event_id,
                        account,
                    };
                    core.read_barrier().await?;
                    let (head, _) = core.state.audit_head().map_err(internal)?;
                    let region = core.region.to_string();
                    // Scan in chunks until the page is full or the head is reached;
                    // each answer scans a bounded number of events so a sparse filter
                    // cannot hold a node for long (the next page continues).
                    const SCAN_BUDGET: u64 = 20_000;
                    let mut next = req.from_sequence.max(1);
                    let stop = head.min(next.saturating_add(SCAN_BUDGET - 1));
                    let mut events = Vec::new();
                    'scan: while next <= stop {
                        let chunk = core.state.audit_events(next, 500).map_err(internal)?;
                        if chunk.is_empty() {
                            next = stop + 1;
                            break;
                        }
                        for e in &chunk {
                            if e.sequence > stop {
                                next = stop + 1;
                                break 'scan;
                            }
                            next = e.sequence + 1;
                            if filter.matches(e) {
                                events.push(event_json(e, &region).to_string());
                                if events.len() == limit {
                                    break 'scan;
                                }
                            }
                        }
                    }
                    Ok(AuditQueryResponse {
                        events_json: events,
                        next_sequence: if next > head { 0 } else { next },
                        head_sequence: head,
                    })
                }),
            )
            .await
    }

    async fn audit_verify(
        &self,
        request: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyResponse>, Status> {
        self.core
            .run(
                request,
                "AuditVerify",
                method!("AuditVerify"),
                true,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    // The walk reads the whole trail: keep it off the async workers.
                    let state = core.state.clone();
                    let check = tokio::task::spawn_blocking(move || state.verify_audit_chain())
                        .await
                        .map_err(|_| KmsError::internal())?
                        .map_err(internal)?;
                    let mut verdict = check.verdict;
                    if let Some(cp) = &check.checkpoint {
                        // Only this region's HSMs can have sealed the checkpoint.
                        let expected =
                            keyraft_state::AuditCheckpoint::signed_bytes(cp.through, &cp.hash);
                        let genuine = core
                            .hsm
                            .unwrap_secret(&cp.signature, CHECKPOINT_PURPOSE)
                            .is_ok_and(|b| b.as_slice() == expected.as_slice());
                        if !genuine {
                            verdict = Err(cp.through);
                        }
                    }
                    // What the walk reached, not the head now: apply goes on meanwhile.
                    let (head_sequence, head_hash) = match &verdict {
                        Ok(head) => head.clone(),
                        Err(_) => core.state.audit_head().map_err(internal)?,
                    };
                    let hash_at_sequence = if req.at_sequence == 0 {
                        String::new()
                    } else {
                        core.state
                            .audit_hash_at(req.at_sequence)
                            .map_err(internal)?
                            .unwrap_or_default()
                    };
                    Ok(AuditVerifyResponse {
                        ok: verdict.is_ok(),
                        first_bad_sequence: verdict.err().unwrap_or(0),
                        head_sequence,
                        head_hash,
                        hash_at_sequence,
                        node_id: core.id,
                        checkpoint_through: check.checkpoint.map_or(0, |c| c.through),
                    })
                }),
            )
            .await
    }

    async fn audit_mark_exported(
        &self,
        request: Request<AuditMarkExportedRequest>,
    ) -> Result<Response<AuditMarkExportedResponse>, Status> {
        self.core
            .run(
                request,
                "AuditMarkExported",
                method!("AuditMarkExported"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    let through = req.through;
                    core.mutate(call, req.request_id, |audit| Op::AuditExported {
                        through,
                        audit,
                    })
                    .await?;
                    Ok(AuditMarkExportedResponse {})
                }),
            )
            .await
    }

    async fn audit_prune(
        &self,
        request: Request<AuditPruneRequest>,
    ) -> Result<Response<AuditPruneResponse>, Status> {
        self.core
            .run(
                request,
                "AuditPrune",
                method!("AuditPrune"),
                false,
                handler!(|core, call, req| {
                    core.require_region_admin(call)?;
                    if req.retention_days == 0 {
                        return Err(KmsError::validation("retention_days must be at least 1"));
                    }
                    let retention_ms = u64::from(req.retention_days) * 24 * 60 * 60 * 1000;
                    core.read_barrier().await?;
                    let first = core
                        .state
                        .audit_checkpoint()
                        .map_err(internal)?
                        .map_or(1, |c| c.through + 1);
                    let exported = core.state.audit_exported().map_err(internal)?;
                    let cutoff = core.clock.now_ms().saturating_sub(retention_ms);
                    // The newest event that is exported, old enough, and within one step.
                    let last = exported.min(first + keyraft_state::MAX_PRUNE - 1);
                    let mut through = 0;
                    for e in core
                        .state
                        .audit_events(first, (last + 1).saturating_sub(first) as usize)
                        .map_err(internal)?
                    {
                        if e.sequence > last || e.record.event_time_ms > cutoff {
                            break;
                        }
                        through = e.sequence;
                    }
                    let done = || {
                        core.state
                            .audit_checkpoint()
                            .map(|c| c.map_or(0, |c| c.through))
                            .map_err(internal)
                    };
                    if through == 0 {
                        return Ok(AuditPruneResponse {
                            pruned_through: done()?,
                            pruned: 0,
                        });
                    }
                    let hash = core
                        .state
                        .audit_hash_at(through)
                        .map_err(internal)?
                        .ok_or_else(KmsError::internal)?;
                    let signature = core.hsm.wrap_secret(
                        &keyraft_state::AuditCheckpoint::signed_bytes(through, &hash),
                        CHECKPOINT_PURPOSE,
                    )?;
                    let checkpoint = keyraft_state::AuditCheckpoint {
                        through,
                        hash,
                        pruned_ms: core.clock.now_ms(),
                        signature,
                    };
                    core.mutate(call, req.request_id, |audit| Op::PruneAudit {
                        checkpoint,
                        retention_ms,
                        audit,
                    })
                    .await?;
                    Ok(AuditPruneResponse {
                        pruned_through: through,
                        pruned: through + 1 - first,
                    })
                }),
            )
            .await
    }
}

/// The newest time that at least a majority of `voters` clocks has reached, from the
/// clocks that answered; `None` without a majority of answers.
fn quorum_time(times: &[u64], voters: usize) -> Option<u64> {
    let majority = voters / 2 + 1;
    if times.len() < majority {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.get(majority - 1).copied()
}

#[cfg(test)]
mod quorum_time_tests {
    use super::quorum_time;

    const DAY: u64 = 86_400_000;

    #[test]
    fn one_clock_ahead_does_not_move_the_time() {
        assert_eq!(quorum_time(&[100 + 10 * DAY, 100, 101], 3), Some(101));
        assert_eq!(quorum_time(&[100 + 10 * DAY, 100], 3), Some(100));
        assert_eq!(
            quorum_time(&[9 * DAY, 8 * DAY, 100, 101, 102], 5),
            Some(102)
        );
    }

    #[test]
    fn a_majority_ahead_does_and_a_minority_of_answers_gives_nothing() {
        assert_eq!(quorum_time(&[8 * DAY, 8 * DAY + 5, 100], 3), Some(8 * DAY));
        assert_eq!(quorum_time(&[8 * DAY], 3), None);
        assert_eq!(quorum_time(&[], 1), None);
        assert_eq!(quorum_time(&[7], 1), Some(7));
    }
}
