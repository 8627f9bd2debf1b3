//! Multi-node behaviour with real `keyraft server` processes on 127.0.0.1: the seams the
//! rest of Keyraft stands on, tested the way users and operators meet them.
//!
//! Clusters in this file run one at a time (a 2-core CI machine runs three Raft nodes
//! per test), each in its own temp dir on free ports; every process is killed when its
//! `LocalCluster` drops, also when a test fails.

use std::path::Path;
use std::time::{Duration, Instant};

use keyraft_client::{Client, ClientOptions, EncryptionContext, Error, ErrorCode};
use keyraft_testkit::LocalCluster;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keyraft"))
}

async fn cluster(dir: &Path) -> LocalCluster {
    started(LocalCluster::prepare(dir, binary(), 3, 0, "test-1").expect("prepare")).await
}

/// A 3-node cluster whose leader looks for time-driven work every 100 ms, for tests
/// that move the service clocks.
async fn ticking_cluster(dir: &Path) -> LocalCluster {
    let mut c = LocalCluster::prepare(dir, binary(), 3, 0, "test-1").expect("prepare");
    c.configure(|cfg| cfg.tick_interval_ms = 100)
        .expect("configure");
    started(c).await
}

/// Starts every node of `c` and waits until all three serve.
async fn started(mut c: LocalCluster) -> LocalCluster {
    c.start_all().expect("start");
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .expect("ready");
    c
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn code(r: Result<impl std::fmt::Debug, Error>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
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
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_one_node_encrypt_on_another_decrypt_on_the_third() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let (n1, n2, n3) = (
        c.client_of(1).unwrap(),
        c.client_of(2).unwrap(),
        c.client_of(3).unwrap(),
    );

    let key = n1.create_key("across nodes").await.unwrap();
    assert_eq!(key.key_state, "Enabled");
    assert!(key.arn.starts_with("arn:keyraft:test-1:111122223333:key/"));
    let context = ctx(&[("tenant", "a")]);
    let ct = n2
        .encrypt(&key.key_id, b"attack at dawn", &context)
        .await
        .unwrap();
    assert_eq!(ct.key_id, key.arn);
    let pt = n3
        .decrypt(&ct.ciphertext_blob, &context, None)
        .await
        .unwrap();
    assert_eq!(pt.plaintext, b"attack at dawn");
    assert_eq!(pt.key_id, key.arn);

    // Wrong context, wrong key, tampered blob: typed errors, from any node.
    assert_eq!(
        code(
            n1.decrypt(&ct.ciphertext_blob, &ctx(&[("tenant", "b")]), None)
                .await
        ),
        Some(ErrorCode::InvalidCiphertext)
    );
    let other = n3.create_key("other").await.unwrap();
    assert_eq!(
        code(
            n2.decrypt(&ct.ciphertext_blob, &context, Some(&other.key_id))
                .await
        ),
        Some(ErrorCode::IncorrectKey)
    );
    let mut bad = ct.ciphertext_blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        code(n1.decrypt(&bad, &context, None).await),
        Some(ErrorCode::InvalidCiphertext)
    );

    // Data keys of both kinds decrypt to what GenerateDataKey returned.
    let dk = n3
        .generate_data_key(&key.key_id, "AES_128", 0, &context)
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 16);
    let back = n1
        .decrypt(&dk.ciphertext_blob, &context, None)
        .await
        .unwrap();
    assert_eq!(back.plaintext, dk.plaintext);
    let dk2 = n2
        .generate_data_key_without_plaintext(&key.key_id, "", 1024, &context)
        .await
        .unwrap();
    assert_eq!(
        n3.decrypt(&dk2.ciphertext_blob, &context, None)
            .await
            .unwrap()
            .plaintext
            .len(),
        1024
    );
    assert_eq!(
        code(n2.generate_data_key(&key.key_id, "", 1025, &context).await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(
            n2.generate_data_key(&key.key_id, "AES_256", 32, &context)
                .await
        ),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(n1.encrypt(&key.key_id, &[0; 4097], &context).await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(
            n1.describe_key("00000000-0000-4000-8000-000000000000")
                .await
        ),
        Some(ErrorCode::NotFound)
    );

    // Paging: every key is listed once.
    let page = n2.list_keys(1, "").await.unwrap();
    assert!(page.truncated);
    let rest = n2.list_keys(1000, &page.next_marker).await.unwrap();
    assert_eq!(page.keys.len() + rest.keys.len(), 2);
    assert_eq!(
        code(n2.list_keys(1, "not-a-marker").await),
        Some(ErrorCode::InvalidMarker)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_on_one_node_is_seen_by_crypto_on_every_other_node_at_once() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let clients: Vec<Client> = (1..=3).map(|i| c.client_of(i).unwrap()).collect();
    let key = clients[0].create_key("toggled").await.unwrap();
    let ct = clients[1]
        .encrypt(&key.key_id, b"x", &ctx(&[]))
        .await
        .unwrap();
    for round in 0..15 {
        let (admin, user) = (&clients[round % 3], &clients[(round + 1) % 3]);
        admin.disable_key(&key.key_id).await.unwrap();
        assert_eq!(
            code(user.encrypt(&key.key_id, b"x", &ctx(&[])).await),
            Some(ErrorCode::Disabled),
            "round {round}"
        );
        assert_eq!(
            code(user.decrypt(&ct.ciphertext_blob, &ctx(&[]), None).await),
            Some(ErrorCode::Disabled)
        );
        assert_eq!(
            user.describe_key(&key.key_id).await.unwrap().key_state,
            "Disabled"
        );
        admin.enable_key(&key.key_id).await.unwrap();
        user.encrypt(&key.key_id, b"x", &ctx(&[])).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_survivors_serve_and_the_restarted_node_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "test-1").unwrap();
    c.configure(|cfg| {
        cfg.raft.snapshot_every_logs = 20;
        cfg.raft.keep_logs_after_snapshot = 5;
    })
    .unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let client = c.client().unwrap();
    let key = client.create_key("before the kill").await.unwrap();
    let before = client
        .encrypt(&key.key_id, b"acknowledged", &ctx(&[]))
        .await
        .unwrap();

    let status = client.cluster_status().await.unwrap();
    let leader = status.leader;
    let leader_last = status
        .members
        .iter()
        .find(|m| m.id == leader)
        .unwrap()
        .last_log_index;
    c.kill(leader).unwrap();

    // A survivor decrypts and creates keys within seconds.
    let survivor = c.client_of(if leader == 1 { 2 } else { 1 }).unwrap();
    let started = Instant::now();
    let pt = survivor
        .decrypt(&before.ciphertext_blob, &ctx(&[]), None)
        .await
        .unwrap();
    assert_eq!(pt.plaintext, b"acknowledged");
    let during = survivor
        .create_key("while the leader was down")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failover took {:?}",
        started.elapsed()
    );

    // Enough writes that the new leader snapshots and purges past the dead node's log.
    let mut last_ct = None;
    for i in 0..40 {
        last_ct = Some(
            survivor
                .encrypt(&during.key_id, format!("m{i}").as_bytes(), &ctx(&[]))
                .await
                .unwrap(),
        );
    }
    let purged = eventually(Duration::from_secs(30), || async {
        let s = survivor.cluster_status().await.map_err(|e| e.to_string())?;
        let l = s
            .members
            .iter()
            .find(|m| m.id == s.leader)
            .ok_or("no leader")?;
        if l.purged_index > leader_last {
            Ok(l.purged_index)
        } else {
            Err(format!("purged {} <= {leader_last}", l.purged_index))
        }
    })
    .await;
    assert!(purged > leader_last);

    // The killed node restarts with every acknowledged write and catches up; the log
    // it lacks is gone, so it can only have caught up through a snapshot.
    c.start(leader).unwrap();
    let back = c.client_of(leader).unwrap();
    eventually(Duration::from_secs(60), || async {
        let s = back.cluster_status().await.map_err(|e| e.to_string())?;
        let me = s.members.iter().find(|m| m.id == leader).ok_or("missing")?;
        let top = s.members.iter().map(|m| m.last_applied).max().unwrap_or(0);
        if me.reachable && me.last_applied >= top && me.snapshot_index > leader_last {
            Ok(())
        } else {
            Err(format!("{me:?}"))
        }
    })
    .await;
    assert_eq!(
        back.describe_key(&during.key_id).await.unwrap().description,
        "while the leader was down"
    );
    let last_ct = last_ct.unwrap();
    assert_eq!(
        back.decrypt(&last_ct.ciphertext_blob, &ctx(&[]), None)
            .await
            .unwrap()
            .plaintext,
        b"m39"
    );
    assert_eq!(
        back.decrypt(&before.ciphertext_blob, &ctx(&[]), None)
            .await
            .unwrap()
            .plaintext,
        b"acknowledged"
    );
}

/// A leader whose process is gone is replaced at once, not after the election timeout:
/// the survivors find its port refusing connections. (That a listener which does not
/// answer, as a paused process's, does not count is `leader_watch`'s unit test.)
///
/// The election timeout here is 10–12 s, and a voter keeps its lease on the old leader
/// as long again, so a new leader within the 8 s the test allows after the kill comes
/// from the dead-leader detection, which the survivors' logs also show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_before_the_election_timeout() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "test-1").unwrap();
    c.configure(|cfg| {
        cfg.raft.election_timeout_min_ms = 10_000;
        cfg.raft.election_timeout_max_ms = 12_000;
    })
    .unwrap();
    let mut c = started(c).await;
    let client = c.client().unwrap();
    let before = client.create_key("before").await.unwrap();
    let status = client.cluster_status().await.unwrap();
    let (leader, term) = (status.leader, status.term);
    let survivors: Vec<u64> = (1..=3u64).filter(|id| *id != leader).collect();
    let client = c.client_of(survivors[0]).unwrap();

    c.kill(leader).unwrap();
    let killed = Instant::now();
    let created = tokio::time::timeout(Duration::from_secs(8), client.create_key("after the kill"))
        .await
        .expect("no new leader within 8 s of the kill, below the election timeout")
        .unwrap();
    eprintln!(
        "a new leader took the write {:?} after the kill",
        killed.elapsed()
    );
    let after = client.cluster_status().await.unwrap();
    assert_ne!(after.leader, leader);
    assert!(after.term > term);
    assert!(
        survivors
            .iter()
            .any(|id| c.log_tail(*id, 400).contains("port refuses connections")),
        "no survivor logged the refused connection"
    );
    for (key, description) in [(&before, "before"), (&created, "after the kill")] {
        assert_eq!(
            client.describe_key(&key.key_id).await.unwrap().description,
            description
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_at_once_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let client = c.client().unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let k = client.create_key(&format!("k{i}")).await.unwrap();
        let ct = client
            .encrypt(&k.key_id, format!("p{i}").as_bytes(), &ctx(&[]))
            .await
            .unwrap();
        acked.push((k, ct, format!("p{i}")));
    }
    client.disable_key(&acked[3].0.key_id).await.unwrap();
    for id in [1, 2, 3] {
        c.kill(id).unwrap();
    }
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let client = c.client().unwrap();
    for (i, (k, ct, pt)) in acked.iter().enumerate() {
        let m = client.describe_key(&k.key_id).await.unwrap();
        if i == 3 {
            assert_eq!(m.key_state, "Disabled");
            continue;
        }
        assert_eq!(
            client
                .decrypt(&ct.ciphertext_blob, &ctx(&[]), None)
                .await
                .unwrap()
                .plaintext,
            pt.as_bytes()
        );
    }
    let tail = client.audit_tail(1000).await.unwrap();
    assert!(tail.chain_ok);
}

/// A follower asked to stop (SIGTERM, as systemd and `docker stop` ask) stops by itself
/// and exits 0 while the leader goes on replicating to it: the leader's replication
/// stream, which stays open as long as the leader leads, must not hold the stop up. The
/// node comes back with what it had and catches up on what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_asked_to_stop_stops_at_once_and_comes_back_whole() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let client = c.client().unwrap();
    let leader = client.cluster_status().await.unwrap().leader;
    let f = (1..=3).find(|&id| id != leader).unwrap();
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(client.create_key(&format!("k{i}")).await.unwrap().key_id);
    }
    let follower = c.client_of(f).unwrap();
    eventually(Duration::from_secs(10), || async {
        let listed = follower
            .list_keys(100, "")
            .await
            .map_err(|e| e.to_string())?;
        if listed.keys.len() == keys.len() {
            Ok(())
        } else {
            Err(format!("node {f} lists {} keys", listed.keys.len()))
        }
    })
    .await;

    // Well within the 10 s a stopping node gives open calls before it drops them.
    let status = c.stop(f, Duration::from_secs(5)).unwrap();
    let status = status.expect("the follower stopped by itself");
    assert!(status.success(), "{status}");

    keys.push(client.create_key("while it was down").await.unwrap().key_id);
    c.start(f).unwrap();
    c.wait_ready(&[f], Duration::from_secs(60)).await.unwrap();
    let follower = c.client_of(f).unwrap();
    for k in &keys {
        eventually(Duration::from_secs(10), || async {
            follower.describe_key(k).await.map_err(|e| e.to_string())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_decrypts_what_was_encrypted_before_it_joined() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let client = c.client().unwrap();
    let key = client.create_key("old").await.unwrap();
    let ct = client
        .encrypt(&key.key_id, b"from before", &ctx(&[("a", "1")]))
        .await
        .unwrap();

    let spec = c.add_node_spec(4).unwrap();
    c.start(4).unwrap();
    // Started but not added, node 4 serves nothing: a caller pinned to it is told to try
    // another node, not that its credentials are unknown (which it would not retry).
    let mut pinned = c.client_config();
    pinned.endpoints = vec![spec.endpoint()];
    pinned.timeout = Duration::from_secs(2);
    let early = Client::with_options(pinned, ClientOptions::pinned()).unwrap();
    eventually(Duration::from_secs(30), || async {
        match early.describe_key(&key.key_id).await {
            Err(e) if e.code() == Some(ErrorCode::KeyUnavailable) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = client
        .add_node(4, &spec.endpoint(), &spec.raft_addr())
        .await
        .unwrap();
    let four = status
        .members
        .iter()
        .find(|m| m.id == 4)
        .expect("node 4 is a member");
    assert_eq!(four.role, "Follower");
    assert!(four.has_domain_key);

    let n4 = c.client_of(4).unwrap();
    assert_eq!(
        n4.decrypt(&ct.ciphertext_blob, &ctx(&[("a", "1")]), None)
            .await
            .unwrap()
            .plaintext,
        b"from before"
    );
    let k2 = n4.create_key("made through node 4").await.unwrap();
    let ct2 = n4.encrypt(&k2.key_id, b"new", &ctx(&[])).await.unwrap();
    assert_eq!(
        c.client_of(1)
            .unwrap()
            .decrypt(&ct2.ciphertext_blob, &ctx(&[]), None)
            .await
            .unwrap()
            .plaintext,
        b"new"
    );

    // Membership: an existing id, a retired id, leadership transfer.
    assert_eq!(
        code(
            client
                .add_node(4, &spec.endpoint(), &spec.raft_addr())
                .await
        ),
        Some(ErrorCode::AlreadyExists)
    );
    let status = client.transfer_leader(2).await.unwrap();
    assert_eq!(status, 2);
    // Every node learns of the new leader within a heartbeat or two.
    eventually(Duration::from_secs(10), || async {
        for id in [1, 2, 3, 4] {
            let s = c
                .client_of(id)
                .unwrap()
                .cluster_status()
                .await
                .map_err(|e| e.to_string())?;
            if s.leader != 2 {
                return Err(format!("node {id} sees leader {}", s.leader));
            }
        }
        Ok(())
    })
    .await;
    let after = client.remove_node(3).await.unwrap();
    assert!(after.members.iter().all(|m| m.id != 3));
    c.kill(3).unwrap();
    let spare = c.add_node_spec(5).unwrap();
    assert_eq!(
        code(
            client
                .add_node(3, &spare.endpoint(), &spare.raft_addr())
                .await
        ),
        Some(ErrorCode::AlreadyExists)
    );
    assert_eq!(code(client.remove_node(3).await), Some(ErrorCode::NotFound));

    // The cluster of 1, 2, 4 still serves.
    client
        .encrypt(&key.key_id, b"still", &ctx(&[]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_badly_signed_stale_and_replayed_requests_are_refused_and_audited() {
    use keyraft_proto::auth;
    use keyraft_proto::v1::key_service_client::KeyServiceClient;
    use keyraft_proto::v1::ListKeysRequest;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let admin = c.client().unwrap();

    let mut wrong = c.client_config();
    wrong.secret_access_key = "not-the-secret-0123456789".into();
    wrong.timeout = Duration::from_secs(5);
    let bad = Client::new(wrong.clone()).unwrap();
    assert_eq!(
        code(bad.create_key("nope").await),
        Some(ErrorCode::InvalidSignature)
    );
    let mut unknown = wrong;
    unknown.access_key_id = "KRNOSUCHKEY000000000".into();
    assert_eq!(
        code(Client::new(unknown).unwrap().list_keys(0, "").await),
        Some(ErrorCode::UnrecognizedClient)
    );
    assert!(
        admin.list_keys(0, "").await.unwrap().keys.is_empty(),
        "the refused create changed nothing"
    );

    // Raw requests: unsigned, stale, replayed.
    let endpoint = c.node(2).unwrap().endpoint();
    let mut raw = KeyServiceClient::connect(endpoint).await.unwrap();
    let method = "/keyraft.v1.KeyService/ListKeys";
    let msg = ListKeysRequest::default();
    let signed = |ts: u64, nonce: &str| {
        let mut r = tonic::Request::new(msg.clone());
        auth::attach(
            r.metadata_mut(),
            &c.file().access_key_id,
            c.file().secret_access_key.as_bytes(),
            method,
            ts,
            nonce,
            &auth::message_digest(&msg),
        )
        .unwrap();
        r
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = raw
        .list_keys(tonic::Request::new(msg.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        keyraft_proto::error_from_status(&status).unwrap().code,
        ErrorCode::InvalidSignature
    );
    let status = raw
        .list_keys(signed(now - 10 * 60 * 1000, "nonce-stale-0000001"))
        .await
        .unwrap_err();
    assert_eq!(
        keyraft_proto::error_from_status(&status).unwrap().code,
        ErrorCode::InvalidSignature
    );
    raw.list_keys(signed(now, "nonce-replayed-00001"))
        .await
        .unwrap();
    let status = raw
        .list_keys(signed(now, "nonce-replayed-00001"))
        .await
        .unwrap_err();
    assert_eq!(
        keyraft_proto::error_from_status(&status).unwrap().code,
        ErrorCode::InvalidSignature
    );

    // Every refusal left an audit event with its error code.
    let tail = admin.audit_tail(50).await.unwrap();
    assert!(tail.chain_ok);
    let events: Vec<serde_json::Value> = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let refused = |code: &str| events.iter().filter(|e| e["errorCode"] == code).count();
    assert!(refused("InvalidSignatureException") >= 4, "{events:#?}");
    assert!(refused("UnrecognizedClientException") >= 1);
    let bad_create = events
        .iter()
        .find(|e| e["eventName"] == "CreateKey" && e["errorCode"] == "InvalidSignatureException")
        .expect("the refused CreateKey is audited");
    assert_eq!(
        bad_create["userIdentity"]["accessKeyId"],
        c.file().access_key_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_material_in_any_data_directory() {
    use keyraft_hsm::{SoftHsm, WrappedKey};
    use keyraft_state::{Durable, StateMachine};

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "test-1").unwrap();
    // Snapshot often, so snapshots are scanned too.
    c.configure(|cfg| cfg.raft.snapshot_every_logs = 10)
        .unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let client = c.client().unwrap();
    let mut data_keys = Vec::new();
    let mut key_ids = Vec::new();
    for i in 0..5 {
        let k = client.create_key(&format!("scan {i}")).await.unwrap();
        client
            .encrypt(&k.key_id, b"some plaintext", &ctx(&[]))
            .await
            .unwrap();
        data_keys.push(
            client
                .generate_data_key(&k.key_id, "AES_256", 0, &ctx(&[]))
                .await
                .unwrap()
                .plaintext,
        );
        key_ids.push(k.key_id);
    }
    c.stop_all(Duration::from_secs(10));

    let mut secrets: Vec<Vec<u8>> = data_keys;
    secrets.push(c.file().secret_access_key.as_bytes().to_vec());
    for spec in c.nodes() {
        let node_dir = c.data_dir(spec.id);
        let hsm = SoftHsm::open(&node_dir.join("hsm"), spec.sealing_secret.as_bytes()).unwrap();
        secrets.push(hsm.insecure_domain_key_for_tests().unwrap());
        let durable = Durable::open(&node_dir.join("store")).unwrap();
        let state = StateMachine::open(&durable).unwrap();
        for id in &key_ids {
            let record = state
                .key(&keyraft_types::KeyId::parse(id).unwrap())
                .unwrap()
                .expect("key replicated");
            for (version, wrapped) in &record.versions {
                let raw = hsm
                    .insecure_unwrap_for_tests(
                        &WrappedKey(wrapped.clone()),
                        &record.metadata.key_id,
                        *version,
                    )
                    .unwrap();
                secrets.push(raw);
            }
        }
    }
    assert!(secrets.len() >= 5 + 1 + 3 + 15);
    let mut files = 0;
    let mut scanned = 0u64;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            // cluster.json / cluster.env / node*.toml hold the dev credentials on purpose.
            if name == "cluster.json" || name == "cluster.env" || name.ends_with(".toml") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            files += 1;
            scanned += bytes.len() as u64;
            for s in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_slice()),
                    "plaintext secret found in {}",
                    path.display()
                );
            }
        }
    }
    assert!(files > 10, "scanned only {files} files");
    assert!(scanned > 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_append_to_the_log_or_obtain_the_domain_key() {
    use keyraft_proto::v1::internal::node_service_client::NodeServiceClient;
    use keyraft_proto::v1::internal::raft_service_client::RaftServiceClient;
    use keyraft_proto::v1::internal::{RaftMessage, RequestDomainKeyRequest, StreamMessage};
    use keyraft_raft::network::{methods, ClusterAuth};

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let raft_addr = format!("http://{}", c.node(1).unwrap().raft_addr());
    let before = c.client().unwrap().cluster_status().await.unwrap();

    // Without the cluster secret, no Raft message is accepted.
    let stranger = ClusterAuth::new(2, b"not-the-cluster-secret-at-all!!");
    let mut raft = RaftServiceClient::connect(raft_addr.clone()).await.unwrap();
    let mut req = tonic::Request::new(RaftMessage {
        data: vec![1, 2, 3],
    });
    stranger.sign(&mut req, methods::APPEND, 1, &[1, 2, 3]);
    let status = raft.append_entries(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = raft
        .vote(tonic::Request::new(RaftMessage { data: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // Nor is a replication stream. A stream signed with the secret still has each of its
    // messages checked: one with a MAC that is not its own is never handed to Raft, and
    // the stream ends without an answer.
    let stream = |auth: &ClusterAuth, mac: Vec<u8>| {
        let mut req = tonic::Request::new(tokio_stream::iter(vec![StreamMessage {
            data: vec![1, 2, 3],
            mac,
        }]));
        req.metadata_mut()
            .insert("x-keyraft-stream", "0123456789abcdef".parse().unwrap());
        auth.sign(&mut req, methods::APPEND_STREAM, 1, b"0123456789abcdef");
        req
    };
    let status = raft
        .append_stream(stream(&stranger, vec![0; 32]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let member = ClusterAuth::new(2, c.file().cluster_secret.as_bytes());
    let mut answers = raft
        .append_stream(stream(&member, vec![0; 32]))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(answers.message().await, Ok(None)));

    // Even a holder of the cluster secret gets the domain key only for an authorised
    // join of its own, wrapped to the authorised public key.
    let peer = ClusterAuth::new(9, c.file().cluster_secret.as_bytes());
    let mut node = NodeServiceClient::connect(raft_addr).await.unwrap();
    let ask = |node_id: u64| {
        let msg = RequestDomainKeyRequest {
            node_id,
            public_key: vec![7; 32],
        };
        let body = prost::Message::encode_to_vec(&msg);
        let mut req = tonic::Request::new(msg);
        peer.sign(
            &mut req,
            "/keyraft.v1.internal.NodeService/RequestDomainKey",
            1,
            &body,
        );
        req
    };
    let status = node.request_domain_key(ask(9)).await.unwrap_err();
    assert_eq!(
        keyraft_proto::error_from_status(&status).unwrap().code,
        ErrorCode::AccessDenied
    );
    let status = node.request_domain_key(ask(2)).await.unwrap_err();
    assert_eq!(
        keyraft_proto::error_from_status(&status).unwrap().code,
        ErrorCode::AccessDenied
    );

    // Nothing changed.
    let after = c.client().unwrap().cluster_status().await.unwrap();
    assert_eq!(after.members.len(), before.members.len());
    assert_eq!(after.term, before.term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_tags_descriptions_reencrypt_and_random_through_any_node() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let (n1, n2, n3) = (
        c.client_of(1).unwrap(),
        c.client_of(2).unwrap(),
        c.client_of(3).unwrap(),
    );
    let k1 = n1.create_key("one").await.unwrap();
    let k2 = n1.create_key("two").await.unwrap();

    // An alias made through one node works as a key id on every other node.
    n2.create_alias("alias/orders", &k1.key_id).await.unwrap();
    let ct = n3
        .encrypt("alias/orders", b"by alias", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(ct.key_id, k1.arn);
    assert_eq!(
        n1.decrypt(&ct.ciphertext_blob, &ctx(&[]), Some("alias/orders"))
            .await
            .unwrap()
            .plaintext,
        b"by alias"
    );
    let alias_arn = k1
        .arn
        .replace(&format!("key/{}", k1.key_id), "alias/orders");
    assert_eq!(n2.describe_key(&alias_arn).await.unwrap().key_id, k1.key_id);

    // Repointed, the alias names the other key from then on, everywhere.
    n3.update_alias("alias/orders", &k2.arn).await.unwrap();
    assert_eq!(
        code(
            n2.decrypt(&ct.ciphertext_blob, &ctx(&[]), Some("alias/orders"))
                .await
        ),
        Some(ErrorCode::IncorrectKey)
    );
    assert_eq!(
        n1.encrypt("alias/orders", b"x", &ctx(&[]))
            .await
            .unwrap()
            .key_id,
        k2.arn
    );

    assert_eq!(
        code(n1.create_alias("alias/orders", &k1.key_id).await),
        Some(ErrorCode::AlreadyExists)
    );
    assert_eq!(
        code(n1.create_alias("alias/aws/s3", &k1.key_id).await),
        Some(ErrorCode::InvalidAliasName)
    );
    assert_eq!(
        code(n1.create_alias("orders", &k1.key_id).await),
        Some(ErrorCode::InvalidAliasName)
    );
    assert_eq!(
        code(n1.create_alias("alias/x", "alias/orders").await),
        Some(ErrorCode::Validation)
    );
    n2.create_alias("alias/billing", &k1.key_id).await.unwrap();
    let all = n3.list_aliases(None, 0, "").await.unwrap();
    let names: Vec<&str> = all.aliases.iter().map(|a| a.alias_name.as_str()).collect();
    assert_eq!(names, ["alias/billing", "alias/orders"]);
    let of_k1 = n1.list_aliases(Some(&k1.key_id), 0, "").await.unwrap();
    assert_eq!(of_k1.aliases.len(), 1);
    assert_eq!(of_k1.aliases[0].target_key_id, k1.key_id);
    n1.delete_alias("alias/billing").await.unwrap();
    assert_eq!(
        code(n2.encrypt("alias/billing", b"x", &ctx(&[])).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(n2.delete_alias("alias/billing").await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        n3.describe_key(&k1.key_id).await.unwrap().key_state,
        "Enabled",
        "deleting an alias keeps the key"
    );

    // Description and tags.
    n2.update_key_description("alias/orders", "orders, EU")
        .await
        .unwrap();
    assert_eq!(
        n3.describe_key(&k2.key_id).await.unwrap().description,
        "orders, EU"
    );
    let tags = [
        ("team".to_string(), "payments".to_string()),
        ("env".to_string(), "prod".to_string()),
    ];
    n1.tag_resource(&k2.key_id, &tags).await.unwrap();
    n3.untag_resource(&k2.key_id, &["team".to_string()])
        .await
        .unwrap();
    let listed = n2.list_resource_tags(&k2.key_id, 0, "").await.unwrap();
    assert_eq!(listed.tags.len(), 1);
    assert_eq!(
        (
            listed.tags[0].tag_key.as_str(),
            listed.tags[0].tag_value.as_str()
        ),
        ("env", "prod")
    );
    let reserved = [("aws:x".to_string(), "y".to_string())];
    assert_eq!(
        code(n1.tag_resource(&k2.key_id, &reserved).await),
        Some(ErrorCode::Tag)
    );

    // ReEncrypt moves a ciphertext to another key and context without the plaintext.
    let a = ctx(&[("stage", "a")]);
    let b = ctx(&[("stage", "b")]);
    let under_k1 = n1.encrypt(&k1.key_id, b"moving", &a).await.unwrap();
    let moved = n2
        .re_encrypt(
            &under_k1.ciphertext_blob,
            &a,
            Some(&k1.key_id),
            "alias/orders",
            &b,
        )
        .await
        .unwrap();
    assert_eq!(moved.source_key_id, k1.arn);
    assert_eq!(moved.key_id, k2.arn);
    assert_eq!(
        n3.decrypt(&moved.ciphertext_blob, &b, None)
            .await
            .unwrap()
            .plaintext,
        b"moving"
    );
    assert_eq!(
        code(n3.decrypt(&moved.ciphertext_blob, &a, None).await),
        Some(ErrorCode::InvalidCiphertext)
    );
    assert_eq!(
        code(
            n2.re_encrypt(
                &under_k1.ciphertext_blob,
                &a,
                Some(&k2.key_id),
                &k2.key_id,
                &b
            )
            .await
        ),
        Some(ErrorCode::IncorrectKey)
    );
    n1.disable_key(&k2.key_id).await.unwrap();
    assert_eq!(
        code(
            n3.re_encrypt(&under_k1.ciphertext_blob, &a, None, &k2.key_id, &b)
                .await
        ),
        Some(ErrorCode::Disabled)
    );

    // Random bytes from the HSM.
    let r1 = n1.generate_random(32).await.unwrap();
    let r2 = n2.generate_random(32).await.unwrap();
    assert_eq!(r1.len(), 32);
    assert_ne!(r1, r2);
    assert_eq!(
        code(n3.generate_random(0).await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(n3.generate_random(1025).await),
        Some(ErrorCode::Validation)
    );

    // Each call above is in the audit trail with its parameters.
    let tail = n1.audit_tail(100).await.unwrap();
    let events: Vec<serde_json::Value> = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let re = events
        .iter()
        .find(|e| e["eventName"] == "ReEncrypt" && e["errorCode"].is_null())
        .expect("ReEncrypt audited");
    assert_eq!(re["requestParameters"]["destinationKeyId"], "alias/orders");
    assert_eq!(re["resources"].as_array().unwrap().len(), 2);
    assert!(events.iter().any(|e| e["eventName"] == "CreateAlias"
        && e["requestParameters"]["aliasName"] == "alias/orders"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_destroyed_on_every_node_once_its_waiting_period_has_passed() {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = ticking_cluster(dir.path()).await;
    let clients: Vec<Client> = (1..=3).map(|i| c.client_of(i).unwrap()).collect();
    let doomed = clients[0].create_key("doomed").await.unwrap();
    let kept = clients[0].create_key("kept").await.unwrap();
    let ct = clients[1]
        .encrypt(&doomed.key_id, b"soon gone", &ctx(&[]))
        .await
        .unwrap();
    clients[2]
        .create_alias("alias/doomed", &doomed.key_id)
        .await
        .unwrap();

    assert_eq!(
        code(clients[0].schedule_key_deletion(&doomed.key_id, 6).await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(clients[0].schedule_key_deletion(&doomed.key_id, 31).await),
        Some(ErrorCode::Validation)
    );
    let scheduled = clients[1]
        .schedule_key_deletion(&doomed.key_id, 7)
        .await
        .unwrap();
    assert_eq!(scheduled.key_state, "PendingDeletion");
    assert_eq!(scheduled.pending_window_in_days, 7);

    // Pending deletion: refused for cryptography and state changes on every node.
    for n in &clients {
        assert_eq!(
            code(n.decrypt(&ct.ciphertext_blob, &ctx(&[]), None).await),
            Some(ErrorCode::InvalidState)
        );
        assert_eq!(
            code(n.encrypt("alias/doomed", b"x", &ctx(&[])).await),
            Some(ErrorCode::InvalidState)
        );
        let m = n.describe_key(&doomed.key_id).await.unwrap();
        assert_eq!(m.key_state, "PendingDeletion");
        assert_eq!(m.deletion_date, scheduled.deletion_date);
    }
    assert_eq!(
        code(clients[2].enable_key(&doomed.key_id).await),
        Some(ErrorCode::InvalidState)
    );

    // Cancelled, it comes back disabled; scheduled again, the clock decides.
    clients[2]
        .cancel_key_deletion(&doomed.key_id)
        .await
        .unwrap();
    assert_eq!(
        clients[0]
            .describe_key(&doomed.key_id)
            .await
            .unwrap()
            .key_state,
        "Disabled"
    );
    clients[0]
        .schedule_key_deletion("alias/doomed", 7)
        .await
        .unwrap();

    // Eight days later (by every node's service clock) the leader's tick destroys it.
    for n in &clients {
        n.advance_clock(8 * DAY_MS).await.unwrap();
    }
    for n in &clients {
        eventually(Duration::from_secs(20), || async {
            match n.describe_key(&doomed.key_id).await {
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(
            code(n.decrypt(&ct.ciphertext_blob, &ctx(&[]), None).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(n.encrypt("alias/doomed", b"x", &ctx(&[])).await),
            Some(ErrorCode::NotFound)
        );
        n.encrypt(&kept.key_id, b"still here", &ctx(&[]))
            .await
            .unwrap();
    }
    let tail = clients[0].audit_tail(200).await.unwrap();
    assert!(tail.chain_ok);
    let deleted: Vec<serde_json::Value> = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter(|e| e["eventName"] == "DeleteKey")
        .collect();
    assert_eq!(deleted.len(), 1, "one destruction event");
    assert_eq!(deleted[0]["eventType"], "AwsServiceEvent");
    assert_eq!(deleted[0]["resources"][0]["ARN"], doomed.arn.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_every_node_never_exceed_the_quota_even_across_a_leader_kill() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let admin = c.client().unwrap();
    for i in 0..2 {
        admin.create_key(&format!("existing {i}")).await.unwrap();
    }
    // Three free slots.
    let q = admin.set_quota(None, 5, 0).await.unwrap();
    assert_eq!((q.keys_used, q.keys_limit), (2, 5));

    let clients: Vec<std::sync::Arc<Client>> = (1..=3)
        .map(|i| std::sync::Arc::new(c.client_of(i).unwrap()))
        .collect();
    let burst = |clients: Vec<std::sync::Arc<Client>>, n: usize| async move {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                tokio::spawn(async move { client.create_key(&format!("burst {i}")).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        outcomes
    };
    let outcomes = burst(clients.clone(), 50).await;
    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    let limited = outcomes
        .iter()
        .filter(|o| matches!(o, Err(e) if e.code() == Some(ErrorCode::LimitExceeded)))
        .count();
    assert_eq!((created, limited), (3, 47), "{outcomes:?}");
    assert_eq!(admin.list_keys(1000, "").await.unwrap().keys.len(), 5);

    // Raise the limit by five and kill the leader in the middle of the next burst: some
    // calls may fail with an unknown outcome, but no outcome exceeds the quota.
    admin.set_quota(None, 10, 0).await.unwrap();
    let leader = admin.cluster_status().await.unwrap().leader;
    let survivors: Vec<std::sync::Arc<Client>> = (1..=3u64)
        .filter(|id| *id != leader)
        .map(|id| std::sync::Arc::new(c.client_of(id).unwrap()))
        .collect();
    let run = tokio::spawn(burst(survivors.clone(), 30));
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.kill(leader).unwrap();
    let outcomes = run.await.unwrap();
    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(
        created <= 5,
        "{created} creates succeeded with 5 free slots"
    );
    let survivor = &survivors[0];
    let keys = survivor.list_keys(1000, "").await.unwrap().keys.len();
    assert!(keys <= 10, "{keys} keys exist under a quota of 10");
    assert!(
        keys >= 5 + created,
        "an acknowledged create is missing: {keys} keys, {created} acked"
    );
    let q = survivor.get_quota(None).await.unwrap();
    assert_eq!(q.keys_used as usize, keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_decrypt_every_older_ciphertext_on_every_node() {
    const DAY_MS: u64 = 24 * 60 * 60 * 1000;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = ticking_cluster(dir.path()).await;
    let clients: Vec<Client> = (1..=3).map(|i| c.client_of(i).unwrap()).collect();
    let key = clients[0].create_key("rotating").await.unwrap();
    let version_of = |blob: &[u8]| u32::from_be_bytes(blob[5 + 36..5 + 40].try_into().unwrap());

    let v1 = clients[1]
        .encrypt(&key.key_id, b"under v1", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(version_of(&v1.ciphertext_blob), 1);
    clients[2].rotate_key_on_demand(&key.key_id).await.unwrap();
    let v2 = clients[0]
        .encrypt(&key.key_id, b"under v2", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(
        version_of(&v2.ciphertext_blob),
        2,
        "new encryptions use the new version"
    );
    assert_eq!(v2.key_id, key.arn, "the key id never changes");

    // Automatic rotation from the replicated tick, driven by the service clock.
    assert_eq!(
        code(clients[1].set_key_rotation(&key.key_id, Some(89)).await),
        Some(ErrorCode::Validation)
    );
    clients[1]
        .set_key_rotation(&key.key_id, Some(90))
        .await
        .unwrap();
    let status = clients[2]
        .get_key_rotation_status(&key.key_id)
        .await
        .unwrap();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, 90);
    let described = clients[0].describe_key(&key.key_id).await.unwrap();
    assert_eq!(described.rotation_period_in_days, 90);
    assert_eq!(described.next_rotation_date, status.next_rotation_date);
    for n in &clients {
        n.advance_clock(91 * DAY_MS).await.unwrap();
    }
    eventually(Duration::from_secs(20), || async {
        let r = clients[0]
            .list_key_rotations(&key.key_id, 0, "")
            .await
            .map_err(|e| e.to_string())?;
        if r.rotations.len() == 2 {
            Ok(())
        } else {
            Err(format!("{} rotations", r.rotations.len()))
        }
    })
    .await;
    let rotations = clients[1]
        .list_key_rotations(&key.key_id, 0, "")
        .await
        .unwrap()
        .rotations;
    let kinds: Vec<&str> = rotations.iter().map(|r| r.rotation_type.as_str()).collect();
    assert_eq!(kinds, ["ON_DEMAND", "AUTOMATIC"]);
    let v3 = clients[2]
        .encrypt(&key.key_id, b"under v3", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(version_of(&v3.ciphertext_blob), 3);
    assert_eq!(
        clients[1]
            .describe_key(&key.key_id)
            .await
            .unwrap()
            .current_key_version,
        3
    );

    // Every older ciphertext still decrypts, on every node.
    for n in &clients {
        for (ct, pt) in [
            (&v1, &b"under v1"[..]),
            (&v2, b"under v2"),
            (&v3, b"under v3"),
        ] {
            assert_eq!(
                n.decrypt(&ct.ciphertext_blob, &ctx(&[]), None)
                    .await
                    .unwrap()
                    .plaintext,
                pt
            );
        }
    }
    let tail = clients[0].audit_tail(100).await.unwrap();
    let rotated = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter(|e| e["eventName"] == "RotateKey" && e["eventType"] == "AwsServiceEvent")
        .count();
    assert_eq!(rotated, 1, "the automatic rotation is a service event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_managed_keys_serve_every_node_outside_the_quota_and_refuse_account_changes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let (n1, n2, n3) = (
        c.client_of(1).unwrap(),
        c.client_of(2).unwrap(),
        c.client_of(3).unwrap(),
    );
    n1.set_quota(None, 1, 0).await.unwrap();
    n1.create_key("the one customer key").await.unwrap();

    let made = n2.create_service_key("s3", None).await.unwrap();
    assert_eq!(made.alias_name, "alias/keyraft/s3");
    let key = made.key_metadata.unwrap();
    assert_eq!(key.key_manager, "AWS");
    let again = n3
        .create_service_key("s3", None)
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(again.key_id, key.key_id, "one key per service and account");
    assert_eq!(
        code(n1.create_service_key("Bad Name", None).await),
        Some(ErrorCode::Validation)
    );

    // Applications use it by its alias on any node; it does not count against the quota.
    let ct = n3
        .encrypt("alias/keyraft/s3", b"object data key", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(
        n1.decrypt(&ct.ciphertext_blob, &ctx(&[]), None)
            .await
            .unwrap()
            .plaintext,
        b"object data key"
    );
    let q = n2.get_quota(None).await.unwrap();
    assert_eq!((q.keys_used, q.keys_limit), (1, 1));
    let status = n1
        .get_key_rotation_status("alias/keyraft/s3")
        .await
        .unwrap();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, 365);

    // The account cannot disable, delete, re-tag, re-alias or stop rotating it.
    let unsupported = Some(ErrorCode::UnsupportedOperation);
    assert_eq!(code(n1.disable_key(&key.key_id).await), unsupported);
    assert_eq!(
        code(n2.schedule_key_deletion(&key.key_id, 7).await),
        unsupported
    );
    assert_eq!(
        code(n3.set_key_rotation(&key.key_id, None).await),
        unsupported
    );
    assert_eq!(
        code(
            n1.tag_resource(&key.key_id, &[("a".into(), "b".into())])
                .await
        ),
        unsupported
    );
    assert_eq!(
        code(n2.create_alias("alias/mine", &key.key_id).await),
        unsupported
    );
    assert_eq!(
        code(n3.delete_alias("alias/keyraft/s3").await),
        Some(ErrorCode::InvalidAliasName)
    );
    assert_eq!(
        n2.describe_key("alias/keyraft/s3").await.unwrap().key_state,
        "Enabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_keys_generate_on_one_node_and_verify_on_another() {
    use keyraft_client::types::CreateKeyRequest;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let (n1, n2, n3) = (
        c.client_of(1).unwrap(),
        c.client_of(2).unwrap(),
        c.client_of(3).unwrap(),
    );
    let hmac = |spec: &str| CreateKeyRequest {
        key_spec: spec.to_string(),
        key_usage: "GENERATE_VERIFY_MAC".to_string(),
        ..Default::default()
    };
    let key = n1.create_key_with(hmac("HMAC_384")).await.unwrap();
    assert_eq!(key.key_usage, "GENERATE_VERIFY_MAC");
    assert_eq!(key.mac_algorithms, ["HMAC_SHA_384"]);
    assert!(key.encryption_algorithms.is_empty());

    let mac = n2
        .generate_mac(&key.key_id, b"pay 10 EUR", "HMAC_SHA_384")
        .await
        .unwrap();
    assert_eq!(mac.mac.len(), 48);
    let ok = n3
        .verify_mac(&key.key_id, b"pay 10 EUR", "HMAC_SHA_384", &mac.mac)
        .await
        .unwrap();
    assert!(ok.mac_valid);
    assert_eq!(
        code(
            n1.verify_mac(&key.key_id, b"pay 99 EUR", "HMAC_SHA_384", &mac.mac)
                .await
        ),
        Some(ErrorCode::InvalidMac)
    );
    assert_eq!(
        code(n1.generate_mac(&key.key_id, b"x", "HMAC_SHA_256").await),
        Some(ErrorCode::InvalidKeyUsage)
    );

    // Usage is enforced both ways, and HMAC keys do not rotate.
    let symmetric = n1.create_key("aes").await.unwrap();
    assert_eq!(
        code(
            n2.generate_mac(&symmetric.key_id, b"x", "HMAC_SHA_256")
                .await
        ),
        Some(ErrorCode::InvalidKeyUsage)
    );
    assert_eq!(
        code(n2.encrypt(&key.key_id, b"x", &ctx(&[])).await),
        Some(ErrorCode::InvalidKeyUsage)
    );
    assert_eq!(
        code(n3.rotate_key_on_demand(&key.key_id).await),
        Some(ErrorCode::UnsupportedOperation)
    );
    let mismatched = CreateKeyRequest {
        key_spec: "HMAC_256".into(),
        ..Default::default()
    };
    assert_eq!(
        code(n1.create_key_with(mismatched).await),
        Some(ErrorCode::Validation)
    );
    let k512 = n1.create_key_with(hmac("HMAC_512")).await.unwrap();
    assert_eq!(
        n3.generate_mac(&k512.key_id, b"m", "HMAC_SHA_512")
            .await
            .unwrap()
            .mac
            .len(),
        64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_sign_on_one_node_verify_on_another_and_rsa_decrypts_what_its_public_key_encrypted(
) {
    use keyraft_client::types::{CreateKeyRequest, ReEncryptRequest};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let (n1, n2, n3) = (
        c.client_of(1).unwrap(),
        c.client_of(2).unwrap(),
        c.client_of(3).unwrap(),
    );
    let pair = |spec: &str, usage: &str| CreateKeyRequest {
        key_spec: spec.to_string(),
        key_usage: usage.to_string(),
        ..Default::default()
    };
    let sha256 = |m: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(m).to_vec()
    };

    // ECDSA: a signature made on one node verifies on the others, RAW or DIGEST alike.
    let ecc = n1
        .create_key_with(pair("ECC_NIST_P256", "SIGN_VERIFY"))
        .await
        .unwrap();
    assert_eq!(ecc.signing_algorithms, ["ECDSA_SHA_256"]);
    assert!(ecc.encryption_algorithms.is_empty());
    let message = b"release v1.2.3";
    let raw = n2
        .sign(&ecc.key_id, message, "RAW", "ECDSA_SHA_256")
        .await
        .unwrap();
    assert_eq!(raw.signing_algorithm, "ECDSA_SHA_256");
    let verified = n3
        .verify(&ecc.key_id, message, "RAW", &raw.signature, "ECDSA_SHA_256")
        .await
        .unwrap();
    assert!(verified.signature_valid);
    let digest = sha256(message);
    assert!(
        n1.verify(
            &ecc.key_id,
            &digest,
            "DIGEST",
            &raw.signature,
            "ECDSA_SHA_256"
        )
        .await
        .unwrap()
        .signature_valid
    );
    let by_digest = n3
        .sign(&ecc.key_id, &digest, "DIGEST", "ECDSA_SHA_256")
        .await
        .unwrap();
    assert!(
        n2.verify(
            &ecc.key_id,
            message,
            "",
            &by_digest.signature,
            "ECDSA_SHA_256"
        )
        .await
        .unwrap()
        .signature_valid
    );
    assert_eq!(
        code(
            n2.verify(
                &ecc.key_id,
                b"release v6.6.6",
                "RAW",
                &raw.signature,
                "ECDSA_SHA_256"
            )
            .await
        ),
        Some(ErrorCode::KmsInvalidSignature)
    );
    assert_eq!(
        code(
            n2.sign(&ecc.key_id, message, "RAW", "RSASSA_PSS_SHA_256")
                .await
        ),
        Some(ErrorCode::InvalidKeyUsage)
    );
    assert_eq!(
        code(
            n2.sign(&ecc.key_id, &digest[..31], "DIGEST", "ECDSA_SHA_256")
                .await
        ),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(n2.sign(&ecc.key_id, message, "RAW", "ECDSA_SHA_999").await),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(n1.encrypt(&ecc.key_id, b"x", &ctx(&[])).await),
        Some(ErrorCode::InvalidKeyUsage)
    );
    let public = n3.get_public_key(&ecc.key_id).await.unwrap();
    assert_eq!(public.key_spec, "ECC_NIST_P256");
    assert_eq!(public.key_usage, "SIGN_VERIFY");
    assert_eq!(public.public_key.len(), 91, "P-256 SPKI in DER");

    // Disabling the key stops signing on every node at once.
    n1.disable_key(&ecc.key_id).await.unwrap();
    for n in [&n1, &n2, &n3] {
        assert_eq!(
            code(n.sign(&ecc.key_id, message, "RAW", "ECDSA_SHA_256").await),
            Some(ErrorCode::Disabled)
        );
    }

    // RSA signing with every algorithm.
    let rsa_sign = n2
        .create_key_with(pair("RSA_2048", "SIGN_VERIFY"))
        .await
        .unwrap();
    assert_eq!(rsa_sign.signing_algorithms.len(), 6);
    for alg in &rsa_sign.signing_algorithms {
        let s = n1
            .sign(&rsa_sign.key_id, message, "RAW", alg)
            .await
            .unwrap();
        assert_eq!(s.signature.len(), 256);
        assert!(
            n3.verify(&rsa_sign.key_id, message, "RAW", &s.signature, alg)
                .await
                .unwrap()
                .signature_valid
        );
    }

    // RSA encryption: the public key encrypts (anywhere), only the service decrypts.
    let rsa = n3
        .create_key_with(pair("RSA_3072", "ENCRYPT_DECRYPT"))
        .await
        .unwrap();
    assert_eq!(
        rsa.encryption_algorithms,
        ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    );
    let ct = n1
        .encrypt_with_algorithm(&rsa.key_id, b"db password", &ctx(&[]), "RSAES_OAEP_SHA_256")
        .await
        .unwrap();
    assert_eq!(ct.ciphertext_blob.len(), 384);
    let pt = n2
        .decrypt_with_algorithm(
            &ct.ciphertext_blob,
            &ctx(&[]),
            Some(&rsa.key_id),
            "RSAES_OAEP_SHA_256",
        )
        .await
        .unwrap();
    assert_eq!(pt.plaintext, b"db password");
    assert_eq!(pt.encryption_algorithm, "RSAES_OAEP_SHA_256");
    assert_eq!(
        code(
            n2.decrypt_with_algorithm(&ct.ciphertext_blob, &ctx(&[]), None, "RSAES_OAEP_SHA_256")
                .await
        ),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(
            n2.decrypt_with_algorithm(
                &ct.ciphertext_blob,
                &ctx(&[]),
                Some(&rsa.key_id),
                "RSAES_OAEP_SHA_1"
            )
            .await
        ),
        Some(ErrorCode::InvalidCiphertext)
    );
    assert_eq!(
        code(
            n3.encrypt_with_algorithm(&rsa.key_id, b"x", &ctx(&[("a", "b")]), "RSAES_OAEP_SHA_256")
                .await
        ),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(
            n3.encrypt_with_algorithm(&rsa.key_id, &[1; 319], &ctx(&[]), "RSAES_OAEP_SHA_256")
                .await
        ),
        Some(ErrorCode::Validation),
        "318 bytes is RSA_3072's OAEP-SHA-256 limit"
    );
    assert_eq!(
        code(n3.encrypt(&rsa.key_id, b"x", &ctx(&[])).await),
        Some(ErrorCode::InvalidKeyUsage),
        "SYMMETRIC_DEFAULT is not an RSA algorithm"
    );
    assert_eq!(
        code(
            n1.generate_data_key(&rsa.key_id, "AES_256", 0, &ctx(&[]))
                .await
        ),
        Some(ErrorCode::InvalidKeyUsage)
    );
    assert_eq!(
        code(n1.rotate_key_on_demand(&rsa.key_id).await),
        Some(ErrorCode::UnsupportedOperation)
    );

    // ReEncrypt between an RSA key and a symmetric key, both ways.
    let aes = n1.create_key("aes").await.unwrap();
    assert_eq!(
        code(n2.get_public_key(&aes.key_id).await),
        Some(ErrorCode::UnsupportedOperation)
    );
    let to_aes = n2
        .re_encrypt_request(ReEncryptRequest {
            ciphertext_blob: ct.ciphertext_blob.clone(),
            source_key_id: rsa.key_id.clone(),
            source_encryption_algorithm: "RSAES_OAEP_SHA_256".into(),
            destination_key_id: aes.key_id.clone(),
            destination_encryption_context: ctx(&[("app", "db")]),
            ..Default::default()
        })
        .await
        .unwrap();
    let pt = n3
        .decrypt(&to_aes.ciphertext_blob, &ctx(&[("app", "db")]), None)
        .await
        .unwrap();
    assert_eq!(pt.plaintext, b"db password");
    let back = n1
        .re_encrypt_request(ReEncryptRequest {
            ciphertext_blob: to_aes.ciphertext_blob,
            source_encryption_context: ctx(&[("app", "db")]),
            destination_key_id: rsa.key_id.clone(),
            destination_encryption_algorithm: "RSAES_OAEP_SHA_1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(back.destination_encryption_algorithm, "RSAES_OAEP_SHA_1");
    let pt = n2
        .decrypt_with_algorithm(
            &back.ciphertext_blob,
            &ctx(&[]),
            Some(&rsa.key_id),
            "RSAES_OAEP_SHA_1",
        )
        .await
        .unwrap();
    assert_eq!(pt.plaintext, b"db password");

    // Usage and spec must fit; imported key pairs are not supported.
    assert_eq!(
        code(
            n1.create_key_with(pair("ECC_NIST_P256", "ENCRYPT_DECRYPT"))
                .await
        ),
        Some(ErrorCode::Validation)
    );
    assert_eq!(
        code(
            n1.create_key_with(CreateKeyRequest {
                origin: "EXTERNAL".into(),
                ..pair("RSA_2048", "SIGN_VERIFY")
            })
            .await
        ),
        Some(ErrorCode::UnsupportedOperation)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_acts_once_although_a_node_whose_clock_runs_hours_ahead_took_requests() {
    const HOUR_MS: u64 = 60 * 60 * 1000;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = ticking_cluster(dir.path()).await;
    let clients: Vec<Client> = (1..=3).map(|i| c.client_of(i).unwrap()).collect();
    let req = keyraft_client::types::CreateKeyRequest {
        description: "exactly once".into(),
        request_id: "create-exactly-once".into(),
        ..Default::default()
    };
    let first = clients[0].create_key_with(req.clone()).await.unwrap();

    // Node 3's clock runs two hours ahead, and the mutations it takes carry its time.
    clients[2].advance_clock(2 * HOUR_MS).await.unwrap();
    for i in 0..3 {
        clients[2]
            .create_key(&format!("stamped two hours ahead {i}"))
            .await
            .unwrap();
    }
    // The cluster's time has not moved an hour: the retry gets the first answer.
    for n in &clients {
        let again = n.create_key_with(req.clone()).await.unwrap();
        assert_eq!(again.key_id, first.key_id, "the retry created a second key");
    }
    let keys = clients[0].list_keys(100, "").await.unwrap();
    assert_eq!(keys.keys.len(), 4, "{:?}", keys.keys);

    // Once a majority of the clocks passed the hour, a tick forgets the id: the same id
    // is a new request.
    for n in &clients[..2] {
        n.advance_clock(2 * HOUR_MS).await.unwrap();
    }
    let fresh = eventually(Duration::from_secs(20), || async {
        match clients[1].create_key_with(req.clone()).await {
            Ok(k) if k.key_id != first.key_id => Ok(k),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(fresh.description, "exactly once");
}

/// Creates issued at once through every node share log entries (the group commit) and
/// are still each decided on their own: every caller gets its own key, one request id
/// sent to the three nodes at once creates one key, and each key leaves one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_at_once_through_every_node_share_entries_and_each_acts_once() {
    const CREATES: usize = 60;
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(dir.path()).await;
    let clients: Vec<std::sync::Arc<Client>> = (1..=3)
        .map(|i| std::sync::Arc::new(c.client_of(i).unwrap()))
        .collect();
    let leader_log = |s: &keyraft_client::types::ClusterStatusResponse| {
        s.members
            .iter()
            .find(|m| m.id == s.leader)
            .map(|m| m.last_log_index)
            .expect("a leader")
    };
    let before_log = leader_log(&clients[0].cluster_status().await.unwrap());
    let before_audit = clients[0].audit_tail(1).await.unwrap().head_sequence;

    let same = keyraft_client::types::CreateKeyRequest {
        description: "sent to every node".into(),
        request_id: "one-create-three-nodes".into(),
        ..Default::default()
    };
    let mut distinct = Vec::new();
    for i in 0..CREATES {
        let client = clients[i % 3].clone();
        distinct.push(tokio::spawn(async move {
            client.create_key(&format!("at once {i}")).await
        }));
    }
    let mut repeated = Vec::new();
    for client in &clients {
        let (client, req) = (client.clone(), same.clone());
        repeated.push(tokio::spawn(
            async move { client.create_key_with(req).await },
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, task) in distinct.into_iter().enumerate() {
        let key = task.await.unwrap().unwrap();
        assert_eq!(
            key.description,
            format!("at once {i}"),
            "another caller's key"
        );
        ids.insert(key.key_id);
    }
    assert_eq!(ids.len(), CREATES);
    let mut same_ids = std::collections::BTreeSet::new();
    for task in repeated {
        same_ids.insert(task.await.unwrap().unwrap().key_id);
    }
    assert_eq!(same_ids.len(), 1, "one request id created {same_ids:?}");

    let after_log = leader_log(&clients[1].cluster_status().await.unwrap());
    let entries = after_log - before_log;
    assert!(
        entries < CREATES as u64,
        "{} creates took {entries} log entries",
        CREATES + 3
    );
    let keys = clients[2].list_keys(1000, "").await.unwrap().keys;
    assert_eq!(keys.len(), CREATES + 1);
    let tail = clients[0].audit_tail(200).await.unwrap();
    assert!(tail.chain_ok);
    let created = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
        .filter(|e| e["sequence"].as_u64() > Some(before_audit) && e["eventName"] == "CreateKey")
        .count();
    assert_eq!(created, CREATES + 1);

    // A forwarded group must name a request id for each command, which makes proposing
    // it again safe: the leader refuses one that does not.
    use keyraft_proto::v1::internal::node_service_client::NodeServiceClient;
    use keyraft_proto::v1::internal::RaftMessage;
    use keyraft_raft::network::ClusterAuth;
    use keyraft_state::{Command, Op};
    let leader = clients[0].cluster_status().await.unwrap().leader;
    let unnamed = Command {
        request_id: String::new(),
        time_ms: 1,
        op: Op::Group {
            commands: vec![Command {
                request_id: String::new(),
                time_ms: 1,
                op: Op::Tick {
                    node_id: leader,
                    rotations: Vec::new(),
                },
            }],
        },
    };
    let msg = RaftMessage {
        data: bincode::serialize(&unnamed).unwrap(),
    };
    let body = prost::Message::encode_to_vec(&msg);
    let mut req = tonic::Request::new(msg);
    let peer = ClusterAuth::new(leader % 3 + 1, c.file().cluster_secret.as_bytes());
    peer.sign(
        &mut req,
        "/keyraft.v1.internal.NodeService/Propose",
        leader,
        &body,
    );
    let raft_addr = format!("http://{}", c.node(leader).unwrap().raft_addr());
    let mut node = NodeServiceClient::connect(raft_addr).await.unwrap();
    let status = node.propose(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}
