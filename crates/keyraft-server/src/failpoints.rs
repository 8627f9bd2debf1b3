//! # Fail points
//!
//! Named places in a node where a chaos test injects a fault at run time, the way TiKV
//! uses the [`fail`](https://docs.rs/fail) crate. They exist only in a binary built with
//! the `failpoints` cargo feature (`cargo build -p keyraft-cli --features failpoints`;
//! the chaos suite's build turns it on). Without it every check is an empty inline
//! function, the environment variable is ignored, and `SetFailpoint` / `ListFailpoints`
//! answer `UnsupportedOperationException` ("this binary was built without fail
//! points"). A workspace build turns the feature on (the chaos suite depends on it), so
//! `scripts/test` also runs this crate's and `keyraft-raft`'s unit tests on their own,
//! without it, where that answer is tested.
//!
//! The names are an API:
//!
//! | name | where | `return` | `panic` |
//! |---|---|---|---|
//! | `server::before_audit_append` | request path, before a request's audit record goes to Raft: before a mutation is proposed (the record rides in it) or before a read's / cryptographic request's record joins the audit group commit | the request fails with `KMSInternalException` and nothing was written | the node crashes; nothing was written |
//! | `raft::log::before_append` | log store `append`, before the entries are written (openraft's storage task) | I/O error: openraft stops Raft (fatal), the node exits non-zero | the node crashes before writing |
//! | `raft::log::before_fsync` | log sync thread, before a group-commit sync (appends, votes, truncation, purge) | handled as a failed `fdatasync`: sticky, every later sync fails too; openraft stops Raft | the node crashes with the entries written but not synced |
//! | `raft::log::after_fsync` | log sync thread, after the sync, before openraft is told | handled as a failed sync (sticky), although the data is durable | the node crashes with the entries durable but not acknowledged |
//! | `raft::before_apply` | state machine, before a batch of committed entries is applied (once per batch) | I/O error: the batch is not applied and openraft stops Raft (fatal); the node exits non-zero, and after a restart applies the same entries again | the node crashes; after a restart it applies the same entries again |
//! | `raft::before_snapshot_install` | state machine, before a snapshot from the leader is installed | I/O error: openraft stops Raft (fatal), the node exits non-zero | the node crashes before installing |
//! | `server::after_commit_before_response` | request path, after the request's Raft write returned (a mutation committed and applied, or another request's audit record committed; not reached where the asynchronous audit mode for cryptography answers first), before the answer | the request fails with `KMSInternalException` although the write took effect: an unknown outcome, which the SDK retries with the same request id and the state machine answers with the first result | the node crashes after the commit; the caller sees a transport error |
//! | `server::before_retire_node` | `RemoveNode`, after the membership without the node committed, before the node's id is retired | the call fails with `KMSInternalException`: the node is out of the membership but its id is not retired yet; a repeated `RemoveNode` retires it | the node crashes at the same place |
//! | `server::before_send_domain_key` | a member answering an authorised joining node's request for the domain key, before the HSM wraps the key for it | this member refuses (`KMSInternalException`); the joining node asks the next member, and again every 200 ms, so with the point armed on every member an `AddNode` waits (up to its 60 s) and the node stays a learner until the point is cleared | the member crashes |
//!
//! **Why an apply fault stops the node.** A replica that skipped a committed entry and
//! went on would diverge from the others. So a fault before apply is what a crash there
//! is: the batch is not applied (apply is one atomic batch), Raft stops, and the node
//! replays the same committed entries from its last applied log id when it restarts.
//!
//! **Actions.** `fail`'s syntax, `[p%][cnt*]task[(arg)]` chained with `->`:
//! `1*return`, `50%return`, `return(message)`, `panic`, `off`, `3*off->return`.
//! `panic` aborts the process (a panic alone would end only the task or thread it
//! happens on, which is not a crash). `print` and `yield` are accepted and change
//! nothing observable. `sleep(ms)`, `delay(ms)` and `pause` block the thread that
//! reaches the point: they are refused at every point that runs on a tokio worker, and
//! accepted only at `raft::log::before_fsync` and `raft::log::after_fsync`, which run on
//! the log store's own sync thread, where they model a slow or hung disk (`pause` holds
//! every append and vote until the point is set again).
//!
//! **Control.** `SetFailpoint { name, actions }` (`off` clears a point) and
//! `ListFailpoints` on `AdminService`, for the region's administrator, act on the node
//! that receives the call and are audited like every request; the request-path points
//! never fire for these two calls, so an armed point can always be cleared. An unknown
//! name is a `ValidationException` listing the known names. At startup a node arms the
//! points named in the `FAILPOINTS` environment variable (`name=actions;name=actions`,
//! checked the same way; a bad value stops the node from starting). SDK:
//! `Client::set_failpoint` / `Client::list_failpoints`; CLI:
//! `keyraft cluster failpoint set NAME ACTIONS` / `keyraft cluster failpoint list`.

use keyraft_types::{ErrorCode, KmsError};

pub use keyraft_raft::failpoints::{
    SERVER_AFTER_COMMIT_BEFORE_RESPONSE as AFTER_COMMIT_BEFORE_RESPONSE,
    SERVER_BEFORE_AUDIT_APPEND as BEFORE_AUDIT_APPEND,
    SERVER_BEFORE_RETIRE_NODE as BEFORE_RETIRE_NODE,
    SERVER_BEFORE_SEND_DOMAIN_KEY as BEFORE_SEND_DOMAIN_KEY,
};

/// Configured points as `(name, actions)`.
pub(crate) type Configured = Vec<(String, String)>;

/// The calls that control the points: the request-path points never fire for them.
const CONTROL_CALLS: &[&str] = &["SetFailpoint", "ListFailpoints"];

/// Evaluates a request-path point for a call named `event_name`: `return` is a
/// `KMSInternalException` (retryable, outcome unknown to the caller). Always `Ok(())`
/// without the `failpoints` feature.
#[inline(always)]
pub(crate) fn check(point: &'static str, event_name: &str) -> Result<(), KmsError> {
    #[cfg(feature = "failpoints")]
    if !CONTROL_CALLS.contains(&event_name) {
        if let Some(message) = keyraft_raft::failpoints::fire(point) {
            return Err(KmsError::new(ErrorCode::Internal, message));
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (point, event_name, CONTROL_CALLS);
    Ok(())
}

/// The answer of the control calls in a binary built without the feature.
#[cfg(not(feature = "failpoints"))]
fn unsupported() -> KmsError {
    KmsError::new(
        ErrorCode::UnsupportedOperation,
        "this keyraft binary was built without fail points (build it with --features failpoints)",
    )
}

/// Configures one point of this node; returns the configured points afterwards.
pub(crate) fn set(name: &str, actions: &str) -> Result<Configured, KmsError> {
    #[cfg(feature = "failpoints")]
    {
        keyraft_raft::failpoints::set(name, actions).map_err(KmsError::validation)?;
        Ok(keyraft_raft::failpoints::list())
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, actions);
        Err(unsupported())
    }
}

/// The configured points of this node, and every known name.
pub(crate) fn list() -> Result<(Configured, Vec<&'static str>), KmsError> {
    #[cfg(feature = "failpoints")]
    {
        let known = keyraft_raft::failpoints::CATALOGUE
            .iter()
            .map(|p| p.name)
            .collect();
        Ok((keyraft_raft::failpoints::list(), known))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_path_points_are_in_the_catalogue() {
        for name in [
            BEFORE_AUDIT_APPEND,
            AFTER_COMMIT_BEFORE_RESPONSE,
            BEFORE_RETIRE_NODE,
            BEFORE_SEND_DOMAIN_KEY,
        ] {
            assert!(keyraft_raft::failpoints::point(name).is_some(), "{name}");
        }
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn without_the_feature_the_calls_are_unsupported_and_nothing_fires() {
        let e = set(BEFORE_AUDIT_APPEND, "return").unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedOperation);
        assert!(e.message.contains("without fail points"), "{}", e.message);
        assert_eq!(list().unwrap_err().code, ErrorCode::UnsupportedOperation);
        assert!(check(AFTER_COMMIT_BEFORE_RESPONSE, "CreateKey").is_ok());
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn return_is_an_internal_error_except_for_the_control_calls() {
        let e = set("server::nope", "return").unwrap_err();
        assert_eq!(e.code, ErrorCode::Validation);
        assert!(
            e.message.contains(AFTER_COMMIT_BEFORE_RESPONSE),
            "{}",
            e.message
        );
        assert_eq!(
            set(BEFORE_AUDIT_APPEND, "sleep(5)").unwrap_err().code,
            ErrorCode::Validation
        );
        let configured = set(AFTER_COMMIT_BEFORE_RESPONSE, "2*return").unwrap();
        assert!(configured
            .iter()
            .any(|(n, a)| n == AFTER_COMMIT_BEFORE_RESPONSE && a == "2*return"));
        assert!(check(AFTER_COMMIT_BEFORE_RESPONSE, "SetFailpoint").is_ok());
        let e = check(AFTER_COMMIT_BEFORE_RESPONSE, "CreateKey").unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(check(AFTER_COMMIT_BEFORE_RESPONSE, "CreateKey").is_err());
        assert!(check(AFTER_COMMIT_BEFORE_RESPONSE, "CreateKey").is_ok());
        set(AFTER_COMMIT_BEFORE_RESPONSE, "off").unwrap();
        let (configured, known) = list().unwrap();
        assert!(configured
            .iter()
            .all(|(n, _)| n != AFTER_COMMIT_BEFORE_RESPONSE));
        assert_eq!(known.len(), keyraft_raft::failpoints::CATALOGUE.len());
    }
}
