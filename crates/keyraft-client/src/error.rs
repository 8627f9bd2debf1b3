//! # Errors a call can end with
//!
//! The service's errors arrive as [`ErrorCode`]s — the same stable, AWS-named codes the
//! server uses, mapped back from the one wire table in `keyraft-proto` and never
//! guessed from message text. Everything that is not an answer from a Keyraft handler
//! (a refused connection, a reset stream, a node that stopped answering, a deadline
//! that passed) is a transport error. [`Error::kind`] gives the class as a `Copy` value
//! to match on, and each error says whether trying again may help
//! ([`Error::is_retryable`]) and whether a mutation that failed with it may still have
//! taken effect ([`Error::is_outcome_unknown`]).

use keyraft_types::{ErrorCode, KmsError};

/// What can go wrong in a call.
///
/// ```
/// use keyraft_client::{Error, ErrorCode, ErrorKind, KmsError};
/// let e = Error::Service(KmsError::new(ErrorCode::Disabled, "key is disabled"));
/// assert_eq!(e.code(), Some(ErrorCode::Disabled));
/// assert_eq!(e.kind(), ErrorKind::Service(ErrorCode::Disabled));
/// assert!(!e.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service answered with an error code.
    #[error("{0}")]
    Service(KmsError),
    /// No endpoint could be reached, or the last attempt failed in transport, before the
    /// deadline (or the client's retry budget ran out). For a mutation the outcome is
    /// unknown: it may have taken effect. Retrying it through `create_key_with` (or any
    /// call that takes a request) with the same request id is safe.
    #[error("transport: {0}")]
    Transport(String),
    /// The client is misconfigured (no endpoints, no credentials, a malformed profile
    /// file, an endpoint that serves another region than the one configured).
    #[error("configuration: {0}")]
    Config(String),
}

/// The class of an [`Error`], as a small `Copy` value to match on.
///
/// ```
/// use keyraft_client::{Error, ErrorCode, ErrorKind};
/// fn advice(e: &Error) -> &'static str {
///     match e.kind() {
///         ErrorKind::Service(ErrorCode::NotFound) => "no such key",
///         ErrorKind::Service(ErrorCode::Disabled) => "enable the key first",
///         ErrorKind::Service(ErrorCode::LimitExceeded) => "ask for a higher quota",
///         ErrorKind::Service(ErrorCode::AccessDenied) => "not allowed",
///         ErrorKind::Service(_) => "the service refused",
///         ErrorKind::Transport => "the cluster could not be reached",
///         ErrorKind::Config => "fix the configuration",
///     }
/// }
/// assert_eq!(advice(&Error::Transport("down".into())), "the cluster could not be reached");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The service answered with this code.
    Service(ErrorCode),
    /// No answer from the service (see [`Error::Transport`]).
    Transport,
    /// The client is misconfigured (see [`Error::Config`]).
    Config,
}

impl ErrorKind {
    /// Whether trying the same call again later may succeed without changing anything.
    /// The retryable service codes are `NotLeaderException`,
    /// `DependencyTimeoutException`, `ThrottlingException`, `KeyUnavailableException`
    /// and `KMSInternalException`; transport errors are retryable; configuration errors
    /// are not.
    ///
    /// ```
    /// use keyraft_client::{ErrorCode, ErrorKind};
    /// assert!(ErrorKind::Service(ErrorCode::Throttling).is_retryable());
    /// assert!(!ErrorKind::Service(ErrorCode::AccessDenied).is_retryable());
    /// assert!(ErrorKind::Transport.is_retryable());
    /// ```
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::Service(code) => code.is_retryable(),
            ErrorKind::Transport => true,
            ErrorKind::Config => false,
        }
    }

    /// Whether a *mutation* that failed with this may nevertheless have taken effect:
    /// transport errors, `DependencyTimeoutException` (the cluster could not confirm the
    /// commit in time) and `KMSInternalException`. Every other answer means it did not.
    ///
    /// ```
    /// use keyraft_client::{ErrorCode, ErrorKind};
    /// assert!(ErrorKind::Transport.is_outcome_unknown());
    /// assert!(ErrorKind::Service(ErrorCode::DependencyTimeout).is_outcome_unknown());
    /// assert!(!ErrorKind::Service(ErrorCode::LimitExceeded).is_outcome_unknown());
    /// ```
    pub fn is_outcome_unknown(self) -> bool {
        matches!(
            self,
            ErrorKind::Transport
                | ErrorKind::Service(ErrorCode::DependencyTimeout)
                | ErrorKind::Service(ErrorCode::Internal)
        )
    }
}

impl Error {
    /// The service's error code, if the service answered.
    ///
    /// ```
    /// use keyraft_client::{Error, ErrorCode, KmsError};
    /// assert_eq!(Error::Service(KmsError::key_not_found("k")).code(), Some(ErrorCode::NotFound));
    /// assert_eq!(Error::Transport("reset".into()).code(), None);
    /// ```
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Service(e) => Some(e.code),
            _ => None,
        }
    }

    /// The class of the error.
    ///
    /// ```
    /// use keyraft_client::{Error, ErrorKind};
    /// assert_eq!(Error::Config("no endpoints".into()).kind(), ErrorKind::Config);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Service(e) => ErrorKind::Service(e.code),
            Error::Transport(_) => ErrorKind::Transport,
            Error::Config(_) => ErrorKind::Config,
        }
    }

    /// Whether trying again later may succeed without changing anything (see
    /// [`ErrorKind::is_retryable`]). The client has already retried such errors until
    /// the call's deadline or its retry budget ran out.
    ///
    /// ```
    /// use keyraft_client::{Error, ErrorCode, KmsError};
    /// assert!(Error::Transport("connection refused".into()).is_retryable());
    /// assert!(!Error::Service(KmsError::new(ErrorCode::Validation, "bad")).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }

    /// Whether a mutation that failed with this may still have taken effect (see
    /// [`ErrorKind::is_outcome_unknown`]).
    ///
    /// ```
    /// use keyraft_client::Error;
    /// assert!(Error::Transport("stream reset".into()).is_outcome_unknown());
    /// ```
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind().is_outcome_unknown()
    }
}
