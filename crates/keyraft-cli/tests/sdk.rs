//! The client SDK against real 3-node clusters (`keyraft server` processes on
//! 127.0.0.1): discovery from one follower, a leader killed under load, the node a
//! client was given stopping (SIGSTOP, so it keeps its sockets and simply stops
//! answering, like a node behind a partition) and coming back, exactly-once CreateKey
//! across a leader kill, and `keyraft envelope` round trips of 0 B, 1 B and 100 MB.
//!
//! Clusters in this file run one at a time; every node process is killed when its
//! `LocalCluster` drops, also when a test fails.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use keyraft_client::{Client, ClientConfig, ClusterView, EncryptionContext, Error};
use keyraft_testkit::LocalCluster;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keyraft"))
}

async fn cluster(dir: &Path) -> LocalCluster {
    let mut c = LocalCluster::prepare(dir, binary(), 3, 0, "test-1").expect("prepare");
    c.start_all().expect("start");
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .expect("ready");
    c
}

/// Retries `f` until it succeeds or `timeout` passes.
async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("condition not met in {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The SDK's client, discovering the cluster from every node's endpoint.
fn sdk_client(c: &LocalCluster) -> Client {
    Client::connect(c.client_config()).unwrap()
}

/// The SDK's client, given only node `id`'s endpoint as a seed.
fn client_seeded_with(c: &LocalCluster, id: u64) -> Client {
    let mut config: ClientConfig = c.client_config();
    config.endpoints = vec![c.node(id).unwrap().endpoint()];
    Client::connect(config).unwrap()
}

fn endpoint(c: &LocalCluster, id: u64) -> String {
    c.node(id).unwrap().endpoint()
}

fn attempts(view: &ClusterView, endpoint: &str) -> u64 {
    view.node(endpoint).map_or(0, |n| n.attempts)
}

/// Waits until the client's view lists all three members and names `leader`.
async fn discovered(client: &Client, c: &LocalCluster, leader: u64) -> ClusterView {
    let leader_ep = endpoint(c, leader);
    eventually(Duration::from_secs(15), || async {
        let v = client.view();
        let members = v.nodes.iter().filter(|n| n.member).count();
        if members == 3 && v.leader.as_deref() == Some(leader_ep.as_str()) {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await
}

async fn leader_of(c: &LocalCluster) -> u64 {
    let admin = c.client().unwrap();
    eventually(Duration::from_secs(15), || async {
        match admin.cluster_status().await {
            Ok(s) if s.leader != 0 => Ok(s.leader),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_from_a_single_follower_endpoint_routes_mutations_to_the_leader() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let leader = leader_of(&c).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let client = client_seeded_with(&c, follower);

    // The first call goes to the only node the client knows; discovery follows.
    let key = client.create_key("first").await.unwrap();
    let view = discovered(&client, &c, leader).await;
    assert_eq!(view.region.as_deref(), Some("test-1"));
    let mut ids: Vec<u64> = view.nodes.iter().filter_map(|n| n.id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);

    // Mutations go straight to the leader ...
    let before = client.view();
    for i in 0..10 {
        client.create_key(&format!("routed {i}")).await.unwrap();
    }
    let after = client.view();
    let grew = |id: u64| attempts(&after, &endpoint(&c, id)) - attempts(&before, &endpoint(&c, id));
    assert_eq!(grew(leader), 10);
    for id in (1..=3).filter(|id| *id != leader) {
        assert_eq!(grew(id), 0, "node {id} got a mutation");
    }
    // ... and cryptography is spread over every node.
    let ctx = EncryptionContext::new();
    for _ in 0..30 {
        client.encrypt(&key.key_id, b"spread", &ctx).await.unwrap();
    }
    let spread = client.view();
    for id in 1..=3 {
        let n = attempts(&spread, &endpoint(&c, id)) - attempts(&after, &endpoint(&c, id));
        assert!(n >= 3, "node {id} served {n} of 30 encryptions");
    }

    // The seed goes away for good: the client carries on with the members it found.
    c.kill(follower).unwrap();
    for i in 0..5 {
        let started = Instant::now();
        let ct = client.encrypt(&key.key_id, b"after", &ctx).await.unwrap();
        client
            .decrypt(&ct.ciphertext_blob, &ctx, None)
            .await
            .unwrap();
        client.create_key(&format!("after {i}")).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let v = client.view();
    assert!(!v.node(&endpoint(&c, follower)).unwrap().healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_load_fails_no_call_and_is_used_again_after_restart() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let client = sdk_client(&c);
    let leader = leader_of(&c).await;
    let key = client.create_key("load").await.unwrap();
    discovered(&client, &c, leader).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let slowest = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, key_id) = (client.clone(), key.key_id.clone());
            let (stop, done, failures, slowest) = (
                stop.clone(),
                done.clone(),
                failures.clone(),
                slowest.clone(),
            );
            tokio::spawn(async move {
                let ctx = EncryptionContext::from([("worker".to_string(), w.to_string())]);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome: Result<(), Error> = async {
                        if i.is_multiple_of(4) {
                            client.create_key(&format!("w{w}-{i}")).await?;
                        } else {
                            let ct = client.encrypt(&key_id, b"payload", &ctx).await?;
                            let pt = client.decrypt(&ct.ciphertext_blob, &ctx, None).await?;
                            assert_eq!(pt.plaintext, b"payload");
                        }
                        Ok(())
                    }
                    .await;
                    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match outcome {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let reached = |n: u64| {
        let done = done.clone();
        move || {
            let done = done.clone();
            async move {
                let d = done.load(Ordering::Relaxed);
                if d >= n {
                    Ok(d)
                } else {
                    Err(format!("{d} calls done"))
                }
            }
        }
    };

    let before_kill = eventually(Duration::from_secs(30), reached(100)).await;
    let killed_at = Instant::now();
    c.kill(leader).unwrap();
    eventually(Duration::from_secs(60), reached(before_kill + 200)).await;
    let recovered_in = killed_at.elapsed();
    c.start(leader).unwrap();
    // The restarted node is probed back into rotation and serves calls again.
    let back = endpoint(&c, leader);
    let at_restart = attempts(&client.view(), &back);
    eventually(Duration::from_secs(60), || async {
        let v = client.view();
        let n = v.node(&back).ok_or("forgotten")?;
        if n.healthy && n.attempts > at_restart + 5 {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} calls failed: {failures:?}",
        failures.len()
    );
    let slowest = Duration::from_millis(slowest.load(Ordering::Relaxed));
    eprintln!(
        "{} calls, none failed; slowest {slowest:?}; 200 calls done {recovered_in:?} after the kill",
        done.load(Ordering::Relaxed)
    );
    assert!(
        slowest < Duration::from_secs(10),
        "slowest call {slowest:?}"
    );
}

/// Sends SIGCONT to a stopped node when dropped, also when the test fails.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_a_client_is_pinned_to_stops_answering_and_comes_back() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let leader = leader_of(&c).await;
    let pinned = (1..=3).find(|id| *id != leader).unwrap();
    let client = client_seeded_with(&c, pinned);
    let key = client.create_key("partition").await.unwrap();
    discovered(&client, &c, leader).await;
    let pinned_ep = endpoint(&c, pinned);
    let ctx = EncryptionContext::new();

    // SIGSTOP: the process keeps its sockets but answers nothing, as behind a
    // partition. The connection's keepalive notices; calls go elsewhere.
    let pid = c.pid(pinned).unwrap() as i32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = Stopped(pid);
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let started = Instant::now();
        let ct = client.encrypt(&key.key_id, b"x", &ctx).await.unwrap();
        client
            .decrypt(&ct.ciphertext_blob, &ctx, None)
            .await
            .unwrap();
        if i % 10 == 0 {
            client.create_key(&format!("during {i}")).await.unwrap();
        }
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(6), "slowest call {slowest:?}");
    let v = client.view();
    assert!(!v.node(&pinned_ep).unwrap().healthy, "{v:?}");
    let failures_while_stopped = v.node(&pinned_ep).unwrap().failures;

    // The partition heals: a probe finds the node, and it serves calls again.
    drop(stopped);
    let healed = Instant::now();
    let at_heal = attempts(&client.view(), &pinned_ep);
    eventually(Duration::from_secs(20), || async {
        client
            .encrypt(&key.key_id, b"y", &ctx)
            .await
            .map_err(|e| e.to_string())?;
        let v = client.view();
        let n = v.node(&pinned_ep).ok_or("forgotten")?;
        if n.healthy && n.attempts > at_heal {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    eprintln!(
        "stopped node: slowest call {slowest:?}, {failures_while_stopped} failed attempts or \
         probes, back in rotation {:?} after SIGCONT",
        healed.elapsed()
    );
}

#[derive(Debug)]
enum Outcome {
    Created(String),
    Unknown(String),
    Refused(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_create_key_acts_exactly_once_across_a_leader_kill() {
    const CALLS: usize = 1000;
    const CONCURRENCY: usize = 16;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let admin = c.client().unwrap();
    admin.set_quota(None, 2 * CALLS as u64, 0).await.unwrap();
    let leader = leader_of(&c).await;
    let client = sdk_client(&c);
    client.refresh().await.unwrap();
    discovered(&client, &c, leader).await;

    let next = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(HashMap::<usize, Outcome>::new()));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next, succeeded, outcomes) = (
                client.clone(),
                next.clone(),
                succeeded.clone(),
                outcomes.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS {
                        return;
                    }
                    let outcome = match client.create_key(&format!("call-{i}")).await {
                        Ok(m) => {
                            succeeded.fetch_add(1, Ordering::Relaxed);
                            Outcome::Created(m.key_id)
                        }
                        Err(e) if e.is_outcome_unknown() => Outcome::Unknown(e.to_string()),
                        Err(e) => Outcome::Refused(e.to_string()),
                    };
                    outcomes.lock().unwrap().insert(i, outcome);
                }
            })
        })
        .collect();
    let at_least = |n: usize| {
        let succeeded = succeeded.clone();
        move || {
            let s = succeeded.load(Ordering::Relaxed);
            async move {
                if s >= n {
                    Ok(())
                } else {
                    Err(format!("{s} succeeded"))
                }
            }
        }
    };
    eventually(Duration::from_secs(120), at_least(300)).await;
    c.kill(leader).unwrap();
    eventually(Duration::from_secs(120), at_least(450)).await;
    c.start(leader).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(outcomes.len(), CALLS);

    // Every key in the account, by description.
    let mut keys = Vec::new();
    let mut marker = String::new();
    loop {
        let page = client.list_keys(1000, &marker).await.unwrap();
        keys.extend(page.keys.into_iter().map(|k| k.key_id));
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    let described = Arc::new(Mutex::new(Vec::new()));
    let chunks: Vec<Vec<String>> = keys
        .chunks(keys.len().div_ceil(CONCURRENCY).max(1))
        .map(|c| c.to_vec())
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (client, described) = (client.clone(), described.clone());
            tokio::spawn(async move {
                for id in chunk {
                    let m = client.describe_key(&id).await.unwrap();
                    described.lock().unwrap().push((m.key_id, m.description));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut by_call: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (id, description) in described.lock().unwrap().iter() {
        let call = description
            .strip_prefix("call-")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("key {id} belongs to no call: {description:?}"));
        by_call.entry(call).or_default().push(id.clone());
    }

    let (mut created, mut unknown, mut refused) = (0, 0, 0);
    for (i, outcome) in &outcomes {
        let found = by_call.get(i).cloned().unwrap_or_default();
        match outcome {
            Outcome::Created(id) => {
                created += 1;
                assert_eq!(found.as_slice(), std::slice::from_ref(id), "call {i}");
            }
            Outcome::Unknown(e) => {
                unknown += 1;
                assert!(found.len() <= 1, "call {i} ({e}) made {found:?}");
            }
            Outcome::Refused(e) => {
                refused += 1;
                assert!(found.is_empty(), "refused call {i} ({e}) made {found:?}");
            }
        }
    }
    assert!(by_call.keys().all(|i| *i < CALLS));
    // The kill hit calls in flight: some attempts failed and were retried.
    let failed_attempts: u64 = client.view().nodes.iter().map(|n| n.failures).sum();
    eprintln!(
        "{created} created, {unknown} unknown, {refused} refused; {} keys exist; \
         {failed_attempts} attempts and probes failed in transport",
        keys.len()
    );
    assert!(failed_attempts > 0, "the leader kill interrupted no call");
    assert_eq!(
        created, CALLS,
        "every call should succeed across one leader kill"
    );
}

fn sha256_of(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// `len` bytes of varied content, written in 1 MiB chunks (never all in memory).
fn write_input(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ len;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn keyraft(c: &LocalCluster, home: &Path, args: &[&str]) -> (bool, String, String) {
    let config = c.client_config();
    let out = Command::new(binary())
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("KEYRAFT_ENDPOINTS", config.endpoints.join(","))
        .env("KEYRAFT_REGION", &config.region)
        .env("KEYRAFT_ACCESS_KEY_ID", &config.access_key_id)
        .env("KEYRAFT_SECRET_ACCESS_KEY", &config.secret_access_key)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_round_trips_of_0_bytes_1_byte_and_100_mb_through_the_cli() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let key = c.client().unwrap().create_key("files").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { work.path().join(name) };

    for (name, len) in [("empty", 0u64), ("one", 1), ("hundred-mb", 100 << 20)] {
        write_input(&path(name), len);
        let sealed = format!("{name}.krfe");
        let opened = format!("{name}.out");
        let (ok, stdout, stderr) = keyraft(
            &c,
            work.path(),
            &[
                "envelope",
                "encrypt",
                "--in",
                path(name).to_str().unwrap(),
                "--out",
                path(&sealed).to_str().unwrap(),
                "--key-id",
                &key.key_id,
                "--context",
                "purpose=test",
            ],
        );
        assert!(ok, "{name}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["PlaintextBytes"], len);
        assert_eq!(report["KeyId"], key.arn.as_str());
        assert!(std::fs::metadata(path(&sealed)).unwrap().len() > len);

        let (ok, _, stderr) = keyraft(
            &c,
            work.path(),
            &[
                "envelope",
                "decrypt",
                "--in",
                path(&sealed).to_str().unwrap(),
                "--out",
                path(&opened).to_str().unwrap(),
                "--key-id",
                &key.arn,
                "--context",
                "purpose=test",
            ],
        );
        assert!(ok, "{name}: {stderr}");
        assert_eq!(sha256_of(&path(name)), sha256_of(&path(&opened)), "{name}");
    }

    // A wrong context or key is refused, and no output (partial or not) appears.
    let other = c.client().unwrap().create_key("other").await.unwrap();
    let sealed = path("one.krfe");
    let refused = path("refused.out");
    for (extra, code) in [
        (["--context", "purpose=other"], "InvalidCiphertextException"),
        (["--key-id", other.key_id.as_str()], "IncorrectKeyException"),
    ] {
        let mut args = vec![
            "envelope",
            "decrypt",
            "--in",
            sealed.to_str().unwrap(),
            "--out",
            refused.to_str().unwrap(),
        ];
        args.extend(extra);
        let (ok, _, stderr) = keyraft(&c, work.path(), &args);
        assert!(!ok);
        assert!(stderr.contains(code), "{stderr}");
        assert!(!refused.exists());
    }
    // A tampered message (the last tag byte): InvalidCiphertextException, no output.
    let mut bytes = std::fs::read(path("one.krfe")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(path("tampered.krfe"), &bytes).unwrap();
    let (ok, _, stderr) = keyraft(
        &c,
        work.path(),
        &[
            "envelope",
            "decrypt",
            "--in",
            path("tampered.krfe").to_str().unwrap(),
            "--out",
            path("tampered.out").to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("InvalidCiphertextException"), "{stderr}");
    let leftovers: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.contains("partial") || n.starts_with("tampered.out") || n.starts_with("refused")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
