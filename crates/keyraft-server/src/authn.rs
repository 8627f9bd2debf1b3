//! Authentication of client requests: who signed this, and is the signature good?
//!
//! The secret of an access key is stored in the replicated state only wrapped under the
//! domain key; this node's HSM unwraps it on first use and the plaintext is cached in
//! memory (zeroized on drop). A signature must be fresh (within five minutes of this
//! node's clock) and its nonce unseen by this node within that window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

use tonic::Request;
use zeroize::Zeroizing;

use keyraft_hsm::Hsm;
use keyraft_proto::auth;
use keyraft_raft::network::now_ms;
use keyraft_state::StateMachine;
use keyraft_types::{AccountId, AuditRecord, ErrorCode, KmsError};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The principal's ARN (a user, or an assumed-role session).
    pub arn: String,
    /// The principal's account.
    pub account: AccountId,
    /// The principal whose policies apply (the user, or the role of a session), as
    /// this replica had it when the request was authenticated.
    pub holder: keyraft_state::PrincipalRecord,
    /// The ARN the policy evaluator sees (the account root ARN for a root user).
    pub caller_arn: String,
}

pub(crate) struct Authenticator {
    state: Arc<StateMachine>,
    hsm: Arc<dyn Hsm>,
    secrets: Mutex<HashMap<String, Zeroizing<Vec<u8>>>>,
    nonces: Mutex<SeenNonces>,
}

/// The purpose an access key's secret is wrapped under (binds it to its key id).
pub(crate) fn secret_purpose(access_key_id: &str) -> Vec<u8> {
    format!("keyraft-access-key-secret:{access_key_id}").into_bytes()
}

impl Authenticator {
    pub(crate) fn new(state: Arc<StateMachine>, hsm: Arc<dyn Hsm>) -> Authenticator {
        Authenticator {
            state,
            hsm,
            secrets: Mutex::new(HashMap::new()),
            nonces: Mutex::new(SeenNonces::default()),
        }
    }

    /// Checks the request's signature and fills the audit record's identity.
    pub(crate) fn authenticate<T: prost::Message>(
        &self,
        request: &Request<T>,
        method: &str,
        record: &mut AuditRecord,
        service_now_ms: u64,
    ) -> Result<Principal, KmsError> {
        record.user_identity.identity_type = "Anonymous".to_string();
        let headers = auth::read(request.metadata())?;
        record.user_identity.access_key_id = headers.access_key_id.chars().take(128).collect();
        let unrecognized = || {
            KmsError::new(
                ErrorCode::UnrecognizedClient,
                "The security token included in the request is invalid.",
            )
        };
        let key = self
            .state
            .access_key(&headers.access_key_id)
            .map_err(|e| {
                tracing::error!(error = %e, "reading access key");
                KmsError::internal()
            })?
            .filter(|k| k.enabled)
            .ok_or_else(unrecognized)?;
        let now = now_ms();
        if !auth::is_fresh(headers.timestamp_ms, now) {
            return Err(KmsError::new(
                ErrorCode::InvalidSignature,
                "Signature expired: the request timestamp is more than 5 minutes from the server's time.",
            ));
        }
        let secret = self.secret(&key.access_key_id, &key.wrapped_secret)?;
        let digest = auth::message_digest(request.get_ref());
        if !auth::verify(&secret, method, &headers, &digest) {
            return Err(KmsError::new(
                ErrorCode::InvalidSignature,
                "The request signature we calculated does not match the signature you provided.",
            ));
        }
        // Temporary credentials expire by the service clock (which development mode can
        // move), like every other time-driven rule.
        if key.expires_ms.is_some_and(|t| service_now_ms >= t) {
            return Err(KmsError::new(
                ErrorCode::ExpiredToken,
                "The security token included in the request is expired.",
            ));
        }
        let holder_arn = key.role_arn.clone().unwrap_or(key.principal_arn.clone());
        let holder = self
            .state
            .principal(&holder_arn)
            .map_err(|e| {
                tracing::error!(error = %e, "reading principal");
                KmsError::internal()
            })?
            .filter(|p| p.enabled)
            .ok_or_else(unrecognized)?;
        // Last, so that a request refused above may be retried after a read barrier.
        self.check_nonce(&headers.access_key_id, &headers.nonce, now)?;
        record.user_identity = keyraft_types::UserIdentity {
            identity_type: if holder.root {
                "Root"
            } else if key.role_arn.is_some() {
                "AssumedRole"
            } else {
                "IAMUser"
            }
            .to_string(),
            principal_arn: key.principal_arn.clone(),
            account_id: key.account.to_string(),
            access_key_id: key.access_key_id.clone(),
        };
        Ok(Principal {
            caller_arn: keyraft_state::authz::caller_arn(&key.principal_arn, &holder),
            arn: key.principal_arn,
            account: key.account,
            holder,
        })
    }

    /// Forgets a deleted access key's cached secret.
    pub(crate) fn forget(&self, access_key_id: &str) {
        self.secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(access_key_id);
    }

    fn secret(&self, id: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let mut cache = self.secrets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(id) {
            return Ok(s.clone());
        }
        let secret = self
            .hsm
            .unwrap_secret(wrapped, &secret_purpose(id))
            .map_err(KmsError::from)?;
        cache.insert(id.to_string(), secret.clone());
        Ok(secret)
    }

    /// Refuses a nonce seen within the freshness window; forgets expired ones.
    fn check_nonce(&self, access_key_id: &str, nonce: &str, now: u64) -> Result<(), KmsError> {
        let mut seen = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        seen.forget_expired(now);
        if !seen.insert(&(access_key_id, nonce), now, now + 2 * auth::MAX_SKEW_MS) {
            return Err(KmsError::new(
                ErrorCode::InvalidSignature,
                "The request was replayed: its nonce was already used.",
            ));
        }
        Ok(())
    }
}

/// The nonces seen within the freshness window, with their expiry times.
///
/// Nonces expire in the order they were seen (each lives for the same window from the
/// node's clock), so forgetting is a walk from the front of `order`: constant work per
/// request. A scan of every nonce once there were more than 100 000 of them cost each
/// request O(n) when more than that were live, and under a few thousand calls a second
/// they always were: authentication grew to nearly half of a node's CPU.
///
/// A nonce is kept as a 128-bit keyed hash of its access key id and value, not as a
/// string: the window holds ten minutes of requests (600 000 at 1 000 calls a second),
/// and by their sizes the strings would take about three times the memory. The hash
/// keys are random per process, so a caller cannot aim for a collision; an accidental one (odds about n²/2¹²⁹) would
/// refuse one request as a replay, never accept a replay.
#[derive(Default)]
struct SeenNonces {
    hashers: (RandomState, RandomState),
    expiry: HashMap<u128, u64>,
    /// `(expiry, key)` in the order seen; an entry whose key was seen again after it
    /// expired no longer matches `expiry` and is skipped.
    order: VecDeque<(u64, u128)>,
}

impl SeenNonces {
    fn key(&self, nonce: &(impl Hash + ?Sized)) -> u128 {
        let high = self.hashers.0.hash_one(nonce);
        let low = self.hashers.1.hash_one(nonce);
        (u128::from(high) << 64) | u128::from(low)
    }

    /// Forgets the nonces whose window ended by `now`. If the clock stepped back, the
    /// front may not have expired yet while later ones have; those wait their turn,
    /// which keeps them refused a little longer, never shorter.
    fn forget_expired(&mut self, now: u64) {
        while let Some(&(expiry, key)) = self.order.front() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.expiry.get(&key) == Some(&expiry) {
                self.expiry.remove(&key);
            }
        }
    }

    /// Records `nonce` until `expiry`; false if it is already recorded and unexpired at
    /// `now` (a replay).
    fn insert(&mut self, nonce: &(impl Hash + ?Sized), now: u64, expiry: u64) -> bool {
        let key = self.key(nonce);
        if self.expiry.get(&key).is_some_and(|until| *until > now) {
            return false;
        }
        self.expiry.insert(key, expiry);
        self.order.push_back((expiry, key));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.expiry.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_refused_within_its_window_and_forgotten_after() {
        let mut seen = SeenNonces::default();
        assert!(seen.insert("k/a", 0, 100));
        assert!(!seen.insert("k/a", 50, 150), "a replay within the window");
        assert!(seen.insert("k/b", 60, 160));
        seen.forget_expired(99);
        assert_eq!(seen.len(), 2);
        seen.forget_expired(100);
        assert_eq!(seen.len(), 1, "a is forgotten at its expiry, b is not");
        assert!(
            seen.insert("k/a", 100, 200),
            "an expired nonce may be used again"
        );
        assert!(!seen.insert("k/b", 120, 220));
        seen.forget_expired(160);
        assert_eq!(seen.len(), 1, "b is gone, the second a stays");
        assert!(!seen.insert("k/a", 170, 270));
        seen.forget_expired(200);
        assert_eq!(seen.len(), 0);
    }

    #[test]
    fn forgetting_is_bounded_by_what_expired() {
        let mut seen = SeenNonces::default();
        for i in 0..10_000u64 {
            assert!(seen.insert(&format!("k/{i}"), i, i + 1_000));
            seen.forget_expired(i);
        }
        // Only the last window is kept, whatever came before.
        assert_eq!(seen.len(), 1_000);
        assert_eq!(seen.order.len(), 1_000);
    }
}
