//! `KeyService`: key life cycle (mutations through Raft) and cryptography (served here).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use keyraft_hsm::CiphertextBlob;
use keyraft_proto::v1::key_service_server::KeyService;
use keyraft_proto::v1::*;
use keyraft_proto::SYMMETRIC_DEFAULT;
use keyraft_state::{Command, KeyRecord, Op, Reply};
use keyraft_types::{
    AuditRecord, CryptoOperation, DataKeySpec, EncryptionAlgorithm, EncryptionContext, ErrorCode,
    KeyCheck, KeyId, KeyManager, KeyMetadata, KeyRef, KeySpec, KeyState, KeyUsage, KmsError,
    MessageType, Origin, SigningAlgorithm,
};

use crate::core::{handler, Call, NodeCore};

/// Largest plaintext Encrypt accepts (as AWS).
pub const MAX_PLAINTEXT: usize = 4096;
/// Largest description.
pub const MAX_DESCRIPTION: usize = 8192;
/// Largest encoded encryption context.
pub const MAX_CONTEXT_BYTES: usize = 8192;

/// The client API's key operations.
pub(crate) struct KeyApi {
    core: Arc<NodeCore>,
}

impl KeyApi {
    pub(crate) fn new(core: Arc<NodeCore>) -> KeyApi {
        KeyApi { core }
    }
}

macro_rules! method {
    ($name:literal) => {
        concat!("/keyraft.v1.KeyService/", $name)
    };
}

impl NodeCore {
    /// Resolves a key reference — key id, key ARN, alias name or alias ARN — to a key id.
    ///
    /// An alias is read after a read barrier: a replica that has not yet applied an
    /// UpdateAlias that completed before this request began must not act on the key the
    /// alias used to name. (That costs a ReadIndex round trip per request that names an
    /// alias; hot paths should name keys by id or ARN.)
    pub(crate) async fn resolve_key(&self, call: &Call, key_ref: &str) -> Result<KeyId, KmsError> {
        let (account, name) = match self.region.parse_key_ref(key_ref)? {
            KeyRef::Key(id) => return Ok(id),
            KeyRef::Alias { account, name } => (account, name),
        };
        let account = account.unwrap_or_else(|| call.principal.account.clone());
        let not_found = || {
            KmsError::new(
                ErrorCode::NotFound,
                format!("Alias {key_ref} is not found."),
            )
        };
        if account != call.principal.account {
            return Err(not_found());
        }
        self.read_barrier().await?;
        self.state
            .alias(&account, &name)
            .map_err(internal)?
            .map(|a| a.target_key_id)
            .ok_or_else(not_found)
    }

    /// Loads a key and authorizes the call's action on it (key policy, principal
    /// policies; see `authz`). A key this replica does not know yet is looked up again
    /// after a read barrier. A key the caller may not use is `AccessDeniedException`
    /// whether or not it exists in another account.
    pub(crate) async fn owned_key(
        &self,
        call: &mut Call,
        key_ref: &str,
    ) -> Result<KeyRecord, KmsError> {
        let key = self.load_key(call, key_ref).await?;
        self.authorize_key(call, &key).await?;
        Ok(key)
    }

    /// Loads a key without authorizing anything (the caller authorizes).
    pub(crate) async fn load_key(&self, call: &Call, key_ref: &str) -> Result<KeyRecord, KmsError> {
        let id = self.resolve_key(call, key_ref).await?;
        match self.state.key(&id).map_err(internal)? {
            Some(k) => Ok(k),
            None => {
                self.read_barrier().await?;
                self.state
                    .key(&id)
                    .map_err(internal)?
                    .ok_or_else(|| KmsError::key_not_found(key_ref))
            }
        }
    }

    /// The common shape of a key mutation: record the key the caller named, load it
    /// (the caller's own), name it as the resource, and propose `op` for it with the
    /// call's audit record. Returns the key after the change.
    pub(crate) async fn mutate_key(
        &self,
        call: &mut Call,
        key_ref: &str,
        given_request_id: String,
        op: impl FnOnce(KeyId, Box<AuditRecord>) -> Op,
    ) -> Result<KeyMetadata, KmsError> {
        call.record.request_parameters.key_id = Some(key_ref.to_string());
        let key = self.owned_key(call, key_ref).await?;
        call.record.resources.push(key.metadata.arn.clone());
        let key_id = key.metadata.key_id;
        expect_key(
            self.mutate(call, given_request_id, |audit| op(key_id, audit))
                .await,
        )
    }

    /// Proposes a mutation whose audit record is the call's own: `op` receives the
    /// record, and the command carries the caller's request id (or a fresh one).
    pub(crate) async fn mutate(
        &self,
        call: &mut Call,
        given_request_id: String,
        op: impl FnOnce(Box<AuditRecord>) -> Op,
    ) -> Result<Reply, KmsError> {
        call.record.request_id = request_id(given_request_id)?;
        let cmd = Command {
            request_id: call.record.request_id.clone(),
            time_ms: self.clock.now_ms(),
            op: op(Box::new(call.record.clone())),
        };
        call.audited = true;
        crate::failpoints::check(
            crate::failpoints::BEFORE_AUDIT_APPEND,
            &call.record.event_name,
        )?;
        let reply = self.commit_mutation(cmd).await?;
        crate::failpoints::check(
            crate::failpoints::AFTER_COMMIT_BEFORE_RESPONSE,
            &call.record.event_name,
        )?;
        reply
    }

    /// Loads a key that must allow `op`. A refusal is only given after a read barrier:
    /// a replica that has not yet applied an EnableKey that completed before this request
    /// began must not refuse on its stale view. (The opposite staleness — a key disabled
    /// after this replica last looked — is caught by the epoch re-check in apply.)
    pub(crate) async fn usable_key(
        &self,
        call: &mut Call,
        key_ref: &str,
        op: CryptoOperation,
    ) -> Result<KeyRecord, KmsError> {
        let action = call.action.clone();
        let key = self.owned_key(call, key_ref).await?;
        if key.metadata.check_usable(op).is_ok() {
            return Ok(key);
        }
        self.read_barrier().await?;
        let id = key.metadata.key_id.clone();
        let key = self
            .state
            .key(&id)
            .map_err(internal)?
            .ok_or_else(|| KmsError::key_not_found(key_ref))?;
        key.metadata.check_usable(op)?;
        // Decided again on the newer key; the first decision's record is replaced.
        call.record.authz_checks.pop();
        call.action = action;
        self.authorize_key(call, &key).await?;
        Ok(key)
    }
}

pub(crate) fn internal(e: keyraft_state::StateError) -> KmsError {
    tracing::error!(error = %e, "state read failed");
    KmsError::internal()
}

/// The HMAC key a GenerateMac/VerifyMac names, checked for usage and algorithm, with
/// the SHA-2 size its algorithm uses; records the key check for apply.
async fn mac_key(
    core: &NodeCore,
    call: &mut Call,
    key_ref: &str,
    algorithm: &str,
    message: &[u8],
    op: CryptoOperation,
) -> Result<(KeyRecord, usize), KmsError> {
    let p = &mut call.record.request_parameters;
    p.key_id = Some(key_ref.to_string());
    p.encryption_algorithm = Some(algorithm.to_string());
    if message.is_empty() || message.len() > MAX_PLAINTEXT {
        return Err(KmsError::validation(format!(
            "message must be 1 to {MAX_PLAINTEXT} bytes"
        )));
    }
    let bits = match algorithm {
        "HMAC_SHA_256" => 256,
        "HMAC_SHA_384" => 384,
        "HMAC_SHA_512" => 512,
        other => {
            return Err(KmsError::validation(format!(
                "Value '{other}' at 'macAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [HMAC_SHA_384, HMAC_SHA_256, HMAC_SHA_512]"
            )))
        }
    };
    let key = core.usable_key(call, key_ref, op).await?;
    call.record.resources.push(key.metadata.arn.clone());
    if key.metadata.key_spec.mac_algorithm() != Some(algorithm) {
        return Err(KmsError::new(
            ErrorCode::InvalidKeyUsage,
            format!(
                "{algorithm} is not valid for a {} key",
                key.metadata.key_spec.as_str()
            ),
        ));
    }
    call.record.key_checks.push(KeyCheck {
        key_id: key.metadata.key_id.clone(),
        epoch: key.metadata.epoch,
        operation: op,
    });
    Ok((key, bits))
}

/// Version 1's material of a new key, made by this node's HSM (none yet for an
/// EXTERNAL key), and a key pair's public half. RSA key generation takes long enough
/// (tens to hundreds of milliseconds) that it runs off the async workers.
async fn new_key_material(
    core: &Arc<NodeCore>,
    key_id: &KeyId,
    spec: KeySpec,
    origin: Origin,
) -> Result<(keyraft_hsm::WrappedKey, Option<Vec<u8>>), KmsError> {
    if origin == Origin::External {
        return Ok((keyraft_hsm::WrappedKey(Vec::new()), None));
    }
    if spec.is_asymmetric() {
        let hsm = core.hsm.clone();
        let id = key_id.clone();
        let (material, public) =
            tokio::task::spawn_blocking(move || hsm.generate_key_pair(&id, 1, spec))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "key pair generation task failed");
                    KmsError::internal()
                })??;
        return Ok((material, Some(public)));
    }
    let material = match spec.material_len() {
        Some(_) if spec == KeySpec::SymmetricDefault => {
            core.hsm.generate_key_material(key_id, 1)?
        }
        Some(len) => core.hsm.generate_mac_key(key_id, 1, len)?,
        None => return Err(KmsError::internal()),
    };
    Ok((material, None))
}

/// The key pair a Sign/Verify names, checked for usage and algorithm, and the digest to
/// sign: RAW messages are hashed here with the algorithm's hash, DIGEST messages must
/// already be a digest of that length. Records the key check for apply.
async fn signing_key(
    core: &NodeCore,
    call: &mut Call,
    key_ref: &str,
    algorithm: &str,
    message_type: &str,
    message: &[u8],
    op: CryptoOperation,
) -> Result<(KeyRecord, SigningAlgorithm, Vec<u8>), KmsError> {
    let p = &mut call.record.request_parameters;
    p.key_id = Some(key_ref.to_string());
    p.signing_algorithm = Some(algorithm.to_string());
    p.message_type = Some(
        if message_type.is_empty() {
            "RAW"
        } else {
            message_type
        }
        .to_string(),
    );
    let algorithm = SigningAlgorithm::parse(algorithm)?;
    let message_type = MessageType::parse(message_type)?;
    let digest = match message_type {
        MessageType::Raw if message.is_empty() || message.len() > MAX_PLAINTEXT => {
            return Err(KmsError::validation(format!(
                "a RAW message must be 1 to {MAX_PLAINTEXT} bytes, not {}",
                message.len()
            )))
        }
        MessageType::Raw => keyraft_hsm::asymmetric::digest(algorithm.hash(), message),
        MessageType::Digest if message.len() != algorithm.hash().digest_len() => {
            return Err(KmsError::validation(format!(
                "a DIGEST message for {} must be {} bytes, not {}",
                algorithm.as_str(),
                algorithm.hash().digest_len(),
                message.len()
            )))
        }
        MessageType::Digest => message.to_vec(),
    };
    let key = core.usable_key(call, key_ref, op).await?;
    call.record.resources.push(key.metadata.arn.clone());
    if !key
        .metadata
        .key_spec
        .signing_algorithms()
        .contains(&algorithm)
    {
        return Err(KmsError::new(
            ErrorCode::InvalidKeyUsage,
            format!(
                "{} is not a signing algorithm of {} keys; use one of {}",
                algorithm.as_str(),
                key.metadata.key_spec.as_str(),
                key.metadata
                    .key_spec
                    .signing_algorithms()
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    call.record.key_checks.push(KeyCheck {
        key_id: key.metadata.key_id.clone(),
        epoch: key.metadata.epoch,
        operation: op,
    });
    Ok((key, algorithm, digest))
}

/// A key pair's public half, as stored with its record.
pub(crate) fn public_key(key: &KeyRecord) -> Result<&[u8], KmsError> {
    key.public_key.as_deref().ok_or_else(|| {
        tracing::error!(key = %key.metadata.key_id, "a key pair without its public key");
        KmsError::internal()
    })
}

/// Decrypt of an RSAES-OAEP ciphertext: the ciphertext names no key, so the caller must
/// (as AWS requires).
async fn decrypt_with_key_pair(
    core: &NodeCore,
    call: &mut Call,
    req: DecryptRequest,
    algorithm: EncryptionAlgorithm,
) -> Result<DecryptResponse, KmsError> {
    if req.key_id.is_empty() {
        return Err(KmsError::validation(format!(
            "KeyId is required to decrypt with {}",
            algorithm.as_str()
        )));
    }
    refuse_context_for_key_pair(&req.encryption_context)?;
    let key = core
        .usable_key(call, &req.key_id, CryptoOperation::Decrypt)
        .await?;
    call.record.resources.push(key.metadata.arn.clone());
    check_encryption_algorithm(&key.metadata, algorithm)?;
    let version = key.metadata.current_version;
    let plaintext = core.hsm.decrypt_asymmetric(
        &material(&key, version)?,
        &key.metadata.key_id,
        version,
        key.metadata.key_spec,
        algorithm,
        &req.ciphertext_blob,
    )?;
    call.record.key_checks.push(KeyCheck {
        key_id: key.metadata.key_id.clone(),
        epoch: key.metadata.epoch,
        operation: CryptoOperation::Decrypt,
    });
    Ok(DecryptResponse {
        key_id: key.metadata.arn,
        plaintext: plaintext.to_vec(),
        encryption_algorithm: algorithm.as_str().to_string(),
    })
}

/// Refuses an encryption algorithm the key does not offer.
pub(crate) fn check_encryption_algorithm(
    key: &KeyMetadata,
    algorithm: EncryptionAlgorithm,
) -> Result<(), KmsError> {
    if key.key_spec.encryption_algorithms().contains(&algorithm) {
        Ok(())
    } else {
        Err(KmsError::new(
            ErrorCode::InvalidKeyUsage,
            format!(
                "EncryptionAlgorithm {} is not valid for a {} key",
                algorithm.as_str(),
                key.key_spec.as_str()
            ),
        ))
    }
}

/// Asymmetric encryption binds no context: AWS refuses one rather than ignore it.
pub(crate) fn refuse_context_for_key_pair(ctx: &EncryptionContext) -> Result<(), KmsError> {
    if ctx.is_empty() {
        Ok(())
    } else {
        Err(KmsError::validation(
            "EncryptionContext is not supported with asymmetric (RSAES_OAEP) encryption",
        ))
    }
}

pub(crate) fn check_context(ctx: &EncryptionContext) -> Result<(), KmsError> {
    let size: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONTEXT_BYTES {
        return Err(KmsError::validation(format!(
            "encryptionContext must be at most {MAX_CONTEXT_BYTES} bytes"
        )));
    }
    if ctx.keys().any(|k| k.is_empty()) {
        return Err(KmsError::validation(
            "encryptionContext keys must not be empty",
        ));
    }
    Ok(())
}

fn data_key_len(spec: &str, number_of_bytes: u32) -> Result<usize, KmsError> {
    match (spec.is_empty(), number_of_bytes) {
        (true, 0) => Err(KmsError::validation(
            "Please specify either number of bytes or key spec.",
        )),
        (false, n) if n != 0 => Err(KmsError::validation(
            "Please specify either number of bytes or key spec, not both.",
        )),
        (false, _) => Ok(DataKeySpec::parse(spec)?.byte_len()),
        (true, n) if (1..=1024).contains(&n) => Ok(n as usize),
        (true, n) => Err(KmsError::validation(format!(
            "Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
        ))),
    }
}

pub(crate) fn material(key: &KeyRecord, version: u32) -> Result<keyraft_hsm::WrappedKey, KmsError> {
    key.versions
        .get(&version)
        .map(|m| keyraft_hsm::WrappedKey(m.clone()))
        .ok_or_else(|| {
            KmsError::new(
                ErrorCode::InvalidCiphertext,
                "the ciphertext names a key version that does not exist",
            )
        })
}

pub(crate) fn request_id(given: String) -> Result<String, KmsError> {
    if given.len() > 128 {
        return Err(KmsError::validation(
            "request_id must be at most 128 characters",
        ));
    }
    Ok(if given.is_empty() {
        keyraft_types::new_id()
    } else {
        given
    })
}

pub(crate) fn expect_key(reply: Result<Reply, KmsError>) -> Result<KeyMetadata, KmsError> {
    match reply? {
        Reply::Key(k) => Ok(*k),
        other => {
            tracing::error!(?other, "unexpected reply");
            Err(KmsError::internal())
        }
    }
}

impl KeyApi {
    async fn set_enabled(
        core: Arc<NodeCore>,
        call: &mut Call,
        key_ref: String,
        rid: String,
        enabled: bool,
    ) -> Result<(), KmsError> {
        core.mutate_key(call, &key_ref, rid, |key_id, audit| Op::SetKeyEnabled {
            key_id,
            enabled,
            audit,
        })
        .await
        .map(|_| ())
    }

    async fn data_key(
        core: Arc<NodeCore>,
        call: &mut Call,
        key_ref: String,
        ctx: EncryptionContext,
        spec: String,
        number_of_bytes: u32,
        op: CryptoOperation,
    ) -> Result<(String, Vec<u8>, zeroize::Zeroizing<Vec<u8>>), KmsError> {
        let p = &mut call.record.request_parameters;
        p.key_id = Some(key_ref.clone());
        p.encryption_context = Some(ctx.clone());
        p.key_spec = (!spec.is_empty()).then(|| spec.clone());
        p.number_of_bytes = (number_of_bytes != 0).then_some(number_of_bytes);
        check_context(&ctx)?;
        let len = data_key_len(&spec, number_of_bytes)?;
        let key = core.usable_key(call, &key_ref, op).await?;
        call.record.resources.push(key.metadata.arn.clone());
        let version = key.metadata.current_version;
        let (plaintext, blob) = core.hsm.generate_data_key(
            &material(&key, version)?,
            &key.metadata.key_id,
            version,
            len,
            &ctx,
        )?;
        call.record.key_checks.push(KeyCheck {
            key_id: key.metadata.key_id.clone(),
            epoch: key.metadata.epoch,
            operation: op,
        });
        Ok((key.metadata.arn, blob, plaintext))
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<CreateKeyResponse>, Status> {
        self.core
            .run(
                request,
                "CreateKey",
                method!("CreateKey"),
                false,
                handler!(|core, call, req| {
                    call.record.request_parameters.key_spec = Some(if req.key_spec.is_empty() {
                        "SYMMETRIC_DEFAULT".into()
                    } else {
                        req.key_spec.clone()
                    });
                    if req.description.chars().count() > MAX_DESCRIPTION {
                        return Err(KmsError::validation(format!(
                            "description must be at most {MAX_DESCRIPTION} characters"
                        )));
                    }
                    core.authorize_action(call, "kms:CreateKey", "*").await?;
                    let key_spec = KeySpec::parse(&req.key_spec)?;
                    let key_usage = KeyUsage::parse(&req.key_usage)?;
                    let origin = Origin::parse(&req.origin)?;
                    if !key_spec.usages().contains(&key_usage) {
                        return Err(KmsError::validation(format!(
                            "KeyUsage {} is not valid for KeySpec {}; use {}",
                            key_usage.as_str(),
                            key_spec.as_str(),
                            key_spec
                                .usages()
                                .iter()
                                .map(|u| u.as_str())
                                .collect::<Vec<_>>()
                                .join(" or ")
                        )));
                    }
                    if origin == Origin::External && key_spec != KeySpec::SymmetricDefault {
                        return Err(KmsError::new(
                            ErrorCode::UnsupportedOperation,
                            "imported key material is supported for SYMMETRIC_DEFAULT keys only",
                        ));
                    }
                    let key_id = KeyId::generate();
                    let (material, public_key) =
                        new_key_material(&core, &key_id, key_spec, origin).await?;
                    let account = call.principal.account.clone();
                    let arn = core.region.key_arn(&account, &key_id);
                    call.record.resources.push(arn.clone());
                    let key = KeyMetadata {
                        key_id,
                        arn,
                        account,
                        description: req.description,
                        key_state: KeyState::Enabled,
                        key_spec,
                        key_usage,
                        origin,
                        key_manager: KeyManager::Customer,
                        creation_date_ms: core.clock.now_ms(),
                        epoch: 1,
                        current_version: 1,
                        deletion_date_ms: None,
                        rotation_period_days: None,
                        next_rotation_ms: None,
                        valid_to_ms: None,
                    };
                    let key = expect_key(
                        core.mutate(call, req.request_id, |audit| Op::CreateKey {
                            key: Box::new(key),
                            material: material.0,
                            public_key,
                            audit,
                        })
                        .await,
                    )?;
                    Ok(CreateKeyResponse {
                        key_metadata: Some((&key).into()),
                    })
                }),
            )
            .await
    }

    async fn describe_key(
        &self,
        request: Request<DescribeKeyRequest>,
    ) -> Result<Response<DescribeKeyResponse>, Status> {
        self.core
            .run(
                request,
                "DescribeKey",
                method!("DescribeKey"),
                true,
                handler!(|core, call, req| {
                    call.record.request_parameters.key_id = Some(req.key_id.clone());
                    core.read_barrier().await?;
                    let key = core.owned_key(call, &req.key_id).await?;
                    call.record.resources.push(key.metadata.arn.clone());
                    Ok(DescribeKeyResponse {
                        key_metadata: Some((&key.metadata).into()),
                    })
                }),
            )
            .await
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.core
            .run(request, "ListKeys", method!("ListKeys"), true, handler!(|core, call, req| {
                let limit = match req.limit {
                    0 => 100,
                    n @ 1..=1000 => n as usize,
                    n => {
                        return Err(KmsError::validation(format!(
                            "Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
                        )))
                    }
                };
                let after = if req.marker.is_empty() {
                    None
                } else {
                    Some(KeyId::parse(&req.marker).map_err(|_| {
                        KmsError::new(ErrorCode::InvalidMarker, "the marker is not one this service issued")
                    })?)
                };
                core.read_barrier().await?;
                core.authorize_action(call, "kms:ListKeys", "*").await?;
                let (keys, truncated) = core
                    .state
                    .list_keys(&call.principal.account, after.as_ref(), limit)
                    .map_err(internal)?;
                let next_marker = if truncated {
                    keys.last().map(|k| k.key_id.to_string()).unwrap_or_default()
                } else {
                    String::new()
                };
                Ok(ListKeysResponse {
                    keys: keys
                        .into_iter()
                        .map(|k| KeyListEntry {
                            key_id: k.key_id.to_string(),
                            key_arn: k.arn,
                        })
                        .collect(),
                    next_marker,
                    truncated,
                })
            }))
            .await
    }

    async fn enable_key(
        &self,
        request: Request<EnableKeyRequest>,
    ) -> Result<Response<EnableKeyResponse>, Status> {
        self.core
            .run(
                request,
                "EnableKey",
                method!("EnableKey"),
                false,
                handler!(|core, call, req| {
                    KeyApi::set_enabled(core, call, req.key_id, req.request_id, true).await?;
                    Ok(EnableKeyResponse {})
                }),
            )
            .await
    }

    async fn disable_key(
        &self,
        request: Request<DisableKeyRequest>,
    ) -> Result<Response<DisableKeyResponse>, Status> {
        self.core
            .run(
                request,
                "DisableKey",
                method!("DisableKey"),
                false,
                handler!(|core, call, req| {
                    KeyApi::set_enabled(core, call, req.key_id, req.request_id, false).await?;
                    Ok(DisableKeyResponse {})
                }),
            )
            .await
    }

    async fn encrypt(
        &self,
        request: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        self.core
            .run(
                request,
                "Encrypt",
                method!("Encrypt"),
                false,
                handler!(|core, call, req| {
                    let p = &mut call.record.request_parameters;
                    p.key_id = Some(req.key_id.clone());
                    p.encryption_context = Some(req.encryption_context.clone());
                    let algorithm = EncryptionAlgorithm::parse(&req.encryption_algorithm)?;
                    p.encryption_algorithm = Some(algorithm.as_str().to_string());
                    check_context(&req.encryption_context)?;
                    if req.plaintext.is_empty() || req.plaintext.len() > MAX_PLAINTEXT {
                        return Err(KmsError::validation(format!(
                            "plaintext must be 1 to {MAX_PLAINTEXT} bytes, not {}",
                            req.plaintext.len()
                        )));
                    }
                    let key = core
                        .usable_key(call, &req.key_id, CryptoOperation::Encrypt)
                        .await?;
                    call.record.resources.push(key.metadata.arn.clone());
                    check_encryption_algorithm(&key.metadata, algorithm)?;
                    let blob = if key.metadata.key_spec.is_asymmetric() {
                        refuse_context_for_key_pair(&req.encryption_context)?;
                        keyraft_hsm::asymmetric::encrypt(
                            public_key(&key)?,
                            algorithm,
                            &req.plaintext,
                        )?
                    } else {
                        let version = key.metadata.current_version;
                        core.hsm.encrypt(
                            &material(&key, version)?,
                            &key.metadata.key_id,
                            version,
                            &req.plaintext,
                            &req.encryption_context,
                        )?
                    };
                    call.record.key_checks.push(KeyCheck {
                        key_id: key.metadata.key_id.clone(),
                        epoch: key.metadata.epoch,
                        operation: CryptoOperation::Encrypt,
                    });
                    Ok(EncryptResponse {
                        key_id: key.metadata.arn,
                        ciphertext_blob: blob,
                        encryption_algorithm: algorithm.as_str().to_string(),
                    })
                }),
            )
            .await
    }

    async fn decrypt(
        &self,
        request: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        self.core
            .run(request, "Decrypt", method!("Decrypt"), false, handler!(|core, call, req| {
                let p = &mut call.record.request_parameters;
                p.key_id = (!req.key_id.is_empty()).then(|| req.key_id.clone());
                p.encryption_context = Some(req.encryption_context.clone());
                let algorithm = EncryptionAlgorithm::parse(&req.encryption_algorithm)?;
                p.encryption_algorithm = Some(algorithm.as_str().to_string());
                if algorithm != EncryptionAlgorithm::SymmetricDefault {
                    return decrypt_with_key_pair(&core, call, req, algorithm).await;
                }
                let blob = CiphertextBlob::parse(&req.ciphertext_blob)?;
                if !req.key_id.is_empty() {
                    let named = core.resolve_key(call, &req.key_id).await?;
                    if named != blob.key_id {
                        return Err(KmsError::new(
                            ErrorCode::IncorrectKey,
                            "The key ID in the request does not identify a KMS key that can perform this operation.",
                        ));
                    }
                }
                let key = core.usable_key(call, blob.key_id.as_str(), CryptoOperation::Decrypt).await?;
                call.record.request_parameters.key_id = Some(key.metadata.arn.clone());
                call.record.resources.push(key.metadata.arn.clone());
                check_encryption_algorithm(&key.metadata, algorithm)?;
                let plaintext = core.hsm.decrypt(
                    &material(&key, blob.version)?,
                    &blob,
                    &req.encryption_context,
                )?;
                call.record.key_checks.push(KeyCheck {
                    key_id: key.metadata.key_id.clone(),
                    epoch: key.metadata.epoch,
                    operation: CryptoOperation::Decrypt,
                });
                Ok(DecryptResponse {
                    key_id: key.metadata.arn,
                    plaintext: plaintext.to_vec(),
                    encryption_algorithm: SYMMETRIC_DEFAULT.to_string(),
                })
            }))
            .await
    }

    async fn generate_data_key(
        &self,
        request: Request<GenerateDataKeyRequest>,
    ) -> Result<Response<GenerateDataKeyResponse>, Status> {
        self.core
            .run(
                request,
                "GenerateDataKey",
                method!("GenerateDataKey"),
                false,
                handler!(|core, call, req| {
                    let (arn, blob, plaintext) = KeyApi::data_key(
                        core,
                        call,
                        req.key_id,
                        req.encryption_context,
                        req.key_spec,
                        req.number_of_bytes,
                        CryptoOperation::GenerateDataKey,
                    )
                    .await?;
                    Ok(GenerateDataKeyResponse {
                        key_id: arn,
                        ciphertext_blob: blob,
                        plaintext: plaintext.to_vec(),
                    })
                }),
            )
            .await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<GenerateDataKeyWithoutPlaintextResponse>, Status> {
        self.core
            .run(
                request,
                "GenerateDataKeyWithoutPlaintext",
                method!("GenerateDataKeyWithoutPlaintext"),
                false,
                handler!(|core, call, req| {
                    let (arn, blob, _plaintext) = KeyApi::data_key(
                        core,
                        call,
                        req.key_id,
                        req.encryption_context,
                        req.key_spec,
                        req.number_of_bytes,
                        CryptoOperation::GenerateDataKeyWithoutPlaintext,
                    )
                    .await?;
                    Ok(GenerateDataKeyWithoutPlaintextResponse {
                        key_id: arn,
                        ciphertext_blob: blob,
                    })
                }),
            )
            .await
    }

    async fn re_encrypt(
        &self,
        request: Request<ReEncryptRequest>,
    ) -> Result<Response<ReEncryptResponse>, Status> {
        self.core
            .run(
                request,
                "ReEncrypt",
                method!("ReEncrypt"),
                false,
                handler!(|core, call, req| { crate::key_admin::re_encrypt(core, call, req).await }),
            )
            .await
    }

    async fn generate_random(
        &self,
        request: Request<GenerateRandomRequest>,
    ) -> Result<Response<GenerateRandomResponse>, Status> {
        self.core
            .run(request, "GenerateRandom", method!("GenerateRandom"), true, handler!(|core, call, req| {
                call.record.request_parameters.number_of_bytes = Some(req.number_of_bytes);
                core.authorize_action(call, "kms:GenerateRandom", "*").await?;
                if !(1..=1024).contains(&req.number_of_bytes) {
                    return Err(KmsError::validation(format!(
                        "Value '{}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024",
                        req.number_of_bytes
                    )));
                }
                Ok(GenerateRandomResponse {
                    plaintext: core.hsm.generate_random(req.number_of_bytes as usize)?,
                })
            }))
            .await
    }

    async fn update_key_description(
        &self,
        request: Request<UpdateKeyDescriptionRequest>,
    ) -> Result<Response<UpdateKeyDescriptionResponse>, Status> {
        self.core
            .run(
                request,
                "UpdateKeyDescription",
                method!("UpdateKeyDescription"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::update_description(core, call, req).await
                }),
            )
            .await
    }

    async fn create_alias(
        &self,
        request: Request<CreateAliasRequest>,
    ) -> Result<Response<CreateAliasResponse>, Status> {
        self.core
            .run(
                request,
                "CreateAlias",
                method!("CreateAlias"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::set_alias(
                        core,
                        call,
                        req.alias_name,
                        req.target_key_id,
                        req.request_id,
                        true,
                    )
                    .await?;
                    Ok(CreateAliasResponse {})
                }),
            )
            .await
    }

    async fn update_alias(
        &self,
        request: Request<UpdateAliasRequest>,
    ) -> Result<Response<UpdateAliasResponse>, Status> {
        self.core
            .run(
                request,
                "UpdateAlias",
                method!("UpdateAlias"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::set_alias(
                        core,
                        call,
                        req.alias_name,
                        req.target_key_id,
                        req.request_id,
                        false,
                    )
                    .await?;
                    Ok(UpdateAliasResponse {})
                }),
            )
            .await
    }

    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        self.core
            .run(
                request,
                "DeleteAlias",
                method!("DeleteAlias"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::delete_alias(core, call, req).await
                }),
            )
            .await
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        self.core
            .run(
                request,
                "ListAliases",
                method!("ListAliases"),
                true,
                handler!(|core, call, req| {
                    crate::key_admin::list_aliases(core, call, req).await
                }),
            )
            .await
    }

    async fn tag_resource(
        &self,
        request: Request<TagResourceRequest>,
    ) -> Result<Response<TagResourceResponse>, Status> {
        self.core
            .run(
                request,
                "TagResource",
                method!("TagResource"),
                false,
                handler!(|core, call, req| { crate::key_admin::tag(core, call, req).await }),
            )
            .await
    }

    async fn untag_resource(
        &self,
        request: Request<UntagResourceRequest>,
    ) -> Result<Response<UntagResourceResponse>, Status> {
        self.core
            .run(
                request,
                "UntagResource",
                method!("UntagResource"),
                false,
                handler!(|core, call, req| { crate::key_admin::untag(core, call, req).await }),
            )
            .await
    }

    async fn list_resource_tags(
        &self,
        request: Request<ListResourceTagsRequest>,
    ) -> Result<Response<ListResourceTagsResponse>, Status> {
        self.core
            .run(
                request,
                "ListResourceTags",
                method!("ListResourceTags"),
                true,
                handler!(|core, call, req| { crate::key_admin::list_tags(core, call, req).await }),
            )
            .await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<ScheduleKeyDeletionRequest>,
    ) -> Result<Response<ScheduleKeyDeletionResponse>, Status> {
        self.core
            .run(
                request,
                "ScheduleKeyDeletion",
                method!("ScheduleKeyDeletion"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::schedule_deletion(core, call, req).await
                }),
            )
            .await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<CancelKeyDeletionRequest>,
    ) -> Result<Response<CancelKeyDeletionResponse>, Status> {
        self.core
            .run(
                request,
                "CancelKeyDeletion",
                method!("CancelKeyDeletion"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::cancel_deletion(core, call, req).await
                }),
            )
            .await
    }

    async fn enable_key_rotation(
        &self,
        request: Request<EnableKeyRotationRequest>,
    ) -> Result<Response<EnableKeyRotationResponse>, Status> {
        self.core
            .run(request, "EnableKeyRotation", method!("EnableKeyRotation"), false, handler!(|core, call, req| {
                let days = match req.rotation_period_in_days {
                    0 => 365,
                    d @ 90..=2560 => d,
                    d => return Err(KmsError::validation(format!(
                        "Value '{d}' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between 90 and 2560"
                    ))),
                };
                crate::key_admin::set_rotation(core, call, req.key_id, req.request_id, Some(days)).await?;
                Ok(EnableKeyRotationResponse {})
            }))
            .await
    }

    async fn disable_key_rotation(
        &self,
        request: Request<DisableKeyRotationRequest>,
    ) -> Result<Response<DisableKeyRotationResponse>, Status> {
        self.core
            .run(
                request,
                "DisableKeyRotation",
                method!("DisableKeyRotation"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::set_rotation(core, call, req.key_id, req.request_id, None)
                        .await?;
                    Ok(DisableKeyRotationResponse {})
                }),
            )
            .await
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<GetKeyRotationStatusRequest>,
    ) -> Result<Response<GetKeyRotationStatusResponse>, Status> {
        self.core
            .run(
                request,
                "GetKeyRotationStatus",
                method!("GetKeyRotationStatus"),
                true,
                handler!(|core, call, req| {
                    call.record.request_parameters.key_id = Some(req.key_id.clone());
                    core.read_barrier().await?;
                    let key = core.owned_key(call, &req.key_id).await?;
                    call.record.resources.push(key.metadata.arn.clone());
                    let m = key.metadata;
                    Ok(GetKeyRotationStatusResponse {
                        key_id: m.arn,
                        key_rotation_enabled: m.rotation_period_days.is_some(),
                        rotation_period_in_days: m.rotation_period_days.unwrap_or(0),
                        next_rotation_date: m.next_rotation_ms.unwrap_or(0),
                    })
                }),
            )
            .await
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<RotateKeyOnDemandRequest>,
    ) -> Result<Response<RotateKeyOnDemandResponse>, Status> {
        self.core
            .run(
                request,
                "RotateKeyOnDemand",
                method!("RotateKeyOnDemand"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::rotate_on_demand(core, call, req).await
                }),
            )
            .await
    }

    async fn list_key_rotations(
        &self,
        request: Request<ListKeyRotationsRequest>,
    ) -> Result<Response<ListKeyRotationsResponse>, Status> {
        self.core
            .run(
                request,
                "ListKeyRotations",
                method!("ListKeyRotations"),
                true,
                handler!(|core, call, req| {
                    crate::key_admin::list_rotations(core, call, req).await
                }),
            )
            .await
    }

    async fn get_parameters_for_import(
        &self,
        request: Request<GetParametersForImportRequest>,
    ) -> Result<Response<GetParametersForImportResponse>, Status> {
        self.core
            .run(
                request,
                "GetParametersForImport",
                method!("GetParametersForImport"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::import_parameters(core, call, req).await
                }),
            )
            .await
    }

    async fn import_key_material(
        &self,
        request: Request<ImportKeyMaterialRequest>,
    ) -> Result<Response<ImportKeyMaterialResponse>, Status> {
        self.core
            .run(
                request,
                "ImportKeyMaterial",
                method!("ImportKeyMaterial"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::import_material(core, call, req).await
                }),
            )
            .await
    }

    async fn delete_imported_key_material(
        &self,
        request: Request<DeleteImportedKeyMaterialRequest>,
    ) -> Result<Response<DeleteImportedKeyMaterialResponse>, Status> {
        self.core
            .run(
                request,
                "DeleteImportedKeyMaterial",
                method!("DeleteImportedKeyMaterial"),
                false,
                handler!(|core, call, req| {
                    core.mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
                        Op::DeleteImportedKeyMaterial { key_id, audit }
                    })
                    .await?;
                    Ok(DeleteImportedKeyMaterialResponse {})
                }),
            )
            .await
    }

    async fn generate_mac(
        &self,
        request: Request<GenerateMacRequest>,
    ) -> Result<Response<GenerateMacResponse>, Status> {
        self.core
            .run(
                request,
                "GenerateMac",
                method!("GenerateMac"),
                false,
                handler!(|core, call, req| {
                    let (key, bits) = mac_key(
                        &core,
                        call,
                        &req.key_id,
                        &req.mac_algorithm,
                        &req.message,
                        CryptoOperation::GenerateMac,
                    )
                    .await?;
                    let version = key.metadata.current_version;
                    let mac = core.hsm.mac(
                        &material(&key, version)?,
                        &key.metadata.key_id,
                        version,
                        bits,
                        &req.message,
                    )?;
                    Ok(GenerateMacResponse {
                        key_id: key.metadata.arn,
                        mac,
                        mac_algorithm: req.mac_algorithm,
                    })
                }),
            )
            .await
    }

    async fn verify_mac(
        &self,
        request: Request<VerifyMacRequest>,
    ) -> Result<Response<VerifyMacResponse>, Status> {
        self.core
            .run(
                request,
                "VerifyMac",
                method!("VerifyMac"),
                false,
                handler!(|core, call, req| {
                    let (key, bits) = mac_key(
                        &core,
                        call,
                        &req.key_id,
                        &req.mac_algorithm,
                        &req.message,
                        CryptoOperation::VerifyMac,
                    )
                    .await?;
                    let version = key.metadata.current_version;
                    let valid = core.hsm.verify_mac(
                        &material(&key, version)?,
                        &key.metadata.key_id,
                        version,
                        bits,
                        &req.message,
                        &req.mac,
                    )?;
                    if !valid {
                        return Err(KmsError::new(
                            ErrorCode::InvalidMac,
                            "The MAC does not match the message and key.",
                        ));
                    }
                    Ok(VerifyMacResponse {
                        key_id: key.metadata.arn,
                        mac_valid: true,
                        mac_algorithm: req.mac_algorithm,
                    })
                }),
            )
            .await
    }

    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        self.core
            .run(
                request,
                "Sign",
                method!("Sign"),
                false,
                handler!(|core, call, req| {
                    let (key, algorithm, digest) = signing_key(
                        &core,
                        call,
                        &req.key_id,
                        &req.signing_algorithm,
                        &req.message_type,
                        &req.message,
                        CryptoOperation::Sign,
                    )
                    .await?;
                    let version = key.metadata.current_version;
                    let signature = core.hsm.sign(
                        &material(&key, version)?,
                        &key.metadata.key_id,
                        version,
                        key.metadata.key_spec,
                        algorithm,
                        &digest,
                    )?;
                    Ok(SignResponse {
                        key_id: key.metadata.arn,
                        signature,
                        signing_algorithm: algorithm.as_str().to_string(),
                    })
                }),
            )
            .await
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<VerifyResponse>, Status> {
        self.core
            .run(
                request,
                "Verify",
                method!("Verify"),
                false,
                handler!(|core, call, req| {
                    let (key, algorithm, digest) = signing_key(
                        &core,
                        call,
                        &req.key_id,
                        &req.signing_algorithm,
                        &req.message_type,
                        &req.message,
                        CryptoOperation::Verify,
                    )
                    .await?;
                    let valid = keyraft_hsm::asymmetric::verify(
                        key.metadata.key_spec,
                        public_key(&key)?,
                        algorithm,
                        &digest,
                        &req.signature,
                    )?;
                    if !valid {
                        return Err(KmsError::new(
                            ErrorCode::KmsInvalidSignature,
                            "The signature does not match the message, the key and the signing algorithm.",
                        ));
                    }
                    Ok(VerifyResponse {
                        key_id: key.metadata.arn,
                        signature_valid: true,
                        signing_algorithm: algorithm.as_str().to_string(),
                    })
                }),
            )
            .await
    }

    async fn get_public_key(
        &self,
        request: Request<GetPublicKeyRequest>,
    ) -> Result<Response<GetPublicKeyResponse>, Status> {
        self.core
            .run(
                request,
                "GetPublicKey",
                method!("GetPublicKey"),
                false,
                handler!(|core, call, req| {
                    call.record.request_parameters.key_id = Some(req.key_id.clone());
                    let key = core
                        .usable_key(call, &req.key_id, CryptoOperation::GetPublicKey)
                        .await?;
                    call.record.resources.push(key.metadata.arn.clone());
                    call.record.key_checks.push(KeyCheck {
                        key_id: key.metadata.key_id.clone(),
                        epoch: key.metadata.epoch,
                        operation: CryptoOperation::GetPublicKey,
                    });
                    let m = &key.metadata;
                    Ok(GetPublicKeyResponse {
                        key_id: m.arn.clone(),
                        public_key: public_key(&key)?.to_vec(),
                        key_spec: m.key_spec.as_str().to_string(),
                        key_usage: m.key_usage.as_str().to_string(),
                        encryption_algorithms: keyraft_proto::encryption_algorithms(
                            m.key_spec,
                            m.key_usage,
                        ),
                        signing_algorithms: keyraft_proto::signing_algorithms(
                            m.key_spec,
                            m.key_usage,
                        ),
                    })
                }),
            )
            .await
    }

    async fn put_key_policy(
        &self,
        request: Request<PutKeyPolicyRequest>,
    ) -> Result<Response<PutKeyPolicyResponse>, Status> {
        self.core
            .run(
                request,
                "PutKeyPolicy",
                method!("PutKeyPolicy"),
                false,
                handler!(|core, call, req| {
                    crate::key_admin::put_key_policy(core, call, req).await
                }),
            )
            .await
    }

    async fn get_key_policy(
        &self,
        request: Request<GetKeyPolicyRequest>,
    ) -> Result<Response<GetKeyPolicyResponse>, Status> {
        self.core
            .run(
                request,
                "GetKeyPolicy",
                method!("GetKeyPolicy"),
                true,
                handler!(|core, call, req| {
                    crate::key_admin::get_key_policy(core, call, req).await
                }),
            )
            .await
    }

    async fn list_key_policies(
        &self,
        request: Request<ListKeyPoliciesRequest>,
    ) -> Result<Response<ListKeyPoliciesResponse>, Status> {
        self.core
            .run(
                request,
                "ListKeyPolicies",
                method!("ListKeyPolicies"),
                true,
                handler!(|core, call, req| {
                    crate::key_admin::list_key_policies(core, call, req).await
                }),
            )
            .await
    }

    async fn create_grant(
        &self,
        request: Request<CreateGrantRequest>,
    ) -> Result<Response<CreateGrantResponse>, Status> {
        self.core
            .run(
                request,
                "CreateGrant",
                method!("CreateGrant"),
                false,
                handler!(|core, call, req| { crate::grants::create_grant(core, call, req).await }),
            )
            .await
    }

    async fn list_grants(
        &self,
        request: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.core
            .run(
                request,
                "ListGrants",
                method!("ListGrants"),
                true,
                handler!(|core, call, req| { crate::grants::list_grants(core, call, req).await }),
            )
            .await
    }

    async fn list_retirable_grants(
        &self,
        request: Request<ListRetirableGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.core
            .run(
                request,
                "ListRetirableGrants",
                method!("ListRetirableGrants"),
                true,
                handler!(|core, call, req| {
                    crate::grants::list_retirable_grants(core, call, req).await
                }),
            )
            .await
    }

    async fn retire_grant(
        &self,
        request: Request<RetireGrantRequest>,
    ) -> Result<Response<RetireGrantResponse>, Status> {
        self.core
            .run(
                request,
                "RetireGrant",
                method!("RetireGrant"),
                false,
                handler!(|core, call, req| { crate::grants::retire_grant(core, call, req).await }),
            )
            .await
    }

    async fn revoke_grant(
        &self,
        request: Request<RevokeGrantRequest>,
    ) -> Result<Response<RevokeGrantResponse>, Status> {
        self.core
            .run(
                request,
                "RevokeGrant",
                method!("RevokeGrant"),
                false,
                handler!(|core, call, req| { crate::grants::revoke_grant(core, call, req).await }),
            )
            .await
    }
}
