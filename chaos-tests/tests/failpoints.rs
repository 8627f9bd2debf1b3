//! Fail points in real `keyraft server` processes: an answer lost after its commit (an
//! unknown outcome that a retry with the same request id resolves to the first result),
//! a follower that crashes before apply and catches up after a restart, the startup
//! environment variable, listing, validation and who may arm a point, a removal cut short,
//! and a membership change refused while another waits.
//!
//! The nodes run the `keyraft` binary built next to this test (`cargo test --workspace`
//! builds it with the `failpoints` feature through feature unification).

mod common;
use common::keyraft_binary;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keyraft_client::types::CreateKeyRequest;
use keyraft_client::{Client, ClientOptions, Error, ErrorCode, RetryPolicy};
use keyraft_testkit::LocalCluster;

/// The clusters of this file run one at a time (2-core CI machines).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AFTER_COMMIT: &str = "server::after_commit_before_response";
const BEFORE_AUDIT: &str = "server::before_audit_append";
const BEFORE_APPLY: &str = "raft::before_apply";
const SEND_DOMAIN_KEY: &str = "server::before_send_domain_key";

/// A fresh random suffix, so names and request ids never repeat across runs.
fn unique() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn started(dir: &std::path::Path, region: &str) -> LocalCluster {
    let mut c = LocalCluster::prepare(dir, &keyraft_binary(), 3, 0, region).unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    c
}

/// A client of node `id` that makes exactly one attempt per call.
fn one_shot(c: &LocalCluster, id: u64) -> Client {
    let mut config = c.client_config();
    config.endpoints = vec![c.node(id).unwrap().endpoint()];
    config.timeout = Duration::from_secs(10);
    let mut options = ClientOptions::pinned();
    options.retry = RetryPolicy::none();
    Client::with_options(config, options).unwrap()
}

async fn leader(c: &LocalCluster) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = c.client().unwrap().cluster_status().await {
            if s.leader != 0 {
                return s.leader;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn key_ids(client: &Client) -> BTreeSet<String> {
    keyraft_chaos::workload::list_all_keys(client)
        .await
        .expect("listing keys")
        .into_iter()
        .collect()
}

/// Fails the test clearly if the nodes' binary was built without fail points.
fn require_failpoints(e: &Error) {
    if e.code() == Some(ErrorCode::UnsupportedOperation) {
        panic!(
            "the keyraft binary has no fail points ({e}); build it with `cargo build -p keyraft-cli --features failpoints`"
        );
    }
}

/// Arms a point.
async fn arm(node: &Client, name: &str, actions: &str) -> Vec<(String, String)> {
    match node.set_failpoint(name, actions).await {
        Ok(configured) => configured,
        Err(e) => {
            require_failpoints(&e);
            panic!("arming {name}={actions}: {e}")
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, Error>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_an_unknown_outcome_and_a_retry_with_the_same_id_returns_the_first_key() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = started(dir.path(), "fp-1").await;
    let l = leader(&c).await;
    let admin = c.client_of(l).unwrap();
    let strict = one_shot(&c, l);
    let before = key_ids(&admin).await;

    // Listing: nothing armed yet, every name known; then what was armed.
    let listed = match admin.list_failpoints().await {
        Ok(listed) => listed,
        Err(e) => {
            require_failpoints(&e);
            panic!("ListFailpoints: {e}")
        }
    };
    assert_eq!(listed.node_id, l);
    assert!(listed.configured.is_empty(), "{:?}", listed.configured);
    for name in [
        AFTER_COMMIT,
        BEFORE_AUDIT,
        BEFORE_APPLY,
        "raft::log::after_fsync",
    ] {
        assert!(listed.known.iter().any(|k| k == name), "{name} not known");
    }
    let configured = arm(&admin, AFTER_COMMIT, "1*return").await;
    assert_eq!(
        configured,
        vec![(AFTER_COMMIT.to_string(), "1*return".to_string())]
    );
    let listed = admin.list_failpoints().await.unwrap();
    assert_eq!(listed.configured.len(), 1);
    assert_eq!(listed.configured[0].name, AFTER_COMMIT);
    assert_eq!(listed.configured[0].actions, "1*return");

    // The write commits, the answer is an error that says the outcome is unknown: a
    // checker must record this operation as `info`, not `fail`.
    let req = CreateKeyRequest {
        description: format!("lost answer {}", unique()),
        request_id: format!("fp-{}", unique()),
        ..Default::default()
    };
    let err = strict.create_key_with(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Internal), "{err}");
    assert!(err.is_retryable() && err.is_outcome_unknown(), "{err}");
    let after = key_ids(&admin).await;
    let created: Vec<&String> = after.difference(&before).collect();
    assert_eq!(created.len(), 1, "the key exists although the call failed");

    // Retrying with the same request id answers with that key; no second key.
    let again = strict.create_key_with(req).await.unwrap();
    assert_eq!(&again.key_id, created[0]);
    assert_eq!(key_ids(&admin).await, after);

    // The SDK's own retry does the same, within one call.
    arm(&admin, AFTER_COMMIT, "1*return").await;
    let k = admin.create_key("retried by the SDK").await.unwrap();
    let after2 = key_ids(&admin).await;
    assert_eq!(
        after2.difference(&after).collect::<Vec<_>>(),
        vec![&k.key_id]
    );

    // Before the audit append nothing is written at all.
    arm(&admin, BEFORE_AUDIT, "1*return").await;
    let err = strict.create_key("never written").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Internal), "{err}");
    assert_eq!(key_ids(&admin).await, after2);

    // Clearing, and the control calls' own checks.
    arm(&admin, AFTER_COMMIT, "off").await;
    let configured = arm(&admin, BEFORE_AUDIT, "off").await;
    assert!(configured.is_empty(), "{configured:?}");
    let e = admin
        .set_failpoint("raft::nope", "return")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Validation));
    assert!(e.to_string().contains(BEFORE_APPLY), "{e}");
    assert_eq!(
        code(admin.set_failpoint(BEFORE_APPLY, "sleep(100)").await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(admin.set_failpoint(BEFORE_APPLY, "nonsense").await),
        Some(ErrorCode::Validation)
    );

    // Only the region's administrator may arm or list points.
    let mallory = admin
        .create_principal("user", "mallory", None)
        .await
        .unwrap();
    let mk = admin.create_access_key(Some(&mallory.arn)).await.unwrap();
    let mut config = c.client_config();
    config.endpoints = vec![c.node(l).unwrap().endpoint()];
    config.access_key_id = mk.access_key_id;
    config.secret_access_key = mk.secret_access_key;
    let mallory = Client::new(config).unwrap();
    assert_eq!(
        code(mallory.set_failpoint(AFTER_COMMIT, "return").await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(mallory.list_failpoints().await),
        Some(ErrorCode::AccessDenied)
    );
    assert!(admin.list_failpoints().await.unwrap().configured.is_empty());

    // The CLI: `keyraft cluster failpoint list` prints JSON per node.
    let out = std::process::Command::new(keyraft_binary())
        .args(["cluster", "failpoint", "list"])
        .env("KEYRAFT_ENDPOINTS", c.node(l).unwrap().endpoint())
        .env("KEYRAFT_REGION", "fp-1")
        .env("KEYRAFT_ACCESS_KEY_ID", &c.file().access_key_id)
        .env("KEYRAFT_SECRET_ACCESS_KEY", &c.file().secret_access_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["Nodes"][0]["NodeId"], l);
    assert!(json["Nodes"][0]["Known"]
        .as_array()
        .is_some_and(|k| k.iter().any(|n| n == AFTER_COMMIT)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_crashes_before_apply_catches_up_with_identical_state() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = started(dir.path(), "fp-2").await;
    let l = leader(&c).await;
    let f = (1..=3).find(|&id| id != l).unwrap();
    let admin = c.client_of(l).unwrap();
    admin.create_key("before the crash").await.unwrap();

    // The follower crashes at its next apply. That may be the apply of this very call's
    // audit event, in which case the answer is lost with the node.
    match one_shot(&c, f).set_failpoint(BEFORE_APPLY, "panic").await {
        Ok(configured) => assert_eq!(configured[0].0, BEFORE_APPLY),
        Err(e) => {
            require_failpoints(&e);
            assert!(e.is_outcome_unknown(), "{e}")
        }
    }
    admin.create_key("makes the follower apply").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.is_running(f) {
        assert!(
            Instant::now() < deadline,
            "node {f} did not crash; its log:\n{}",
            c.log_tail(f, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let crash = format!("fail point {BEFORE_APPLY} panicked");
    assert!(c.log_tail(f, 50).contains(&crash), "{}", c.log_tail(f, 50));

    // Two of three keep serving.
    let cluster = c.client().unwrap();
    for i in 0..5 {
        cluster
            .create_key(&format!("while node {f} is down {i}"))
            .await
            .unwrap();
    }

    // Restarted (the point is gone with the process; FAILPOINTS arms another at startup),
    // the node catches up to the same state.
    c.node_env = vec![("FAILPOINTS".into(), format!("{AFTER_COMMIT}=1*off"))];
    c.start(f).unwrap();
    c.node_env.clear();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let node = c.client_of(f).unwrap();
    let listed = node.list_failpoints().await.unwrap();
    assert_eq!(listed.node_id, f);
    assert_eq!(listed.configured.len(), 1, "{:?}", listed.configured);
    assert_eq!(listed.configured[0].name, AFTER_COMMIT);
    assert_eq!(listed.configured[0].actions, "1*off");
    arm(&node, AFTER_COMMIT, "off").await;

    let keys = key_ids(&admin).await;
    assert!(keys.len() >= 7, "{keys:?}");
    assert_eq!(key_ids(&node).await, keys);
    let head = admin.audit_verify(0).await.unwrap();
    assert!(head.ok);
    let at = head.head_sequence;
    let want = admin.audit_verify(at).await.unwrap().hash_at_sequence;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mine = node.audit_verify(at).await.unwrap();
        if mine.hash_at_sequence == want {
            assert!(mine.ok);
            break;
        }
        assert!(Instant::now() < deadline, "node {f}'s audit chain differs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `id`'s process exits; returns how it ended.
async fn exited(c: &mut LocalCluster, id: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((_, status)) = c.reap().into_iter().find(|(n, _)| *n == id) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not stop; its log:\n{}",
            c.log_tail(id, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_error_stops_the_node_which_restarts_clean() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = started(dir.path(), "fp-3").await;
    let l = leader(&c).await;
    let f = (1..=3).find(|&id| id != l).unwrap();
    let admin = c.client_of(l).unwrap();
    let cluster = c.client().unwrap();

    // A failed log sync, then a failed apply: each is fatal, the node exits non-zero (no
    // crash: `keyraft server` stops on a fatal Raft error), and restarts clean.
    for (point, actions) in [
        ("raft::log::before_fsync", "return"),
        (BEFORE_APPLY, "1*return"),
    ] {
        // The node may stop before it answers, on this call's own audit event.
        if let Err(e) = one_shot(&c, f).set_failpoint(point, actions).await {
            require_failpoints(&e);
            assert!(e.is_outcome_unknown(), "{point}: {e}");
        }
        cluster.create_key(&format!("after {point}")).await.unwrap();
        let status = exited(&mut c, f).await;
        assert!(!status.contains("signal"), "{point}: {status}");
        assert!(
            c.log_tail(f, 50).contains("injected fault at fail point"),
            "{}",
            c.log_tail(f, 50)
        );
        cluster.create_key("while it is down").await.unwrap();
        c.start(f).unwrap();
        c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
            .await
            .unwrap();
        assert!(c
            .client_of(f)
            .unwrap()
            .list_failpoints()
            .await
            .unwrap()
            .configured
            .is_empty());
    }
    assert_eq!(
        key_ids(&c.client_of(f).unwrap()).await,
        key_ids(&admin).await
    );
}

/// A removal that lost its answer after the membership change committed, before the
/// node's id was retired, is finished by the next remove-node: the id is retired and
/// can never join again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_cut_short_is_finished_by_the_next_and_retires_the_id() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = started(dir.path(), "fp-4").await;
    let l = leader(&c).await;
    let f = (1..=3).find(|&id| id != l).unwrap();
    let admin = one_shot(&c, l);
    arm(&admin, "server::before_retire_node", "1*return").await;

    let cut = admin.remove_node(f).await.unwrap_err();
    assert_eq!(cut.code(), Some(ErrorCode::Internal), "{cut}");
    let status = admin.cluster_status().await.unwrap();
    assert!(status.members.iter().all(|m| m.id != f), "{status:?}");

    let status = admin.remove_node(f).await.unwrap();
    assert!(status.members.iter().all(|m| m.id != f), "{status:?}");
    let again = admin.remove_node(f).await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::NotFound), "{again}");

    c.kill(f).unwrap();
    let spare = c.add_node_spec(4).unwrap();
    let reused = admin
        .add_node(f, &spare.endpoint(), &spare.raft_addr())
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Some(ErrorCode::AlreadyExists), "{reused}");
}

/// A membership change while another runs is refused at once with `Conflict`, not
/// queued behind it. The first change here is an add held open because no member will
/// hand the new node the domain key; once that clears, the held add finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_while_an_add_waits_is_a_conflict_and_the_add_then_finishes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = started(dir.path(), "fp-5").await;
    for id in 1..=3 {
        arm(&one_shot(&c, id), SEND_DOMAIN_KEY, "return").await;
    }
    let l = leader(&c).await;
    let f = (1..=3).find(|&id| id != l).unwrap();
    let admin = one_shot(&c, l);

    let spec = c.add_node_spec(4).unwrap();
    c.start(4).unwrap();
    // The held add answers when node 4 has the key, or after its own 60 s. It retries
    // (as the SDK does by default) while node 4 is still starting and does not answer.
    // Attempts far shorter than the hold: a membership change's attempt waits for the
    // server's answer regardless (without that, the retry met the held add itself and
    // answered ConflictException).
    let mut patient = one_shot(&c, l).config().clone();
    patient.timeout = Duration::from_secs(90);
    let mut options = ClientOptions::pinned();
    options.attempt_timeout = Duration::from_millis(20);
    let adder = Client::with_options(patient, options).unwrap();
    let held =
        tokio::spawn(async move { adder.add_node(4, &spec.endpoint(), &spec.raft_addr()).await });

    // Node 4 is a learner without the key: the add is waiting for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = admin.cluster_status().await.unwrap();
        let four = status.members.iter().find(|m| m.id == 4);
        if four.is_some_and(|m| m.role == "Learner" && !m.has_domain_key) {
            break;
        }
        if held.is_finished() {
            panic!("the add ended early: {:?}; {status:?}", held.await);
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never became a learner: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spare = c.add_node_spec(5).unwrap();
    let second_add = admin
        .add_node(5, &spare.endpoint(), &spare.raft_addr())
        .await
        .unwrap_err();
    assert_eq!(second_add.code(), Some(ErrorCode::Conflict), "{second_add}");
    let removal = admin.remove_node(f).await.unwrap_err();
    assert_eq!(removal.code(), Some(ErrorCode::Conflict), "{removal}");
    assert!(!held.is_finished(), "the add ended while it was probed");
    // Data requests go on meanwhile.
    admin.create_key("during the held add").await.unwrap();

    for id in 1..=3 {
        arm(&one_shot(&c, id), SEND_DOMAIN_KEY, "off").await;
    }
    let status = held.await.unwrap().unwrap();
    let four = status.members.iter().find(|m| m.id == 4).unwrap();
    assert_eq!(four.role, "Follower", "{status:?}");
    assert!(four.has_domain_key, "{status:?}");
    // And the next change runs.
    let status = admin.remove_node(f).await.unwrap();
    assert!(status.members.iter().all(|m| m.id != f), "{status:?}");
}
