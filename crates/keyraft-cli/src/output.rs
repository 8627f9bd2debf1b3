//! JSON output in AWS's shapes, and the error envelope.

use std::process::ExitCode;

use base64::Engine;
use serde_json::{json, Value};

use keyraft_client::Error;
use keyraft_proto::v1::{ClusterStatusResponse, KeyMetadata};

/// Base64 (standard alphabet, padded), as AWS prints blobs.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64 input.
pub(crate) fn unb64(text: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| {
            Error::Service(keyraft_client::KmsError::validation(format!(
                "not valid base64: {e}"
            )))
        })
}

/// Key metadata with AWS's field names.
pub(crate) fn key_metadata(m: &KeyMetadata) -> Value {
    let mut v = json!({
        "AWSAccountId": m.aws_account_id,
        "KeyId": m.key_id,
        "Arn": m.arn,
        "CreationDate": m.creation_date as f64 / 1000.0,
        "Enabled": m.enabled,
        "Description": m.description,
        "KeyUsage": m.key_usage,
        "KeyState": m.key_state,
        "Origin": m.origin,
        "KeyManager": m.key_manager,
        "KeySpec": m.key_spec,
        "CustomerMasterKeySpec": m.key_spec,
    });
    if !m.encryption_algorithms.is_empty() {
        v["EncryptionAlgorithms"] = json!(m.encryption_algorithms);
    }
    if !m.mac_algorithms.is_empty() {
        v["MacAlgorithms"] = json!(m.mac_algorithms);
    }
    if !m.signing_algorithms.is_empty() {
        v["SigningAlgorithms"] = json!(m.signing_algorithms);
    }
    if m.valid_to != 0 {
        v["ValidTo"] = json!(m.valid_to as f64 / 1000.0);
        v["ExpirationModel"] = json!("KEY_MATERIAL_EXPIRES");
    } else if m.origin == "EXTERNAL" {
        v["ExpirationModel"] = json!("KEY_MATERIAL_DOES_NOT_EXPIRE");
    }
    if m.deletion_date != 0 {
        v["DeletionDate"] = json!(m.deletion_date as f64 / 1000.0);
    }
    if m.key_spec == "SYMMETRIC_DEFAULT" {
        v["KeyRotationEnabled"] = json!(m.rotation_period_in_days != 0);
        v["CurrentKeyVersion"] = json!(m.current_key_version);
    }
    if m.rotation_period_in_days != 0 {
        v["RotationPeriodInDays"] = json!(m.rotation_period_in_days);
    }
    if m.next_rotation_date != 0 {
        v["NextRotationDate"] = json!(m.next_rotation_date as f64 / 1000.0);
    }
    v
}

/// `cluster status` output.
pub(crate) fn cluster_status(s: &ClusterStatusResponse) -> Value {
    json!({
        "Region": s.region,
        "Leader": s.leader,
        "Term": s.term,
        "Members": s.members.iter().map(|m| json!({
            "Id": m.id,
            "Endpoint": m.endpoint,
            "RaftAddress": m.raft_addr,
            "Role": m.role,
            "Reachable": m.reachable,
            "HasDomainKey": m.has_domain_key,
            "Term": m.term,
            "LastLogIndex": m.last_log_index,
            "LastApplied": m.last_applied,
            "SnapshotIndex": m.snapshot_index,
            "PurgedIndex": m.purged_index,
        })).collect::<Vec<_>>(),
    })
}

/// Prints the result: JSON on stdout, or the error envelope on stderr with status 1.
pub(crate) fn finish(result: Result<Value, Error>) -> ExitCode {
    match result {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (code, message) = match &e {
                Error::Service(k) => (k.code.as_str().to_string(), k.message.clone()),
                Error::Transport(m) => ("TransportError".to_string(), m.clone()),
                Error::Config(m) => ("ConfigurationError".to_string(), m.clone()),
            };
            eprintln!("{}", json!({"Error": {"Code": code, "Message": message}}));
            ExitCode::FAILURE
        }
    }
}
