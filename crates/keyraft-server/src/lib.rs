//! # A Keyraft node
//!
//! A node serves the client API (`KeyService`, `AdminService`) and the node-to-node API
//! (Raft transport, forwarding, join) on two listeners, around one Raft group whose state
//! machine holds every key, credential and audit event of the region.
//!
//! ## The request pipeline
//! Every client request goes through `NodeCore::run` (in [`core`]):
//!
//! 1. **Authenticate** the signature (HMAC with the access key's secret, fresh timestamp,
//!    unseen nonce).
//! 2. **Serve**:
//!    - a *mutation* becomes one Raft command carrying everything apply needs (key ids,
//!      key material wrapped by this node's HSM, the time, the request id, the audit
//!      record) and is proposed on the leader (a follower forwards it);
//!    - a *cryptographic* request is served here: the key is read from the local replica,
//!      checked, and the HSM does the work;
//!    - a *read* first passes a read barrier (ReadIndex), so it sees every write that
//!      completed before it began.
//! 3. **Audit** before release: the request's audit record is committed through Raft
//!    (many records share one entry), naming the key epoch its decision used; apply
//!    re-checks it and only apply's verdict is released. If the record cannot be
//!    committed the request fails: the service fails closed.
//!
//! [`failpoints`] lists the places where a chaos test can inject a fault (a build with
//! the `failpoints` feature only).
//!
//! So a key disabled on one node is refused by every node from the moment the disable
//! commits, and no result leaves a node without its audit event in the chain.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod audit_json;
mod authn;
mod authz;
pub mod config;
pub mod core;
pub mod failpoints;
mod grants;
mod iam;
mod internal;
mod join;
mod key_admin;
mod kms;
pub mod node;

pub use config::Config;
pub use join::generate_access_key;
pub use node::{Node, NodeHandle, StartError};
