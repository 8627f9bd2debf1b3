//! `keyraft bench` as a user runs it: the JSON it prints parses, and its counts add up.
//! No timing is asserted — a benchmark prints numbers, it does not judge them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use keyraft_testkit::{LocalCluster, DEV_ACCOUNT};

fn keyraft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyraft"))
}

/// Runs `keyraft bench ARGS` with `env`; returns its JSON report.
fn bench(env: &[(String, String)], args: &[&str]) -> Value {
    let out = keyraft()
        .arg("bench")
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keyraft bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "keyraft bench {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Successful plus failed calls, over every operation.
fn calls(report: &Value) -> u64 {
    report["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| {
            op["count"].as_u64().unwrap()
                + op["errors"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|n| n.as_u64().unwrap())
                    .sum::<u64>()
        })
        .sum()
}

#[test]
fn the_bare_rpc_bound_needs_no_cluster() {
    let r = bench(
        &[],
        &[
            "--workload",
            "noop-rpc",
            "--count",
            "200",
            "--concurrency",
            "4",
            "--warmup",
            "0s",
            "--json",
        ],
    );
    assert_eq!(r["workload"], "noop-rpc");
    assert_eq!(r["operations"]["NoopRpc"]["count"], 200);
    assert_eq!(calls(&r), 200);
    // The bench's own CPU time per call is always there; other processes only on request.
    assert!(r["cpu"]["bench_us_per_call"].is_number(), "{r}");
    assert!(r["cpu"].get("processes_us_per_call").is_none(), "{r}");
}

#[test]
fn a_process_it_cannot_read_stops_the_bench_before_it_runs() {
    // Process ids on Linux stay below 2^22: this one cannot exist.
    let out = keyraft()
        .args(["bench", "--workload", "noop-rpc", "--count", "10"])
        .args(["--cpu-pids", "4294967295", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no report is printed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--cpu-pids") && stderr.contains("/proc/4294967295/stat"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_and_a_mix_against_a_local_cluster_count_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::prepare(
        dir.path(),
        Path::new(env!("CARGO_BIN_EXE_keyraft")),
        3,
        0,
        "bench-1",
    )
    .unwrap();
    cluster.start_all().unwrap();
    cluster
        .wait_ready(&[1, 2, 3], Duration::from_secs(60))
        .await
        .unwrap();
    let env: Vec<(String, String)> = cluster
        .env_lines()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let csv = dir.path().join("seconds.csv");
    let pids: Vec<String> = [1, 2, 3]
        .iter()
        .map(|&id| cluster.pid(id).unwrap().to_string())
        .collect();
    let pids = pids.join(",");

    let r = bench(
        &env,
        &[
            "--workload",
            "encrypt",
            "--count",
            "50",
            "--concurrency",
            "4",
            "--keys",
            "2",
            "--warmup",
            "200ms",
            "--csv",
            csv.to_str().unwrap(),
            "--cpu-pids",
            &pids,
            "--json",
        ],
    );
    assert_eq!(r["workload"], "encrypt");
    // Every node's CPU time is reported, and together they did work for 50 audited
    // calls (tens of milliseconds at least, above the counters' 10 ms resolution).
    let per_node = r["cpu"]["per_process_us_per_call"].as_object().unwrap();
    assert_eq!(per_node.len(), 3, "{r}");
    assert!(
        r["cpu"]["processes_us_per_call"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert_eq!(r["concurrency"], 4);
    assert_eq!(r["operations"]["Encrypt"]["count"], 50, "{r}");
    assert_eq!(calls(&r), 50);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next(), Some("second,ops,p50_ms,p99_ms,errors"));
    let per_second: u64 = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_second, 50, "every call is in one CSV row: {text}");

    let leader = cluster.client().unwrap().cluster_status().await.unwrap();
    assert_ne!(leader.leader, 0);
    let r = bench(
        &env,
        &[
            "--workload",
            "mix",
            "--mix",
            "encrypt=2,decrypt=1,describe-key=1,create-key=1,generate-data-key=1",
            "--count",
            "60",
            "--concurrency",
            "3",
            "--keys",
            "2",
            "--warmup",
            "0s",
            "--target",
            "follower",
            "--json",
        ],
    );
    assert_eq!(
        r["mix"],
        "encrypt=2,decrypt=1,describe-key=1,create-key=1,generate-data-key=1"
    );
    assert_eq!(calls(&r), 60, "{r}");
    for op in r["operations"].as_object().unwrap().values() {
        assert!(op["errors"].as_object().unwrap().is_empty(), "{r}");
    }

    // The keys a run creates get --key-policy: one that lets the account administer
    // them but denies Encrypt refuses every call.
    let policy = dir.path().join("deny-encrypt.json");
    std::fs::write(
        &policy,
        format!(
            r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"{DEV_ACCOUNT}"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*"}}]}}"#
        ),
    )
    .unwrap();
    let r = bench(
        &env,
        &[
            "--workload",
            "encrypt",
            "--count",
            "20",
            "--concurrency",
            "2",
            "--keys",
            "2",
            "--warmup",
            "0s",
            "--key-policy",
            policy.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r["key_policy"], policy.to_str().unwrap());
    assert_eq!(r["operations"]["Encrypt"]["count"], 0, "{r}");
    assert_eq!(
        r["operations"]["Encrypt"]["errors"]["AccessDeniedException"], 20,
        "{r}"
    );
}
