//! The client's failure handling against endpoints where nothing listens: no cluster
//! needed, so these run in the client crate. The multi-node behaviour (discovery,
//! failover, exactly-once) is tested against real clusters in
//! `crates/keyraft-cli/tests/sdk.rs`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use keyraft_client::{Client, ClientConfig, ClientOptions, Error, ErrorKind, RetryPolicy};

/// A URL on 127.0.0.1 where nothing listens (connections are refused at once).
fn dead_endpoint() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn config(endpoints: Vec<String>, timeout: Duration) -> ClientConfig {
    ClientConfig::builder()
        .endpoints(endpoints)
        .region("test-1")
        .credentials("AKTEST", "secret")
        .timeout(timeout)
        .build_with(|_| None)
        .unwrap()
}

#[test]
fn a_client_built_and_dropped_outside_a_runtime_works_inside_one() {
    let client =
        Client::connect(config(vec![dead_endpoint()], Duration::from_millis(400))).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(client.describe_key("k")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(err.is_retryable() && err.is_outcome_unknown());
    drop(rt);
    // A second runtime after the first has gone: new channels, a new background task.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(client.describe_key("k")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    drop(rt);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_attempts_against_a_dead_cluster() {
    let mut options = ClientOptions::default();
    let mut retry = RetryPolicy::default();
    retry.budget_max = 10.0;
    retry.budget_floor_per_second = 5.0;
    retry.budget_ratio = 0.2;
    retry.max_backoff = Duration::from_millis(50);
    options.retry = retry;
    let deadline = Duration::from_secs(2);
    let client = Client::with_options(
        config(vec![dead_endpoint(), dead_endpoint()], deadline),
        options,
    )
    .unwrap();
    let started = Instant::now();
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.generate_random(8).await })
        })
        .collect();
    let mut exhausted = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(Error::Transport(m)) => {
                if m.contains("retry budget exhausted") {
                    exhausted += 1;
                }
            }
            other => panic!("expected a transport error, got {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let attempts: u64 = client.view().nodes.iter().map(|n| n.attempts).sum();
    // 100 first attempts, 10 tokens to start, 20 earned by the calls, 5 per second.
    let bound = 100.0 + 10.0 + 20.0 + 5.0 * elapsed + 1.0;
    assert!(
        (attempts as f64) <= bound,
        "{attempts} attempts in {elapsed:.1}s, bound {bound:.0}"
    );
    assert!(exhausted > 50, "only {exhausted} calls ran out of budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_a_call_makes_one_attempt() {
    let mut options = ClientOptions::pinned();
    options.retry = RetryPolicy::none();
    let client = Client::with_options(
        config(vec![dead_endpoint()], Duration::from_secs(5)),
        options,
    )
    .unwrap();
    let started = Instant::now();
    let err = client.generate_random(8).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(client.view().nodes[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_is_kept() {
    let client = Client::connect(config(vec![dead_endpoint()], Duration::from_secs(30))).unwrap();
    let quick = client.with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    assert!(quick.generate_random(8).await.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
