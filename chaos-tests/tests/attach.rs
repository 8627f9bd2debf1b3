//! `--attach`: an experiment against a cluster this harness did not start. Three real
//! nodes run as background processes started by the attach file's own `start` command
//! (as systemd would run them), and every process fault goes through the file's shell
//! commands, with pid files standing in for a service manager.

mod common;
use common::keyraft_binary;
use std::path::Path;

use keyraft_chaos::attach::AttachSpec;
use keyraft_chaos::check::Verdict;
use keyraft_chaos::experiment::Experiment;
use keyraft_chaos::run::{run, RunOptions};
use keyraft_testkit::LocalCluster;

const EXPERIMENT: &str = r#"
name = "attached-kill-and-pause"
seed = 31
duration = "18s"

[cluster]
nodes = 3

[[faults]]
at = "4s"
for = "4s"
kind = "kill"
target = "leader"

[[faults]]
at = "11s"
for = "4s"
kind = "pause"
target = "follower"
"#;

/// Kills every node the attach file started, whatever the test's outcome.
struct Reaper<'a>(&'a Path);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        for id in 1..=3 {
            if let Ok(pid) = std::fs::read_to_string(self.0.join(format!("node{id}.pid"))) {
                let pid = pid.trim();
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", pid])
                    .status();
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid])
                    .status();
            }
        }
    }
}

/// Whether the pid file of node `id` names that node's running server: a node started
/// twice leaves a process the pid file does not name, which nothing would ever stop.
fn pid_file_names_the_node(dir: &Path, id: u64) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(format!("node{id}.pid"))) else {
        return false;
    };
    let config = format!("{}/node{id}.toml", dir.display());
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&config))
}

fn attach_file(cluster: &LocalCluster, dir: &Path) -> String {
    let d = dir.display();
    let bin = keyraft_binary();
    let pid = format!("$(cat {d}/node{{id}}.pid)");
    // Like a service manager's, the start command returns before the node listens (here
    // always by half a second), so the harness must wait for it.
    let mut text = format!(
        "region = \"{}\"\nprofile = \"chaos\"\ncredentials_file = \"{d}/credentials\"\n",
        cluster.file().region
    );
    for node in cluster.nodes() {
        text += &format!(
            "[[nodes]]\nid = {}\nendpoint = \"{}\"\n",
            node.id,
            node.endpoint()
        );
    }
    text += &format!(
        "[commands]\n\
         start = \"(sleep 0.5; exec {bin} server --config {d}/node{{id}}.toml) >> {d}/node{{id}}.log 2>&1 & echo $! > {d}/node{{id}}.pid\"\n\
         kill = \"kill -KILL {pid}\"\n\
         stop = \"kill -TERM {pid}\"\n\
         pause = \"kill -STOP {pid}\"\n\
         resume = \"kill -CONT {pid}\"\n",
        bin = bin.display()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_cluster_takes_process_faults_through_its_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = dir.path().join("nodes");
    let cluster = LocalCluster::prepare(&nodes, &keyraft_binary(), 3, 0, "chaos-1")
        .expect("lay out the nodes");
    std::fs::write(
        nodes.join("credentials"),
        format!(
            "[chaos]\nkeyraft_access_key_id = {}\nkeyraft_secret_access_key = {}\n",
            cluster.file().access_key_id,
            cluster.file().secret_access_key
        ),
    )
    .expect("credentials file");
    let spec = AttachSpec::parse(&attach_file(&cluster, &nodes)).expect("attach file");
    let _reaper = Reaper(&nodes);
    for id in spec.ids() {
        spec.act("start", id).expect("start a node");
    }

    let exp = Experiment::parse(EXPERIMENT).expect("experiment");
    exp.check_attached(&spec.ids()).expect("runs attached");
    let out = dir.path().join("run");
    let results = run(
        &exp,
        &RunOptions {
            out: out.clone(),
            binary: Default::default(),
            progress: true,
            attach: Some(spec.clone()),
        },
    )
    .await
    .expect("the run itself failed");
    assert_eq!(results.verdict, Verdict::Pass, "{}", results.evidence());
    // Both faults went through the commands (the coverage checker passed), and the
    // killed leader was started again by the file's `start` after the heal.
    let history = std::fs::read_to_string(out.join("history.jsonl")).expect("history");
    assert!(history.contains("\"fault\":\"kill\""));
    assert!(history.contains("\"fault\":\"pause\""));
    for id in spec.ids() {
        assert!(
            spec.is_running(id),
            "node {id} is not running after the run"
        );
    }
    for id in spec.ids() {
        assert!(
            pid_file_names_the_node(&nodes, id),
            "node {id}'s pid file does not name its running server"
        );
    }

    // What an attached cluster cannot take is refused before anything starts.
    let partition = EXPERIMENT.replace(
        "kind = \"pause\"",
        "kind = \"partition\"\nshape = \"isolate\"",
    );
    let err = Experiment::parse(&partition)
        .expect("experiment")
        .check_attached(&spec.ids())
        .expect_err("no proxies on an attached cluster");
    assert!(err.contains("partition"), "{err}");
}
