//! Fail points: named places in a node where a fault can be injected at run time, the
//! way TiKV uses the [`fail`](https://docs.rs/fail) crate.
//!
//! Everything that *does* something is compiled only with the `failpoints` cargo
//! feature. Without it the checks below are empty inline functions and nothing else
//! exists: no registry, no environment variable, no cost.
//!
//! This module holds the catalogue of every point of a node ([`CATALOGUE`]: the log
//! store's and the state machine's here, and the request path's in `keyraft-server`), so
//! that one place can check a configuration, and the machinery both crates use to
//! evaluate a point. What each point means, and what its actions do there, is
//! documented in one table in `keyraft-server`'s `failpoints` module (and in the
//! README's "Fail points" section).
//!
//! # Actions
//!
//! Actions use `fail`'s syntax: `[p%][cnt*]task[(arg)]`, chained with `->`
//! (`1*return`, `50%return`, `panic`, `3*off->return`). Every point supports:
//!
//! - `off`: nothing happens;
//! - `return` (or `return(message)`): the point fails with the natural error of its
//!   spot (an I/O error in storage, an internal error in the request path);
//! - `panic`: the **process** crashes (it aborts, like `kill -9`: no destructor, no
//!   flush). A plain panic would only end the tokio task or thread it happens on, which
//!   is not a crash of the node; so a panic at a point is turned into an abort;
//! - `print` and `yield`, which change nothing observable.
//!
//! `sleep(ms)`, `delay(ms)` and `pause` block the thread that reaches the point. Most
//! points are reached on a tokio worker, where blocking would stall unrelated requests
//! and Raft's own tasks, so they are refused there. They are accepted only at the points
//! on the log store's sync thread ([`Point::blocking_allowed`]), where they model a slow
//! or hung disk: every append and vote then waits, and no tokio worker is blocked.
//! (`fail::cfg` called directly, bypassing `set`, is not checked.)

/// The log store is about to write appended entries to its segment (`LogStore::append`, on
/// openraft's storage task).
pub const LOG_BEFORE_APPEND: &str = "raft::log::before_append";
/// The log store's sync thread is about to sync the log (one group commit: every append,
/// vote, truncation and purge queued since the last one).
pub const LOG_BEFORE_FSYNC: &str = "raft::log::before_fsync";
/// The log store's sync thread synced the log, and has not yet told openraft (the
/// entries are durable but not acknowledged).
pub const LOG_AFTER_FSYNC: &str = "raft::log::after_fsync";
/// The state machine is about to apply a batch of committed entries.
pub const BEFORE_APPLY: &str = "raft::before_apply";
/// The state machine is about to install a snapshot received from the leader.
pub const BEFORE_SNAPSHOT_INSTALL: &str = "raft::before_snapshot_install";
/// The request path is about to hand a request's audit record to Raft (keyraft-server).
pub const SERVER_BEFORE_AUDIT_APPEND: &str = "server::before_audit_append";
/// The request's Raft write (its mutation or its audit record) committed, and the answer
/// has not been sent yet (keyraft-server).
pub const SERVER_AFTER_COMMIT_BEFORE_RESPONSE: &str = "server::after_commit_before_response";
/// RemoveNode's membership change committed, and the removed node's id has not been
/// retired yet (keyraft-server).
pub const SERVER_BEFORE_RETIRE_NODE: &str = "server::before_retire_node";
/// A member is about to hand the domain key to an authorised joining node
/// (keyraft-server).
pub const SERVER_BEFORE_SEND_DOMAIN_KEY: &str = "server::before_send_domain_key";

/// One fail point of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Its name: the API by which it is armed.
    pub name: &'static str,
    /// Whether the blocking actions (`sleep`, `delay`, `pause`) are accepted: only where
    /// the point runs on a thread of its own, never on a tokio worker.
    pub blocking_allowed: bool,
}

/// Every fail point of a node, in the order of a write's path through it.
pub const CATALOGUE: &[Point] = &[
    Point {
        name: SERVER_BEFORE_AUDIT_APPEND,
        blocking_allowed: false,
    },
    Point {
        name: LOG_BEFORE_APPEND,
        blocking_allowed: false,
    },
    Point {
        name: LOG_BEFORE_FSYNC,
        blocking_allowed: true,
    },
    Point {
        name: LOG_AFTER_FSYNC,
        blocking_allowed: true,
    },
    Point {
        name: BEFORE_APPLY,
        blocking_allowed: false,
    },
    Point {
        name: BEFORE_SNAPSHOT_INSTALL,
        blocking_allowed: false,
    },
    Point {
        name: SERVER_AFTER_COMMIT_BEFORE_RESPONSE,
        blocking_allowed: false,
    },
    Point {
        name: SERVER_BEFORE_RETIRE_NODE,
        blocking_allowed: false,
    },
    Point {
        name: SERVER_BEFORE_SEND_DOMAIN_KEY,
        blocking_allowed: false,
    },
];

/// The point named `name`, if there is one.
pub fn point(name: &str) -> Option<&'static Point> {
    CATALOGUE.iter().find(|p| p.name == name)
}

/// Evaluates the point `name`: `Some(message)` if its `return` action fired (the
/// message is the action's argument or a default), `None` otherwise. A `panic` action
/// aborts the process. Always `None` without the `failpoints` feature.
#[inline(always)]
pub fn fire(name: &'static str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        enabled::fire(name)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Evaluates the point `name` in storage code: its `return` action is an I/O error.
/// Always `Ok(())` without the `failpoints` feature.
#[inline(always)]
pub fn io_check(name: &'static str) -> std::io::Result<()> {
    match fire(name) {
        None => Ok(()),
        Some(message) => Err(std::io::Error::other(message)),
    }
}

#[cfg(feature = "failpoints")]
pub use enabled::{init_from_env, list, set, ENV_VAR};

#[cfg(feature = "failpoints")]
mod enabled {
    use std::sync::OnceLock;

    use super::{point, CATALOGUE};

    /// The environment variable read at startup: `name=actions;name=actions`, as
    /// `fail`'s `FailScenario` reads it (but checked like [`set`]).
    pub const ENV_VAR: &str = "FAILPOINTS";

    /// Actions that block the thread that reaches the point.
    const BLOCKING: &[&str] = &["sleep", "delay", "pause"];

    pub(super) fn fire(name: &'static str) -> Option<String> {
        let evaluated = std::panic::catch_unwind(|| -> Option<String> {
            fail::fail_point!(name, |arg: Option<String>| {
                Some(arg.unwrap_or_else(|| format!("injected fault at fail point {name}")))
            });
            None
        });
        match evaluated {
            Ok(returned) => {
                if returned.is_some() {
                    tracing::warn!(point = name, "fail point returned an error");
                }
                returned
            }
            Err(_) => {
                // A panic would only end this task or thread; a crash ends the process.
                tracing::error!(point = name, "fail point panic: aborting the process");
                eprintln!("keyraft: fail point {name} panicked; aborting the process");
                std::process::abort()
            }
        }
    }

    /// The names every point has, for error messages.
    fn known() -> String {
        CATALOGUE
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The task of one action (`50%2*return(x)` → `return`), as `fail` parses it.
    fn task_of(action: &str) -> &str {
        let mut rest = action.trim();
        if let Some((before, _)) = rest.split_once('(') {
            rest = before;
        }
        if let Some((_, after)) = rest.split_once('%') {
            rest = after;
        }
        if let Some((_, after)) = rest.split_once('*') {
            rest = after;
        }
        rest.trim()
    }

    /// Configures the point `name` with `actions` (`fail`'s syntax); `off` removes its
    /// configuration. Refuses an unknown name (the message lists the known ones), a
    /// malformed action, and a blocking action at a point that runs on a tokio worker.
    pub fn set(name: &str, actions: &str) -> Result<(), String> {
        let Some(p) = point(name) else {
            return Err(format!(
                "unknown fail point '{}'; the known points are: {}",
                name.chars().take(64).collect::<String>(),
                known()
            ));
        };
        let actions = actions.trim();
        if actions.is_empty() {
            return Err("give the actions, e.g. 1*return, 50%return, panic or off".into());
        }
        if actions == "off" {
            fail::remove(p.name);
            tracing::info!(point = p.name, "fail point off");
            return Ok(());
        }
        for action in actions.split("->") {
            let task = task_of(action);
            if BLOCKING.contains(&task) && !p.blocking_allowed {
                return Err(format!(
                    "{task} blocks the thread that reaches {}, a tokio worker; use return, panic or off (sleep, delay and pause are accepted only at the log sync thread's points)",
                    p.name
                ));
            }
        }
        fail::cfg(p.name, actions).map_err(|e| format!("bad actions for {}: {e}", p.name))?;
        tracing::warn!(point = p.name, actions, "fail point armed");
        Ok(())
    }

    /// The configured points as `(name, actions)`, sorted by name. A point stays listed
    /// with its actions after a counted action (`1*return`) is used up, until it is set
    /// `off`.
    pub fn list() -> Vec<(String, String)> {
        let mut points = fail::list();
        points.retain(|(_, actions)| !actions.is_empty());
        points.sort();
        points
    }

    /// Arms the points named in the `FAILPOINTS` environment variable
    /// (`name=actions;name=actions`), once per process; later calls return the first
    /// call's result. The log store calls this when it opens, which is before Raft
    /// starts, so a node can start with points armed.
    pub fn init_from_env() -> std::io::Result<()> {
        static DONE: OnceLock<Result<(), String>> = OnceLock::new();
        DONE.get_or_init(|| match std::env::var(ENV_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(()),
            Err(e) => Err(format!("{ENV_VAR}: {e}")),
            Ok(value) => parse_env(&value),
        })
        .clone()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }

    fn parse_env(value: &str) -> Result<(), String> {
        for entry in value.split(';') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((name, actions)) = entry.split_once('=') else {
                return Err(format!("{ENV_VAR}: expected name=actions, not '{entry}'"));
            };
            set(name.trim(), actions).map_err(|e| format!("{ENV_VAR}: {e}"))?;
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::super::{fire, io_check, BEFORE_APPLY, LOG_BEFORE_FSYNC};
        use super::{list, parse_env, set, task_of};

        #[test]
        fn task_of_parses_like_fail() {
            assert_eq!(task_of("return"), "return");
            assert_eq!(task_of("50%return"), "return");
            assert_eq!(task_of("1*return(boom)"), "return");
            assert_eq!(task_of(" 25%3*sleep(100) "), "sleep");
            assert_eq!(task_of("pause"), "pause");
        }

        // One test touches the process-wide registry, so nothing races it.
        #[test]
        fn set_checks_names_and_blocking_actions_and_fire_returns() {
            let e = set("raft::nope", "return").unwrap_err();
            assert!(e.contains(BEFORE_APPLY), "{e}");
            assert!(set(BEFORE_APPLY, "sleep(10)").is_err());
            assert!(set(BEFORE_APPLY, "1*return->pause").is_err());
            assert!(set(BEFORE_APPLY, "bogus").is_err());
            assert!(set(BEFORE_APPLY, "").is_err());
            assert!(set(LOG_BEFORE_FSYNC, "sleep(1)").is_ok());

            set(BEFORE_APPLY, "1*return(disk on fire)").unwrap();
            assert!(list()
                .iter()
                .any(|(n, a)| n == BEFORE_APPLY && a == "1*return(disk on fire)"));
            assert_eq!(fire(BEFORE_APPLY).as_deref(), Some("disk on fire"));
            assert_eq!(fire(BEFORE_APPLY), None);
            assert!(io_check(BEFORE_APPLY).is_ok());

            set(BEFORE_APPLY, "off").unwrap();
            set(LOG_BEFORE_FSYNC, "off").unwrap();
            assert!(list().iter().all(|(n, _)| n != BEFORE_APPLY));
            assert!(io_check(LOG_BEFORE_FSYNC).is_ok());

            assert!(parse_env("raft::before_apply=sleep(5)").is_err());
            assert!(parse_env("noequals").is_err());
            parse_env(" ; raft::before_apply = 2*return ;").unwrap();
            assert!(io_check(BEFORE_APPLY).is_err());
            set(BEFORE_APPLY, "off").unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        assert!(point(LOG_AFTER_FSYNC).is_some_and(|p| p.blocking_allowed));
        assert!(point(BEFORE_APPLY).is_some_and(|p| !p.blocking_allowed));
    }

    #[test]
    #[cfg(not(feature = "failpoints"))]
    fn without_the_feature_nothing_fires() {
        assert_eq!(fire(BEFORE_APPLY), None);
        assert!(io_check(LOG_BEFORE_APPEND).is_ok());
    }
}
