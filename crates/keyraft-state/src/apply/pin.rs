//! Holding one applied state still while apply goes on: [`StateView`], and the gate
//! between flushes and whoever holds a view.
//!
//! A view is the tree under the layers of applied writes that were not yet flushed when
//! it was taken ([`super::StateMachine::pin`]). Apply goes on into newer layers, which
//! the view does not see; what it must not see either is one of them written to the
//! tree, so no flush starts while a view is held ([`FlushGate`]). Taking a view waits for
//! a flush under way, which stops after the sled batch it is writing when a view waits:
//! the view is taken between two batches, with the tree as of one applied entry.
//!
//! Views are how a node reads a whole state at one point of the log without stopping
//! apply: a snapshot sent to a follower, an export, a verify of the audit chain. While
//! one is held, applied writes stay in memory; the flush after it writes them a layer at
//! a time (see [`super::view`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::view::{View, Writes};
use super::{AppliedMeta, StateError};
use crate::keys;

/// Who may change the tree: flushes and snapshot installs, one at a time and only while
/// no view is held ("writers"); views ("holds") are shared.
#[derive(Default)]
pub(super) struct FlushGate {
    state: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Default)]
struct Gate {
    /// Views held.
    holds: usize,
    /// Views waiting for the writer to finish.
    waiting: usize,
    /// A flush or install is changing the tree.
    writing: bool,
}

impl FlushGate {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, gate: MutexGuard<'a, Gate>) -> MutexGuard<'a, Gate> {
        self.changed.wait(gate).unwrap_or_else(|p| p.into_inner())
    }

    /// Holds flushes off until the returned hold drops. Waits for a flush under way, which
    /// stops after the layer it is writing when it sees someone waiting
    /// ([`FlushGate::hold_wanted`]), so the wait is one sled batch at most.
    pub(super) fn hold(self: &Arc<Self>) -> FlushHold {
        let mut gate = self.lock();
        gate.waiting += 1;
        while gate.writing {
            gate = self.wait(gate);
        }
        gate.waiting -= 1;
        gate.holds += 1;
        FlushHold { gate: self.clone() }
    }

    /// Waits until no view is held and nothing else writes, then lets the caller change
    /// the tree until the returned guard drops.
    pub(super) fn write(self: &Arc<Self>) -> GateWrite {
        let mut gate = self.lock();
        while gate.holds > 0 || gate.writing {
            gate = self.wait(gate);
        }
        gate.writing = true;
        GateWrite { gate: self.clone() }
    }

    /// Whether someone waits to hold flushes off: a long flush stops between two layers
    /// to let them in.
    pub(super) fn hold_wanted(&self) -> bool {
        self.lock().waiting > 0
    }
}

/// Flushes are held off while this lives.
pub(crate) struct FlushHold {
    gate: Arc<FlushGate>,
}

impl Drop for FlushHold {
    fn drop(&mut self) {
        self.gate.lock().holds -= 1;
        self.gate.changed.notify_all();
    }
}

/// The one writer of the tree while this lives.
pub(super) struct GateWrite {
    gate: Arc<FlushGate>,
}

impl GateWrite {
    /// Turns the write into a hold, with no flush in between: the tree stays as the
    /// writer left it.
    pub(super) fn downgrade(self) -> FlushHold {
        self.gate.lock().holds += 1;
        FlushHold {
            gate: self.gate.clone(),
        }
        // `self` drops here and ends the write; the hold already keeps flushes off.
    }
}

impl Drop for GateWrite {
    fn drop(&mut self) {
        self.gate.lock().writing = false;
        self.gate.changed.notify_all();
    }
}

/// No writes: the newest layer of a view, which has all its layers sealed.
static NO_WRITES: Writes = BTreeMap::new();

/// The state as of one applied entry, read-only, that stays so while the node applies
/// more (see the module documentation). Flushes wait while it is held: hold it for as
/// long as a walk of the state takes, and no longer.
pub struct StateView {
    _hold: FlushHold,
    tree: sled::Tree,
    layers: Vec<Arc<Writes>>,
    meta: AppliedMeta,
}

impl StateView {
    /// The view of `tree` under `layers` (oldest first), which `hold` keeps still.
    pub(super) fn new(
        hold: FlushHold,
        tree: sled::Tree,
        layers: Vec<Arc<Writes>>,
    ) -> Result<StateView, StateError> {
        let mut view = StateView {
            _hold: hold,
            tree,
            layers,
            meta: AppliedMeta::default(),
        };
        let meta = {
            let v = view.view();
            AppliedMeta {
                last_applied: v.get(keys::LAST_APPLIED)?.map(|v| v.into_owned()),
                membership: v.get(keys::MEMBERSHIP)?.map(|v| v.into_owned()),
            }
        };
        view.meta = meta;
        Ok(view)
    }

    pub(super) fn view(&self) -> View<'_> {
        View::new(&self.tree, &NO_WRITES, &self.layers)
    }

    /// The Raft layer's applied log id and membership this state is as of.
    pub fn meta(&self) -> &AppliedMeta {
        &self.meta
    }

    /// The state's records (everything but the Raft metadata), in key order: what a
    /// snapshot carries.
    pub fn records(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StateError>> + '_ {
        self.view()
            .range((Bound::Unbounded, Bound::Unbounded))
            .filter(|item| !matches!(item, Ok((k, _)) if k.starts_with(keys::META_PREFIX)))
    }
}
