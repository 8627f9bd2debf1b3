//! # Keeping the view fresh: discovery and health probes
//!
//! Each client with discovery on owns one background task. It is spawned on the first
//! call (so a `Client` may be built outside a runtime, and a client used from a second
//! runtime after the first one ended gets a new task), holds only a `Weak` reference
//! to the client, and ends as soon as the client is dropped (the client owns the
//! sending half of a `watch` channel the task listens to).
//!
//! The task refreshes the view — one `ClusterStatus` call, to the leader first, then
//! to the other nodes, at most three tries of `probe_timeout` each — right after it
//! starts, every `refresh_interval`, and soon (at most every 200 ms) after a call saw
//! `NotLeader` without a usable hint or a transport failure. `ClusterStatus` is the
//! same call `keyraft cluster status` makes; every authenticated principal may make
//! it.
//!
//! The task also **probes benched nodes** when their bench ends, with the same call
//! addressed to that node: an answer brings the node back into rotation, a failure
//! benches it again for twice as long (up to `bench_max`). So a node that stopped
//! answering costs user calls nothing after the first failure (the keepalive ping
//! notices a silent connection within `keepalive_interval + keepalive_timeout`), and a
//! restarted or reachable-again node is back within about `bench_max`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use keyraft_proto::v1::admin_service_client::AdminServiceClient;
use keyraft_proto::v1::{ClusterStatusRequest, ClusterStatusResponse};
use keyraft_proto::{auth, error_from_status};
use keyraft_types::{ErrorCode, KmsError};

use crate::transport::{describe, Inner};
use crate::Error;

/// The shortest gap between two refreshes prompted by failures.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(200);
/// Nodes asked per refresh.
const REFRESH_TRIES: usize = 3;
const STATUS_METHOD: &str = "/keyraft.v1.AdminService/ClusterStatus";

/// Why asking a node for its status failed.
enum ProbeFailure {
    /// No answer: refused, reset, timed out.
    Silent(String),
    /// The node answered, but cannot serve (no quorum, no domain key, internal).
    Unready(KmsError),
    /// The node answered with an error that says nothing about its health (for
    /// example AccessDenied); it is alive, but gave no status.
    Refused(KmsError),
}

impl Inner {
    /// Starts the background task if discovery is on, a runtime is current, and no
    /// task is running.
    pub(crate) fn ensure_refresher(self: &Arc<Self>) {
        if !self.options.discovery {
            return;
        }
        let mut slot = self.refresher.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A task that ended with an earlier runtime took its probes with it.
        self.view().reset_probes();
        let task = refresher(
            Arc::downgrade(self),
            self.stop.subscribe(),
            self.wake.clone(),
        );
        *slot = Some(runtime.spawn(task));
    }

    /// Asks node `endpoint` for the cluster's status; records the node's health.
    async fn status_from(&self, endpoint: &str) -> Result<ClusterStatusResponse, ProbeFailure> {
        let target = {
            let mut view = self.view();
            let Some(i) = view.find(endpoint) else {
                return Err(ProbeFailure::Silent("no longer known".into()));
            };
            view.target(i)
        };
        let req = ClusterStatusRequest {};
        let digest = auth::message_digest(&req);
        let mut request = self
            .sign(STATUS_METHOD, req, &digest)
            .map_err(|e| ProbeFailure::Silent(e.to_string()))?;
        let limit = self.options.probe_timeout;
        request.set_timeout(limit);
        let mut admin = AdminServiceClient::new(target.channel.clone());
        let outcome = tokio::time::timeout(limit, admin.cluster_status(request)).await;
        let now = Instant::now();
        let failure = match outcome {
            Ok(Ok(resp)) => {
                self.view().mark_ok(endpoint);
                return Ok(resp.into_inner());
            }
            Err(_) => {
                self.view()
                    .mark_failed(endpoint, target.generation, false, now, &self.options);
                ProbeFailure::Silent(format!("no answer within {limit:?}"))
            }
            Ok(Err(status)) => match error_from_status(&status) {
                Some(e)
                    if matches!(
                        e.code,
                        ErrorCode::DependencyTimeout
                            | ErrorCode::KeyUnavailable
                            | ErrorCode::Internal
                    ) =>
                {
                    self.view()
                        .mark_failed(endpoint, target.generation, false, now, &self.options);
                    ProbeFailure::Unready(e)
                }
                Some(e) => {
                    self.view().mark_ok(endpoint);
                    ProbeFailure::Refused(e)
                }
                None => {
                    self.view()
                        .mark_failed(endpoint, target.generation, true, now, &self.options);
                    ProbeFailure::Silent(describe(&status))
                }
            },
        };
        Err(failure)
    }

    /// One refresh: asks up to three nodes, takes the first answer into the view.
    pub(crate) async fn refresh_once(&self) -> Result<ClusterStatusResponse, Error> {
        let order: Vec<String> = {
            let mut view = self.view();
            let order = view.refresh_order(Instant::now());
            order
                .into_iter()
                .map(|i| view.nodes[i].endpoint.clone())
                .collect()
        };
        let mut last = Error::Transport("no node to ask".into());
        for endpoint in order.into_iter().take(REFRESH_TRIES) {
            match self.status_from(&endpoint).await {
                Ok(status) => {
                    self.view()
                        .merge(&status, &self.config.region, Instant::now(), &self.options);
                    return Ok(status);
                }
                Err(ProbeFailure::Silent(m)) => {
                    last = Error::Transport(format!("{endpoint}: {m}"));
                }
                Err(ProbeFailure::Unready(e)) | Err(ProbeFailure::Refused(e)) => {
                    last = Error::Service(e);
                }
            }
        }
        tracing::debug!(error = %last, "cluster view refresh failed");
        Err(last)
    }

    /// Probes every benched node whose bench is over, each in its own task.
    fn start_probes(self: &Arc<Self>) {
        let due: Vec<String> = {
            let mut view = self.view();
            let due = view.due_for_probe(Instant::now());
            due.into_iter()
                .map(|i| view.nodes[i].endpoint.clone())
                .collect()
        };
        for endpoint in due {
            let inner = self.clone();
            tokio::spawn(async move {
                if let Ok(status) = inner.status_from(&endpoint).await {
                    tracing::debug!(node = %endpoint, "benched node answers again");
                    inner.view().merge(
                        &status,
                        &inner.config.region,
                        Instant::now(),
                        &inner.options,
                    );
                }
                inner.view().probe_done(&endpoint);
                inner.poke();
            });
        }
    }
}

/// The background task of one client.
async fn refresher(weak: Weak<Inner>, mut stop: watch::Receiver<()>, wake: Arc<Notify>) {
    let mut due = Instant::now();
    let mut last_refresh: Option<Instant> = None;
    loop {
        let next = {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            let wanted = inner.refresh_wanted.load(Ordering::Relaxed);
            let gap_over = last_refresh.is_none_or(|t| now >= t + MIN_REFRESH_GAP);
            if now >= due || (wanted && gap_over) {
                inner.refresh_wanted.store(false, Ordering::Relaxed);
                last_refresh = Some(now);
                let _ = inner.refresh_once().await;
                due = Instant::now() + inner.options.refresh_interval;
            }
            inner.start_probes();
            let mut next = due;
            if inner.refresh_wanted.load(Ordering::Relaxed) {
                if let Some(t) = last_refresh {
                    next = next.min(t + MIN_REFRESH_GAP);
                }
            }
            if let Some(t) = inner.view().next_probe_at() {
                next = next.min(t);
            }
            next
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = wake.notified() => {}
        }
    }
}
