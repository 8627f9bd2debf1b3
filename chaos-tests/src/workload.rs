//! # The workload: concurrent SDK clients that record everything they do
//!
//! A workload is a number of client *processes* (tokio tasks sharing one discovering SDK
//! client), each running one operation at a time, picked from a weighted mix with a
//! seeded random generator. Every operation is recorded twice in the [`Recorder`]: when
//! it is invoked and when it completes (`ok`, `fail` or `info`). A process whose
//! operation ended `info` (outcome unknown: a timeout, a lost connection) is retired and
//! a fresh process id takes its place, so that each process id stays sequential.
//!
//! Operations act on a pool of keys: the keys made before the run and every key a
//! `CreateKey` made during it. Every operation carries a tag unique in the run, placed
//! where the audit log shows it (see [`crate::history::Op`]).
//!
//! Key-policy changes flip a key between two policies (see [`policy_document`]): an
//! *open* one like the default, and a *deny-crypto* one that also denies everyone
//! Encrypt, Decrypt and GenerateDataKey, so the workload's own cryptography on that key
//! is refused until an open policy replaces it. Open is picked twice as often, so
//! cryptography keeps flowing. Both let the account administer the key, so no policy
//! the workload puts ever locks it out.
//!
//! The SDK retries within its own budget, exactly as an application's calls would; the
//! history records the application's view: one invoke, one completion per call.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use keyraft_client::types::{CreateKeyRequest, PutKeyPolicyRequest};
use keyraft_client::{Client, EncryptionContext, Error};

use crate::history::{Event, EventKind, History, Op, Phase, Value};

/// The encryption-context key that carries an operation's tag.
pub const TAG_CONTEXT_KEY: &str = "chaos-op";

/// How the workload behaves (the `[workload]` table of an experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// Concurrent client processes.
    pub clients: usize,
    /// Keys created before the run starts (the initial pool).
    pub keys: usize,
    /// Each call's deadline; past it the outcome is unknown (`info`).
    #[serde(with = "humantime_serde_compat")]
    pub op_timeout: Duration,
    /// Each process's pause between operations (0: closed loop).
    #[serde(with = "humantime_serde_compat")]
    pub think_time: Duration,
    /// The operation mix, as relative weights.
    pub mix: Mix,
}

impl Default for WorkloadSpec {
    fn default() -> WorkloadSpec {
        WorkloadSpec {
            clients: 6,
            keys: 6,
            op_timeout: Duration::from_secs(5),
            think_time: Duration::from_millis(5),
            mix: Mix::default(),
        }
    }
}

/// Relative weights of the operations (0 leaves one out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // each field is the weight of the operation it names
pub struct Mix {
    pub create: u32,
    pub describe: u32,
    pub enable: u32,
    pub disable: u32,
    pub update_description: u32,
    pub schedule_deletion: u32,
    pub cancel_deletion: u32,
    pub encrypt: u32,
    pub decrypt: u32,
    pub generate_data_key: u32,
    pub list: u32,
    pub put_policy: u32,
    pub get_policy: u32,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            create: 4,
            describe: 15,
            enable: 8,
            disable: 6,
            update_description: 8,
            schedule_deletion: 2,
            cancel_deletion: 3,
            encrypt: 25,
            decrypt: 20,
            generate_data_key: 6,
            list: 3,
            put_policy: 3,
            get_policy: 4,
        }
    }
}

impl Mix {
    fn weights(&self) -> [(OpKind, u32); 13] {
        [
            (OpKind::Create, self.create),
            (OpKind::Describe, self.describe),
            (OpKind::Enable, self.enable),
            (OpKind::Disable, self.disable),
            (OpKind::UpdateDescription, self.update_description),
            (OpKind::ScheduleDeletion, self.schedule_deletion),
            (OpKind::CancelDeletion, self.cancel_deletion),
            (OpKind::Encrypt, self.encrypt),
            (OpKind::Decrypt, self.decrypt),
            (OpKind::GenerateDataKey, self.generate_data_key),
            (OpKind::List, self.list),
            (OpKind::PutPolicy, self.put_policy),
            (OpKind::GetPolicy, self.get_policy),
        ]
    }

    /// The sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights().iter().map(|(_, w)| w).sum()
    }

    fn pick(&self, rng: &mut StdRng) -> OpKind {
        let mut n = rng.gen_range(0..self.total().max(1));
        for (kind, w) in self.weights() {
            if n < w {
                return kind;
            }
            n -= w;
        }
        OpKind::Describe
    }
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Create,
    Describe,
    Enable,
    Disable,
    UpdateDescription,
    ScheduleDeletion,
    CancelDeletion,
    Encrypt,
    Decrypt,
    GenerateDataKey,
    List,
    PutPolicy,
    GetPolicy,
}

/// Durations in experiment files are written as humantime strings ("30s", "250ms").
pub mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a duration as "1m 30s".
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads "30s", "1m 30s", "250ms".
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Records the history of a run: in memory, and line by line to `history.jsonl` so a
/// harness that dies still leaves what it saw.
pub struct Recorder {
    start: Instant,
    inner: Mutex<RecorderInner>,
}

struct RecorderInner {
    events: Vec<Event>,
    sink: Option<BufWriter<File>>,
    sink_error: Option<String>,
}

impl Recorder {
    /// A recorder whose clock starts now, writing to `path` if given.
    pub fn new(path: Option<&Path>) -> std::io::Result<Recorder> {
        let sink = match path {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        Ok(Recorder {
            start: Instant::now(),
            inner: Mutex::new(RecorderInner {
                events: Vec::new(),
                sink,
                sink_error: None,
            }),
        })
    }

    /// Nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends an event; returns its index.
    pub fn record(&self, kind: EventKind) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            index: inner.events.len() as u64,
            time_ns: self.now_ns(),
            kind,
        };
        if let Some(sink) = inner.sink.as_mut() {
            let written = serde_json::to_string(&event)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(sink, "{line}"));
            if let Err(e) = written {
                inner.sink_error = Some(e.to_string());
                inner.sink = None;
            }
        }
        let index = event.index;
        inner.events.push(event);
        index
    }

    /// Records a fault window opening or closing.
    pub fn nemesis(&self, phase: Phase, fault: &str, nodes: &[u64], detail: &str) {
        self.record(EventKind::Nemesis {
            phase,
            fault: fault.to_string(),
            nodes: nodes.to_vec(),
            detail: detail.to_string(),
        });
    }

    /// Everything recorded so far.
    pub fn history(&self) -> History {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        History {
            events: inner.events.clone(),
        }
    }

    /// Flushes and fsyncs `history.jsonl`; reports an earlier write failure.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.sink_error.take() {
            return Err(std::io::Error::other(e));
        }
        if let Some(sink) = inner.sink.as_mut() {
            sink.flush()?;
            sink.get_ref().sync_all()?;
        }
        Ok(())
    }
}

/// A ciphertext an `ok` Encrypt returned, for later Decrypts.
#[derive(Debug, Clone)]
struct Sealed {
    tag: String,
    key_id: String,
    blob: Vec<u8>,
}

/// What the processes share.
struct Shared {
    /// For mutations: the SDK retries them under one request id, which the service
    /// deduplicates, so a retry never applies twice.
    client: Client,
    /// For crypto and reads: one attempt per call. Each attempt is its own audited
    /// request, so a retried Encrypt whose first answer was lost would be audited twice
    /// for one call; without retries, that call is an `info` and the audit checker
    /// allows for it.
    reads: Client,
    recorder: Arc<Recorder>,
    spec: WorkloadSpec,
    run_id: String,
    next_process: AtomicU64,
    next_tag: AtomicU64,
    keys: Mutex<Vec<String>>,
    sealed: Mutex<Vec<Sealed>>,
    /// The run's account, learned from the ARN of the first key a CreateKey returned
    /// (key policies name it).
    account: Mutex<Option<String>>,
}

impl Shared {
    fn account(&self) -> Option<String> {
        self.account
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn tag(&self) -> String {
        let n = self.next_tag.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.run_id)
    }

    fn random_key(&self, rng: &mut StdRng) -> Option<String> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            return None;
        }
        Some(keys[rng.gen_range(0..keys.len())].clone())
    }

    fn random_sealed(&self, rng: &mut StdRng) -> Option<Sealed> {
        let sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if sealed.is_empty() {
            return None;
        }
        // Mostly recent ciphertexts, sometimes old ones (older key versions, states).
        let n = sealed.len();
        let i = if rng.gen_bool(0.7) {
            n - 1 - rng.gen_range(0..n.min(32))
        } else {
            rng.gen_range(0..n)
        };
        Some(sealed[i].clone())
    }
}

/// Counts of what the workload did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadStats {
    /// Operations that completed `ok`.
    pub ok: u64,
    /// Operations that definitely failed.
    pub fail: u64,
    /// Operations whose outcome is unknown.
    pub info: u64,
}

/// The workload of one run.
pub struct Workload {
    shared: Arc<Shared>,
    seed: u64,
}

impl Workload {
    /// A workload that sends mutations through `client` and crypto and reads through
    /// `reads` (which should not retry: see [`keyraft_client::RetryPolicy::none`]),
    /// recording into `recorder`; `run_id` prefixes every tag (so runs against the same
    /// cluster never share request ids).
    pub fn new(
        client: Client,
        reads: Client,
        recorder: Arc<Recorder>,
        spec: WorkloadSpec,
        seed: u64,
        run_id: &str,
    ) -> Workload {
        Workload {
            shared: Arc::new(Shared {
                client,
                reads,
                recorder,
                spec,
                run_id: run_id.to_string(),
                next_process: AtomicU64::new(1),
                next_tag: AtomicU64::new(0),
                keys: Mutex::new(Vec::new()),
                sealed: Mutex::new(Vec::new()),
                account: Mutex::new(None),
            }),
            seed,
        }
    }

    /// Creates the initial key pool (recorded as process 0's operations). Fails if a
    /// key cannot be created: the run cannot start without its pool.
    pub async fn prepare(&self) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        for _ in 0..self.shared.spec.keys {
            let outcome = step(&self.shared, 0, Some(OpKind::Create), &mut rng).await;
            if !matches!(outcome, Step::Ok) {
                return Err("could not create the initial keys".into());
            }
        }
        Ok(())
    }

    /// Runs every process until `stop` resolves; returns what they did.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) -> WorkloadStats {
        let mut tasks = Vec::new();
        for i in 0..self.shared.spec.clients {
            let shared = self.shared.clone();
            let mut stop = stop.clone();
            let seed = self.seed.wrapping_add(1 + i as u64);
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut stats = WorkloadStats::default();
                let mut process = shared.next_process.fetch_add(1, Ordering::Relaxed);
                while !*stop.borrow() {
                    match step(&shared, process, None, &mut rng).await {
                        Step::Ok => stats.ok += 1,
                        Step::Fail => stats.fail += 1,
                        Step::Info => {
                            stats.info += 1;
                            process = shared.next_process.fetch_add(1, Ordering::Relaxed);
                        }
                        Step::Skipped => {}
                    }
                    let think = shared.spec.think_time;
                    if !think.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(think) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
                stats
            }));
        }
        let mut total = WorkloadStats::default();
        for t in tasks {
            if let Ok(s) = t.await {
                total.ok += s.ok;
                total.fail += s.fail;
                total.info += s.info;
            }
        }
        total
    }

    /// The run's account key count right now (for the quota checker's baseline).
    pub async fn count_keys(&self) -> Result<u64, Error> {
        count_keys(&self.shared.client).await
    }
}

enum Step {
    Ok,
    Fail,
    Info,
    Skipped,
}

/// Picks (or takes) an operation, runs it and records invoke and completion.
async fn step(shared: &Shared, process: u64, kind: Option<OpKind>, rng: &mut StdRng) -> Step {
    let kind = kind.unwrap_or_else(|| shared.spec.mix.pick(rng));
    let Some(op) = make_op(shared, kind, rng) else {
        return Step::Skipped;
    };
    let recorder = &shared.recorder;
    recorder.record(EventKind::Invoke {
        process,
        node: 0,
        op: op.clone(),
    });
    let result = tokio::time::timeout(shared.spec.op_timeout, execute(shared, &op)).await;
    match result {
        Err(_) => {
            recorder.record(EventKind::Info {
                process,
                error: format!("no answer within {:?}", shared.spec.op_timeout),
            });
            Step::Info
        }
        Ok(Ok(value)) => {
            after_ok(shared, &op, &value);
            recorder.record(EventKind::Ok { process, value });
            Step::Ok
        }
        Ok(Err(e)) if e.is_outcome_unknown() => {
            recorder.record(EventKind::Info {
                process,
                error: e.to_string(),
            });
            Step::Info
        }
        Ok(Err(e)) => {
            let code = match e.code() {
                Some(code) => code.as_str().to_string(),
                None => format!("{:?}", e.kind()),
            };
            recorder.record(EventKind::Fail {
                process,
                code,
                message: e.to_string(),
            });
            Step::Fail
        }
    }
}

/// Builds an operation of `kind`; `None` when it has nothing to act on yet.
fn make_op(shared: &Shared, kind: OpKind, rng: &mut StdRng) -> Option<Op> {
    let tag = shared.tag();
    Some(match kind {
        OpKind::Create => Op::CreateKey {
            description: tag.clone(),
            tag,
        },
        OpKind::List => Op::ListKeys { tag },
        OpKind::Decrypt => {
            let s = shared.random_sealed(rng)?;
            Op::Decrypt {
                tag,
                of: s.tag,
                key_id: s.key_id,
            }
        }
        _ => {
            let key_id = shared.random_key(rng)?;
            match kind {
                OpKind::Describe => Op::DescribeKey { tag, key_id },
                OpKind::Enable => Op::EnableKey { tag, key_id },
                OpKind::Disable => Op::DisableKey { tag, key_id },
                OpKind::UpdateDescription => Op::UpdateDescription { tag, key_id },
                OpKind::ScheduleDeletion => Op::ScheduleDeletion { tag, key_id },
                OpKind::CancelDeletion => Op::CancelDeletion { tag, key_id },
                OpKind::GenerateDataKey => Op::GenerateDataKey { tag, key_id },
                OpKind::PutPolicy => {
                    // A policy names the account; it is known once a key was created.
                    shared.account()?;
                    Op::PutKeyPolicy {
                        tag,
                        key_id,
                        deny_crypto: rng.gen_range(0..3) == 0,
                    }
                }
                OpKind::GetPolicy => Op::GetKeyPolicy { tag, key_id },
                _ => {
                    let plaintext = plaintext_of(&tag);
                    Op::Encrypt {
                        plaintext_sha256: sha256_hex(&plaintext),
                        tag,
                        key_id,
                    }
                }
            }
        }
    })
}

/// The plaintext an Encrypt sends: derived from its tag, so a history alone says what
/// the ciphertext must decrypt to.
pub fn plaintext_of(tag: &str) -> Vec<u8> {
    format!("keyraft-chaos plaintext for {tag}").into_bytes()
}

/// The encryption context of a tagged crypto operation.
pub fn context_of(tag: &str) -> EncryptionContext {
    BTreeMap::from([(TAG_CONTEXT_KEY.to_string(), tag.to_string())])
}

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `Id` of the default key policy CreateKey installs.
pub const DEFAULT_POLICY_ID: &str = "key-default-1";

/// The `Sid` of the deny-crypto statement.
pub const DENY_CRYPTO_SID: &str = "ChaosDenyCrypto";

/// The actions a deny-crypto policy denies: every cryptographic call the workload makes.
pub const DENIED_CRYPTO_ACTIONS: &[&str] = &["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"];

/// The key policy a PutKeyPolicy tagged `tag` puts in `account` (12 digits).
///
/// Both variants keep the default policy's statement, which lets the account (and so
/// its administrator) do everything with the key, so the server's lockout check accepts
/// them and the workload can always put the next one. The deny-crypto variant adds an
/// explicit `Deny` of [`DENIED_CRYPTO_ACTIONS`] for everyone; an explicit deny wins over
/// every allow, and leaves every other action (PutKeyPolicy, GetKeyPolicy, DescribeKey,
/// EnableKey, ...) allowed. The document's `Id` is the tag, so a GetKeyPolicy tells
/// which put it saw.
pub fn policy_document(account: &str, tag: &str, deny_crypto: bool) -> String {
    let mut statements = vec![serde_json::json!({
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:keyraft:iam::{account}:root")},
        "Action": "kms:*",
        "Resource": "*",
    })];
    if deny_crypto {
        statements.push(serde_json::json!({
            "Sid": DENY_CRYPTO_SID,
            "Effect": "Deny",
            "Principal": "*",
            "Action": DENIED_CRYPTO_ACTIONS,
            "Resource": "*",
        }));
    }
    serde_json::json!({
        "Version": "2012-10-17",
        "Id": tag,
        "Statement": statements,
    })
    .to_string()
}

/// What a GetKeyPolicy's document says: which put wrote it (its `Id`; `None` for the
/// default policy) and whether it denies cryptography (a `Deny` statement naming
/// `kms:Encrypt`). A document that is not a JSON object with a string `Id` gets a tag
/// that says so, which no operation has.
pub fn read_policy(document: &str) -> Value {
    let json: serde_json::Value = match serde_json::from_str(document) {
        Ok(json) => json,
        Err(e) => {
            return Value::Policy {
                tag: Some(format!("(unreadable policy: {e})")),
                deny_crypto: false,
            }
        }
    };
    let tag = match json.get("Id").and_then(|id| id.as_str()) {
        Some(DEFAULT_POLICY_ID) => None,
        Some(id) => Some(id.to_string()),
        None => Some("(policy without an Id)".to_string()),
    };
    let statements = match json.get("Statement") {
        Some(serde_json::Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => vec![],
    };
    let deny_crypto = statements.iter().any(|s| {
        let denies = s.get("Effect").and_then(|e| e.as_str()) == Some("Deny");
        let names_encrypt = match s.get("Action") {
            Some(serde_json::Value::String(a)) => a == "kms:Encrypt",
            Some(serde_json::Value::Array(items)) => {
                items.iter().any(|a| a.as_str() == Some("kms:Encrypt"))
            }
            _ => false,
        };
        denies && names_encrypt
    });
    Value::Policy { tag, deny_crypto }
}

/// The account of a key ARN (`arn:keyraft:<region>:<account>:key/<id>`), if it has one.
fn account_of_key_arn(arn: &str) -> Option<&str> {
    let (head, _) = arn.rsplit_once(":key/")?;
    let account = head.rsplit(':').next()?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

async fn execute(shared: &Shared, op: &Op) -> Result<Value, Error> {
    let c = match op {
        Op::DescribeKey { .. }
        | Op::Encrypt { .. }
        | Op::Decrypt { .. }
        | Op::GenerateDataKey { .. }
        | Op::GetKeyPolicy { .. }
        | Op::ListKeys { .. } => &shared.reads,
        _ => &shared.client,
    };
    Ok(match op {
        Op::CreateKey { tag, description } => {
            let meta = c
                .create_key_with(CreateKeyRequest {
                    description: description.clone(),
                    request_id: tag.clone(),
                    ..Default::default()
                })
                .await?;
            if let Some(account) = account_of_key_arn(&meta.arn) {
                let mut known = shared.account.lock().unwrap_or_else(|p| p.into_inner());
                if known.is_none() {
                    *known = Some(account.to_string());
                }
            }
            Value::Created {
                key_id: meta.key_id,
            }
        }
        Op::DescribeKey { key_id, .. } => {
            let meta = c.describe_key(key_id).await?;
            Value::Key {
                state: meta.key_state,
                description: meta.description,
            }
        }
        Op::EnableKey { key_id, .. } => {
            c.enable_key(key_id).await?;
            Value::Done
        }
        Op::DisableKey { key_id, .. } => {
            c.disable_key(key_id).await?;
            Value::Done
        }
        Op::UpdateDescription { tag, key_id } => {
            c.update_key_description(key_id, tag).await?;
            Value::Done
        }
        Op::ScheduleDeletion { key_id, .. } => {
            c.schedule_key_deletion(key_id, 7).await?;
            Value::Done
        }
        Op::CancelDeletion { key_id, .. } => {
            c.cancel_key_deletion(key_id).await?;
            Value::Done
        }
        Op::Encrypt {
            tag,
            key_id,
            plaintext_sha256,
        } => {
            let r = c
                .encrypt(key_id, &plaintext_of(tag), &context_of(tag))
                .await?;
            Value::Ciphertext {
                ciphertext: base64::engine::general_purpose::STANDARD.encode(r.ciphertext_blob),
                plaintext_sha256: plaintext_sha256.clone(),
            }
        }
        Op::GenerateDataKey { tag, key_id } => {
            let r = c
                .generate_data_key(key_id, "AES_256", 0, &context_of(tag))
                .await?;
            Value::Ciphertext {
                ciphertext: base64::engine::general_purpose::STANDARD.encode(r.ciphertext_blob),
                plaintext_sha256: sha256_hex(&r.plaintext),
            }
        }
        Op::Decrypt { of, .. } => {
            let blob = {
                let sealed = shared.sealed.lock().unwrap_or_else(|p| p.into_inner());
                sealed
                    .iter()
                    .rev()
                    .find(|s| &s.tag == of)
                    .map(|s| s.blob.clone())
                    .unwrap_or_default()
            };
            let r = c.decrypt(&blob, &context_of(of), None).await?;
            Value::Plaintext {
                plaintext_sha256: sha256_hex(&r.plaintext),
            }
        }
        Op::ListKeys { .. } => Value::Count {
            count: count_keys(c).await?,
        },
        Op::PutKeyPolicy {
            tag,
            key_id,
            deny_crypto,
        } => {
            // make_op only builds a put once the account is known.
            let account = shared
                .account()
                .ok_or_else(|| Error::Config("the run's account is not known yet".into()))?;
            c.put_key_policy_with(PutKeyPolicyRequest {
                key_id: key_id.clone(),
                policy: policy_document(&account, tag, *deny_crypto),
                request_id: tag.clone(),
                ..Default::default()
            })
            .await?;
            Value::Done
        }
        Op::GetKeyPolicy { key_id, .. } => read_policy(&c.get_key_policy(key_id).await?),
    })
}

/// Remembers what later operations need from an `ok` result.
fn after_ok(shared: &Shared, op: &Op, value: &Value) {
    match (op, value) {
        (Op::CreateKey { .. }, Value::Created { key_id }) => {
            shared
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(key_id.clone());
        }
        (
            Op::Encrypt { tag, key_id, .. } | Op::GenerateDataKey { tag, key_id },
            Value::Ciphertext { ciphertext, .. },
        ) => {
            if let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(ciphertext) {
                shared
                    .sealed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Sealed {
                        tag: tag.clone(),
                        key_id: key_id.clone(),
                        blob,
                    });
            }
        }
        _ => {}
    }
}

/// Every key of the caller's account, through every page.
pub async fn count_keys(c: &Client) -> Result<u64, Error> {
    Ok(list_all_keys(c).await?.len() as u64)
}

/// Every key id of the caller's account, through every page.
pub async fn list_all_keys(c: &Client) -> Result<Vec<String>, Error> {
    let mut ids = Vec::new();
    let mut marker = String::new();
    loop {
        let page = c.list_keys(1000, &marker).await?;
        ids.extend(page.keys.into_iter().map(|k| k.key_id));
        if !page.truncated || page.next_marker.is_empty() {
            return Ok(ids);
        }
        marker = page.next_marker;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_picks_every_weighted_operation_and_never_a_zero_weight_one() {
        let mix = Mix {
            create: 1,
            list: 0,
            ..Mix::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            seen.insert(format!("{:?}", mix.pick(&mut rng)));
        }
        assert!(seen.contains("Create"));
        assert!(seen.contains("PutPolicy"));
        assert!(seen.contains("GetPolicy"));
        assert!(!seen.contains("List"));
        assert_eq!(seen.len(), 12);
    }

    #[test]
    fn a_mix_without_the_policy_weights_gets_the_defaults() {
        let mix: Mix = toml::from_str("create = 1\nencrypt = 2").unwrap();
        assert_eq!(mix.put_policy, Mix::default().put_policy);
        assert_eq!(mix.get_policy, Mix::default().get_policy);
        let mix: Mix = toml::from_str("put_policy = 0\nget_policy = 9").unwrap();
        assert_eq!((mix.put_policy, mix.get_policy), (0, 9));
    }

    #[test]
    fn put_policies_read_back_as_their_tag_and_variant() {
        for deny in [false, true] {
            let text = policy_document("111122223333", "run-7", deny);
            assert_eq!(
                read_policy(&text),
                Value::Policy {
                    tag: Some("run-7".into()),
                    deny_crypto: deny
                }
            );
        }
        let account = keyraft_types::AccountId::parse("111122223333").unwrap();
        let default = keyraft_types::PolicyDocument::default_key_policy(&account);
        assert_eq!(
            read_policy(default.text()),
            Value::Policy {
                tag: None,
                deny_crypto: false
            }
        );
        let Value::Policy { tag, .. } = read_policy("not json") else {
            panic!("not a policy value");
        };
        assert!(tag.unwrap().contains("unreadable"));
    }

    /// The documents parse as key policies, and the server's evaluator, asked for the
    /// workload's caller (the account root, as the dev administrator is evaluated),
    /// refuses cryptography only under the deny-crypto variant and allows every
    /// administrative call under both, PutKeyPolicy included (the lockout check).
    #[test]
    fn deny_crypto_refuses_only_cryptography_and_never_locks_the_account_out() {
        use keyraft_types::policy::{evaluate, AuthzPrincipal, AuthzRequest, Decision};
        use keyraft_types::{PolicyDocument, PolicyKind};
        let caller = AuthzPrincipal::parse("arn:keyraft:iam::111122223333:root").unwrap();
        let admin = [
            "kms:PutKeyPolicy",
            "kms:GetKeyPolicy",
            "kms:DescribeKey",
            "kms:EnableKey",
            "kms:DisableKey",
            "kms:UpdateKeyDescription",
            "kms:ScheduleKeyDeletion",
            "kms:CancelKeyDeletion",
        ];
        for deny in [false, true] {
            let text = policy_document("111122223333", "run-1", deny);
            let doc = PolicyDocument::parse(&text, PolicyKind::Key).unwrap();
            assert_eq!(doc.id(), Some("run-1"));
            let decide = |action: &str| {
                let req = AuthzRequest::new(
                    caller.clone(),
                    action,
                    "arn:keyraft:dev-1:111122223333:key/k1",
                );
                evaluate(Some(&doc), &[], false, &req)
            };
            for action in admin {
                assert!(decide(action).is_allowed(), "{action} deny={deny}");
            }
            for action in DENIED_CRYPTO_ACTIONS {
                let d = decide(action);
                if deny {
                    assert!(matches!(d, Decision::ExplicitDeny(_)), "{action}: {d:?}");
                } else {
                    assert!(d.is_allowed(), "{action}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn the_account_comes_from_a_key_arn() {
        assert_eq!(
            account_of_key_arn("arn:keyraft:dev-1:111122223333:key/abc"),
            Some("111122223333")
        );
        assert_eq!(account_of_key_arn("abc"), None);
        assert_eq!(account_of_key_arn("arn:keyraft:dev-1:x:key/abc"), None);
    }

    #[test]
    fn the_recorder_numbers_events_and_writes_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let r = Recorder::new(Some(&path)).unwrap();
        r.nemesis(Phase::Start, "kill", &[1], "leader");
        r.record(EventKind::Info {
            process: 3,
            error: "timeout".into(),
        });
        r.finish().unwrap();
        let back = History::read(&path).unwrap();
        assert_eq!(back, r.history());
        assert_eq!(back.events[1].index, 1);
        assert!(back.events[0].time_ns <= back.events[1].time_ns);
    }
}
