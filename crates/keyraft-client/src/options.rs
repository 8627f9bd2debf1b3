//! # Tuning a client: routing, health and retries
//!
//! [`ClientOptions`] holds what an application may want to tune beyond *where* the
//! cluster is and *who* is calling (that is [`ClientConfig`](crate::ClientConfig)).
//! The defaults suit a client in the same data centre as the cluster; every duration
//! is a plain field so a test or a far-away client can change it.

use std::time::Duration;

/// How calls that any node can serve (cryptography, reads) are spread.
///
/// ```
/// use keyraft_client::{Balance, ClientOptions};
/// let mut options = ClientOptions::default();
/// options.balance = Balance::RoundRobin;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The next healthy node in turn.
    RoundRobin,
    /// The healthy node with the fewest calls in flight from this client (ties in
    /// turn), so a slow node gets less work.
    #[default]
    LeastOutstanding,
}

/// How a client retries.
///
/// A call is retried — until its deadline — after transport failures and after the
/// retryable service errors (`NotLeader`, `DependencyTimeout`, `Throttling`,
/// `KeyUnavailable`, `KMSInternal`), waiting an exponentially growing, jittered
/// backoff between attempts. Mutations are safe to retry because each carries one
/// request id for all its attempts.
///
/// A **retry budget** shared by all calls of a client bounds the extra load retries can
/// add: every call earns `budget_ratio` of a retry token, tokens also accrue at
/// `budget_floor_per_second`, at most `budget_max` are held (the client starts with
/// that many), and each retry spends one. Following a leader hint is not a retry.
/// When the budget is empty, a call fails with its last error instead of retrying, so
/// a cluster that is down does not receive a retry storm.
///
/// ```
/// use std::time::Duration;
/// use keyraft_client::RetryPolicy;
/// let mut retry = RetryPolicy::default();
/// retry.max_backoff = Duration::from_millis(200);
/// assert_eq!(retry.budget_ratio, 0.2);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// The first backoff (default 25 ms); each retry doubles it.
    pub initial_backoff: Duration,
    /// The largest backoff (default 1 s). The actual wait is drawn between half of
    /// the backoff and all of it.
    pub max_backoff: Duration,
    /// Retry tokens earned per call (default 0.2: retries add at most 20 %).
    pub budget_ratio: f64,
    /// Retry tokens earned per second regardless of traffic (default 10).
    pub budget_floor_per_second: f64,
    /// The most retry tokens held, and the starting balance (default 100).
    pub budget_max: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_floor_per_second: 10.0,
            budget_max: 100.0,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every call makes one attempt (leader hints are still
    /// followed).
    ///
    /// ```
    /// let retry = keyraft_client::RetryPolicy::none();
    /// assert_eq!(retry.budget_max, 0.0);
    /// ```
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            budget_ratio: 0.0,
            budget_floor_per_second: 0.0,
            budget_max: 0.0,
            ..RetryPolicy::default()
        }
    }
}

/// Routing, health checking, connection and retry settings of a client.
///
/// ```
/// use std::time::Duration;
/// use keyraft_client::{Client, ClientConfig, ClientOptions};
/// let mut options = ClientOptions::default();
/// options.refresh_interval = Duration::from_secs(5);
/// let config = ClientConfig::builder()
///     .endpoints(["http://127.0.0.1:7101"])
///     .credentials("AK", "secret")
///     .build_with(|_| None)?;
/// let client = Client::with_options(config, options)?;
/// # let _ = client;
/// # Ok::<(), keyraft_client::Error>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Whether the client discovers the cluster's members from its seed endpoints and
    /// spreads calls over them (default true, as [`Client::connect`](crate::Client::connect)
    /// uses). Off, it talks only to the configured endpoints, plus the leader a
    /// `NotLeader` answer names (see [`ClientOptions::pinned`]).
    pub discovery: bool,
    /// How often the view of the cluster is refreshed when nothing prompts it
    /// (default 10 s). Leader hints and connection failures prompt a refresh at once.
    pub refresh_interval: Duration,
    /// How cryptographic calls and reads are spread.
    pub balance: Balance,
    /// How calls are retried.
    pub retry: RetryPolicy,
    /// How long a node that failed is left out at first (default 250 ms); each further
    /// failure doubles it.
    pub bench_initial: Duration,
    /// The longest a failed node is left out before it is tried again (default 1 s).
    pub bench_max: Duration,
    /// TCP connect timeout (default 500 ms).
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval on every connection, idle or not (default 1 s).
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is declared
    /// dead and its calls fail over (default 1 s).
    pub keepalive_timeout: Duration,
    /// The longest one attempt may take (default 15 s, above the server's 10 s commit
    /// timeout); the call's deadline bounds it too.
    pub attempt_timeout: Duration,
    /// How long a discovery request or a health probe of a benched node may take
    /// (default 2 s).
    pub probe_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            discovery: true,
            refresh_interval: Duration::from_secs(10),
            balance: Balance::default(),
            retry: RetryPolicy::default(),
            bench_initial: Duration::from_millis(250),
            bench_max: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

impl ClientOptions {
    /// Options for a client that addresses exactly the configured endpoints: no
    /// discovery, no background task. What [`Client::new`](crate::Client::new) uses, for
    /// tools and tests that must reach one given node.
    ///
    /// ```
    /// let options = keyraft_client::ClientOptions::pinned();
    /// assert!(!options.discovery);
    /// ```
    pub fn pinned() -> ClientOptions {
        ClientOptions {
            discovery: false,
            ..ClientOptions::default()
        }
    }
}
