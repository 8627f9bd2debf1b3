//! `keyraft dev`: a local N-node cluster of real processes, on its embedded defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use keyraft_testkit::LocalCluster;

/// `keyraft dev` flags.
#[derive(Args)]
pub(crate) struct DevArgs {
    /// Number of nodes (first start only).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the cluster keeps everything; reused on a second start.
    #[arg(long, default_value = "./keyraft-dev")]
    data_dir: PathBuf,
    /// Node N listens on base+N (API) and base+100+N (Raft).
    #[arg(long, default_value_t = 7100)]
    base_port: u16,
    /// Region name.
    #[arg(long, default_value = "dev-1")]
    region: String,
}

pub(crate) async fn run(args: DevArgs) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot find the keyraft binary: {e}")),
    };
    let mut cluster = match LocalCluster::prepare(
        &args.data_dir,
        &binary,
        args.nodes,
        args.base_port,
        &args.region,
    ) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = cluster.start_all() {
        return fail(e.to_string());
    }
    let ids: Vec<u64> = cluster.nodes().iter().map(|n| n.id).collect();
    eprintln!(
        "keyraft dev: starting {} nodes in {} ...",
        ids.len(),
        args.data_dir.display()
    );
    if let Err(e) = cluster.wait_ready(&ids, Duration::from_secs(60)).await {
        cluster.stop_all(Duration::from_secs(5));
        return fail(format!(
            "{e} (see the node*.log files in {})",
            args.data_dir.display()
        ));
    }
    let nodes: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|n| json!({"Id": n.id, "Endpoint": n.endpoint(), "RaftAddress": n.raft_addr(), "Pid": cluster.pid(n.id)}))
        .collect();
    println!(
        "{}",
        json!({
            "Region": cluster.file().region,
            "Nodes": nodes,
            "EnvFile": cluster.dir().join("cluster.env"),
        })
    );
    eprintln!(
        "keyraft dev: ready. In another shell:\n  set -a; . {}; set +a\n  keyraft key create --description demo\nCtrl-C (or SIGTERM) stops all nodes.",
        cluster.dir().join("cluster.env").display()
    );
    // Nodes that die stay dead (chaos experiments rely on that); report them.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let stop = crate::stop_requested();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                for (id, status) in cluster.reap() {
                    eprintln!("keyraft dev: node {id} exited ({status}); not restarting it");
                }
            }
        }
    }
    eprintln!("keyraft dev: stopping");
    cluster.stop_all(Duration::from_secs(10));
    ExitCode::SUCCESS
}

fn fail(message: String) -> ExitCode {
    eprintln!("keyraft dev: {message}");
    ExitCode::FAILURE
}
