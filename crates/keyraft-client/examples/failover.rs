//! Failover demo: steady traffic through one client while you kill the leader.
//!
//! ```sh
//! keyraft dev &                                  # prints each node's Pid
//! set -a; . ./keyraft-dev/cluster.env; set +a
//! cargo run -p keyraft-client --example failover          # runs 60 s
//! kill -9 <the leader's Pid>                     # in another terminal, mid-run
//! ```
//!
//! Eight tasks encrypt, decrypt and create keys in a loop. Every second the demo prints
//! calls done, calls failed, the slowest call, the leader as the client sees it, and
//! which nodes are benched. Kill the leader: the slowest call spikes for about the
//! election time (1–2 s), no call fails, the leader changes; restart the node and it is
//! back in rotation within a second or so. Creates are retried with the same request
//! id, so none of them is ever done twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyraft_client::{Client, ClientConfig, EncryptionContext};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let client = Client::connect(ClientConfig::from_env()?)?;
    let key = client.create_key("failover demo").await?;
    let view = client.refresh().await?;
    println!(
        "{} nodes, leader {:?}; kill it now and watch",
        view.nodes.len(),
        view.leader
    );

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (client, key_id) = (client.clone(), key.key_id.clone());
        let (done, failed, slowest_ms) = (done.clone(), failed.clone(), slowest_ms.clone());
        workers.push(tokio::spawn(async move {
            let ctx = EncryptionContext::from([("worker".to_string(), w.to_string())]);
            let mut i = 0u64;
            while Instant::now() < end {
                let started = Instant::now();
                let outcome = if i.is_multiple_of(10) {
                    client
                        .create_key(&format!("demo {w}-{i}"))
                        .await
                        .map(|_| ())
                } else {
                    match client.encrypt(&key_id, b"payload", &ctx).await {
                        Ok(ct) => client
                            .decrypt(&ct.ciphertext_blob, &ctx, None)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    }
                };
                slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                match outcome {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("call failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }

    let mut last = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        let view = client.view();
        let benched: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| !n.healthy)
            .map(|n| n.endpoint.as_str())
            .collect();
        println!(
            "{:>6} calls/s  failed {:<3} slowest {:>5} ms  leader {:<24} benched {:?}",
            now - last,
            failed.load(Ordering::Relaxed),
            slowest_ms.swap(0, Ordering::Relaxed),
            view.leader.as_deref().unwrap_or("(unknown)"),
            benched
        );
        last = now;
    }
    for w in workers {
        w.await?;
    }
    println!(
        "{} calls, {} failed",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}
