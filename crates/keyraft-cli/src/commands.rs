//! The client subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use keyraft_client::{Client, ClientConfig, EncryptionContext, Error};

use crate::output::{b64, cluster_status, key_metadata, unb64};
use crate::Connection;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key.
    Create {
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// SYMMETRIC_DEFAULT, HMAC_256/384/512, ECC_NIST_P256, RSA_2048/3072/4096.
        #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
        key_spec: String,
        /// ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC (HMAC keys) or SIGN_VERIFY (ECC, RSA).
        #[arg(long, default_value = "ENCRYPT_DECRYPT")]
        key_usage: String,
        /// KEYRAFT (material made in the HSMs) or EXTERNAL (imported later).
        #[arg(long, default_value = "KEYRAFT")]
        origin: String,
    },
    /// Get a wrapping public key and an import token for an EXTERNAL key.
    ImportParams {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// RSAES_OAEP_SHA_256.
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping_algorithm: String,
        /// RSA_2048, RSA_3072 or RSA_4096.
        #[arg(long, default_value = "RSA_2048")]
        wrapping_key_spec: String,
    },
    /// Import key material encrypted to the wrapping public key.
    Import {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The encrypted material (raw bytes, or base64 text).
        #[arg(long)]
        encrypted_key_material_file: PathBuf,
        /// The import token (raw bytes, or the base64 text import-params printed).
        #[arg(long)]
        import_token_file: PathBuf,
        /// Expiry: seconds since the Unix epoch, or RFC 3339 (e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        valid_to: Option<String>,
    },
    /// Delete imported key material (the key returns to PendingImport).
    DeleteImportedMaterial {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Show a key's metadata.
    Describe {
        /// Key id or key ARN.
        #[arg(long)]
        key_id: String,
    },
    /// List every key of the account (all pages).
    List {
        /// Page size (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Enable a key.
    Enable {
        /// Key id or key ARN.
        #[arg(long)]
        key_id: String,
    },
    /// Disable a key.
    Disable {
        /// Key id or key ARN.
        #[arg(long)]
        key_id: String,
    },
    /// Replace a key's description.
    UpdateDescription {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The new description.
        #[arg(long)]
        description: String,
    },
    /// Add or overwrite tags.
    Tag {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// Tags as key=value (repeatable).
        #[arg(long = "tag", value_parser = parse_kv, required = true)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags.
    Untag {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// Tag keys to remove (repeatable).
        #[arg(long = "tag-key", required = true)]
        tag_keys: Vec<String>,
    },
    /// Schedule the key's deletion after a waiting period.
    ScheduleDeletion {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// 7-30 days.
        #[arg(long, default_value_t = 30)]
        pending_window_days: u32,
    },
    /// Cancel a scheduled deletion (the key returns Disabled).
    CancelDeletion {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Key rotation.
    Rotation {
        #[command(subcommand)]
        command: RotationCommand,
    },
    /// List a key's tags (all pages).
    Tags {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Replace the key policy (`default`).
    PutPolicy {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The policy document, a JSON file (at most 32 KiB).
        #[arg(long)]
        policy_file: PathBuf,
    },
    /// The key policy (the default key policy if none was put).
    GetPolicy {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// The names of the key's policies (always `default`).
    ListPolicies {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// The public half of a key pair (DER SubjectPublicKeyInfo, base64 in the output).
    PublicKey {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// Also write the public key to this file as DER (for `openssl ... -keyform DER`).
        #[arg(long)]
        der_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum RotationCommand {
    /// Rotate automatically every N days.
    Enable {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// 90-2560 days.
        #[arg(long, default_value_t = 365)]
        rotation_period_days: u32,
    },
    /// Stop automatic rotation.
    Disable {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Whether automatic rotation is on, and when it is next due.
    Status {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Rotate now (at most 25 times per key).
    RotateNow {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
    /// Every rotation of the key (all pages).
    List {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum AliasCommand {
    /// Create an alias (alias/...) for a key.
    Create {
        /// The alias name, e.g. alias/orders.
        #[arg(long)]
        alias_name: String,
        /// Key id or key ARN.
        #[arg(long)]
        target_key_id: String,
    },
    /// Point an alias to another key.
    Update {
        /// The alias name.
        #[arg(long)]
        alias_name: String,
        /// Key id or key ARN.
        #[arg(long)]
        target_key_id: String,
    },
    /// Delete an alias (the key stays).
    Delete {
        /// The alias name.
        #[arg(long)]
        alias_name: String,
    },
    /// List aliases (all pages), optionally of one key.
    List {
        /// Only aliases of this key.
        #[arg(long)]
        key_id: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct ReEncryptArgs {
    /// The ciphertext blob, base64.
    #[arg(
        long,
        conflicts_with = "ciphertext_file",
        required_unless_present = "ciphertext_file"
    )]
    ciphertext: Option<String>,
    /// Read the ciphertext from a file (raw bytes, or base64 text).
    #[arg(long)]
    ciphertext_file: Option<PathBuf>,
    /// The key to move the ciphertext to.
    #[arg(long)]
    destination_key_id: String,
    /// The ciphertext's current encryption context.
    #[arg(long = "source-context", value_parser = parse_kv)]
    source_context: Vec<(String, String)>,
    /// The new encryption context.
    #[arg(long = "destination-context", value_parser = parse_kv)]
    destination_context: Vec<(String, String)>,
    /// Expected source key (required for an RSA source).
    #[arg(long)]
    source_key_id: Option<String>,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1/RSAES_OAEP_SHA_256 for an RSA source key.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    source_encryption_algorithm: String,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1/RSAES_OAEP_SHA_256 for an RSA destination.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    destination_encryption_algorithm: String,
}

#[derive(Args)]
pub(crate) struct EncryptArgs {
    /// Key id or key ARN.
    #[arg(long)]
    key_id: String,
    /// The plaintext as text.
    #[arg(
        long,
        conflicts_with = "plaintext_file",
        required_unless_present = "plaintext_file"
    )]
    plaintext: Option<String>,
    /// Read the plaintext from a file (raw bytes).
    #[arg(long)]
    plaintext_file: Option<PathBuf>,
    /// Encryption context entries.
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1/RSAES_OAEP_SHA_256 for an RSA key.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    encryption_algorithm: String,
}

/// The message of Sign and Verify.
#[derive(Args)]
pub(crate) struct SignArgs {
    /// Key id, key ARN or alias of a SIGN_VERIFY key.
    #[arg(long)]
    key_id: String,
    /// The message as text.
    #[arg(
        long,
        conflicts_with = "message_file",
        required_unless_present = "message_file"
    )]
    message: Option<String>,
    /// Read the message (or digest) from a file (raw bytes).
    #[arg(long)]
    message_file: Option<PathBuf>,
    /// RAW (the service hashes the message) or DIGEST (the message is the digest).
    #[arg(long, default_value = "RAW")]
    message_type: String,
    /// ECDSA_SHA_256; RSASSA_PSS_SHA_256/384/512; RSASSA_PKCS1_V1_5_SHA_256/384/512.
    #[arg(long)]
    signing_algorithm: String,
}

/// Verify: the message and the signature.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    message: SignArgs,
    /// The signature, base64.
    #[arg(
        long,
        conflicts_with = "signature_file",
        required_unless_present = "signature_file"
    )]
    signature: Option<String>,
    /// Read the signature from a file (raw bytes, or base64 text).
    #[arg(long)]
    signature_file: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct DecryptArgs {
    /// The ciphertext blob, base64.
    #[arg(
        long,
        conflicts_with = "ciphertext_file",
        required_unless_present = "ciphertext_file"
    )]
    ciphertext: Option<String>,
    /// Read the ciphertext from a file (raw bytes, or base64 text).
    #[arg(long)]
    ciphertext_file: Option<PathBuf>,
    /// Encryption context entries (must equal the ones used to encrypt).
    #[arg(long = "context", value_parser = parse_kv)]
    context: Vec<(String, String)>,
    /// Expected key (optional; required for RSAES_OAEP_*).
    #[arg(long)]
    key_id: Option<String>,
    /// SYMMETRIC_DEFAULT, or RSAES_OAEP_SHA_1/RSAES_OAEP_SHA_256 for an RSA key.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    encryption_algorithm: String,
}

#[derive(Subcommand)]
pub(crate) enum DataKeyCommand {
    /// Generate a data key under a KMS key.
    Generate {
        /// Key id or key ARN.
        #[arg(long)]
        key_id: String,
        /// AES_128 or AES_256 (default AES_256 unless --number-of-bytes).
        #[arg(long)]
        key_spec: Option<String>,
        /// 1-1024 bytes instead of a key spec.
        #[arg(long, conflicts_with = "key_spec")]
        number_of_bytes: Option<u32>,
        /// Return only the encrypted data key.
        #[arg(long)]
        without_plaintext: bool,
        /// Encryption context entries.
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Members, leader, term and per-node progress.
    Status,
    /// Add a node: learner first, voter once caught up and holding the domain key.
    AddNode {
        /// The new node's id (never used before in this cluster).
        #[arg(long)]
        node_id: u64,
        /// Its client API URL.
        #[arg(long)]
        endpoint: String,
        /// Its node-to-node address (host:port).
        #[arg(long)]
        raft_addr: String,
    },
    /// Remove a node; its id is retired.
    RemoveNode {
        /// The node.
        #[arg(long)]
        node_id: u64,
    },
    /// Move leadership to a voter.
    TransferLeader {
        /// The new leader.
        #[arg(long)]
        node_id: u64,
    },
    /// Development mode only: move the service clock of the node(s) given by
    /// --endpoints forward (drives deletions in tests and demos).
    AdvanceClock {
        /// Seconds to move forward.
        #[arg(long)]
        seconds: u64,
    },
    /// Chaos testing: the fail points of each node given by --endpoints (a binary built
    /// with the `failpoints` feature; the region's administrator only).
    #[command(subcommand)]
    Failpoint(FailpointCommand),
}

#[derive(Subcommand)]
pub(crate) enum FailpointCommand {
    /// Arm a fail point, e.g. `set server::after_commit_before_response 1*return`;
    /// `off` clears it.
    Set {
        /// The fail point, e.g. raft::before_apply.
        name: String,
        /// Actions in the fail crate's syntax: 1*return, 50%return, panic, off, ...
        actions: String,
    },
    /// The configured fail points of each node, and the known names.
    List,
}

#[derive(Subcommand)]
pub(crate) enum MacCommand {
    /// The HMAC of a message under an HMAC key.
    Generate {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The message as text.
        #[arg(
            long,
            conflicts_with = "message_file",
            required_unless_present = "message_file"
        )]
        message: Option<String>,
        /// Read the message from a file.
        #[arg(long)]
        message_file: Option<PathBuf>,
        /// HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
        #[arg(long)]
        mac_algorithm: String,
    },
    /// Verify a MAC (exit status 1 and KMSInvalidMacException if it does not match).
    Verify {
        /// Key id, key ARN or alias.
        #[arg(long)]
        key_id: String,
        /// The message as text.
        #[arg(
            long,
            conflicts_with = "message_file",
            required_unless_present = "message_file"
        )]
        message: Option<String>,
        /// Read the message from a file.
        #[arg(long)]
        message_file: Option<PathBuf>,
        /// HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
        #[arg(long)]
        mac_algorithm: String,
        /// The MAC, base64.
        #[arg(long)]
        mac: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ServiceKeyCommand {
    /// Create (or find) the service-managed key of a service (region administrator).
    Create {
        /// The service's name, e.g. s3 (the key is `alias/keyraft/<service>`).
        #[arg(long)]
        service: String,
        /// The account (default: the caller's).
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum QuotaCommand {
    /// Show an account's limits and usage (default: the caller's account).
    Get {
        /// Another account (the region's administrator only).
        #[arg(long)]
        account: Option<String>,
    },
    /// Set an account's limits (the region's administrator only).
    Set {
        /// The account (default: the caller's).
        #[arg(long)]
        account: Option<String>,
        /// Keys per account in this region.
        #[arg(long)]
        keys: Option<u64>,
        /// Aliases per account in this region.
        #[arg(long)]
        aliases: Option<u64>,
        /// Grants per key.
        #[arg(long)]
        grants_per_key: Option<u64>,
    },
}

pub(crate) use crate::audit_cmd::{audit, AuditCommand};

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got '{s}'")),
    }
}

fn context(pairs: Vec<(String, String)>) -> EncryptionContext {
    pairs.into_iter().collect()
}

/// The client settings from the connection flags and `KEYRAFT_*`.
pub(crate) fn client_config(conn: &Connection) -> Result<ClientConfig, Error> {
    let need = |v: &Option<String>, name: &str| {
        v.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::Config(format!(
                "--{name} (or KEYRAFT_{}) is required",
                name.to_uppercase().replace('-', "_")
            ))
        })
    };
    Ok(ClientConfig {
        endpoints: need(&conn.endpoints, "endpoints")?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        region: conn.region.clone().unwrap_or_default(),
        access_key_id: need(&conn.access_key_id, "access-key-id")?,
        secret_access_key: need(&conn.secret_access_key, "secret-access-key")?,
        timeout: Duration::from_secs(conn.timeout.max(1)),
        user_agent: format!("keyraft-cli/{}", env!("CARGO_PKG_VERSION")),
    })
}

pub(crate) fn client(conn: &Connection) -> Result<Client, Error> {
    Client::new(client_config(conn)?)
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))
}

pub(crate) async fn key(conn: &Connection, cmd: KeyCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    Ok(match cmd {
        KeyCommand::Create {
            description,
            key_spec,
            key_usage,
            origin,
        } => {
            let m = c
                .create_key_with(keyraft_client::types::CreateKeyRequest {
                    description,
                    key_spec,
                    key_usage,
                    origin,
                    request_id: String::new(),
                })
                .await?;
            json!({"KeyMetadata": key_metadata(&m)})
        }
        KeyCommand::ImportParams {
            key_id,
            wrapping_algorithm,
            wrapping_key_spec,
        } => {
            let p = c
                .get_parameters_for_import(&key_id, &wrapping_algorithm, &wrapping_key_spec)
                .await?;
            json!({
                "KeyId": p.key_id,
                "PublicKey": b64(&p.public_key),
                "ImportToken": b64(&p.import_token),
                "ParametersValidTo": p.parameters_valid_to as f64 / 1000.0,
            })
        }
        KeyCommand::Import {
            key_id,
            encrypted_key_material_file,
            import_token_file,
            valid_to,
        } => {
            let material = read_blob(&None, &Some(encrypted_key_material_file))?;
            let token = read_blob(&None, &Some(import_token_file))?;
            let valid_to = valid_to.map(|v| parse_time(&v)).transpose()?;
            c.import_key_material(&key_id, &token, &material, valid_to)
                .await?;
            json!({})
        }
        KeyCommand::DeleteImportedMaterial { key_id } => {
            c.delete_imported_key_material(&key_id).await?;
            json!({})
        }
        KeyCommand::Describe { key_id } => {
            let m = c.describe_key(&key_id).await?;
            json!({"KeyMetadata": key_metadata(&m)})
        }
        KeyCommand::List { limit } => {
            let mut keys = Vec::new();
            let mut marker = String::new();
            loop {
                let page = c.list_keys(limit, &marker).await?;
                keys.extend(
                    page.keys
                        .iter()
                        .map(|k| json!({"KeyId": k.key_id, "KeyArn": k.key_arn})),
                );
                if !page.truncated {
                    break;
                }
                marker = page.next_marker;
            }
            json!({"Keys": keys})
        }
        KeyCommand::Enable { key_id } => {
            c.enable_key(&key_id).await?;
            json!({})
        }
        KeyCommand::Disable { key_id } => {
            c.disable_key(&key_id).await?;
            json!({})
        }
        KeyCommand::UpdateDescription {
            key_id,
            description,
        } => {
            c.update_key_description(&key_id, &description).await?;
            json!({})
        }
        KeyCommand::Tag { key_id, tags } => {
            c.tag_resource(&key_id, &tags).await?;
            json!({})
        }
        KeyCommand::Untag { key_id, tag_keys } => {
            c.untag_resource(&key_id, &tag_keys).await?;
            json!({})
        }
        KeyCommand::ScheduleDeletion {
            key_id,
            pending_window_days,
        } => {
            let r = c
                .schedule_key_deletion(&key_id, pending_window_days)
                .await?;
            json!({
                "KeyId": r.key_id,
                "DeletionDate": r.deletion_date as f64 / 1000.0,
                "KeyState": r.key_state,
                "PendingWindowInDays": r.pending_window_in_days,
            })
        }
        KeyCommand::CancelDeletion { key_id } => {
            json!({"KeyId": c.cancel_key_deletion(&key_id).await?.key_id})
        }
        KeyCommand::Rotation { command } => rotation(&c, command).await?,
        KeyCommand::Tags { key_id } => {
            let mut tags = Vec::new();
            let mut marker = String::new();
            loop {
                let page = c.list_resource_tags(&key_id, 50, &marker).await?;
                tags.extend(
                    page.tags
                        .iter()
                        .map(|t| json!({"TagKey": t.tag_key, "TagValue": t.tag_value})),
                );
                if !page.truncated {
                    break;
                }
                marker = page.next_marker;
            }
            json!({"Tags": tags})
        }
        KeyCommand::PutPolicy {
            key_id,
            policy_file,
        } => {
            let text = std::fs::read_to_string(&policy_file).map_err(|e| {
                Error::Config(format!("cannot read {}: {e}", policy_file.display()))
            })?;
            c.put_key_policy(&key_id, &text).await?;
            json!({})
        }
        KeyCommand::GetPolicy { key_id } => {
            json!({"Policy": c.get_key_policy(&key_id).await?, "PolicyName": "default"})
        }
        KeyCommand::ListPolicies { key_id } => {
            json!({"PolicyNames": c.list_key_policies(&key_id).await?, "Truncated": false})
        }
        KeyCommand::PublicKey { key_id, der_file } => {
            let r = c.get_public_key(&key_id).await?;
            if let Some(path) = der_file {
                std::fs::write(&path, &r.public_key)
                    .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            }
            json!({
                "KeyId": r.key_id,
                "PublicKey": b64(&r.public_key),
                "KeySpec": r.key_spec,
                "KeyUsage": r.key_usage,
                "EncryptionAlgorithms": r.encryption_algorithms,
                "SigningAlgorithms": r.signing_algorithms,
            })
        }
    })
}

/// Seconds since the Unix epoch or RFC 3339, as ms since the Unix epoch.
pub(crate) fn parse_time(v: &str) -> Result<u64, Error> {
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or_else(|| {
            Error::Config(format!(
                "'{v}' is neither seconds since the epoch nor RFC 3339"
            ))
        })
}

fn read_blob(text: &Option<String>, file: &Option<PathBuf>) -> Result<Vec<u8>, Error> {
    match (text, file) {
        (Some(text), _) => unb64(text),
        (None, Some(path)) => {
            let bytes = read_file(path)?;
            // A file may hold the raw blob or the base64 text `encrypt` printed.
            Ok(match std::str::from_utf8(&bytes).ok().map(unb64) {
                Some(Ok(decoded)) => decoded,
                _ => bytes,
            })
        }
        (None, None) => Err(Error::Config(
            "--ciphertext or --ciphertext-file is required".into(),
        )),
    }
}

pub(crate) async fn alias(conn: &Connection, cmd: AliasCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    Ok(match cmd {
        AliasCommand::Create {
            alias_name,
            target_key_id,
        } => {
            c.create_alias(&alias_name, &target_key_id).await?;
            json!({})
        }
        AliasCommand::Update {
            alias_name,
            target_key_id,
        } => {
            c.update_alias(&alias_name, &target_key_id).await?;
            json!({})
        }
        AliasCommand::Delete { alias_name } => {
            c.delete_alias(&alias_name).await?;
            json!({})
        }
        AliasCommand::List { key_id } => {
            let mut aliases = Vec::new();
            let mut marker = String::new();
            loop {
                let page = c.list_aliases(key_id.as_deref(), 100, &marker).await?;
                aliases.extend(page.aliases.iter().map(|a| {
                    json!({
                        "AliasName": a.alias_name,
                        "AliasArn": a.alias_arn,
                        "TargetKeyId": a.target_key_id,
                        "CreationDate": a.creation_date as f64 / 1000.0,
                        "LastUpdatedDate": a.last_updated_date as f64 / 1000.0,
                    })
                }));
                if !page.truncated {
                    break;
                }
                marker = page.next_marker;
            }
            json!({"Aliases": aliases})
        }
    })
}

async fn rotation(c: &Client, cmd: RotationCommand) -> Result<Value, Error> {
    Ok(match cmd {
        RotationCommand::Enable {
            key_id,
            rotation_period_days,
        } => {
            c.set_key_rotation(&key_id, Some(rotation_period_days))
                .await?;
            json!({})
        }
        RotationCommand::Disable { key_id } => {
            c.set_key_rotation(&key_id, None).await?;
            json!({})
        }
        RotationCommand::Status { key_id } => {
            let s = c.get_key_rotation_status(&key_id).await?;
            let mut v = json!({"KeyId": s.key_id, "KeyRotationEnabled": s.key_rotation_enabled});
            if s.key_rotation_enabled {
                v["RotationPeriodInDays"] = json!(s.rotation_period_in_days);
                v["NextRotationDate"] = json!(s.next_rotation_date as f64 / 1000.0);
            }
            v
        }
        RotationCommand::RotateNow { key_id } => {
            json!({"KeyId": c.rotate_key_on_demand(&key_id).await?.key_id})
        }
        RotationCommand::List { key_id } => {
            let mut rotations = Vec::new();
            let mut marker = String::new();
            loop {
                let page = c.list_key_rotations(&key_id, 1000, &marker).await?;
                rotations.extend(page.rotations.iter().map(|r| {
                    json!({
                        "KeyId": r.key_id,
                        "RotationDate": r.rotation_date as f64 / 1000.0,
                        "RotationType": r.rotation_type,
                    })
                }));
                if !page.truncated {
                    break;
                }
                marker = page.next_marker;
            }
            json!({"Rotations": rotations})
        }
    })
}

pub(crate) async fn re_encrypt(conn: &Connection, args: ReEncryptArgs) -> Result<Value, Error> {
    let blob = read_blob(&args.ciphertext, &args.ciphertext_file)?;
    let r = client(conn)?
        .re_encrypt_request(keyraft_client::types::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: context(args.source_context),
            source_key_id: args.source_key_id.unwrap_or_default(),
            destination_key_id: args.destination_key_id,
            destination_encryption_context: context(args.destination_context),
            source_encryption_algorithm: args.source_encryption_algorithm,
            destination_encryption_algorithm: args.destination_encryption_algorithm,
        })
        .await?;
    Ok(json!({
        "CiphertextBlob": b64(&r.ciphertext_blob),
        "SourceKeyId": r.source_key_id,
        "KeyId": r.key_id,
        "SourceEncryptionAlgorithm": r.source_encryption_algorithm,
        "DestinationEncryptionAlgorithm": r.destination_encryption_algorithm,
    }))
}

pub(crate) async fn random(conn: &Connection, bytes: u32) -> Result<Value, Error> {
    let r = client(conn)?.generate_random(bytes).await?;
    Ok(json!({"Plaintext": b64(&r)}))
}

pub(crate) async fn encrypt(conn: &Connection, args: EncryptArgs) -> Result<Value, Error> {
    let plaintext = match (&args.plaintext, &args.plaintext_file) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(path)) => read_file(path)?,
        (None, None) => {
            return Err(Error::Config(
                "--plaintext or --plaintext-file is required".into(),
            ))
        }
    };
    let r = client(conn)?
        .encrypt_with_algorithm(
            &args.key_id,
            &plaintext,
            &context(args.context),
            &args.encryption_algorithm,
        )
        .await?;
    Ok(json!({
        "KeyId": r.key_id,
        "CiphertextBlob": b64(&r.ciphertext_blob),
        "EncryptionAlgorithm": r.encryption_algorithm,
    }))
}

pub(crate) async fn decrypt(conn: &Connection, args: DecryptArgs) -> Result<Value, Error> {
    let blob = read_blob(&args.ciphertext, &args.ciphertext_file)?;
    let r = client(conn)?
        .decrypt_with_algorithm(
            &blob,
            &context(args.context),
            args.key_id.as_deref(),
            &args.encryption_algorithm,
        )
        .await?;
    Ok(json!({
        "KeyId": r.key_id,
        "Plaintext": b64(&r.plaintext),
        "EncryptionAlgorithm": r.encryption_algorithm,
    }))
}

pub(crate) async fn data_key(conn: &Connection, cmd: DataKeyCommand) -> Result<Value, Error> {
    let DataKeyCommand::Generate {
        key_id,
        key_spec,
        number_of_bytes,
        without_plaintext,
        context: ctx,
    } = cmd;
    let spec = match (&key_spec, number_of_bytes) {
        (Some(s), _) => s.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => "AES_256".to_string(),
    };
    let n = number_of_bytes.unwrap_or(0);
    let c = client(conn)?;
    let ctx = context(ctx);
    if without_plaintext {
        let r = c
            .generate_data_key_without_plaintext(&key_id, &spec, n, &ctx)
            .await?;
        Ok(json!({"KeyId": r.key_id, "CiphertextBlob": b64(&r.ciphertext_blob)}))
    } else {
        let r = c.generate_data_key(&key_id, &spec, n, &ctx).await?;
        Ok(json!({
            "KeyId": r.key_id,
            "CiphertextBlob": b64(&r.ciphertext_blob),
            "Plaintext": b64(&r.plaintext),
        }))
    }
}

pub(crate) async fn cluster(conn: &Connection, cmd: ClusterCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    Ok(match cmd {
        ClusterCommand::Status => cluster_status(&c.cluster_status().await?),
        ClusterCommand::AddNode {
            node_id,
            endpoint,
            raft_addr,
        } => cluster_status(&c.add_node(node_id, &endpoint, &raft_addr).await?),
        ClusterCommand::RemoveNode { node_id } => cluster_status(&c.remove_node(node_id).await?),
        ClusterCommand::AdvanceClock { seconds } => {
            // Every listed endpoint, so that whichever node leads sees the new time.
            let endpoints = conn.endpoints.clone().unwrap_or_default();
            let mut nows = Vec::new();
            for ep in endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
            {
                let one = Connection {
                    endpoints: Some(ep.to_string()),
                    ..conn.clone()
                };
                let now = client(&one)?
                    .advance_clock(seconds.saturating_mul(1000))
                    .await?;
                nows.push(json!({"Endpoint": ep, "Now": now as f64 / 1000.0}));
            }
            json!({"Nodes": nows})
        }
        ClusterCommand::TransferLeader { node_id } => {
            json!({"Leader": c.transfer_leader(node_id).await?})
        }
        ClusterCommand::Failpoint(cmd) => failpoint(conn, cmd).await?,
    })
}

/// `cluster failpoint`: each listed endpoint in turn (fail points are per node).
async fn failpoint(conn: &Connection, cmd: FailpointCommand) -> Result<Value, Error> {
    let points = |configured: Vec<(String, String)>| -> Vec<Value> {
        configured
            .into_iter()
            .map(|(name, actions)| json!({"Name": name, "Actions": actions}))
            .collect()
    };
    let endpoints = conn.endpoints.clone().unwrap_or_default();
    let mut nodes = Vec::new();
    for ep in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let one = client(&Connection {
            endpoints: Some(ep.to_string()),
            ..conn.clone()
        })?;
        nodes.push(match &cmd {
            FailpointCommand::Set { name, actions } => {
                let configured = one.set_failpoint(name, actions).await?;
                json!({"Endpoint": ep, "Configured": points(configured)})
            }
            FailpointCommand::List => {
                let r = one.list_failpoints().await?;
                let configured = r.configured.into_iter().map(|p| (p.name, p.actions));
                json!({
                    "Endpoint": ep,
                    "NodeId": r.node_id,
                    "Configured": points(configured.collect()),
                    "Known": r.known,
                })
            }
        });
    }
    Ok(json!({"Nodes": nodes}))
}

/// A message given as text or read from a file.
fn message_bytes(text: Option<String>, file: Option<PathBuf>) -> Result<Vec<u8>, Error> {
    match (text, file) {
        (Some(t), _) => Ok(t.into_bytes()),
        (None, Some(f)) => read_file(&f),
        (None, None) => Err(Error::Config(
            "--message or --message-file is required".into(),
        )),
    }
}

pub(crate) async fn mac(conn: &Connection, cmd: MacCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    Ok(match cmd {
        MacCommand::Generate {
            key_id,
            message: text,
            message_file,
            mac_algorithm,
        } => {
            let r = c
                .generate_mac(&key_id, &message_bytes(text, message_file)?, &mac_algorithm)
                .await?;
            json!({"KeyId": r.key_id, "Mac": b64(&r.mac), "MacAlgorithm": r.mac_algorithm})
        }
        MacCommand::Verify {
            key_id,
            message: text,
            message_file,
            mac_algorithm,
            mac,
        } => {
            let r = c
                .verify_mac(
                    &key_id,
                    &message_bytes(text, message_file)?,
                    &mac_algorithm,
                    &unb64(&mac)?,
                )
                .await?;
            json!({"KeyId": r.key_id, "MacValid": r.mac_valid, "MacAlgorithm": r.mac_algorithm})
        }
    })
}

pub(crate) async fn sign(conn: &Connection, args: SignArgs) -> Result<Value, Error> {
    let message = message_bytes(args.message, args.message_file)?;
    let r = client(conn)?
        .sign(
            &args.key_id,
            &message,
            &args.message_type,
            &args.signing_algorithm,
        )
        .await?;
    Ok(json!({
        "KeyId": r.key_id,
        "Signature": b64(&r.signature),
        "SigningAlgorithm": r.signing_algorithm,
    }))
}

pub(crate) async fn verify(conn: &Connection, args: VerifyArgs) -> Result<Value, Error> {
    let signature = read_blob(&args.signature, &args.signature_file)?;
    let m = args.message;
    let message = message_bytes(m.message, m.message_file)?;
    let r = client(conn)?
        .verify(
            &m.key_id,
            &message,
            &m.message_type,
            &signature,
            &m.signing_algorithm,
        )
        .await?;
    Ok(json!({
        "KeyId": r.key_id,
        "SignatureValid": r.signature_valid,
        "SigningAlgorithm": r.signing_algorithm,
    }))
}

pub(crate) async fn service_key(conn: &Connection, cmd: ServiceKeyCommand) -> Result<Value, Error> {
    let ServiceKeyCommand::Create { service, account } = cmd;
    let r = client(conn)?
        .create_service_key(&service, account.as_deref())
        .await?;
    let mut out = json!({"AliasName": r.alias_name});
    if let Some(m) = &r.key_metadata {
        out["KeyMetadata"] = key_metadata(m);
    }
    Ok(out)
}

pub(crate) async fn quota(conn: &Connection, cmd: QuotaCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    let q = match cmd {
        QuotaCommand::Get { account } => c.get_quota(account.as_deref()).await?,
        QuotaCommand::Set {
            account,
            keys,
            aliases,
            grants_per_key,
        } => {
            c.set_quota_request(keyraft_client::types::SetQuotaRequest {
                account: account.unwrap_or_default(),
                keys: keys.unwrap_or(0),
                aliases: aliases.unwrap_or(0),
                grants_per_key: grants_per_key.unwrap_or(0),
                request_id: String::new(),
            })
            .await?
        }
    };
    Ok(json!({
        "Account": q.account,
        "Keys": {"Limit": q.keys_limit, "Used": q.keys_used},
        "Aliases": {"Limit": q.aliases_limit, "Used": q.aliases_used},
        "GrantsPerKey": {"Limit": q.grants_per_key_limit},
    }))
}
