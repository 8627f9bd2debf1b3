//! Authorization on the serving node: the first of the two decisions
//! (see `keyraft_state::authz` for the second, in apply).
//!
//! The node decides on its replica. A *refusal* is only given after a read barrier, so
//! a node that has not yet applied a policy change that completed before the request
//! began does not refuse on its stale view; an *allowance* is recorded in the audit
//! record and re-decided by apply if a policy it read changed before it committed.

use keyraft_state::authz::{check_of, decide, Question};
use keyraft_state::KeyRecord;
use keyraft_types::policy::ANY_RESOURCE;
use keyraft_types::{EncryptionContext, KmsError};

use crate::core::{Call, NodeCore};
use crate::kms::internal;

impl NodeCore {
    /// Authorizes the call's action on `key` (the call's `kms:<event name>` unless the
    /// handler named another) and records the decision for apply.
    pub(crate) async fn authorize_key(
        &self,
        call: &mut Call,
        key: &KeyRecord,
    ) -> Result<(), KmsError> {
        self.authorize_key_with(call, key, None).await
    }

    /// [`NodeCore::authorize_key`] for a CreateGrant, which a grant allows only for a
    /// child grant within it.
    pub(crate) async fn authorize_key_with(
        &self,
        call: &mut Call,
        key: &KeyRecord,
        new_grant: Option<&keyraft_types::Grant>,
    ) -> Result<(), KmsError> {
        let (action, context) = match call.action.take() {
            Some((action, context)) => (action.to_string(), context),
            None => (
                format!("kms:{}", call.record.event_name),
                call.record.request_parameters.encryption_context.clone(),
            ),
        };
        self.authorize(
            call,
            &action,
            Some(key),
            ANY_RESOURCE,
            context.as_ref(),
            new_grant,
        )
        .await
    }

    /// Authorizes an action that concerns no key (`kms:CreateKey`, `iam:CreateUser`...)
    /// on `resource` (`*`, or a principal's ARN).
    pub(crate) async fn authorize_action(
        &self,
        call: &mut Call,
        action: &str,
        resource: &str,
    ) -> Result<(), KmsError> {
        self.authorize(call, action, None, resource, None, None)
            .await
    }

    async fn authorize(
        &self,
        call: &mut Call,
        action: &str,
        key: Option<&KeyRecord>,
        resource: &str,
        context: Option<&EncryptionContext>,
        new_grant: Option<&keyraft_types::Grant>,
    ) -> Result<(), KmsError> {
        let mut barrier_done = false;
        let mut fresh_key = None;
        // First on the principal as authentication read it; after a barrier, as now.
        let mut holder = Some(call.principal.holder.clone());
        loop {
            let key = fresh_key.as_ref().or(key);
            let grants = match key {
                Some(k) if !k.grants.is_empty() => self.state.grants_of(k).map_err(internal)?,
                _ => Vec::new(),
            };
            let question = Question {
                caller_arn: &call.principal.caller_arn,
                holder: holder.as_ref(),
                key,
                action,
                resource,
                encryption_context: context,
                time_ms: call.record.event_time_ms,
                grants: &grants,
                new_grant,
            };
            match decide(&question) {
                Ok(_) => {
                    call.record.authz_checks.push(check_of(&question));
                    return Ok(());
                }
                Err(e) if barrier_done => return Err(e),
                Err(_) => {
                    // Refuse only on a view at least as new as the request: the
                    // principal and the key as of now.
                    self.read_barrier().await?;
                    barrier_done = true;
                    holder = self
                        .state
                        .principal(&call.principal.holder.arn)
                        .map_err(internal)?;
                    if let Some(k) = key {
                        fresh_key = Some(
                            self.state
                                .key(&k.metadata.key_id)
                                .map_err(internal)?
                                .ok_or_else(|| {
                                    KmsError::key_not_found(k.metadata.key_id.as_str())
                                })?,
                        );
                    }
                }
            }
        }
    }
}
