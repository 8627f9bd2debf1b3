//! Key administration beyond the life cycle: aliases, descriptions, tags — and
//! ReEncrypt, which moves a ciphertext between keys without the plaintext leaving the
//! service.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyraft_hsm::CiphertextBlob;
use keyraft_proto::v1::*;
use keyraft_state::{Op, PreparedRotation, Reply};
use keyraft_types::{
    AliasName, CryptoOperation, EncryptionAlgorithm, EncryptionContext, ErrorCode, KeyCheck,
    KeyRef, KmsError,
};

use crate::core::{Call, NodeCore};
use crate::kms::{
    check_encryption_algorithm, expect_key, internal, material, public_key,
    refuse_context_for_key_pair, MAX_DESCRIPTION,
};

/// Longest tag key and value, and most tags per request (AWS's limits).
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;
const MAX_TAGS: usize = 50;

fn tag_error(message: String) -> KmsError {
    KmsError::new(ErrorCode::Tag, message)
}

fn check_tag_key(key: &str) -> Result<(), KmsError> {
    let len = key.chars().count();
    if len == 0 || len > MAX_TAG_KEY {
        return Err(tag_error(format!(
            "tag keys are 1 to {MAX_TAG_KEY} characters"
        )));
    }
    if key.starts_with("aws:") || key.starts_with("keyraft:") {
        return Err(tag_error(format!("tag key '{key}' uses a reserved prefix")));
    }
    Ok(())
}

/// A marker for ListAliases / ListResourceTags: the last name returned.
fn marker(given: &str) -> Option<String> {
    (!given.is_empty()).then(|| given.to_string())
}

fn page_limit(limit: u32, max: u32, default: u32) -> Result<usize, KmsError> {
    match limit {
        0 => Ok(default as usize),
        n if n <= max => Ok(n as usize),
        n => Err(KmsError::validation(format!(
            "Value '{n}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max}"
        ))),
    }
}

pub(crate) async fn update_description(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: UpdateKeyDescriptionRequest,
) -> Result<UpdateKeyDescriptionResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    call.record.request_parameters.description = Some(req.description.clone());
    if req.description.chars().count() > MAX_DESCRIPTION {
        return Err(KmsError::validation(format!(
            "description must be at most {MAX_DESCRIPTION} characters"
        )));
    }
    let description = req.description;
    core.mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
        Op::UpdateKeyDescription {
            key_id,
            description,
            audit,
        }
    })
    .await?;
    Ok(UpdateKeyDescriptionResponse {})
}

/// CreateAlias (`create`) or UpdateAlias.
pub(crate) async fn set_alias(
    core: Arc<NodeCore>,
    call: &mut Call,
    alias_name: String,
    target: String,
    request_id: String,
    create: bool,
) -> Result<(), KmsError> {
    let p = &mut call.record.request_parameters;
    p.alias_name = Some(alias_name.clone());
    p.target_key_id = Some(target.clone());
    let name = AliasName::parse_customer(&alias_name)?;
    if matches!(core.region.parse_key_ref(&target)?, KeyRef::Alias { .. }) {
        return Err(KmsError::validation(
            "TargetKeyId must be a key id or key ARN, not an alias",
        ));
    }
    let key = core.owned_key(call, &target).await?;
    let account = call.principal.account.clone();
    call.record
        .resources
        .push(core.region.alias_arn(&account, &name));
    call.record.resources.push(key.metadata.arn.clone());
    let key_id = key.metadata.key_id;
    let reply = core
        .mutate(call, request_id, |audit| {
            if create {
                Op::CreateAlias {
                    account,
                    name,
                    key_id,
                    audit,
                }
            } else {
                Op::UpdateAlias {
                    account,
                    name,
                    key_id,
                    audit,
                }
            }
        })
        .await?;
    match reply {
        Reply::Alias(_) => Ok(()),
        other => {
            tracing::error!(?other, "unexpected reply to an alias change");
            Err(KmsError::internal())
        }
    }
}

pub(crate) async fn delete_alias(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: DeleteAliasRequest,
) -> Result<DeleteAliasResponse, KmsError> {
    call.record.request_parameters.alias_name = Some(req.alias_name.clone());
    let name = AliasName::parse_customer(&req.alias_name)?;
    let account = call.principal.account.clone();
    call.record
        .resources
        .push(core.region.alias_arn(&account, &name));
    core.mutate(call, req.request_id, |audit| Op::DeleteAlias {
        account,
        name,
        audit,
    })
    .await?;
    Ok(DeleteAliasResponse {})
}

pub(crate) async fn list_aliases(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListAliasesRequest,
) -> Result<ListAliasesResponse, KmsError> {
    let limit = page_limit(req.limit, 100, 50)?;
    let after = match marker(&req.marker) {
        Some(m) => Some(AliasName::parse(&m).map_err(|_| {
            KmsError::new(
                ErrorCode::InvalidMarker,
                "the marker is not one this service issued",
            )
        })?),
        None => None,
    };
    core.read_barrier().await?;
    let key = if req.key_id.is_empty() {
        core.authorize_action(call, "kms:ListAliases", "*").await?;
        None
    } else {
        call.record.request_parameters.key_id = Some(req.key_id.clone());
        Some(core.owned_key(call, &req.key_id).await?.metadata.key_id)
    };
    let account = call.principal.account.clone();
    let (aliases, truncated) = core
        .state
        .list_aliases(&account, key.as_ref(), after.as_ref(), limit)
        .map_err(internal)?;
    let next_marker = match (truncated, aliases.last()) {
        (true, Some(a)) => a.name.to_string(),
        _ => String::new(),
    };
    Ok(ListAliasesResponse {
        aliases: aliases
            .into_iter()
            .map(|a| AliasListEntry {
                alias_arn: core.region.alias_arn(&account, &a.name),
                alias_name: a.name.to_string(),
                target_key_id: a.target_key_id.to_string(),
                creation_date: a.creation_ms,
                last_updated_date: a.last_updated_ms,
            })
            .collect(),
        next_marker,
        truncated,
    })
}

pub(crate) async fn tag(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: TagResourceRequest,
) -> Result<TagResourceResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    call.record.request_parameters.tag_keys =
        Some(req.tags.iter().map(|t| t.tag_key.clone()).collect());
    if req.tags.is_empty() || req.tags.len() > MAX_TAGS {
        return Err(tag_error(format!("a request sets 1 to {MAX_TAGS} tags")));
    }
    let mut tags = BTreeMap::new();
    for t in req.tags {
        check_tag_key(&t.tag_key)?;
        if t.tag_value.chars().count() > MAX_TAG_VALUE {
            return Err(tag_error(format!(
                "tag values are at most {MAX_TAG_VALUE} characters"
            )));
        }
        tags.insert(t.tag_key, t.tag_value);
    }
    core.mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
        Op::TagResource {
            key_id,
            tags,
            audit,
        }
    })
    .await?;
    Ok(TagResourceResponse {})
}

pub(crate) async fn untag(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: UntagResourceRequest,
) -> Result<UntagResourceResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    call.record.request_parameters.tag_keys = Some(req.tag_keys.clone());
    if req.tag_keys.is_empty() || req.tag_keys.len() > MAX_TAGS {
        return Err(tag_error(format!("a request removes 1 to {MAX_TAGS} tags")));
    }
    for k in &req.tag_keys {
        check_tag_key(k)?;
    }
    let tag_keys = req.tag_keys;
    core.mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
        Op::UntagResource {
            key_id,
            tag_keys,
            audit,
        }
    })
    .await?;
    Ok(UntagResourceResponse {})
}

pub(crate) async fn list_tags(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListResourceTagsRequest,
) -> Result<ListResourceTagsResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let limit = page_limit(req.limit, 50, 50)?;
    core.read_barrier().await?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let after = marker(&req.marker);
    let mut tags: Vec<Tag> = key
        .tags
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .map(|(tag_key, tag_value)| Tag { tag_key, tag_value })
        .collect();
    let truncated = tags.len() > limit;
    tags.truncate(limit);
    let next_marker = match (truncated, tags.last()) {
        (true, Some(t)) => t.tag_key.clone(),
        _ => String::new(),
    };
    Ok(ListResourceTagsResponse {
        tags,
        next_marker,
        truncated,
    })
}

pub(crate) async fn re_encrypt(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ReEncryptRequest,
) -> Result<ReEncryptResponse, KmsError> {
    let p = &mut call.record.request_parameters;
    p.key_id = (!req.source_key_id.is_empty()).then(|| req.source_key_id.clone());
    p.encryption_context = Some(req.source_encryption_context.clone());
    p.destination_key_id = Some(req.destination_key_id.clone());
    p.destination_encryption_context = Some(req.destination_encryption_context.clone());
    let source_ctx: EncryptionContext = req.source_encryption_context;
    let dest_ctx: EncryptionContext = req.destination_encryption_context;
    crate::kms::check_context(&source_ctx)?;
    crate::kms::check_context(&dest_ctx)?;
    let source_alg = EncryptionAlgorithm::parse(&req.source_encryption_algorithm)?;
    let dest_alg = EncryptionAlgorithm::parse(&req.destination_encryption_algorithm)?;
    let symmetric_source = source_alg == EncryptionAlgorithm::SymmetricDefault;
    // A symmetric ciphertext names its key; an RSAES-OAEP one does not, so the caller must.
    let (source, blob) = if symmetric_source {
        let blob = CiphertextBlob::parse(&req.ciphertext_blob)?;
        if !req.source_key_id.is_empty()
            && core.resolve_key(call, &req.source_key_id).await? != blob.key_id
        {
            return Err(KmsError::new(
                ErrorCode::IncorrectKey,
                "The source key ID in the request does not identify the key the ciphertext was made under.",
            ));
        }
        call.action = Some(("kms:ReEncryptFrom", Some(source_ctx.clone())));
        let key = core
            .usable_key(call, blob.key_id.as_str(), CryptoOperation::Decrypt)
            .await?;
        (key, Some(blob))
    } else {
        if req.source_key_id.is_empty() {
            return Err(KmsError::validation(format!(
                "SourceKeyId is required to re-encrypt from {}",
                source_alg.as_str()
            )));
        }
        refuse_context_for_key_pair(&source_ctx)?;
        call.action = Some(("kms:ReEncryptFrom", None));
        let key = core
            .usable_key(call, &req.source_key_id, CryptoOperation::Decrypt)
            .await?;
        (key, None)
    };
    call.action = Some(("kms:ReEncryptTo", Some(dest_ctx.clone())));
    let dest = core
        .usable_key(call, &req.destination_key_id, CryptoOperation::Encrypt)
        .await?;
    call.record.resources.push(source.metadata.arn.clone());
    call.record.resources.push(dest.metadata.arn.clone());
    check_encryption_algorithm(&source.metadata, source_alg)?;
    check_encryption_algorithm(&dest.metadata, dest_alg)?;
    let version = dest.metadata.current_version;
    let moved = match &blob {
        // Symmetric to symmetric: the plaintext never leaves the HSM.
        Some(blob) if !dest.metadata.key_spec.is_asymmetric() => core.hsm.reencrypt(
            &material(&source, blob.version)?,
            blob,
            &source_ctx,
            &material(&dest, version)?,
            &dest.metadata.key_id,
            version,
            &dest_ctx,
        )?,
        // With a key pair on either side the plaintext passes through this node's
        // memory (zeroized after), as it would in Decrypt.
        _ => {
            let plaintext = match &blob {
                Some(blob) => {
                    core.hsm
                        .decrypt(&material(&source, blob.version)?, blob, &source_ctx)?
                }
                None => {
                    let v = source.metadata.current_version;
                    core.hsm.decrypt_asymmetric(
                        &material(&source, v)?,
                        &source.metadata.key_id,
                        v,
                        source.metadata.key_spec,
                        source_alg,
                        &req.ciphertext_blob,
                    )?
                }
            };
            if dest.metadata.key_spec.is_asymmetric() {
                refuse_context_for_key_pair(&dest_ctx)?;
                keyraft_hsm::asymmetric::encrypt(public_key(&dest)?, dest_alg, &plaintext)?
            } else {
                core.hsm.encrypt(
                    &material(&dest, version)?,
                    &dest.metadata.key_id,
                    version,
                    &plaintext,
                    &dest_ctx,
                )?
            }
        }
    };
    call.record.key_checks = vec![
        KeyCheck {
            key_id: source.metadata.key_id.clone(),
            epoch: source.metadata.epoch,
            operation: CryptoOperation::Decrypt,
        },
        KeyCheck {
            key_id: dest.metadata.key_id.clone(),
            epoch: dest.metadata.epoch,
            operation: CryptoOperation::Encrypt,
        },
    ];
    Ok(ReEncryptResponse {
        ciphertext_blob: moved,
        source_key_id: source.metadata.arn,
        key_id: dest.metadata.arn,
        source_encryption_algorithm: source_alg.as_str().to_string(),
        destination_encryption_algorithm: dest_alg.as_str().to_string(),
    })
}

/// AWS's waiting period for key deletion, in days.
const DELETION_WINDOW: std::ops::RangeInclusive<u32> = 7..=30;

pub(crate) async fn schedule_deletion(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ScheduleKeyDeletionRequest,
) -> Result<ScheduleKeyDeletionResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let days = match req.pending_window_in_days {
        0 => 30,
        d if DELETION_WINDOW.contains(&d) => d,
        d => {
            return Err(KmsError::validation(format!(
                "Value '{d}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
            )))
        }
    };
    let key = core
        .mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
            Op::ScheduleKeyDeletion {
                key_id,
                pending_window_days: days,
                audit,
            }
        })
        .await?;
    Ok(ScheduleKeyDeletionResponse {
        key_id: key.arn,
        deletion_date: key.deletion_date_ms.unwrap_or(0),
        key_state: key.key_state.as_str().to_string(),
        pending_window_in_days: days,
    })
}

pub(crate) async fn cancel_deletion(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: CancelKeyDeletionRequest,
) -> Result<CancelKeyDeletionResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let key = core
        .mutate_key(call, &req.key_id, req.request_id, |key_id, audit| {
            Op::CancelKeyDeletion { key_id, audit }
        })
        .await?;
    Ok(CancelKeyDeletionResponse { key_id: key.arn })
}

/// EnableKeyRotation (`Some(days)`) or DisableKeyRotation.
pub(crate) async fn set_rotation(
    core: Arc<NodeCore>,
    call: &mut Call,
    key_ref: String,
    request_id: String,
    period_days: Option<u32>,
) -> Result<(), KmsError> {
    call.record.request_parameters.key_id = Some(key_ref.clone());
    core.mutate_key(call, &key_ref, request_id, |key_id, audit| {
        Op::SetKeyRotation {
            key_id,
            period_days,
            audit,
        }
    })
    .await?;
    Ok(())
}

pub(crate) async fn rotate_on_demand(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: RotateKeyOnDemandRequest,
) -> Result<RotateKeyOnDemandResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    // The version is decided here, so read the newest state first: only a truly
    // concurrent rotation then conflicts (ConflictException).
    core.read_barrier().await?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let version = key.metadata.current_version + 1;
    let material = core
        .hsm
        .generate_key_material(&key.metadata.key_id, version)?;
    let rotation = PreparedRotation {
        key_id: key.metadata.key_id,
        version,
        material: material.0,
    };
    let key = expect_key(
        core.mutate(call, req.request_id, |audit| Op::RotateKey {
            rotation,
            audit,
        })
        .await,
    )?;
    Ok(RotateKeyOnDemandResponse { key_id: key.arn })
}

pub(crate) async fn list_rotations(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListKeyRotationsRequest,
) -> Result<ListKeyRotationsResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let limit = page_limit(req.limit, 1000, 100)?;
    let after: u32 = match marker(&req.marker) {
        Some(m) => m.parse().map_err(|_| {
            KmsError::new(
                ErrorCode::InvalidMarker,
                "the marker is not one this service issued",
            )
        })?,
        None => 0,
    };
    core.read_barrier().await?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let mut rotations: Vec<KeyRotation> = key
        .rotations
        .iter()
        .filter(|r| r.version > after)
        .map(|r| KeyRotation {
            key_id: key.metadata.arn.clone(),
            rotation_date: r.date_ms,
            rotation_type: if r.on_demand {
                "ON_DEMAND"
            } else {
                "AUTOMATIC"
            }
            .to_string(),
            version: r.version,
        })
        .collect();
    let truncated = rotations.len() > limit;
    rotations.truncate(limit);
    let next_marker = match (truncated, rotations.last()) {
        (true, Some(r)) => r.version.to_string(),
        _ => String::new(),
    };
    Ok(ListKeyRotationsResponse {
        rotations,
        next_marker,
        truncated,
    })
}

/// How long import parameters stay valid (as AWS: 24 hours).
const IMPORT_TOKEN_TTL_MS: u64 = 24 * 60 * 60 * 1000;

pub(crate) async fn import_parameters(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: GetParametersForImportRequest,
) -> Result<GetParametersForImportResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    call.record.request_parameters.encryption_algorithm = Some(req.wrapping_algorithm.clone());
    call.record.request_parameters.key_spec = Some(req.wrapping_key_spec.clone());
    match req.wrapping_algorithm.as_str() {
        "" | "RSAES_OAEP_SHA_256" => {}
        other => {
            return Err(KmsError::new(
                ErrorCode::UnsupportedOperation,
                format!("WrappingAlgorithm {other} is not supported; use RSAES_OAEP_SHA_256"),
            ))
        }
    }
    let bits = match req.wrapping_key_spec.as_str() {
        "" | "RSA_2048" => 2048,
        "RSA_3072" => 3072,
        "RSA_4096" => 4096,
        other => {
            return Err(KmsError::validation(format!(
                "WrappingKeySpec {other} is not valid"
            )))
        }
    };
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let token = hex_token();
    let hsm = core.hsm.clone();
    let token_for_hsm = token.clone();
    // RSA key generation takes a while: keep it off the async workers.
    let wrapping = tokio::task::spawn_blocking(move || {
        hsm.generate_import_wrapping_key(bits, token_for_hsm.as_bytes())
    })
    .await
    .map_err(|_| KmsError::internal())??;
    let expires_ms = core.clock.now_ms() + IMPORT_TOKEN_TTL_MS;
    let key_id = key.metadata.key_id;
    let public_key_der = wrapping.public_key_der.clone();
    let token_for_op = token.clone();
    core.mutate(call, req.request_id, |audit| Op::StoreImportParameters {
        key_id,
        token: token_for_op,
        public_key_der,
        wrapped_private_key: wrapping.wrapped_private_key,
        expires_ms,
        audit,
    })
    .await?;
    Ok(GetParametersForImportResponse {
        key_id: key.metadata.arn,
        public_key: wrapping.public_key_der,
        import_token: token.into_bytes(),
        parameters_valid_to: expires_ms,
    })
}

fn hex_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn import_material(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ImportKeyMaterialRequest,
) -> Result<ImportKeyMaterialResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let valid_to = match (req.expiration_model.as_str(), req.valid_to) {
        ("" | "KEY_MATERIAL_DOES_NOT_EXPIRE", 0) => None,
        ("" | "KEY_MATERIAL_EXPIRES", t) if t > 0 => Some(t),
        ("KEY_MATERIAL_EXPIRES", _) => {
            return Err(KmsError::validation("KEY_MATERIAL_EXPIRES needs ValidTo"))
        }
        (_, _) => {
            return Err(KmsError::validation(
                "ValidTo goes only with KEY_MATERIAL_EXPIRES",
            ))
        }
    };
    if valid_to.is_some_and(|t| t <= core.clock.now_ms()) {
        return Err(KmsError::validation("ValidTo must be in the future"));
    }
    let token = String::from_utf8(req.import_token.clone()).map_err(|_| {
        KmsError::new(
            ErrorCode::InvalidImportToken,
            "The import token is invalid.",
        )
    })?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let params = match core.state.import_parameters(&token).map_err(internal)? {
        Some(p) => Some(p),
        None => {
            core.read_barrier().await?;
            core.state.import_parameters(&token).map_err(internal)?
        }
    }
    .ok_or_else(|| {
        KmsError::new(
            ErrorCode::InvalidImportToken,
            "The import token is invalid or was used already.",
        )
    })?;
    if params.key_id != key.metadata.key_id {
        return Err(KmsError::new(
            ErrorCode::InvalidImportToken,
            "The import token was issued for another key.",
        ));
    }
    let wrapping = keyraft_hsm::ImportWrappingKey {
        public_key_der: params.public_key_der,
        wrapped_private_key: params.wrapped_private_key,
    };
    let version = key.metadata.current_version;
    let (material, fingerprint) = core.hsm.import_key_material(
        &wrapping,
        token.as_bytes(),
        &req.encrypted_key_material,
        &key.metadata.key_id,
        version,
    )?;
    let key_id = key.metadata.key_id;
    expect_key(
        core.mutate(call, req.request_id, |audit| Op::ImportKeyMaterial {
            key_id,
            token,
            material: material.0,
            fingerprint,
            valid_to_ms: valid_to,
            audit,
        })
        .await,
    )?;
    Ok(ImportKeyMaterialResponse {})
}

/// The one key policy name AWS defines.
const KEY_POLICY_NAME: &str = "default";

fn check_policy_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty() || name == KEY_POLICY_NAME {
        Ok(())
    } else {
        Err(KmsError::new(
            ErrorCode::NotFound,
            format!("No such policy: {name}; a key has one policy, named default"),
        ))
    }
}

pub(crate) async fn put_key_policy(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: PutKeyPolicyRequest,
) -> Result<PutKeyPolicyResponse, KmsError> {
    check_policy_name(&req.policy_name)?;
    let document =
        keyraft_types::PolicyDocument::parse(&req.policy, keyraft_types::PolicyKind::Key)?;
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let key = core.owned_key(call, &req.key_id).await?;
    // AWS's lockout safety check: a policy under which the caller could not change the
    // policy again would leave the key unmanageable.
    let mut after = key.clone();
    after.policy = Some(document.text().to_string());
    let question = keyraft_state::authz::Question {
        caller_arn: &call.principal.caller_arn,
        holder: Some(&call.principal.holder),
        key: Some(&after),
        action: "kms:PutKeyPolicy",
        resource: "*",
        encryption_context: None,
        time_ms: call.record.event_time_ms,
        grants: &[],
        new_grant: None,
    };
    if keyraft_state::authz::decide(&question).is_err() {
        return Err(KmsError::new(
            ErrorCode::MalformedPolicyDocument,
            "The new key policy will not allow you to update the key policy in the future.",
        ));
    }
    call.record.resources.push(key.metadata.arn.clone());
    let key_id = key.metadata.key_id;
    let policy = document.text().to_string();
    expect_key(
        core.mutate(call, req.request_id, |audit| Op::PutKeyPolicy {
            key_id,
            policy,
            audit,
        })
        .await,
    )?;
    Ok(PutKeyPolicyResponse {})
}

pub(crate) async fn get_key_policy(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: GetKeyPolicyRequest,
) -> Result<GetKeyPolicyResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    check_policy_name(&req.policy_name)?;
    core.read_barrier().await?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let policy = match key.policy {
        Some(text) => text,
        None => keyraft_types::PolicyDocument::default_key_policy(&key.metadata.account)
            .text()
            .to_string(),
    };
    Ok(GetKeyPolicyResponse {
        policy_name: KEY_POLICY_NAME.to_string(),
        policy,
    })
}

pub(crate) async fn list_key_policies(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListKeyPoliciesRequest,
) -> Result<ListKeyPoliciesResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    Ok(ListKeyPoliciesResponse {
        policy_names: vec![KEY_POLICY_NAME.to_string()],
    })
}
