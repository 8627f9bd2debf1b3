//! The bounded smoke set the default test command runs: 3 real nodes, one fault each
//! (leader kill, leader isolation, follower pause, a fail point before apply), the
//! whole pipeline from workload to checkers to report. Each must pass; a violation or
//! an unknown verdict fails the test with the checkers' evidence.
//!
//! Runs one experiment at a time: each starts three Raft nodes on a 2-core machine.

mod common;
use common::keyraft_binary;
use std::path::Path;

use keyraft_chaos::check::Verdict;
use keyraft_chaos::experiment::Experiment;
use keyraft_chaos::run::{run, RunOptions};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn smoke(file: &str) {
    let _serial = SERIAL.lock().await;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("experiments")
        .join(file);
    let exp = Experiment::load(&path).expect("experiment");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let results = run(
        &exp,
        &RunOptions {
            out: out.clone(),
            binary: keyraft_binary(),
            progress: true,
            attach: None,
        },
    )
    .await
    .expect("the run itself failed");
    for name in ["history.jsonl", "final.json", "results.json", "report.html"] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    assert_eq!(
        results.verdict,
        Verdict::Pass,
        "{} did not pass:\n{}",
        exp.name,
        results.evidence()
    );
    // The saved run re-checks to the same verdicts.
    let again = keyraft_chaos::run::recheck(&out, Some(&exp)).expect("recheck");
    assert_eq!(again.verdict, results.verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill() {
    smoke("leader-kill.toml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_isolation() {
    smoke("leader-isolation.toml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_pause() {
    smoke("follower-pause.toml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoint_before_apply() {
    smoke("failpoint-before-apply.toml").await;
}
