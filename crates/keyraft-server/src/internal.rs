//! `NodeService`: what nodes ask each other — forwarding proposals to the leader, status,
//! read indexes, and the domain-key transfer of an authorised join.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use keyraft_proto::v1::internal::node_service_server::NodeService;
use keyraft_proto::v1::internal::*;
use keyraft_proto::{not_leader_status_for, status_from_error};
use keyraft_state::{Command, Op, Reply};
use keyraft_types::{ErrorCode, KmsError};

use crate::core::{node_methods, NodeCore};
use crate::join::join_binding;
use crate::kms::internal;

pub(crate) struct NodeApi {
    core: Arc<NodeCore>,
}

impl NodeApi {
    pub(crate) fn new(core: Arc<NodeCore>) -> NodeApi {
        NodeApi { core }
    }
}

#[allow(clippy::result_large_err)]
fn verify<T: prost::Message>(
    core: &NodeCore,
    req: &Request<T>,
    method: &str,
) -> Result<u64, Status> {
    core.cluster_auth()
        .verify(req, method, &req.get_ref().encode_to_vec())
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn propose(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        verify(&self.core, &request, node_methods::PROPOSE)?;
        let cmd: Command = bincode::deserialize(&request.get_ref().data)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        if !self.core.raft.is_leader() {
            return Err(not_leader_status_for(&self.core.leader_hint()));
        }
        let response = match cmd.op {
            // A forwarding node's batch: each command joins this node's next entry, so
            // the cluster commits one entry at a time. If any is not answered, the sender
            // proposes the whole group again; the request ids make that apply each once.
            Op::Group { commands } => {
                if commands
                    .iter()
                    .any(|c| c.request_id.is_empty() || matches!(c.op, Op::Group { .. }))
                {
                    return Err(Status::invalid_argument(
                        "every command of a forwarded group needs a request id and none may be a group",
                    ));
                }
                futures::future::join_all(
                    commands
                        .into_iter()
                        .map(|c| self.core.commit_forwarded(c)),
                )
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map(|responses| Ok(Reply::Group(responses)))
            }
            // Joins this node's own batch; its request id still makes a retry apply once.
            _ if !cmd.request_id.is_empty() => self.core.commit_forwarded(cmd).await,
            _ => self.core.propose_local(cmd).await,
        }
        .map_err(|e| status_from_error(&e))?;
        let data = bincode::serialize(&response).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage { data }))
    }

    async fn node_status(
        &self,
        request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        verify(&self.core, &request, node_methods::NODE_STATUS)?;
        Ok(Response::new(self.core.local_status()))
    }

    async fn join_info(
        &self,
        request: Request<JoinInfoRequest>,
    ) -> Result<Response<JoinInfoResponse>, Status> {
        verify(&self.core, &request, node_methods::JOIN_INFO)?;
        let has_domain_key = self.core.hsm.has_domain_key();
        let public_key = if has_domain_key {
            Vec::new()
        } else {
            self.core
                .hsm
                .join_public_key()
                .map_err(|e| status_from_error(&e.into()))?
                .0
                .to_vec()
        };
        let domain_key_fingerprint = if has_domain_key {
            self.core
                .hsm
                .domain_key_fingerprint()
                .map_err(|e| status_from_error(&e.into()))?
        } else {
            String::new()
        };
        Ok(Response::new(JoinInfoResponse {
            node_id: self.core.id,
            public_key,
            has_domain_key,
            region: self.core.region.to_string(),
            domain_key_fingerprint,
        }))
    }

    async fn request_domain_key(
        &self,
        request: Request<RequestDomainKeyRequest>,
    ) -> Result<Response<RequestDomainKeyResponse>, Status> {
        let sender = verify(&self.core, &request, node_methods::REQUEST_DOMAIN_KEY)?;
        let req = request.into_inner();
        let refuse = |msg: &str| status_from_error(&KmsError::new(ErrorCode::AccessDenied, msg));
        if sender != req.node_id {
            return Err(refuse("a node may only ask for its own join"));
        }
        let state = &self.core.state;
        let config = state
            .cluster_config()
            .map_err(|e| status_from_error(&internal(e)))?
            .ok_or_else(|| refuse("the region is not bootstrapped"))?;
        let authorised = state
            .join_authorization(req.node_id)
            .map_err(|e| status_from_error(&internal(e)))?
            .is_some_and(|a| a.public_key == req.public_key);
        if !authorised {
            return Err(refuse("this join was not authorised by the cluster"));
        }
        let recipient: [u8; 32] = req
            .public_key
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("a join public key is 32 bytes"))?;
        crate::failpoints::check(
            crate::failpoints::BEFORE_SEND_DOMAIN_KEY,
            "RequestDomainKey",
        )
        .map_err(|e| status_from_error(&e))?;
        let transfer = self
            .core
            .hsm
            .export_domain_key(
                &keyraft_hsm::JoinPublicKey(recipient),
                &join_binding(&config.region, req.node_id),
            )
            .map_err(|e| status_from_error(&e.into()))?;
        tracing::info!(
            node = req.node_id,
            "sent the domain key to an authorised joining node"
        );
        Ok(Response::new(RequestDomainKeyResponse {
            transfer: bincode::serialize(&transfer).map_err(|e| Status::internal(e.to_string()))?,
            fingerprint: config.domain_key_fingerprint,
        }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        verify(&self.core, &request, node_methods::READ_INDEX)?;
        if !self.core.raft.is_leader() {
            return Err(not_leader_status_for(&self.core.leader_hint()));
        }
        let index = self
            .core
            .read_index_local()
            .await
            .map_err(|e| status_from_error(&e))?;
        Ok(Response::new(ReadIndexResponse { index }))
    }
}
