//! # Keyraft on the wire
//!
//! The code generated from `proto/keyraft/v1` (by protox and tonic, no system `protoc`),
//! the one table that maps [`keyraft_types::KmsError`] to a gRPC status and back ([`status`]), request
//! signing shared by the client, the server and the node-to-node transport ([`auth`]),
//! and conversions from the domain types.
//!
//! Keeping the table here, in the one crate that both sides depend on, means the server
//! and the SDK can never disagree about what a status means.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod status;

/// Generated public API types and services (`keyraft.v1`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("keyraft.v1");

    /// Generated internal node-to-node types and services (`keyraft.v1.internal`).
    #[allow(missing_docs, clippy::all)]
    pub mod internal {
        tonic::include_proto!("keyraft.v1.internal");
    }
}

pub use status::{
    error_from_status, leader_hint, not_leader_status as not_leader_status_for, status_from_error,
    LeaderHint,
};

use keyraft_types::KeyMetadata;

/// The only encryption algorithm of symmetric keys.
pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";

/// The encryption algorithms a key of this spec and usage offers (AWS names).
pub fn encryption_algorithms(
    spec: keyraft_types::KeySpec,
    usage: keyraft_types::KeyUsage,
) -> Vec<String> {
    if usage != keyraft_types::KeyUsage::EncryptDecrypt {
        return Vec::new();
    }
    spec.encryption_algorithms()
        .iter()
        .map(|a| a.as_str().to_string())
        .collect()
}

/// The signing algorithms a key of this spec and usage offers (AWS names).
pub fn signing_algorithms(
    spec: keyraft_types::KeySpec,
    usage: keyraft_types::KeyUsage,
) -> Vec<String> {
    if usage != keyraft_types::KeyUsage::SignVerify {
        return Vec::new();
    }
    spec.signing_algorithms()
        .iter()
        .map(|a| a.as_str().to_string())
        .collect()
}

impl From<&KeyMetadata> for v1::KeyMetadata {
    fn from(m: &KeyMetadata) -> Self {
        v1::KeyMetadata {
            key_id: m.key_id.to_string(),
            arn: m.arn.clone(),
            aws_account_id: m.account.to_string(),
            description: m.description.clone(),
            key_state: m.key_state.as_str().to_string(),
            key_spec: m.key_spec.as_str().to_string(),
            key_usage: m.key_usage.as_str().to_string(),
            origin: m.origin.as_str().to_string(),
            key_manager: m.key_manager.as_str().to_string(),
            creation_date: m.creation_date_ms,
            enabled: m.key_state == keyraft_types::KeyState::Enabled,
            encryption_algorithms: encryption_algorithms(m.key_spec, m.key_usage),
            signing_algorithms: signing_algorithms(m.key_spec, m.key_usage),
            mac_algorithms: m
                .key_spec
                .mac_algorithm()
                .map(str::to_string)
                .into_iter()
                .collect(),
            rotation_period_in_days: m.rotation_period_days.unwrap_or(0),
            next_rotation_date: m.next_rotation_ms.unwrap_or(0),
            current_key_version: m.current_version,
            deletion_date: m.deletion_date_ms.unwrap_or(0),
            valid_to: m.valid_to_ms.unwrap_or(0),
        }
    }
}
