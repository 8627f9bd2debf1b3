//! # One run of an experiment
//!
//! 1. Start the cluster, set the run's key quota, create the initial key pool.
//! 2. Start the workload; probe the steady state over its first window.
//! 3. Follow the plan: for each fault, wait for its start, inject, wait, heal; between
//!    steps watch the abort conditions (ok ratio, crash loops) and heal everything if
//!    one fires.
//! 4. Stop the workload, heal everything, probe the steady state again, wait for every
//!    node to apply the same index, make one recorded write, and read each node's
//!    keys and audit log into the final state; then decrypt every acknowledged
//!    ciphertext once more.
//! 5. Run the checkers and write `history.jsonl`, `final.json`, `results.json` and
//!    `report.html` into the run directory (node logs stay in `cluster/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::StreamExt;
use serde_json::Value as Json;

use keyraft_client::{Client, ClientOptions, RetryPolicy};
use keyraft_server::config::RaftConfig;

use crate::attach::AttachSpec;
use crate::check::{self, CheckResult, Coverage, Verdict};
use crate::cluster::{ChaosCluster, ClusterOptions};
use crate::experiment::{Experiment, PlannedFault};
use crate::history::{
    AuditEntry, EventKind, FinalAudit, FinalKey, FinalState, History, NodeFinal, Op, Outcome,
    Redecrypt, Value, WriteAfterHeal,
};
use crate::nemesis::Nemesis;
use crate::results::RunResults;
use crate::workload::{self, context_of, Recorder, Workload, TAG_CONTEXT_KEY};

/// How to run an experiment.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory (created; must not hold an earlier run).
    pub out: PathBuf,
    /// The `keyraft` binary the nodes run.
    pub binary: PathBuf,
    /// Print a progress line while running.
    pub progress: bool,
    /// Run against this cluster instead of starting one (`binary` is then unused).
    pub attach: Option<AttachSpec>,
}

/// Runs an experiment; returns its results (also written to the run directory).
pub async fn run(exp: &Experiment, opts: &RunOptions) -> Result<RunResults, String> {
    if let Some(spec) = &opts.attach {
        exp.check_attached(&spec.ids())?;
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    if opts.out.join("history.jsonl").exists() {
        return Err(format!(
            "{} holds an earlier run; pick another --out",
            opts.out.display()
        ));
    }
    let started_unix_ms = unix_ms();
    let started = Instant::now();
    let recorder = Arc::new(
        Recorder::new(Some(&opts.out.join("history.jsonl")))
            .map_err(|e| format!("history.jsonl: {e}"))?,
    );
    let say = |line: String| {
        if opts.progress {
            eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
        }
    };

    let mut cluster = match &opts.attach {
        Some(spec) => {
            say(format!(
                "attaching to {} nodes for {}",
                spec.nodes.len(),
                exp.name
            ));
            ChaosCluster::attach(
                spec.clone(),
                &opts.out.join("cluster"),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("attaching to the cluster: {e}"))?
        }
        None => start_cluster(exp, opts, &say).await?,
    };
    let client = cluster.client().map_err(|e| e.to_string())?;

    let run_id = format!("{}-{:x}", exp.name, started_unix_ms);
    let mut one_attempt = ClientOptions::default();
    one_attempt.retry = RetryPolicy::none();
    let reads = Client::with_options(
        cluster.client_config().map_err(|e| e.to_string())?,
        one_attempt,
    )
    .map_err(|e| e.to_string())?;
    let workload = Workload::new(
        client.clone(),
        reads,
        recorder.clone(),
        exp.workload.clone(),
        exp.seed,
        &run_id,
    );
    let keys_before = workload
        .count_keys()
        .await
        .map_err(|e| format!("counting keys: {e}"))?;
    // An attached cluster's own key limit is put back after the run.
    let mut quota_to_restore = None;
    let key_quota = if exp.quota_headroom > 0 {
        if opts.attach.is_some() {
            let current = client
                .get_quota(None)
                .await
                .map_err(|e| format!("reading the key quota: {e}"))?;
            quota_to_restore = Some(current.keys_limit);
        }
        let limit = keys_before + exp.workload.keys as u64 + exp.quota_headroom;
        client
            .set_quota(None, limit, 0)
            .await
            .map_err(|e| format!("setting the key quota: {e}"))?;
        limit
    } else {
        0
    };
    if let Err(e) = workload.prepare().await {
        restore_quota(&client, quota_to_restore, &say).await;
        return Err(e);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workload = Arc::new(workload);
    let load = {
        let w = workload.clone();
        tokio::spawn(async move { w.run(stop_rx).await })
    };
    let load_started = Instant::now();

    let plan = exp.plan();
    let first_fault = plan.first().map(|p| p.at).unwrap_or(exp.duration);
    let mut nemesis = Nemesis::new(recorder.clone(), exp.blast_radius.clone(), exp.seed);
    let mut extra: Vec<CheckResult> = Vec::new();
    let mut aborted: Option<String> = None;

    // Steady state before: the window just before the first fault.
    let probe_end = first_fault.min(exp.steady_state.window.max(Duration::from_secs(1)));
    sleep_until(load_started + probe_end).await;
    let before = ok_ratio(
        &recorder.history(),
        recorder.now_ns(),
        exp.steady_state.window,
    );
    say(format!(
        "steady state before the faults: {}",
        describe_ratio(before)
    ));
    if before.is_none_or(|r| r < exp.steady_state.min_ok_ratio) {
        aborted = Some(format!(
            "the steady state did not hold before any fault ({}; at least {:.2} needed)",
            describe_ratio(before),
            exp.steady_state.min_ok_ratio
        ));
    }

    if aborted.is_none() {
        aborted = follow_plan(
            exp,
            &plan,
            &mut cluster,
            &mut nemesis,
            &recorder,
            load_started,
            &say,
        )
        .await;
    }
    if aborted.is_none() {
        sleep_until(load_started + exp.duration).await;
    }
    let _ = stop_tx.send(true);
    let stats = load.await.unwrap_or_default();
    say(format!(
        "workload stopped: {} ok, {} fail, {} info",
        stats.ok, stats.fail, stats.info
    ));

    // Heal everything and let the cluster converge; nodes that exited on their own are
    // recorded as crashes before healing starts them again.
    nemesis.restart_crashed(&mut cluster);
    if let Err(e) = cluster.heal_all() {
        say(format!("healing: {e}"));
    }
    let healed_at = Instant::now();
    let converged = cluster.wait_converged(Duration::from_secs(60)).await;
    say(match &converged {
        Ok(()) => "healed and converged".to_string(),
        Err(e) => format!("not converged after healing: {e}"),
    });

    // Steady state after: a short probe with the same workload.
    let after = probe_after(&workload, &recorder, exp.steady_state.window).await;
    say(format!(
        "steady state after healing: {}",
        describe_ratio(after)
    ));
    extra.push(steady_state_result(exp, before, after));

    let write_after_heal = write_after_heal(&client, &recorder, healed_at).await;
    let _ = cluster.wait_converged(Duration::from_secs(30)).await;

    let history = recorder.history();
    let mut final_state = read_final(&cluster, &run_id).await;
    final_state.key_quota = key_quota;
    final_state.keys_before = keys_before;
    final_state.write_after_heal = Some(write_after_heal);
    final_state.redecrypt = redecrypt(&client, &history).await;
    restore_quota(&client, quota_to_restore, &say).await;
    write_json(&opts.out.join("final.json"), &final_state)?;
    recorder
        .finish()
        .map_err(|e| format!("history.jsonl: {e}"))?;

    let coverage = Coverage {
        faults: plan.iter().map(|p| p.fault.name().to_string()).collect(),
        min_ops_per_sec: exp.min_ops_per_sec,
    };
    let mut checks = check::run(&exp.checkers(), &history, &final_state, &coverage);
    checks.extend(extra);
    let nodes = final_state.nodes.len() as u64;
    let results = conclude(
        exp,
        nodes,
        started_unix_ms,
        started.elapsed(),
        checks,
        aborted,
    );
    write_json(&opts.out.join("results.json"), &results)?;
    crate::report::write(&opts.out, &results, &history).map_err(|e| format!("report.html: {e}"))?;
    drop(cluster);
    say(format!("verdict: {:?}", results.verdict));
    Ok(results)
}

/// Puts an attached cluster's own key limit back (0: it had none to put back).
async fn restore_quota(client: &Client, limit: Option<u64>, say: &impl Fn(String)) {
    if let Some(limit) = limit.filter(|l| *l > 0) {
        if let Err(e) = client.set_quota(None, limit, 0).await {
            say(format!("could not restore the key quota of {limit}: {e}"));
        }
    }
}

/// Starts the experiment's own cluster.
async fn start_cluster(
    exp: &Experiment,
    opts: &RunOptions,
    say: &impl Fn(String),
) -> Result<ChaosCluster, String> {
    say(format!(
        "starting {} nodes for {}",
        exp.cluster.nodes, exp.name
    ));
    ChaosCluster::start(ClusterOptions {
        nodes: exp.cluster.nodes,
        dir: opts.out.join("cluster"),
        binary: opts.binary.clone(),
        raft: exp.cluster.snapshot_every.map(|n| RaftConfig {
            snapshot_every_logs: n,
            // An experiment that asks for frequent snapshots gets them at any state size.
            snapshot_log_percent: 0,
            keep_logs_after_snapshot: n / 10,
            ..RaftConfig::default()
        }),
        data_fs_bytes: exp.data_fs_bytes(),
        ..ClusterOptions::default()
    })
    .await
    .map_err(|e| format!("starting the cluster: {e}"))
}

/// Re-runs the checkers on a saved run directory; rewrites `results.json` and the report.
pub fn recheck(dir: &Path, exp: Option<&Experiment>) -> Result<RunResults, String> {
    let history = History::read(&dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    let final_state: FinalState = read_json(&dir.join("final.json"))?;
    let previous = RunResults::read(dir).ok();
    let checkers: Vec<String> = match exp {
        Some(e) => e.checkers(),
        None => match &previous {
            Some(p) => p
                .checks
                .iter()
                .map(|c| c.checker.clone())
                .filter(|c| check::CHECKERS.contains(&c.as_str()))
                .collect(),
            None => check::CHECKERS.iter().map(|s| s.to_string()).collect(),
        },
    };
    let coverage = Coverage {
        faults: fault_names(&history),
        min_ops_per_sec: exp.map(|e| e.min_ops_per_sec).unwrap_or(0.0),
    };
    let mut checks = check::run(&checkers, &history, &final_state, &coverage);
    if let Some(p) = &previous {
        // The steady-state probe is a measurement of the run, not of the history.
        checks.extend(
            p.checks
                .iter()
                .filter(|c| c.checker == "steady_state")
                .cloned(),
        );
    }
    let mut results = previous.unwrap_or(RunResults {
        experiment: exp.map(|e| e.name.clone()).unwrap_or_default(),
        seed: exp.map(|e| e.seed).unwrap_or_default(),
        nodes: final_state.nodes.len() as u64,
        started_unix_ms: 0,
        duration_ms: 0,
        verdict: Verdict::Unknown,
        aborted: None,
        checks: Vec::new(),
    });
    results.verdict = worst(&checks);
    results.checks = checks;
    write_json(&dir.join("results.json"), &results)?;
    crate::report::write(dir, &results, &history).map_err(|e| format!("report.html: {e}"))?;
    Ok(results)
}

fn fault_names(history: &History) -> Vec<String> {
    let mut names: Vec<String> = history
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Nemesis { fault, .. } => Some(fault.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Follows the plan as a timeline of starts and heals, so fixed faults may overlap (a
/// fail point armed while a partition holds). Returns why the run was aborted, if it was.
async fn follow_plan(
    exp: &Experiment,
    plan: &[PlannedFault],
    cluster: &mut ChaosCluster,
    nemesis: &mut Nemesis,
    recorder: &Recorder,
    load_started: Instant,
    say: &impl Fn(String),
) -> Option<String> {
    // (when, is_heal, index): heals sort before starts at the same instant.
    let mut timeline: Vec<(Duration, bool, usize)> = plan
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(p.at, false, i), (p.at + p.lasts, true, i)])
        .collect();
    timeline.sort_by_key(|(at, heal, i)| (*at, !*heal, *i));
    let mut active: BTreeMap<usize, crate::nemesis::Active> = BTreeMap::new();
    let mut aborted = None;
    for (at, heal, i) in timeline {
        let due = load_started + at;
        while aborted.is_none() && Instant::now() < due {
            sleep_until((Instant::now() + Duration::from_millis(500)).min(due)).await;
            if !active.is_empty() {
                aborted = abort_reason(exp, nemesis, recorder);
            }
        }
        if aborted.is_some() {
            break;
        }
        let name = plan[i].fault.name();
        if heal {
            if let Some(a) = active.remove(&i) {
                nemesis.heal(cluster, a).await;
                say(format!("healed {name}"));
            }
        } else {
            match nemesis.inject(cluster, &plan[i].fault).await {
                Ok(a) => {
                    say(format!("{name} for {:?}", plan[i].lasts));
                    active.insert(i, a);
                }
                Err(e) => say(format!("could not inject {name}: {e}")),
            }
        }
    }
    // Heal what is still active, newest first.
    while let Some((_, a)) = active.pop_last() {
        nemesis.heal(cluster, a).await;
    }
    aborted
}

fn abort_reason(exp: &Experiment, nemesis: &Nemesis, recorder: &Recorder) -> Option<String> {
    if nemesis.crashes > exp.abort.max_crashes {
        return Some(format!(
            "nodes crashed {} times (at most {} allowed)",
            nemesis.crashes, exp.abort.max_crashes
        ));
    }
    if exp.abort.ok_ratio_below > 0.0 {
        let r = ok_ratio(&recorder.history(), recorder.now_ns(), exp.abort.window);
        if r.is_some_and(|r| r < exp.abort.ok_ratio_below) {
            return Some(format!(
                "the ok ratio fell to {} (abort below {:.2})",
                describe_ratio(r),
                exp.abort.ok_ratio_below
            ));
        }
    }
    None
}

/// The share of completions in the window ending at `now_ns` that were answers
/// (`ok`, or a definite refusal) rather than unknown outcomes or unavailability.
fn ok_ratio(history: &History, now_ns: u64, window: Duration) -> Option<f64> {
    let from = now_ns.saturating_sub(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
    let (mut good, mut all) = (0u64, 0u64);
    for e in history.events.iter().filter(|e| e.time_ns >= from) {
        match &e.kind {
            EventKind::Ok { .. } => {
                good += 1;
                all += 1;
            }
            EventKind::Fail { code, .. } => {
                all += 1;
                if !is_unavailability(code) {
                    good += 1;
                }
            }
            EventKind::Info { .. } => all += 1,
            _ => {}
        }
    }
    (all > 0).then(|| good as f64 / all as f64)
}

/// Codes that say "the service could not answer", not "the answer is no".
fn is_unavailability(code: &str) -> bool {
    matches!(
        code,
        "KMSInternalException"
            | "DependencyTimeoutException"
            | "ServiceUnavailableException"
            | "ThrottlingException"
    ) || code.starts_with("Transport")
        || code.starts_with("Timeout")
        || code.contains("Unavailable")
}

fn describe_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{:.1}% answered", r * 100.0),
        None => "no operations completed".into(),
    }
}

async fn probe_after(
    workload: &Arc<Workload>,
    recorder: &Recorder,
    window: Duration,
) -> Option<f64> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let w = workload.clone();
    let task = tokio::spawn(async move { w.run(rx).await });
    tokio::time::sleep(window).await;
    let r = ok_ratio(&recorder.history(), recorder.now_ns(), window);
    let _ = tx.send(true);
    let _ = task.await;
    r
}

fn steady_state_result(exp: &Experiment, before: Option<f64>, after: Option<f64>) -> CheckResult {
    let need = exp.steady_state.min_ok_ratio;
    let holds = |r: Option<f64>| r.is_some_and(|r| r >= need);
    let details = vec![
        format!("before the faults: {}", describe_ratio(before)),
        format!("after healing: {}", describe_ratio(after)),
        format!("at least {:.1}% needed", need * 100.0),
    ];
    let verdict = if !holds(before) {
        Verdict::Unknown
    } else if !holds(after) {
        Verdict::Violation
    } else {
        Verdict::Pass
    };
    CheckResult {
        checker: "steady_state".into(),
        verdict,
        details,
    }
}

/// One write after healing, recorded in the history like any other operation: it
/// proves the healed cluster takes writes.
///
/// The writes get 30 s from the moment a key to write to is found, not from the heal:
/// finding one describes the keys one by one, which after a long run (many keys pending
/// deletion, a loaded machine) is the harness's cost, not the cluster's.
async fn write_after_heal(
    client: &Client,
    recorder: &Recorder,
    healed_at: Instant,
) -> WriteAfterHeal {
    let mut last_error = None;
    let mut process = 1_000_000;
    // A key whose state takes a description change (not one pending deletion).
    let mut key_id = None;
    match workload::list_all_keys(client).await {
        Ok(ids) => {
            for id in ids {
                match client.describe_key(&id).await {
                    Ok(m) if m.key_state == "Enabled" || m.key_state == "Disabled" => {
                        key_id = Some(id);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => last_error = Some(e.to_string()),
                }
            }
        }
        Err(e) => last_error = Some(e.to_string()),
    }
    let Some(key_id) = key_id else {
        return WriteAfterHeal {
            ok: false,
            millis: healed_at.elapsed().as_millis() as u64,
            error: Some(last_error.unwrap_or_else(|| "no key to write to".into())),
        };
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tag = format!("after-heal-{process}");
        recorder.record(EventKind::Invoke {
            process,
            node: 0,
            op: Op::UpdateDescription {
                tag: tag.clone(),
                key_id: key_id.clone(),
            },
        });
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.update_key_description(&key_id, &tag),
        )
        .await
        {
            Ok(Ok(_)) => {
                recorder.record(EventKind::Ok {
                    process,
                    value: Value::Done,
                });
                return WriteAfterHeal {
                    ok: true,
                    millis: healed_at.elapsed().as_millis() as u64,
                    error: None,
                };
            }
            Ok(Err(e)) if !e.is_outcome_unknown() => {
                recorder.record(EventKind::Fail {
                    process,
                    code: e
                        .code()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_else(|| format!("{:?}", e.kind())),
                    message: e.to_string(),
                });
                last_error = Some(e.to_string());
            }
            other => {
                let error = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer within 5 s".into(),
                };
                recorder.record(EventKind::Info {
                    process,
                    error: error.clone(),
                });
                last_error = Some(error);
            }
        }
        process += 1;
        if Instant::now() + Duration::from_millis(200) >= deadline {
            return WriteAfterHeal {
                ok: false,
                millis: healed_at.elapsed().as_millis() as u64,
                error: last_error,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every node's view through a client pinned to it.
///
/// Reading is itself audited (and so replicated), so the log keeps growing while the
/// nodes are read one after another. So: the applied indexes come from one cluster
/// status in which every member reports the same index (taken after the cluster
/// converged), and the audit logs are compared at the newest sequence every node had
/// when it was read, with each node's hash at that sequence.
async fn read_final(cluster: &ChaosCluster, run_id: &str) -> FinalState {
    let applied = converged_applied(cluster, Duration::from_secs(30)).await;
    let mut nodes = Vec::new();
    let mut audits = Vec::new();
    for id in cluster.ids() {
        let read = match cluster.client_of(id) {
            Ok(c) => read_node(id, &c, run_id).await.map(|(n, a)| (n, a, c)),
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok((mut node, events, client)) => {
                if let Some(a) = applied.get(&id) {
                    node.applied_index = *a;
                }
                audits.push((nodes.len(), events, client));
                nodes.push(node);
            }
            Err(e) => nodes.push(NodeFinal {
                id,
                error: Some(e),
                ..NodeFinal::default()
            }),
        }
    }
    // The newest sequence every answering node had.
    let common = audits
        .iter()
        .map(|(_, events, _)| events.last().map(|e| e.sequence).unwrap_or_default())
        .min()
        .unwrap_or_default();
    for (i, events, client) in audits {
        match client.audit_verify(common).await {
            Ok(v) => {
                nodes[i].audit = FinalAudit {
                    chain_ok: v.ok,
                    first_bad_sequence: v.first_bad_sequence,
                    head_sequence: common,
                    head_hash: v.hash_at_sequence,
                    events: events
                        .into_iter()
                        .filter(|e| e.sequence <= common)
                        .collect(),
                };
            }
            Err(e) => nodes[i].error = Some(format!("audit verify: {e}")),
        }
    }
    FinalState {
        nodes,
        ..FinalState::default()
    }
}

/// Each member's applied index from one cluster status in which they all agree (or the
/// last status seen, if they never did before the deadline).
async fn converged_applied(cluster: &ChaosCluster, timeout: Duration) -> BTreeMap<u64, u64> {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    while Instant::now() < deadline {
        if let Ok(c) = cluster.client() {
            if let Ok(status) = c.cluster_status().await {
                last = status
                    .members
                    .iter()
                    .filter(|m| m.reachable)
                    .map(|m| (m.id, m.last_applied))
                    .collect();
                let values: std::collections::BTreeSet<u64> = last.values().copied().collect();
                if last.len() == cluster.ids().len() && values.len() == 1 {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn read_node(
    id: u64,
    c: &Client,
    run_id: &str,
) -> Result<(NodeFinal, Vec<AuditEntry>), String> {
    let status = c.cluster_status().await.map_err(|e| e.to_string())?;
    let applied = status
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.last_applied)
        .unwrap_or_default();
    let mut keys = BTreeMap::new();
    for key_id in workload::list_all_keys(c)
        .await
        .map_err(|e| e.to_string())?
    {
        let meta = c.describe_key(&key_id).await.map_err(|e| e.to_string())?;
        keys.insert(
            key_id,
            FinalKey {
                state: meta.key_state,
                description: meta.description,
            },
        );
    }
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = c
            .audit_query(keyraft_client::types::AuditQueryRequest {
                from_sequence: from,
                limit: 1000,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        for text in &page.events_json {
            let json: Json = serde_json::from_str(text).map_err(|e| e.to_string())?;
            events.push(audit_entry(&json, run_id));
        }
        if page.next_sequence == 0 || page.next_sequence <= from {
            break;
        }
        from = page.next_sequence;
    }
    let node = NodeFinal {
        id,
        error: None,
        leader: status.leader,
        applied_index: applied,
        keys,
        audit: FinalAudit::default(),
    };
    Ok((node, events))
}

/// The parts of a CloudTrail-shaped event the checkers use.
fn audit_entry(e: &Json, run_id: &str) -> AuditEntry {
    let s = |v: &Json| v.as_str().unwrap_or_default().to_string();
    let params = &e["requestParameters"];
    let event_name = s(&e["eventName"]);
    let request_id = s(&e["requestID"]);
    let key_id = {
        let raw = s(&params["keyId"]);
        let raw = if raw.is_empty() {
            e["resources"]
                .as_array()
                .and_then(|r| r.first())
                .map(|r| s(&r["ARN"]))
                .unwrap_or_default()
        } else {
            raw
        };
        raw.rsplit("key/").next().unwrap_or_default().to_string()
    };
    let tag = if request_id.starts_with(run_id) {
        Some(request_id)
    } else if let Some(t) = params["encryptionContext"][TAG_CONTEXT_KEY].as_str() {
        Some(t.to_string())
    } else if event_name == "UpdateKeyDescription" {
        params["description"].as_str().map(str::to_string)
    } else {
        None
    };
    AuditEntry {
        sequence: e["sequence"].as_u64().unwrap_or_default(),
        event_name,
        key_id,
        error_code: s(&e["errorCode"]),
        tag,
    }
}

/// Decrypts every acknowledged ciphertext again (16 at a time).
async fn redecrypt(client: &Client, history: &History) -> BTreeMap<String, Redecrypt> {
    let sealed: Vec<(String, String, Vec<u8>)> = history
        .operations()
        .into_iter()
        .filter_map(|op| {
            let (tag, key_id) = match &op.op {
                Op::Encrypt { tag, key_id, .. } | Op::GenerateDataKey { tag, key_id } => {
                    (tag.clone(), key_id.clone())
                }
                _ => return None,
            };
            let Outcome::Ok(Value::Ciphertext { ciphertext, .. }) = &op.outcome else {
                return None;
            };
            let blob = base64::engine::general_purpose::STANDARD
                .decode(ciphertext)
                .ok()?;
            Some((tag, key_id, blob))
        })
        .collect();
    futures::stream::iter(sealed)
        .map(|(tag, key_id, blob)| async move {
            let result = match client.decrypt(&blob, &context_of(&tag), None).await {
                Ok(r) => Redecrypt::Plaintext {
                    sha256: workload::sha256_hex(&r.plaintext),
                },
                Err(e) => Redecrypt::Refused {
                    code: e
                        .code()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_else(|| e.to_string()),
                    key_state: client
                        .describe_key(&key_id)
                        .await
                        .map(|m| m.key_state)
                        .unwrap_or_else(|e| format!("unknown ({e})")),
                },
            };
            (tag, result)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn conclude(
    exp: &Experiment,
    nodes: u64,
    started_unix_ms: u64,
    took: Duration,
    checks: Vec<CheckResult>,
    aborted: Option<String>,
) -> RunResults {
    let mut verdict = worst(&checks);
    if aborted.is_some() && verdict == Verdict::Pass {
        verdict = Verdict::Unknown;
    }
    RunResults {
        experiment: exp.name.clone(),
        seed: exp.seed,
        nodes,
        started_unix_ms,
        duration_ms: took.as_millis() as u64,
        verdict,
        aborted,
        checks,
    }
}

/// The worst verdict of a set of checks (`unknown` if there are none).
fn worst(checks: &[CheckResult]) -> Verdict {
    checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Unknown)
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
