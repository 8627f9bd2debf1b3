//! The one table between [`KmsError`] and `tonic::Status`.
//!
//! The gRPC code is chosen so that generic gRPC tooling behaves sensibly (NotFound,
//! InvalidArgument, Unauthenticated, ...), but the authority is the metadata entry
//! `x-keyraft-error-code`, which carries the AWS error name. The client maps a status
//! back with [`error_from_status`]; a status without that entry did not come from a
//! Keyraft handler (a transport failure, a proxy) and is returned as `None`.

use keyraft_types::{ErrorCode, KmsError, NodeId};
use tonic::{Code, Status};

/// Metadata key of the AWS error name.
pub const ERROR_CODE_HEADER: &str = "x-keyraft-error-code";
/// Metadata key of the leader's node id on `NotLeaderException`.
pub const LEADER_ID_HEADER: &str = "x-keyraft-leader-id";
/// Metadata key of the leader's client endpoint on `NotLeaderException`.
pub const LEADER_ENDPOINT_HEADER: &str = "x-keyraft-leader-endpoint";

/// Where the leader is, as a non-leader knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderHint {
    /// The leader's node id, if known.
    pub id: Option<NodeId>,
    /// The leader's client API URL, if known.
    pub endpoint: Option<String>,
}

/// The gRPC code for each error code: the whole table.
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::Disabled | ErrorCode::InvalidState => Code::FailedPrecondition,
        ErrorCode::InvalidCiphertext
        | ErrorCode::IncorrectKey
        | ErrorCode::Validation
        | ErrorCode::InvalidMarker
        | ErrorCode::InvalidKeyUsage
        | ErrorCode::InvalidArn
        | ErrorCode::InvalidAliasName
        | ErrorCode::Tag
        | ErrorCode::IncorrectKeyMaterial
        | ErrorCode::ExpiredImportToken
        | ErrorCode::InvalidImportToken
        | ErrorCode::InvalidMac
        | ErrorCode::KmsInvalidSignature
        | ErrorCode::MalformedPolicyDocument
        | ErrorCode::InvalidGrantToken
        | ErrorCode::InvalidGrantId => Code::InvalidArgument,
        ErrorCode::LimitExceeded | ErrorCode::Throttling => Code::ResourceExhausted,
        ErrorCode::AccessDenied => Code::PermissionDenied,
        ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::UnsupportedOperation => Code::Unimplemented,
        ErrorCode::UnrecognizedClient | ErrorCode::InvalidSignature | ErrorCode::ExpiredToken => {
            Code::Unauthenticated
        }
        ErrorCode::Conflict => Code::Aborted,
        ErrorCode::NotLeader | ErrorCode::KeyUnavailable => Code::Unavailable,
        ErrorCode::DependencyTimeout => Code::DeadlineExceeded,
        ErrorCode::Internal => Code::Internal,
    }
}

/// Converts an error into the status a handler returns.
pub fn status_from_error(err: &KmsError) -> Status {
    let mut status = Status::new(grpc_code(err.code), err.message.clone());
    if let Ok(v) = err.code.as_str().parse() {
        status.metadata_mut().insert(ERROR_CODE_HEADER, v);
    }
    status
}

/// A `NotLeaderException` status carrying the leader hint.
pub fn not_leader_status(hint: &LeaderHint) -> Status {
    let mut status = status_from_error(&KmsError::new(
        ErrorCode::NotLeader,
        match (&hint.id, &hint.endpoint) {
            (Some(id), Some(ep)) => {
                format!("this node is not the leader; the leader is node {id} at {ep}")
            }
            _ => "this node is not the leader and knows no leader yet".to_string(),
        },
    ));
    if let Some(id) = hint.id {
        if let Ok(v) = id.to_string().parse() {
            status.metadata_mut().insert(LEADER_ID_HEADER, v);
        }
    }
    if let Some(ep) = &hint.endpoint {
        if let Ok(v) = ep.parse() {
            status.metadata_mut().insert(LEADER_ENDPOINT_HEADER, v);
        }
    }
    status
}

/// Converts a status back into the error a handler sent, or `None` if the status did not
/// come from a Keyraft handler.
pub fn error_from_status(status: &Status) -> Option<KmsError> {
    let name = status.metadata().get(ERROR_CODE_HEADER)?.to_str().ok()?;
    let code = ErrorCode::parse(name)?;
    Some(KmsError::new(code, status.message().to_string()))
}

/// The leader hint of a `NotLeaderException` status.
pub fn leader_hint(status: &Status) -> LeaderHint {
    let md = status.metadata();
    LeaderHint {
        id: md
            .get(LEADER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok()),
        endpoint: md
            .get(LEADER_ENDPOINT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in ErrorCode::ALL {
            let err = KmsError::new(code, "msg");
            let status = status_from_error(&err);
            assert_eq!(status.code(), grpc_code(code));
            assert_eq!(error_from_status(&status), Some(err), "{code}");
        }
    }

    #[test]
    fn foreign_status_is_not_an_error_code() {
        assert_eq!(
            error_from_status(&Status::unavailable("connection refused")),
            None
        );
    }

    #[test]
    fn leader_hint_round_trips() {
        let hint = LeaderHint {
            id: Some(3),
            endpoint: Some("http://127.0.0.1:7103".into()),
        };
        let status = not_leader_status(&hint);
        assert_eq!(leader_hint(&status), hint);
        assert_eq!(
            error_from_status(&status).map(|e| e.code),
            Some(ErrorCode::NotLeader)
        );
    }
}
