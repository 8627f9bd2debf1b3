//! `keyraft envelope encrypt|decrypt`: files of any size under a Keyraft key.
//!
//! A thin command over `keyraft_client::envelope`'s streaming functions: one data key
//! per file from `GenerateDataKey`, the file encrypted locally in authenticated frames,
//! one frame in memory at a time. Both directions write to a temporary file next to
//! `--out` (mode 0600) and rename it into place only when the whole message has been
//! written and synced — so a failed or interrupted decryption never leaves partial
//! plaintext under the output's name, and a failed encryption never leaves a message
//! that looks complete. On a terminal, a progress bar on stderr shows how far it is.
//!
//! Connection settings come from the flags, then `KEYRAFT_*`, then the credentials
//! profile (`KEYRAFT_PROFILE`), as in the SDK.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio::io::{BufReader, BufWriter};
use zeroize::Zeroize;

use keyraft_client::envelope::{
    decrypt_stream, encrypt_stream, DataKey, DataKeyProvider, EncryptOptions, EnvelopeError,
    MessageInfo, PlaintextKey,
};
use keyraft_client::{Client, ClientConfig, EncryptionContext, Error, ErrorCode, KmsError};

use crate::Connection;

/// Files of this size or more get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 4 << 20;
const IO_BUFFER: usize = 1 << 20;

#[derive(Subcommand)]
pub(crate) enum EnvelopeCommand {
    /// Encrypt a file of any size into an envelope message.
    Encrypt(EncryptArgs),
    /// Decrypt an envelope message; the output appears only once all of it verified.
    Decrypt(DecryptArgs),
}

#[derive(Args)]
pub(crate) struct EncryptArgs {
    /// The file to encrypt.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where to write the message (replaced only on success).
    #[arg(long = "out", value_name = "FILE")]
    output: PathBuf,
    /// The key: key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    key_id: String,
    /// Encryption context pair, stored in the message in the clear (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = crate::commands::parse_kv)]
    context: Vec<(String, String)>,
    /// Plaintext bytes per frame (64 to 16777216; default 65536).
    #[arg(long)]
    frame_len: Option<u32>,
}

#[derive(Args)]
pub(crate) struct DecryptArgs {
    /// The message to decrypt.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
    /// Where to write the plaintext (replaced only on success).
    #[arg(long = "out", value_name = "FILE")]
    output: PathBuf,
    /// If given, the message's data key must be under this key (id, ARN or alias):
    /// `IncorrectKeyException` otherwise.
    #[arg(long)]
    key_id: Option<String>,
    /// Expected encryption context pair (repeatable): each must be in the message.
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = crate::commands::parse_kv)]
    context: Vec<(String, String)>,
}

pub(crate) async fn run(conn: &Connection, cmd: EnvelopeCommand) -> Result<Value, Error> {
    let client = client(conn)?;
    match cmd {
        EnvelopeCommand::Encrypt(a) => encrypt(&client, a).await,
        EnvelopeCommand::Decrypt(a) => decrypt(&client, a).await,
    }
}

async fn encrypt(client: &Client, a: EncryptArgs) -> Result<Value, Error> {
    let context: EncryptionContext = a.context.into_iter().collect();
    let mut options = EncryptOptions::default();
    if let Some(len) = a.frame_len {
        options = options.with_frame_len(len).map_err(envelope_error)?;
    }
    let (input, size) = open_input(&a.input).await?;
    let partial = Partial::create(&a.output)?;
    let mut progress = Progress::new("encrypting", size);
    let mut report = |done: u64| progress.update(done);
    let mut writer = BufWriter::with_capacity(IO_BUFFER, partial.file()?);
    let result = encrypt_stream(
        client,
        &a.key_id,
        &context,
        BufReader::with_capacity(IO_BUFFER, input),
        &mut writer,
        &options,
        Some(&mut report),
    )
    .await;
    progress.finish();
    let info = result.map_err(envelope_error)?;
    let written = partial.commit(writer.into_inner()).await?;
    Ok(json!({
        "KeyId": info.key_id,
        "EncryptionContext": info.context,
        "PlaintextBytes": info.plaintext_len,
        "MessageBytes": written,
        "FrameLength": info.frame_len,
    }))
}

async fn decrypt(client: &Client, a: DecryptArgs) -> Result<Value, Error> {
    let expected: EncryptionContext = a.context.into_iter().collect();
    let expected = (!expected.is_empty()).then_some(expected);
    let (input, size) = open_input(&a.input).await?;
    let partial = Partial::create(&a.output)?;
    let mut progress = Progress::new("decrypting", size);
    let mut report = |done: u64| progress.update(done);
    let mut writer = BufWriter::with_capacity(IO_BUFFER, partial.file()?);
    let reader = BufReader::with_capacity(IO_BUFFER, input);
    let result: Result<MessageInfo, EnvelopeError> = match &a.key_id {
        Some(key_id) => {
            let bound = KeyBound { client, key_id };
            decrypt_stream(
                &bound,
                reader,
                &mut writer,
                expected.as_ref(),
                Some(&mut report),
            )
            .await
        }
        None => {
            decrypt_stream(
                client,
                reader,
                &mut writer,
                expected.as_ref(),
                Some(&mut report),
            )
            .await
        }
    };
    progress.finish();
    let info = result.map_err(envelope_error)?;
    partial.commit(writer.into_inner()).await?;
    Ok(json!({
        "KeyId": info.key_id,
        "EncryptionContext": info.context,
        "PlaintextBytes": info.plaintext_len,
    }))
}

/// The client: flags (which clap also fills from `KEYRAFT_*`), then the environment and
/// the credentials profile.
fn client(conn: &Connection) -> Result<Client, Error> {
    let mut b = ClientConfig::builder()
        .timeout(Duration::from_secs(conn.timeout.max(1)))
        .user_agent(format!("keyraft-cli/{}", env!("CARGO_PKG_VERSION")));
    if let Some(e) = conn.endpoints.as_deref().filter(|e| !e.trim().is_empty()) {
        b = b.endpoints(e.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    if let Some(r) = conn.region.as_deref().filter(|r| !r.is_empty()) {
        b = b.region(r);
    }
    if let (Some(id), Some(secret)) = (&conn.access_key_id, &conn.secret_access_key) {
        if !id.is_empty() && !secret.is_empty() {
            b = b.credentials(id, secret);
        }
    }
    Client::new(b.build()?)
}

/// Decrypts data keys naming the expected key, so the service refuses a message under
/// another key (`IncorrectKeyException`) before any plaintext exists.
struct KeyBound<'a> {
    client: &'a Client,
    key_id: &'a str,
}

impl DataKeyProvider for KeyBound<'_> {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        DataKeyProvider::generate_data_key(self.client, key_id, context, size).await
    }

    async fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        _size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let mut resp = self
            .client
            .decrypt(encrypted, context, Some(self.key_id))
            .await?;
        let plaintext = PlaintextKey::from_bytes(&resp.plaintext);
        resp.plaintext.zeroize();
        Ok(DataKey {
            plaintext: plaintext?,
            encrypted: encrypted.to_vec(),
            key_id: std::mem::take(&mut resp.key_id),
        })
    }
}

/// The CLI's error for an envelope failure: Keyraft's own errors as they are, a
/// message that does not verify as `InvalidCiphertextException` (as `keyraft
/// decrypt` reports it), local I/O as a configuration error naming the cause.
fn envelope_error(e: EnvelopeError) -> Error {
    match e {
        EnvelopeError::Kms(e) => e,
        EnvelopeError::Io(e) => Error::Config(format!("I/O: {e}")),
        EnvelopeError::InvalidInput(m) => Error::Service(KmsError::validation(m)),
        e @ (EnvelopeError::Malformed(_)
        | EnvelopeError::UnsupportedVersion(_)
        | EnvelopeError::UnsupportedAlgorithm(_)
        | EnvelopeError::Tampered { .. }
        | EnvelopeError::Truncated
        | EnvelopeError::TrailingData
        | EnvelopeError::ContextMismatch { .. }
        | EnvelopeError::KeyIdMismatch { .. }) => {
            Error::Service(KmsError::new(ErrorCode::InvalidCiphertext, e.to_string()))
        }
        e => Error::Service(KmsError::new(ErrorCode::Internal, e.to_string())),
    }
}

async fn open_input(path: &Path) -> Result<(tokio::fs::File, u64), Error> {
    let cannot = |e: std::io::Error| Error::Config(format!("cannot read {}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let size = file.metadata().await.map_err(cannot)?.len();
    Ok((file, size))
}

/// A temporary file beside the output, renamed over it on success and removed
/// otherwise (also when dropped on an early return).
struct Partial {
    path: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
    done: bool,
}

impl Partial {
    fn create(target: &Path) -> Result<Partial, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = target
            .file_name()
            .ok_or_else(|| Error::Config(format!("--out {} names no file", target.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for attempt in 0..100u32 {
            let path = dir.join(format!(
                ".{name}.{}.{nanos:x}{attempt}.partial",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Partial {
                        path,
                        target: target.to_path_buf(),
                        file: Some(file),
                        done: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Config(format!(
                        "cannot write in {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
        Err(Error::Config(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
    }

    fn file(&self) -> Result<tokio::fs::File, Error> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Error::Config("the temporary file is gone".into()))?
            .try_clone()
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", self.path.display())))?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Syncs the written file and moves it into place; returns its size.
    async fn commit(mut self, mut written: tokio::fs::File) -> Result<u64, Error> {
        let fail = |e: std::io::Error| {
            Error::Config(format!("cannot write {}: {e}", self.target.display()))
        };
        tokio::io::AsyncWriteExt::flush(&mut written)
            .await
            .map_err(fail)?;
        written.sync_all().await.map_err(fail)?;
        let size = written.metadata().await.map_err(fail)?.len();
        drop(written);
        self.file = None;
        std::fs::rename(&self.path, &self.target).map_err(fail)?;
        self.done = true;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(size)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A one-line progress bar on stderr, drawn only on a terminal and for large inputs,
/// at most ten times a second.
struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    /// The first report: the rate leaves out connecting and fetching the data key.
    started: Option<Instant>,
    last: Option<Instant>,
    done: u64,
}

impl Progress {
    fn new(label: &'static str, total: u64) -> Progress {
        Progress {
            label,
            total,
            enabled: total >= PROGRESS_FROM && std::io::stderr().is_terminal(),
            started: None,
            last: None,
            done: 0,
        }
    }

    fn update(&mut self, done: u64) {
        self.done = done;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        self.draw(started, now);
    }

    fn draw(&self, started: Instant, now: Instant) {
        const WIDTH: usize = 30;
        let fraction = if self.total == 0 {
            1.0
        } else {
            (self.done as f64 / self.total as f64).min(1.0)
        };
        let filled = (fraction * WIDTH as f64) as usize;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let secs = now.duration_since(started).as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{}{}] {:>3.0}% {:.1}/{:.1} MiB {:.0} MiB/s ",
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            fraction * 100.0,
            mib(self.done),
            mib(self.total),
            mib(self.done) / secs,
        );
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if let (true, Some(started)) = (self.enabled, self.started) {
            self.draw(started, Instant::now());
            eprintln!();
        }
    }
}
