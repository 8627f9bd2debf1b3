//! # One logical call: sign, route, send, classify, retry
//!
//! [`Client::call`] is the loop every API method runs. Per attempt it signs the
//! request afresh (timestamp and nonce; the body digest and, for mutations, the request
//! id stay the same), asks the view for a node (`routing.rs`), sends with a timeout of
//! at most `attempt_timeout` and the time left, and classifies the outcome:
//!
//! | outcome | what the client does |
//! |---|---|
//! | a response | the node is healthy; return it |
//! | `NotLeader` with a new leader hint | remember the leader, resend at once (not a retry) |
//! | `NotLeader` without one | forget the leader, refresh the view, retry |
//! | `KeyUnavailable` | bench the node (its HSM lacks the domain key), retry elsewhere |
//! | another retryable code | retry (the node itself is fine) |
//! | a non-retryable code | return it |
//! | no Keyraft code (refused, reset, keepalive timeout) | bench the node, replace its channel, refresh, retry |
//! | a gRPC status no retry can fix (`Unimplemented`, ...) | return it as a transport error |
//!
//! A retry waits a jittered, doubling backoff and spends a token of the client's retry
//! budget; no time or no token left ends the call with the last error. Calls on
//! [`Route::Seeds`] are neither idempotent nor deduplicated, so they are retried only
//! when the request surely never reached a node (the connection was refused).

use std::error::Error as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use keyraft_proto::{auth, error_from_status, leader_hint};
use keyraft_types::ErrorCode;

use crate::options::ClientOptions;
use crate::retry::{jittered, RetryBudget};
use crate::routing::{InFlight, Route, View};
use crate::{Client, ClientConfig, Error};

/// Consecutive leader hints followed within one call before backing off.
const MAX_REDIRECTS: u32 = 5;

/// What a client shares among its clones and its background task.
pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) options: ClientOptions,
    pub(crate) view: Mutex<View>,
    pub(crate) budget: RetryBudget,
    /// Wakes the background task (a refresh was asked for, or a node was benched).
    pub(crate) wake: Arc<Notify>,
    pub(crate) refresh_wanted: AtomicBool,
    /// Dropped with the client; the background task stops when it sees that.
    pub(crate) stop: watch::Sender<()>,
    pub(crate) refresher: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn new(config: ClientConfig, options: ClientOptions) -> Result<Inner, Error> {
        let view = View::new(&config.endpoints, &options)?;
        let (stop, _) = watch::channel(());
        Ok(Inner {
            budget: RetryBudget::new(&options.retry),
            view: Mutex::new(view),
            wake: Arc::new(Notify::new()),
            refresh_wanted: AtomicBool::new(false),
            stop,
            refresher: Mutex::new(None),
            config,
            options,
        })
    }

    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request with fresh signature headers.
    pub(crate) fn sign<Req>(
        &self,
        method: &str,
        req: Req,
        digest: &[u8; 32],
    ) -> Result<Request<Req>, Error> {
        let mut request = Request::new(req);
        let nonce = hex::encode(rand::thread_rng().gen::<[u8; 16]>());
        auth::attach(
            request.metadata_mut(),
            &self.config.access_key_id,
            self.config.secret_access_key.as_bytes(),
            method,
            now_ms(),
            &nonce,
            digest,
        )
        .map_err(Error::Service)?;
        if let Ok(ua) = self.config.user_agent.parse() {
            request.metadata_mut().insert("user-agent", ua);
        }
        Ok(request)
    }

    /// Asks the background task to refresh the view soon.
    pub(crate) fn request_refresh(&self) {
        if self.options.discovery {
            self.refresh_wanted.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// Wakes the background task to reconsider its schedule (a node was benched).
    pub(crate) fn poke(&self) {
        if self.options.discovery {
            self.wake.notify_one();
        }
    }
}

/// The least time one attempt of a membership change may take. The server waits up to a
/// minute for a new node to catch up and receive the domain key, and 20 s for the change
/// to commit; an attempt cut off sooner was sent again while the first still ran, and
/// the retry met only `ConflictException` (seen adding a node to an 850 MB state).
pub(crate) const MEMBERSHIP_ATTEMPT: Duration = Duration::from_secs(90);

impl Client {
    /// Runs one logical call with signing, routing and retries (see the module docs).
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        route: Route,
        method: &'static str,
        req: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let attempt = self.inner.options.attempt_timeout;
        self.call_with_attempts_of(attempt, route, method, req, send)
            .await
    }

    /// [`Client::call`] with attempts of up to `attempt_timeout` each, for calls the
    /// server may take longer to answer than the options' `attempt_timeout`.
    pub(crate) async fn call_with_attempts_of<Req, Resp, F, Fut>(
        &self,
        attempt_timeout: Duration,
        route: Route,
        method: &'static str,
        req: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Clone,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let inner = &self.inner;
        inner.ensure_refresher();
        if let Some(mismatch) = inner.view().region_mismatch.clone() {
            return Err(Error::Config(mismatch));
        }
        let options = &inner.options;
        let deadline = Instant::now() + self.timeout;
        let digest = auth::message_digest(&req);
        inner.budget.deposit();
        let mut backoff = options.retry.initial_backoff;
        let mut redirects = 0;
        loop {
            let target = {
                let mut view = inner.view();
                let i = view
                    .choose(route, Instant::now(), options)
                    .ok_or_else(|| Error::Config("no endpoint to send to".into()))?;
                view.target(i)
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = left.min(attempt_timeout);
            let mut request = inner.sign(method, req.clone(), &digest)?;
            request.set_timeout(limit);
            let in_flight = InFlight::start(&target.stats);
            let outcome = tokio::time::timeout(limit, send(target.channel.clone(), request)).await;
            drop(in_flight);
            let now = Instant::now();

            let (error, retry) = match outcome {
                Ok(Ok(response)) => {
                    inner.view().mark_ok(&target.endpoint);
                    return Ok(response.into_inner());
                }
                Err(_elapsed) => {
                    let msg = format!("{}: no answer within {limit:?}", target.endpoint);
                    if limit < attempt_timeout {
                        // The call's own deadline ran out, not the node's patience.
                        return Err(Error::Transport(msg));
                    }
                    inner.view().mark_failed(
                        &target.endpoint,
                        target.generation,
                        false,
                        now,
                        options,
                    );
                    inner.request_refresh();
                    if route == Route::Seeds {
                        return Err(Error::Transport(format!("{msg}; {NOT_RETRIED}")));
                    }
                    (Error::Transport(msg), true)
                }
                Ok(Err(status)) => match error_from_status(&status) {
                    // An answer means the request reached a node: a call that is not
                    // idempotent is never sent again (see the table above).
                    Some(err) if route == Route::Seeds => return Err(Error::Service(err)),
                    Some(err) if err.code == ErrorCode::NotLeader => {
                        let hint = leader_hint(&status);
                        let mut view = inner.view();
                        view.mark_ok(&target.endpoint);
                        match hint.endpoint {
                            Some(ep) if ep != target.endpoint && redirects < MAX_REDIRECTS => {
                                tracing::debug!(leader = %ep, "following NotLeader hint");
                                view.learn_leader(&ep, hint.id, options);
                                redirects += 1;
                                (Error::Service(err), false)
                            }
                            _ => {
                                view.forget_leader();
                                drop(view);
                                inner.request_refresh();
                                (Error::Service(err), true)
                            }
                        }
                    }
                    Some(err) if err.code == ErrorCode::KeyUnavailable => {
                        inner.view().mark_failed(
                            &target.endpoint,
                            target.generation,
                            false,
                            now,
                            options,
                        );
                        inner.poke();
                        (Error::Service(err), true)
                    }
                    Some(err) => {
                        inner.view().mark_ok(&target.endpoint);
                        if !err.code.is_retryable() {
                            return Err(Error::Service(err));
                        }
                        (Error::Service(err), true)
                    }
                    None => {
                        let msg = format!("{}: {}", target.endpoint, describe(&status));
                        inner.view().mark_failed(
                            &target.endpoint,
                            target.generation,
                            true,
                            now,
                            options,
                        );
                        inner.request_refresh();
                        if !transport_retryable(status.code()) {
                            return Err(Error::Transport(msg));
                        }
                        if route == Route::Seeds && !never_sent(&status) {
                            return Err(Error::Transport(format!("{msg}; {NOT_RETRIED}")));
                        }
                        (Error::Transport(msg), true)
                    }
                },
            };
            if !retry {
                if Instant::now() >= deadline {
                    return Err(error);
                }
                continue;
            }
            let wait = jittered(backoff);
            if Instant::now() + wait > deadline {
                return Err(error);
            }
            if !inner.budget.withdraw() {
                return Err(match error {
                    Error::Transport(m) => Error::Transport(format!("{m}; retry budget exhausted")),
                    other => other,
                });
            }
            tracing::debug!(method, error = %error, ?wait, "retrying");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(options.retry.max_backoff);
        }
    }
}

const NOT_RETRIED: &str = "not retried, as the request may have reached the node";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// gRPC codes of a status without a Keyraft code that another attempt may fix.
pub(crate) fn transport_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
    )
}

/// Whether the connection was refused, so the request never reached the node.
pub(crate) fn never_sent(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// The status and the chain of its causes, for an error message.
pub(crate) fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    let mut depth = 0;
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keyraft_proto::v1::admin_service_client::AdminServiceClient;
    use keyraft_proto::v1::ClusterStatusRequest;
    use tonic::transport::Endpoint;

    use super::*;

    fn dead_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_background_task_ends_when_the_client_is_dropped() {
        let config = ClientConfig::builder()
            .endpoints([dead_endpoint()])
            .credentials("AK", "S")
            .timeout(Duration::from_millis(200))
            .build_with(|_| None)
            .unwrap();
        let client = Client::connect(config).unwrap();
        assert!(client.generate_random(1).await.is_err());
        let handle = client
            .inner
            .refresher
            .lock()
            .unwrap()
            .take()
            .expect("the first call started the task");
        assert!(!handle.is_finished());
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the task ends with the client")
            .unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_not_to_have_reached_the_node() {
        let channel = Endpoint::from_shared(dead_endpoint())
            .unwrap()
            .connect_lazy();
        let status = AdminServiceClient::new(channel)
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap_err();
        assert!(never_sent(&status), "{}", describe(&status));
        assert!(transport_retryable(status.code()));
        assert!(error_from_status(&status).is_none());
    }
}
