//! `keyraft`: run a node (`server`), a local development cluster (`dev`), and talk to a
//! cluster (`key`, `encrypt`, `decrypt`, `data-key`, `cluster`, `audit`).
//!
//! Client commands print JSON on stdout with AWS field names; on failure they print
//! `{"Error":{"Code":..,"Message":..}}` on stderr and exit with status 1.

#![forbid(unsafe_code)]

mod audit_cmd;
mod bench;
mod commands;
mod dev;
mod envelope_cmd;
mod iam_cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// jemalloc instead of glibc's malloc for every `keyraft` process, nodes included. A node
/// allocates and frees many short-lived buffers on several threads (sled's page copies,
/// request and audit encodings). Under audited Encrypts glibc's allocator took about a
/// fifth of the CPU, and a node's memory grew with the calls: 542 MiB after 100 000,
/// against 172 MiB with jemalloc (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Keyraft: a Raft-replicated key management service.
#[derive(Parser)]
#[command(name = "keyraft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Start a local N-node cluster on 127.0.0.1 (development).
    Dev(dev::DevArgs),
    /// Run one node.
    Server(ServerArgs),
    /// Key life cycle.
    Key {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::KeyCommand,
    },
    /// Encrypt up to 4096 bytes.
    Encrypt {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: commands::EncryptArgs,
    },
    /// Decrypt a ciphertext blob.
    Decrypt {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: commands::DecryptArgs,
    },
    /// Move a ciphertext to another key or context inside the service.
    ReEncrypt {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: commands::ReEncryptArgs,
    },
    /// Sign a message or digest with a SIGN_VERIFY key pair.
    Sign {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: commands::SignArgs,
    },
    /// Verify a signature (exit status 1 and KMSInvalidSignatureException if it does not).
    Verify {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: commands::VerifyArgs,
    },
    /// Random bytes from a node's HSM.
    Random {
        #[command(flatten)]
        conn: Connection,
        /// How many (1-1024).
        #[arg(long)]
        bytes: u32,
    },
    /// Aliases: friendly names for keys.
    Alias {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::AliasCommand,
    },
    /// Data keys for envelope encryption.
    DataKey {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::DataKeyCommand,
    },
    /// Envelope encryption of files of any size (a data key per file, local AES-GCM).
    Envelope {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: envelope_cmd::EnvelopeCommand,
    },
    /// Cluster administration.
    Cluster {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::ClusterCommand,
    },
    /// MACs with HMAC keys.
    Mac {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::MacCommand,
    },
    /// Service-managed keys.
    ServiceKey {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::ServiceKeyCommand,
    },
    /// Users, roles, their policies and access keys; AssumeRole.
    Iam {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: iam_cmd::IamCommand,
    },
    /// Grants: let a principal use a key, within constraints.
    Grant {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: iam_cmd::GrantCommand,
    },
    /// Per-account quotas of this region.
    Quota {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::QuotaCommand,
    },
    /// The audit trail.
    Audit {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: commands::AuditCommand,
    },
    /// Load generator: ops/s and latency percentiles of a workload; `bench failover`
    /// times a leader kill (see BENCHMARKS.md).
    Bench {
        #[command(flatten)]
        conn: Connection,
        // Boxed: the bench's flags are by far the largest variant.
        #[command(flatten)]
        args: Box<bench::BenchArgs>,
    },
}

/// Where the cluster is and who we are (flags override `KEYRAFT_*`).
#[derive(Args, Clone)]
pub(crate) struct Connection {
    /// Comma-separated client API URLs.
    #[arg(long, env = "KEYRAFT_ENDPOINTS", global = true, hide_env_values = true)]
    endpoints: Option<String>,
    /// Region of the cluster.
    #[arg(long, env = "KEYRAFT_REGION", global = true)]
    region: Option<String>,
    /// Access key id.
    #[arg(
        long,
        env = "KEYRAFT_ACCESS_KEY_ID",
        global = true,
        hide_env_values = true
    )]
    access_key_id: Option<String>,
    /// Secret access key (prefer the environment variable).
    #[arg(
        long,
        env = "KEYRAFT_SECRET_ACCESS_KEY",
        global = true,
        hide_env_values = true
    )]
    secret_access_key: Option<String>,
    /// Deadline of the whole call, retries included, in seconds.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
}

/// `keyraft server` flags (override the file and `KEYRAFT_*`).
#[derive(Args)]
struct ServerArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client API listen address.
    #[arg(long)]
    api_addr: Option<String>,
    /// Node-to-node listen address.
    #[arg(long)]
    raft_addr: Option<String>,
    /// Region.
    #[arg(long)]
    region: Option<String>,
    /// Any option by its dotted path, e.g. `--set raft.heartbeat_ms=50` (repeatable;
    /// overrides the file and `KEYRAFT_*`).
    #[arg(long, value_parser = parse_set)]
    set: Vec<(String, String)>,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected path=value, got '{s}'")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // A node's configuration says how many threads its runtime has.
        Top::Server(args) => {
            let config = match server_config(args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match runtime(config.worker_threads) {
                Ok(runtime) => runtime.block_on(server(config)),
                Err(e) => fail_start(format!("cannot start the async runtime: {e}")),
            }
        }
        command => match runtime(0) {
            Ok(runtime) => runtime.block_on(run(command)),
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A multi-threaded Tokio runtime of `workers` threads (0: one per core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    builder.build()
}

async fn run(command: Top) -> ExitCode {
    match command {
        Top::Dev(args) => {
            init_tracing("warn");
            dev::run(args).await
        }
        // `main` starts a server on a runtime sized by its configuration; here it runs
        // on the one it is given.
        Top::Server(args) => match server_config(args) {
            Ok(config) => server(config).await,
            Err(code) => code,
        },
        Top::Key { conn, command } => output::finish(commands::key(&conn, command).await),
        Top::Encrypt { conn, args } => output::finish(commands::encrypt(&conn, args).await),
        Top::Decrypt { conn, args } => output::finish(commands::decrypt(&conn, args).await),
        Top::DataKey { conn, command } => output::finish(commands::data_key(&conn, command).await),
        Top::ReEncrypt { conn, args } => output::finish(commands::re_encrypt(&conn, args).await),
        Top::Random { conn, bytes } => output::finish(commands::random(&conn, bytes).await),
        Top::Sign { conn, args } => output::finish(commands::sign(&conn, args).await),
        Top::Verify { conn, args } => output::finish(commands::verify(&conn, args).await),
        Top::Alias { conn, command } => output::finish(commands::alias(&conn, command).await),
        Top::Envelope { conn, command } => output::finish(envelope_cmd::run(&conn, command).await),
        Top::Cluster { conn, command } => output::finish(commands::cluster(&conn, command).await),
        Top::Quota { conn, command } => output::finish(commands::quota(&conn, command).await),
        Top::Iam { conn, command } => output::finish(iam_cmd::iam(&conn, command).await),
        Top::Grant { conn, command } => output::finish(iam_cmd::grant(&conn, command).await),
        Top::Mac { conn, command } => output::finish(commands::mac(&conn, command).await),
        Top::ServiceKey { conn, command } => {
            output::finish(commands::service_key(&conn, command).await)
        }
        Top::Audit { conn, command } => output::finish(commands::audit(&conn, command).await),
        Top::Bench { conn, args } => bench::run(&conn, *args).await,
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts a node's logging and reads its configuration (defaults, file, environment and
/// flags, validated), or says why it cannot start.
fn server_config(args: ServerArgs) -> Result<keyraft_server::Config, ExitCode> {
    init_tracing("info");
    let mut sets = args.set.clone();
    let flags = [
        ("node_id", args.node_id.map(|v| v.to_string())),
        ("data_dir", args.data_dir.map(|v| v.display().to_string())),
        ("api_addr", args.api_addr),
        ("raft_addr", args.raft_addr),
        ("region", args.region),
    ];
    for (path, value) in flags {
        if let Some(v) = value {
            sets.push((path.to_string(), v));
        }
    }
    let config =
        keyraft_server::Config::load(args.config.as_deref(), |k| std::env::var(k).ok(), &sets)
            .map_err(|e| fail_start(e.message))?;
    config.validate().map_err(|e| fail_start(e.to_string()))?;
    Ok(config)
}

async fn server(config: keyraft_server::Config) -> ExitCode {
    use keyraft_server::Node;
    let api = match tokio::net::TcpListener::bind(&config.api_addr).await {
        Ok(l) => l,
        Err(e) => return fail_start(format!("cannot listen on {}: {e}", config.api_addr)),
    };
    let raft = match tokio::net::TcpListener::bind(&config.raft_addr).await {
        Ok(l) => l,
        Err(e) => return fail_start(format!("cannot listen on {}: {e}", config.raft_addr)),
    };
    let handle = match Node::start(config, api, raft).await {
        Ok(h) => h,
        Err(e) => return fail_start(e.to_string()),
    };
    let code = tokio::select! {
        () = stop_requested() => ExitCode::SUCCESS,
        fatal = handle.fatal() => {
            tracing::error!("stopping after a fatal error: {fatal}");
            ExitCode::FAILURE
        }
    };
    tracing::info!("stopping");
    handle.shutdown().await;
    code
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or SIGTERM, the signal
/// `kill`, systemd and `docker stop` send.
pub(crate) async fn stop_requested() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still works.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn fail_start(message: String) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("keyraft server: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_runtime_has_the_threads_it_is_configured_with() {
        assert_eq!(super::runtime(3).unwrap().metrics().num_workers(), 3);
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(super::runtime(0).unwrap().metrics().num_workers(), cores);
    }
}
