//! Who may do what, with real `keyraft server` processes: principals and their access
//! keys, principal and key policies taking effect on every node at once, AssumeRole
//! sessions that expire, and refusals that are audited.

use std::path::Path;
use std::time::Duration;

use keyraft_client::{Client, ClientConfig, Error, ErrorCode};
use keyraft_testkit::LocalCluster;

/// Clusters in this file run one at a time (2-core CI machines, and free ports are
/// only free until someone else takes them).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keyraft"))
}

fn code(r: Result<impl std::fmt::Debug, Error>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// A client of node `id` with other credentials.
fn as_(c: &LocalCluster, id: u64, key_id: &str, secret: &str) -> Client {
    let mut config: ClientConfig = c.client_config();
    config.endpoints = vec![c.node(id).unwrap().endpoint()];
    config.access_key_id = key_id.to_string();
    config.secret_access_key = secret.to_string();
    config.timeout = Duration::from_secs(10);
    Client::new(config).unwrap()
}

const ALLOW_USE: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey"],"Resource":"*"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_on_every_node_at_once_and_refusals_are_audited() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "iam-1").unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let admin = c.client_of(1).unwrap();
    let key = admin.create_key("payments").await.unwrap();
    let ctx = Default::default();

    // A new user can do nothing until a policy allows it; the refusal is audited.
    let alice = admin.create_principal("user", "alice", None).await.unwrap();
    assert_eq!(alice.arn, "arn:keyraft:iam::111122223333:user/alice");
    let k1 = admin.create_access_key(Some(&alice.arn)).await.unwrap();
    assert_eq!(k1.secret_access_key.len(), 40);
    let alice2 = as_(&c, 2, &k1.access_key_id, &k1.secret_access_key);
    let alice3 = as_(&c, 3, &k1.access_key_id, &k1.secret_access_key);
    assert_eq!(
        code(alice2.encrypt(&key.key_id, b"x", &ctx).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice2.create_key("mine").await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice3.create_principal("user", "mallory", None).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice3.audit_tail(10).await),
        Some(ErrorCode::AccessDenied),
        "the region's trail is for its administrator"
    );
    // Region administration is the region administrator's alone.
    assert_eq!(
        code(alice3.get_quota(Some("999988887777")).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice3.create_service_key("s3", None).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice2.remove_node(3).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice2.transfer_leader(2).await),
        Some(ErrorCode::AccessDenied)
    );
    let tail = admin.audit_tail(50).await.unwrap();
    let events: Vec<serde_json::Value> = tail
        .events_json
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["eventName"] == "Encrypt"
        && e["userIdentity"]["arn"] == alice.arn.as_str()
        && e["errorCode"] == "AccessDeniedException"));

    // A principal policy put through node 1 is in force on node 3 at once.
    admin
        .put_principal_policy(&alice.arn, "use-keys", ALLOW_USE)
        .await
        .unwrap();
    let ct = alice3.encrypt(&key.key_id, b"card", &ctx).await.unwrap();
    assert_eq!(
        alice2
            .decrypt(&ct.ciphertext_blob, &ctx, None)
            .await
            .unwrap()
            .plaintext,
        b"card"
    );
    assert_eq!(
        code(alice2.disable_key(&key.key_id).await),
        Some(ErrorCode::AccessDenied),
        "the policy allows use, not management"
    );

    // A key policy that denies alice, put through node 1, refuses her on node 3 at once.
    let deny_alice = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Sid":"root","Effect":"Allow","Principal":{{"AWS":"arn:keyraft:iam::111122223333:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Sid":"not alice","Effect":"Deny","Principal":{{"AWS":"{}"}},"Action":"kms:*","Resource":"*"}}]}}"#,
        alice.arn
    );
    admin
        .put_key_policy(&key.key_id, &deny_alice)
        .await
        .unwrap();
    assert_eq!(
        code(alice3.encrypt(&key.key_id, b"card", &ctx).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(admin.get_key_policy(&key.key_id).await.unwrap(), deny_alice);
    assert_eq!(
        admin.list_key_policies(&key.key_id).await.unwrap(),
        ["default"]
    );
    // The root user still manages it; other keys still serve alice.
    admin.disable_key(&key.key_id).await.unwrap();
    let other = admin.create_key("other").await.unwrap();
    alice3.encrypt(&other.key_id, b"x", &ctx).await.unwrap();

    // Bad documents change nothing, and say where they are wrong.
    let err = admin
        .put_key_policy(
            &other.key_id,
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Maybe"}]}"#,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MalformedPolicyDocument));
    assert!(err.to_string().contains("Statement[0]"), "{err}");
    let lockout = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:keyraft:iam::111122223333:user/alice"},"Action":"kms:Encrypt","Resource":"*"}]}"#;
    assert_eq!(
        code(admin.put_key_policy(&other.key_id, lockout).await),
        Some(ErrorCode::MalformedPolicyDocument),
        "a policy that locks its author out is refused"
    );
    assert!(admin
        .get_key_policy(&other.key_id)
        .await
        .unwrap()
        .contains("Enable IAM User Permissions"));

    // Rotating an access key without downtime: a second key, then the first goes.
    let k2 = admin.create_access_key(Some(&alice.arn)).await.unwrap();
    assert_eq!(
        code(admin.create_access_key(Some(&alice.arn)).await),
        Some(ErrorCode::LimitExceeded)
    );
    let alice_new = as_(&c, 2, &k2.access_key_id, &k2.secret_access_key);
    alice_new.encrypt(&other.key_id, b"x", &ctx).await.unwrap();
    admin.delete_access_key(&k1.access_key_id).await.unwrap();
    assert_eq!(
        code(alice2.encrypt(&other.key_id, b"x", &ctx).await),
        Some(ErrorCode::UnrecognizedClient)
    );
    alice_new.encrypt(&other.key_id, b"x", &ctx).await.unwrap();

    // A disabled user is refused everywhere.
    admin
        .set_principal_enabled(&alice.arn, false)
        .await
        .unwrap();
    assert_eq!(
        code(
            as_(&c, 3, &k2.access_key_id, &k2.secret_access_key)
                .encrypt(&other.key_id, b"x", &ctx)
                .await
        ),
        Some(ErrorCode::UnrecognizedClient)
    );

    // Roles: assumed for temporary credentials that carry the role's policies and expire.
    let role = admin
        .create_principal("role", "reader", None)
        .await
        .unwrap();
    admin
        .put_principal_policy(&role.arn, "describe", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeKey","Resource":"*"}]}"#)
        .await
        .unwrap();
    let session = admin.assume_role(&role.arn, "audit-42", 900).await.unwrap();
    assert_eq!(
        session.assumed_role_arn,
        "arn:keyraft:sts::111122223333:assumed-role/reader/audit-42"
    );
    let creds = session.credentials.unwrap();
    let reader = as_(&c, 3, &creds.access_key_id, &creds.secret_access_key);
    assert_eq!(
        reader.describe_key(&other.key_id).await.unwrap().key_id,
        other.key_id
    );
    assert_eq!(
        code(reader.encrypt(&other.key_id, b"x", &ctx).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(alice_new.assume_role(&role.arn, "s", 900).await),
        Some(ErrorCode::UnrecognizedClient),
        "alice is disabled"
    );
    for n in 1..=3 {
        c.client_of(n)
            .unwrap()
            .advance_clock(901_000)
            .await
            .unwrap();
    }
    assert_eq!(
        code(reader.describe_key(&other.key_id).await),
        Some(ErrorCode::ExpiredToken)
    );

    // Listing and deleting.
    let users = admin.list_principals("user").await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["admin", "alice"]);
    assert!(users[0].root);
    assert_eq!(
        code(admin.delete_principal(&users[0].arn).await),
        Some(ErrorCode::Validation),
        "the root user stays"
    );
    admin.delete_principal(&alice.arn).await.unwrap();
    assert_eq!(admin.list_principals("user").await.unwrap().len(), 1);
    c.stop_all(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_usable_at_once_within_constraints_and_stop_at_once_when_revoked() {
    use keyraft_client::types::{CreateGrantRequest, GrantConstraints, SetQuotaRequest};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "grants-1").unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let admin = c.client_of(1).unwrap();
    let key = admin.create_key("orders").await.unwrap();
    let bob = admin.create_principal("user", "bob", None).await.unwrap();
    let carol = admin.create_principal("user", "carol", None).await.unwrap();
    let bk = admin.create_access_key(Some(&bob.arn)).await.unwrap();
    let ck = admin.create_access_key(Some(&carol.arn)).await.unwrap();
    let bob3 = as_(&c, 3, &bk.access_key_id, &bk.secret_access_key);
    let bob2 = as_(&c, 2, &bk.access_key_id, &bk.secret_access_key);
    let carol2 = as_(&c, 2, &ck.access_key_id, &ck.secret_access_key);
    let orders: keyraft_client::EncryptionContext =
        [("app".to_string(), "orders".to_string())].into();
    let billing: keyraft_client::EncryptionContext =
        [("app".to_string(), "billing".to_string())].into();

    assert_eq!(
        code(bob3.encrypt(&key.key_id, b"x", &orders).await),
        Some(ErrorCode::AccessDenied)
    );
    let grant = admin
        .create_grant(CreateGrantRequest {
            key_id: key.key_id.clone(),
            grantee_principal: bob.arn.clone(),
            retiring_principal: carol.arn.clone(),
            operations: vec!["Encrypt".into(), "Decrypt".into()],
            constraints: Some(GrantConstraints {
                encryption_context_equals: [("app".to_string(), "orders".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Usable at once, on another node, within its constraints only.
    let ct = bob3
        .encrypt(&key.key_id, b"order 7", &orders)
        .await
        .unwrap();
    assert_eq!(
        bob2.decrypt(&ct.ciphertext_blob, &orders, None)
            .await
            .unwrap()
            .plaintext,
        b"order 7"
    );
    assert_eq!(
        code(bob3.encrypt(&key.key_id, b"x", &billing).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(
            bob3.generate_data_key(&key.key_id, "AES_256", 0, &orders)
                .await
        ),
        Some(ErrorCode::AccessDenied)
    );
    let listed = admin.list_grants(&key.key_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].grant_id, grant.grant_id);
    assert_eq!(listed[0].operations, ["Decrypt", "Encrypt"]);
    assert_eq!(
        admin.list_retirable_grants(&carol.arn).await.unwrap().len(),
        1
    );

    // The retiring principal retires it by token; bob is refused at once.
    assert_eq!(
        code(bob3.retire_grant(Some(&grant.grant_token), "", "").await),
        Some(ErrorCode::AccessDenied),
        "the grantee without RetireGrant may not"
    );
    carol2
        .retire_grant(Some(&grant.grant_token), "", "")
        .await
        .unwrap();
    assert_eq!(
        code(bob3.encrypt(&key.key_id, b"x", &orders).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(carol2.retire_grant(Some("KRGT1.nonsense"), "", "").await),
        Some(ErrorCode::InvalidGrantToken)
    );

    // Revoked through node 1, refused on node 3.
    let again = admin
        .create_grant(CreateGrantRequest {
            key_id: key.key_id.clone(),
            grantee_principal: bob.arn.clone(),
            operations: vec!["Encrypt".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    bob3.encrypt(&key.key_id, b"x", &billing).await.unwrap();
    admin
        .revoke_grant(&key.key_id, &again.grant_id)
        .await
        .unwrap();
    assert_eq!(
        code(bob3.encrypt(&key.key_id, b"x", &billing).await),
        Some(ErrorCode::AccessDenied)
    );
    assert_eq!(
        code(admin.revoke_grant(&key.key_id, &again.grant_id).await),
        Some(ErrorCode::InvalidGrantId)
    );

    // Grants per key are a quota.
    let q = admin
        .set_quota_request(SetQuotaRequest {
            grants_per_key: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(q.grants_per_key_limit, 1);
    let one = |name: &str| CreateGrantRequest {
        key_id: key.key_id.clone(),
        grantee_principal: carol.arn.clone(),
        operations: vec!["DescribeKey".into()],
        name: name.to_string(),
        ..Default::default()
    };
    let first = admin.create_grant(one("a")).await.unwrap();
    assert_eq!(
        admin.create_grant(one("a")).await.unwrap().grant_id,
        first.grant_id,
        "the same named grant is created once"
    );
    assert_eq!(
        code(admin.create_grant(one("b")).await),
        Some(ErrorCode::LimitExceeded)
    );
    c.stop_all(Duration::from_secs(5));
}

/// Runs the `keyraft` binary against the cluster as its administrator.
fn keyraft(c: &LocalCluster, args: &[&str]) -> (bool, String) {
    let cfg = c.client_config();
    let out = std::process::Command::new(binary())
        .args(args)
        .env("KEYRAFT_ENDPOINTS", cfg.endpoints.join(","))
        .env("KEYRAFT_REGION", &cfg.region)
        .env("KEYRAFT_ACCESS_KEY_ID", &cfg.access_key_id)
        .env("KEYRAFT_SECRET_ACCESS_KEY", &cfg.secret_access_key)
        .output()
        .unwrap();
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).to_string()
    } else {
        // Some failures (a chain that does not verify) explain themselves on stdout.
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_queried_exported_resumably_and_verified_on_every_node() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "audit-1").unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let admin = c.client().unwrap();
    let key = admin.create_key("audited").await.unwrap();
    let ctx = Default::default();
    for _ in 0..5 {
        admin.encrypt(&key.key_id, b"x", &ctx).await.unwrap();
    }
    let _ = admin.decrypt(b"not a ciphertext", &ctx, None).await;

    // Query by event name, key and outcome.
    let (ok, out) = keyraft(
        &c,
        &[
            "audit",
            "query",
            "--event-name",
            "Encrypt",
            "--key-id",
            &key.key_id,
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let events = v["Events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e["eventName"] == "Encrypt"
        && e["requestParameters"]["encryptionContext"].is_object()
        && e["userIdentity"]["accessKeyId"].is_string()
        && e["eventID"].is_string()
        && e["node"].is_u64()));
    let (ok, out) = keyraft(
        &c,
        &[
            "audit",
            "query",
            "--outcome",
            "failure",
            "--event-name",
            "Decrypt",
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Events"][0]["errorCode"], "InvalidCiphertextException");

    // Export, then resume after the last exported event: nothing is written twice.
    let file = dir.path().join("trail.jsonl");
    let file_s = file.to_str().unwrap();
    let (ok, out) = keyraft(&c, &["audit", "export", "--out", file_s]);
    assert!(ok, "{out}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    let exported = first["Exported"].as_u64().unwrap();
    assert!(exported >= 7);
    admin.encrypt(&key.key_id, b"later", &ctx).await.unwrap();
    let last_id = first["LastEventId"].as_str().unwrap().to_string();
    let (ok, out) = keyraft(
        &c,
        &["audit", "export", "--out", file_s, "--from", &last_id],
    );
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "contiguous, no duplicates"
    );
    assert!(lines.len() as u64 > exported);
    // Each line links to the one before it.
    for w in lines.windows(2) {
        assert_eq!(w[1]["prevHash"], w[0]["hash"]);
    }

    // Every node holds the same, intact chain.
    let (ok, out) = keyraft(&c, &["audit", "verify", "--all-nodes"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Ok"], true);
    assert_eq!(v["Nodes"].as_array().unwrap().len(), 3);

    // Retention: nothing younger than the period goes; once older, exported events are
    // pruned behind a signed checkpoint and every node's chain still verifies.
    let (ok, out) = keyraft(&c, &["audit", "prune", "--retention-days", "1"]);
    assert!(ok, "{out}");
    let none: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(none["Pruned"], 0, "{out}");
    for n in 1..=3 {
        c.client_of(n)
            .unwrap()
            .advance_clock(2 * 86_400_000)
            .await
            .unwrap();
    }
    let (ok, out) = keyraft(&c, &["audit", "prune", "--retention-days", "1"]);
    assert!(ok, "{out}");
    let pruned: serde_json::Value = serde_json::from_str(&out).unwrap();
    let checkpoint = pruned["CheckpointSequence"].as_u64().unwrap();
    assert_eq!(
        checkpoint,
        seqs.len() as u64,
        "exactly what was exported: {out}"
    );
    let (ok, out) = keyraft(&c, &["audit", "verify", "--all-nodes"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Ok"], true);
    let (ok, out) = keyraft(&c, &["audit", "query", "--event-name", "Encrypt"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["Events"].as_array().unwrap().is_empty(), "pruned: {out}");
    c.stop_all(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_for_its_audit_event_a_request_fails_closed() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::prepare(dir.path(), binary(), 3, 0, "closed-1").unwrap();
    c.start_all().unwrap();
    c.wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let key = c.client().unwrap().create_key("k").await.unwrap();
    let ctx = Default::default();
    let ct = c
        .client_of(1)
        .unwrap()
        .encrypt(&key.key_id, b"secret", &ctx)
        .await
        .unwrap();
    c.kill(2).unwrap();
    c.kill(3).unwrap();
    let mut config = c.client_config();
    config.endpoints = vec![c.node(1).unwrap().endpoint()];
    config.timeout = Duration::from_secs(6);
    let lone = Client::new(config).unwrap();
    // The survivor holds the key and could decrypt, but cannot audit: nothing is returned.
    let err = lone
        .decrypt(&ct.ciphertext_blob, &ctx, None)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::DependencyTimeout) | Some(ErrorCode::Internal) | None
        ),
        "{err}"
    );
    c.stop_all(Duration::from_secs(5));
}
