//! Ctrl-C or SIGTERM during `keyraft-chaos run` ends the run without leaving anything
//! behind: the nodes it started, paused ones included, are stopped before it exits.

mod common;
use common::keyraft_binary;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The processes whose command line mentions `dir` (the run's nodes name their data
/// directories under it).
fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_run_stopped_by_sigterm_mid_fault_leaves_no_node_running() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let experiment = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/follower-pause.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyraft-chaos"))
        .arg("run")
        .arg(&experiment)
        .arg("--out")
        .arg(&out)
        .arg("--keyraft-bin")
        .arg(keyraft_binary())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyraft-chaos");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // Interrupt while a follower is paused (SIGSTOP): the hardest node to stop.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("pause for") => break,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("the run never paused a follower: {e}");
            }
        }
    }
    assert!(!processes_under(&out).is_empty(), "no node found to stop");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyraft-chaos did not exit within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2), "an interrupted run is aborted");
    let said: Vec<String> = rx.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("interrupted")),
        "no word of the interruption: {said:?}"
    );
    let left = processes_under(&out);
    assert!(
        left.is_empty(),
        "nodes still running after the run stopped: {left:?}"
    );
}
