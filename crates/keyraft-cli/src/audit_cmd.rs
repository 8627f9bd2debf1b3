//! `keyraft audit ...`: tail (and follow), query, verify (one node or all), export.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use keyraft_client::types::AuditQueryRequest;
use keyraft_client::{Client, Error};

use crate::commands::{client, parse_time};
use crate::Connection;

/// The audit subcommands.
#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// The newest audit events (CloudTrail-like JSON); `--follow` then streams new ones
    /// as JSON Lines until interrupted.
    Tail {
        /// How many (1-1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
    },
    /// Events matching every given filter, oldest first.
    Query {
        /// Event name, e.g. Decrypt.
        #[arg(long)]
        event_name: Option<String>,
        /// Key id or key ARN.
        #[arg(long)]
        key_id: Option<String>,
        /// The caller's ARN.
        #[arg(long)]
        principal: Option<String>,
        /// From (epoch seconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until (epoch seconds or RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// success or failure.
        #[arg(long)]
        outcome: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        max_events: usize,
    },
    /// Verify the hash chain of the node reached, or of every node (same chain on all).
    Verify {
        /// Every member of the cluster, compared at the newest event all of them hold.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Delete exported events older than the retention period; a signed checkpoint
    /// keeps the rest of the chain verifiable (the region's administrator only).
    Prune {
        /// Keep events younger than this many days.
        #[arg(long)]
        retention_days: u32,
    },
    /// Write events as JSON Lines (one CloudTrail-shaped record a line), for a SIEM.
    Export {
        /// The file; appended to when resuming with --from.
        #[arg(long)]
        out: PathBuf,
        /// Resume after this event (its eventID or sequence number).
        #[arg(long)]
        from: Option<String>,
    },
}

fn parse(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or(Value::String(e.clone())))
        .collect()
}

/// The sequence after which an export resumes.
async fn resume_point(c: &Client, from: &str) -> Result<u64, Error> {
    if let Ok(seq) = from.parse::<u64>() {
        return Ok(seq);
    }
    let page = c
        .audit_query(AuditQueryRequest {
            event_id: from.to_string(),
            limit: 1,
            ..Default::default()
        })
        .await?;
    // The scan is bounded per answer: keep going until the event or the head.
    let mut page = page;
    loop {
        if let Some(e) = parse(&page.events_json).first() {
            return e["sequence"]
                .as_u64()
                .ok_or_else(|| Error::Config("the event has no sequence".into()));
        }
        if page.next_sequence == 0 {
            return Err(Error::Config(format!("no event with eventID {from}")));
        }
        page = c
            .audit_query(AuditQueryRequest {
                event_id: from.to_string(),
                limit: 1,
                from_sequence: page.next_sequence,
                ..Default::default()
            })
            .await?;
    }
}

pub(crate) async fn audit(conn: &Connection, cmd: AuditCommand) -> Result<Value, Error> {
    let c = client(conn)?;
    match cmd {
        AuditCommand::Tail { limit, follow } => {
            let r = c.audit_tail(limit).await?;
            if !follow {
                return Ok(json!({
                    "Events": parse(&r.events_json),
                    "ChainVerified": r.chain_ok,
                    "HeadSequence": r.head_sequence,
                    "HeadHash": r.head_hash,
                }));
            }
            let mut out = std::io::stdout().lock();
            for e in &r.events_json {
                let _ = writeln!(out, "{e}");
            }
            drop(out);
            let mut next = r.head_sequence + 1;
            loop {
                let page = c
                    .audit_query(AuditQueryRequest {
                        from_sequence: next,
                        limit: 1000,
                        ..Default::default()
                    })
                    .await?;
                let mut out = std::io::stdout().lock();
                for e in &page.events_json {
                    let _ = writeln!(out, "{e}");
                }
                let _ = out.flush();
                next = page.head_sequence.max(next.saturating_sub(1)) + 1;
                if page.next_sequence != 0 {
                    next = page.next_sequence;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        AuditCommand::Query {
            event_name,
            key_id,
            principal,
            since,
            until,
            outcome,
            max_events,
        } => {
            let mut req = AuditQueryRequest {
                event_name: event_name.unwrap_or_default(),
                key_id: key_id.unwrap_or_default(),
                principal_arn: principal.unwrap_or_default(),
                start_time: since.as_deref().map(parse_time).transpose()?.unwrap_or(0),
                end_time: until.as_deref().map(parse_time).transpose()?.unwrap_or(0),
                outcome: outcome.unwrap_or_default(),
                limit: 1000,
                ..Default::default()
            };
            let mut events = Vec::new();
            loop {
                let page = c.audit_query(req.clone()).await?;
                events.extend(parse(&page.events_json));
                if page.next_sequence == 0 || events.len() >= max_events {
                    break;
                }
                req.from_sequence = page.next_sequence;
            }
            events.truncate(max_events);
            Ok(json!({"Events": events}))
        }
        AuditCommand::Verify { all_nodes } => {
            let clients: Vec<(String, Client)> = if all_nodes {
                let status = c.cluster_status().await?;
                let mut v = Vec::new();
                for m in status.members {
                    let mut config = c.config().clone();
                    config.endpoints = vec![m.endpoint.clone()];
                    v.push((m.endpoint, Client::new(config)?));
                }
                v
            } else {
                vec![(String::from("reached"), c)]
            };
            let mut heads = Vec::new();
            for (ep, n) in &clients {
                heads.push((ep, n.audit_verify(0).await?));
            }
            let common = heads
                .iter()
                .map(|(_, h)| h.head_sequence)
                .min()
                .unwrap_or(0);
            let mut nodes = Vec::new();
            let mut hashes = std::collections::BTreeSet::new();
            let mut all_ok = true;
            for (ep, n) in &clients {
                let r = n.audit_verify(common).await?;
                all_ok &= r.ok;
                hashes.insert(r.hash_at_sequence.clone());
                nodes.push(json!({
                    "NodeId": r.node_id,
                    "Endpoint": ep,
                    "ChainVerified": r.ok,
                    "FirstBadSequence": (r.first_bad_sequence != 0).then_some(r.first_bad_sequence),
                    "HeadSequence": r.head_sequence,
                    "HashAtCommonSequence": r.hash_at_sequence,
                }));
            }
            let same = hashes.len() <= 1;
            let v = json!({
                "Ok": all_ok && same,
                "CommonSequence": common,
                "SameChain": same,
                "Nodes": nodes,
            });
            if all_ok && same {
                Ok(v)
            } else {
                // Scripts rely on the exit status: print the finding, then fail.
                println!("{v}");
                std::process::exit(1);
            }
        }
        AuditCommand::Prune { retention_days } => {
            let mut total = 0;
            let mut through = 0;
            loop {
                let r = c.audit_prune(retention_days).await?;
                total += r.pruned;
                through = r.pruned_through.max(through);
                if r.pruned == 0 {
                    break;
                }
            }
            Ok(json!({"Pruned": total, "CheckpointSequence": through}))
        }
        AuditCommand::Export { out, from } => {
            let start = match &from {
                Some(f) => resume_point(&c, f).await? + 1,
                None => 1,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(from.is_some())
                .write(true)
                .truncate(from.is_none())
                .open(&out)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", out.display())))?;
            let mut w = std::io::BufWriter::new(file);
            let mut req = AuditQueryRequest {
                from_sequence: start,
                limit: 1000,
                ..Default::default()
            };
            let mut exported = 0u64;
            let mut last = Value::Null;
            loop {
                let page = c.audit_query(req.clone()).await?;
                for e in &page.events_json {
                    writeln!(w, "{e}").map_err(|e| Error::Config(format!("write: {e}")))?;
                    exported += 1;
                }
                if let Some(e) = page.events_json.last() {
                    last = serde_json::from_str(e).unwrap_or(Value::Null);
                }
                if page.next_sequence == 0 {
                    break;
                }
                req.from_sequence = page.next_sequence;
            }
            w.flush()
                .and_then(|_| w.get_ref().sync_all())
                .map_err(|e| Error::Config(format!("write {}: {e}", out.display())))?;
            // Once the file is durable, a full export (the administrator's) is recorded,
            // which is what allows pruning; anyone else's partial view is not.
            let mut marked = false;
            if let Some(seq) = last["sequence"].as_u64() {
                marked = c.audit_mark_exported(seq).await.is_ok();
            }
            Ok(json!({
                "Exported": exported,
                "LastEventId": last["eventID"],
                "LastSequence": last["sequence"],
                "MarkedExported": marked,
            }))
        }
    }
}
