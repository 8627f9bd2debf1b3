//! # Linearizability of key metadata
//!
//! Keyraft promises that every key operation takes effect atomically at one instant
//! between its invocation and its response, in an order every client agrees on: a
//! `DescribeKey` that begins after a `DisableKey` returned must say `Disabled`, an
//! `Encrypt` that begins after it must be refused. This checker searches for such an
//! order. Keys are independent objects, so the history is split per key (a key's
//! operations are those naming it, plus the `CreateKey` that returned its id) and each
//! key is checked on its own, which keeps the search small.
//!
//! The model of one key is its state (`Enabled`, `Disabled`, `PendingDeletion`, or not
//! existing), its description and its key policy (which PutKeyPolicy wrote it, or the
//! default CreateKey installs, and whether it denies cryptography), with the transitions
//! of Keyraft's state machine:
//!
//! | operation            | allowed in            | effect                  | refused with                        |
//! |----------------------|-----------------------|-------------------------|-------------------------------------|
//! | CreateKey            | (no key)              | Enabled, description, default policy (allows crypto) | —      |
//! | EnableKey            | Enabled, Disabled     | Enabled                 | KMSInvalidStateException (pending)  |
//! | DisableKey           | Enabled, Disabled     | Disabled                | KMSInvalidStateException (pending)  |
//! | UpdateKeyDescription | Enabled, Disabled     | description := tag      | KMSInvalidStateException (pending)  |
//! | ScheduleKeyDeletion  | Enabled, Disabled     | PendingDeletion         | KMSInvalidStateException (pending)  |
//! | CancelKeyDeletion    | PendingDeletion       | Disabled                | KMSInvalidStateException (not pending) |
//! | PutKeyPolicy         | Enabled, Disabled, PendingDeletion | policy := (tag, denies crypto or not) | — (never KMSInvalidStateException) |
//! | GetKeyPolicy         | Enabled, Disabled, PendingDeletion | — (sees the policy's tag and variant) | — (never KMSInvalidStateException) |
//! | Encrypt, GenerateDataKey, Decrypt | Enabled, under a policy that allows crypto | — | DisabledException (Disabled), KMSInvalidStateException (pending), AccessDeniedException (any state, under a deny-crypto policy) |
//!
//! Every operation on a key that does not exist is refused with `NotFoundException`.
//! PutKeyPolicy is allowed on a key pending deletion, as in AWS: apply changes the
//! policy of a key in any state. The server authorizes before it looks at the key's
//! state, so cryptography under a deny-crypto policy is refused with
//! `AccessDeniedException` whatever the state; a state refusal under such a policy is
//! legal too (a node whose view still allowed the call checks the state on a fresh view
//! without deciding access again), so state refusals say nothing about the policy.
//!
//! An `ok` write must find its key in a state that allows it and moves the model. An
//! `ok` read is an observation: `DescribeKey` must see exactly the model's state and
//! description, `GetKeyPolicy` exactly the model's policy, and cryptography that
//! succeeded must find the key `Enabled` under a policy that allows it (an `ok`
//! Encrypt while a deny-crypto policy is in force let someone past the policy). A
//! definite refusal with one of the codes above is an observation too (the key was in a
//! state, or under a policy, that refuses) and changes nothing: an `AccessDeniedException`
//! for cryptography while only policies that allow it can be in force means the service
//! refused what its policy allowed. Refusals with other codes (validation, access to
//! anything but cryptography) say nothing about the key and are left out. A write whose
//! outcome is unknown may take effect at any point after its invocation, or never: its
//! response is placed after everything else and its step either applies or does
//! nothing. Reads whose outcome is unknown observed nothing and are left out.
//!
//! The search is the Wing–Gong algorithm with Lowe's memoization, as in Knossos and
//! Porcupine: walk the operations in time order, linearize any operation whose
//! invocation has been reached and whose step the model allows, backtrack when an
//! operation's response is reached before it was linearized, and never revisit a
//! (set of linearized operations, model state) pair. Unknowns (a key's state before a
//! history that does not include its creation, a write that may or may not have
//! happened) make the model nondeterministic; the search tracks the set of states the
//! key may be in, which is exact. The search has a budget of explored configurations;
//! a key that exhausts it gives `unknown`, never a pass.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{classify, describe_op, key_id_of, verdict, CheckResult, Class};
use crate::history::{History, Op, Operation, Value};

/// The checker's name.
pub const NAME: &str = "linearizable";

/// How many search configurations one key may explore before the verdict is `unknown`.
pub const DEFAULT_BUDGET: u64 = 300_000;

/// How many operations a violation's evidence shows around the offending one.
const WINDOW: usize = 12;

/// Checks every key's operations with the default search budget.
pub fn check(history: &History) -> CheckResult {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// Checks every key's operations, exploring at most `budget` configurations per key.
pub fn check_with_budget(history: &History, budget: u64) -> CheckResult {
    let ops = history.operations();
    let mut violations = Vec::new();
    let mut unknowns = Vec::new();
    for (key, steps) in per_key(&ops) {
        match search(&steps, budget) {
            Search::Linearizable => {}
            Search::OutOfBudget => unknowns.push(format!(
                "key {key}: the search explored {budget} configurations without a verdict \
                 ({} operations)",
                steps.len()
            )),
            Search::Stuck { op } => {
                let culprit = &ops[steps[op].index];
                violations.push(format!(
                    "key {key}: no linearization; cannot place {}",
                    describe_op(culprit)
                ));
                for line in window(&ops, &steps, op) {
                    violations.push(format!("  {line}"));
                }
            }
        }
    }
    verdict(NAME, violations, unknowns)
}

/// A key's state in the model (`Absent`: no such key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum KeyState {
    Absent,
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeyState {
    fn parse(s: &str) -> Option<KeyState> {
        match s {
            "Enabled" => Some(KeyState::Enabled),
            "Disabled" => Some(KeyState::Disabled),
            "PendingDeletion" => Some(KeyState::PendingDeletion),
            _ => None,
        }
    }
}

const ALL: &[KeyState] = &[
    KeyState::Absent,
    KeyState::Enabled,
    KeyState::Disabled,
    KeyState::PendingDeletion,
];
const CHANGEABLE: &[KeyState] = &[KeyState::Enabled, KeyState::Disabled];
const ONLY_DISABLED: &[KeyState] = &[KeyState::Disabled];
const ONLY_PENDING: &[KeyState] = &[KeyState::PendingDeletion];
const ONLY_ABSENT: &[KeyState] = &[KeyState::Absent];
const NONE: &[KeyState] = &[];

/// Which key policy is in force: the default CreateKey installs, or the one the
/// PutKeyPolicy with this (interned) tag wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Policy {
    Default,
    Put(u32),
}

/// One possible concrete state of the key: its state, description and policy (`None`:
/// not yet known, for a key whose creation is not in the history). Descriptions and
/// policy tags are interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Concrete {
    state: KeyState,
    description: Option<u32>,
    policy: Option<Policy>,
    /// Whether the policy in force denies cryptography.
    deny_crypto: Option<bool>,
}

impl Concrete {
    /// Whether the key exists (every operation but CreateKey needs it).
    fn exists(&self) -> bool {
        self.state != KeyState::Absent
    }

    /// This state with the policy learned to deny cryptography or not, if it can.
    fn with_deny(self, deny: bool) -> Option<Concrete> {
        self.deny_crypto
            .is_none_or(|have| have == deny)
            .then_some(Concrete {
                deny_crypto: Some(deny),
                ..self
            })
    }
}

/// The set of states the key may be in (sorted, without duplicates, never empty while
/// the search holds it).
type States = Vec<Concrete>;

/// A write's effect on one concrete state (`None`: the state refuses it).
#[derive(Debug, Clone, Copy)]
enum Write {
    Create(u32),
    Enable,
    Disable,
    Describe(u32),
    Schedule,
    Cancel,
    /// PutKeyPolicy: (interned tag, denies crypto).
    PutPolicy(u32, bool),
}

impl Write {
    fn apply(self, c: Concrete) -> Option<Concrete> {
        let changeable = matches!(c.state, KeyState::Enabled | KeyState::Disabled);
        let state = |state| Concrete { state, ..c };
        match self {
            Write::Create(d) => (c.state == KeyState::Absent).then_some(Concrete {
                state: KeyState::Enabled,
                description: Some(d),
                policy: Some(Policy::Default),
                deny_crypto: Some(false),
            }),
            Write::PutPolicy(tag, deny) => c.exists().then_some(Concrete {
                policy: Some(Policy::Put(tag)),
                deny_crypto: Some(deny),
                ..c
            }),
            Write::Enable => changeable.then(|| state(KeyState::Enabled)),
            Write::Disable => changeable.then(|| state(KeyState::Disabled)),
            Write::Describe(d) => changeable.then_some(Concrete {
                description: Some(d),
                ..c
            }),
            Write::Schedule => changeable.then(|| state(KeyState::PendingDeletion)),
            Write::Cancel => {
                (c.state == KeyState::PendingDeletion).then(|| state(KeyState::Disabled))
            }
        }
    }
}

/// What one operation means for the model.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A write that happened.
    Write(Write),
    /// A write that may or may not have happened.
    MaybeWrite(Write),
    /// The key was in one of these states; nothing changed.
    Observe(&'static [KeyState]),
    /// DescribeKey saw this state (`None`: one the model never has) and description.
    Read(Option<KeyState>, u32),
    /// Cryptography succeeded: the key was Enabled under a policy that allows it.
    CryptoOk,
    /// Cryptography was refused with AccessDeniedException: the key existed under a
    /// policy that denies it.
    CryptoDenied,
    /// GetKeyPolicy saw this policy, which denies cryptography or not.
    ReadPolicy(Policy, bool),
}

/// One operation of a key's history.
#[derive(Debug, Clone)]
struct Step {
    /// Index into the history's operations.
    index: usize,
    kind: Kind,
    invoke: u64,
    /// `u64::MAX` for a write whose outcome is unknown.
    complete: u64,
}

impl Step {
    fn is_finite(&self) -> bool {
        !matches!(self.kind, Kind::MaybeWrite(_))
    }
}

fn step_states(states: &[Concrete], kind: Kind) -> Option<States> {
    let mut next: States = match kind {
        Kind::Write(w) => states.iter().filter_map(|c| w.apply(*c)).collect(),
        Kind::MaybeWrite(w) => states
            .iter()
            .flat_map(|c| [Some(*c), w.apply(*c)])
            .flatten()
            .collect(),
        Kind::Observe(allowed) => states
            .iter()
            .filter(|c| allowed.contains(&c.state))
            .copied()
            .collect(),
        Kind::Read(state, d) => states
            .iter()
            .filter(|c| Some(c.state) == state && c.description.is_none_or(|have| have == d))
            .map(|c| Concrete {
                description: Some(d),
                ..*c
            })
            .collect(),
        Kind::CryptoOk => states
            .iter()
            .filter(|c| c.state == KeyState::Enabled)
            .filter_map(|c| c.with_deny(false))
            .collect(),
        Kind::CryptoDenied => states
            .iter()
            .filter(|c| c.exists())
            .filter_map(|c| c.with_deny(true))
            .collect(),
        Kind::ReadPolicy(policy, deny) => states
            .iter()
            .filter(|c| c.exists() && c.policy.is_none_or(|have| have == policy))
            .filter_map(|c| c.with_deny(deny))
            .map(|c| Concrete {
                policy: Some(policy),
                ..c
            })
            .collect(),
    };
    next.sort_unstable();
    next.dedup();
    (!next.is_empty()).then_some(next)
}

/// The refusal `code` of an operation as an observation of the key's state, if the
/// state machine gives that code only in some states.
fn refusal(op: &Op, code: &str) -> Option<&'static [KeyState]> {
    let crypto = is_crypto(op);
    match code {
        "NotFoundException" => Some(ONLY_ABSENT),
        "DisabledException" if crypto => Some(ONLY_DISABLED),
        "KMSInvalidStateException" => match op {
            Op::CancelDeletion { .. } => Some(CHANGEABLE),
            Op::DescribeKey { .. } | Op::CreateKey { .. } | Op::ListKeys { .. } => None,
            // Every state a key can be in allows its policy to be put or read.
            Op::PutKeyPolicy { .. } | Op::GetKeyPolicy { .. } => Some(NONE),
            _ => Some(ONLY_PENDING),
        },
        _ => None,
    }
}

/// Whether an operation is one of the cryptographic calls a key policy may deny.
fn is_crypto(op: &Op) -> bool {
    matches!(
        op,
        Op::Encrypt { .. } | Op::GenerateDataKey { .. } | Op::Decrypt { .. }
    )
}

/// Splits the history into per-key histories of model steps.
fn per_key(ops: &[Operation]) -> BTreeMap<String, Vec<Step>> {
    // Descriptions and policy tags share one table; they are compared within their own
    // field only.
    let mut descriptions: HashMap<String, u32> = HashMap::new();
    let mut intern = |d: &str| -> u32 {
        let next = descriptions.len() as u32;
        *descriptions.entry(d.to_string()).or_insert(next)
    };
    let mut keys: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let class = classify(op);
        let (key, kind) = match (&op.op, class) {
            (Op::CreateKey { description, .. }, Class::Ok(Value::Created { key_id })) => (
                key_id_of(key_id),
                Kind::Write(Write::Create(intern(description))),
            ),
            (Op::CreateKey { .. } | Op::ListKeys { .. }, _) => continue,
            (op_kind, Class::Fail("AccessDeniedException")) if is_crypto(op_kind) => {
                let Some(key) = op_kind.key_id() else {
                    continue;
                };
                (key_id_of(key), Kind::CryptoDenied)
            }
            (op_kind, Class::Fail(code)) => {
                let (Some(key), Some(states)) = (op_kind.key_id(), refusal(op_kind, code)) else {
                    continue;
                };
                (key_id_of(key), Kind::Observe(states))
            }
            (Op::DescribeKey { key_id, .. }, Class::Ok(value)) => {
                let Value::Key { state, description } = value else {
                    continue;
                };
                (
                    key_id_of(key_id),
                    Kind::Read(KeyState::parse(state), intern(description)),
                )
            }
            (
                Op::Encrypt { key_id, .. }
                | Op::GenerateDataKey { key_id, .. }
                | Op::Decrypt { key_id, .. },
                Class::Ok(_),
            ) => (key_id_of(key_id), Kind::CryptoOk),
            (Op::GetKeyPolicy { key_id, .. }, Class::Ok(value)) => {
                let Value::Policy { tag, deny_crypto } = value else {
                    continue;
                };
                let policy = match tag {
                    None => Policy::Default,
                    Some(t) => Policy::Put(intern(t)),
                };
                (key_id_of(key_id), Kind::ReadPolicy(policy, *deny_crypto))
            }
            (
                Op::DescribeKey { .. }
                | Op::GetKeyPolicy { .. }
                | Op::Encrypt { .. }
                | Op::GenerateDataKey { .. }
                | Op::Decrypt { .. },
                Class::Unknown,
            ) => continue,
            (write, class) => {
                let w = match write {
                    Op::EnableKey { .. } => Write::Enable,
                    Op::DisableKey { .. } => Write::Disable,
                    Op::UpdateDescription { tag, .. } => Write::Describe(intern(tag)),
                    Op::ScheduleDeletion { .. } => Write::Schedule,
                    Op::CancelDeletion { .. } => Write::Cancel,
                    Op::PutKeyPolicy {
                        tag, deny_crypto, ..
                    } => Write::PutPolicy(intern(tag), *deny_crypto),
                    _ => continue,
                };
                let Some(key) = write.key_id() else { continue };
                let kind = match class {
                    Class::Ok(_) => Kind::Write(w),
                    _ => Kind::MaybeWrite(w),
                };
                (key_id_of(key), kind)
            }
        };
        let complete = match kind {
            Kind::MaybeWrite(_) => u64::MAX,
            _ => op.complete_ns.unwrap_or(u64::MAX),
        };
        keys.entry(key.to_string()).or_default().push(Step {
            index,
            kind,
            invoke: op.invoke_ns,
            complete: complete.max(op.invoke_ns),
        });
    }
    keys
}

enum Search {
    Linearizable,
    /// No order exists; `op` is the step whose response the deepest attempt could not
    /// get past.
    Stuck {
        op: usize,
    },
    OutOfBudget,
}

/// A node of the doubly linked list of call and return entries (Knuth's dancing links:
/// a removed node keeps its neighbours so it can be put back).
#[derive(Clone, Copy)]
struct Node {
    op: usize,
    call: bool,
    matching: usize,
    prev: usize,
    next: usize,
}

struct Entries {
    nodes: Vec<Node>,
}

const HEAD: usize = 0;

impl Entries {
    fn new(steps: &[Step]) -> (Entries, usize) {
        // (time, returns after calls at the same instant, op, is_call)
        let mut order: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(steps.len() * 2);
        for (i, s) in steps.iter().enumerate() {
            order.push((s.invoke, 0, i, true));
            order.push((s.complete, 1, i, false));
        }
        order.sort_unstable();
        let tail = order.len() + 1;
        let mut nodes = vec![
            Node {
                op: usize::MAX,
                call: false,
                matching: 0,
                prev: HEAD,
                next: HEAD,
            };
            order.len() + 2
        ];
        let mut ret_of = vec![0; steps.len()];
        for (pos, &(_, _, op, call)) in order.iter().enumerate() {
            let n = pos + 1;
            nodes[n] = Node {
                op,
                call,
                matching: 0,
                prev: n - 1,
                next: n + 1,
            };
            if !call {
                ret_of[op] = n;
            }
        }
        nodes[HEAD].next = 1;
        nodes[tail].prev = tail - 1;
        for n in 1..tail {
            if nodes[n].call {
                nodes[n].matching = ret_of[nodes[n].op];
            }
        }
        (Entries { nodes }, tail)
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        self.nodes[next].prev = prev;
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        self.nodes[next].prev = n;
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].matching);
    }

    /// Puts back what the matching `lift` removed.
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].matching);
        self.relink(call);
    }
}

fn search(steps: &[Step], budget: u64) -> Search {
    let has_create = steps
        .iter()
        .any(|s| matches!(s.kind, Kind::Write(Write::Create(_))));
    // A key created in the history starts absent; any other key was made before it,
    // in a state and with a description the search learns from the operations.
    let initial: &[KeyState] = if has_create { ONLY_ABSENT } else { ALL };
    let mut state: States = initial
        .iter()
        .map(|&state| Concrete {
            state,
            description: None,
            policy: None,
            deny_crypto: None,
        })
        .collect();
    let finite_total = steps.iter().filter(|s| s.is_finite()).count();
    let mut finite_done = 0;
    let (mut entries, tail) = Entries::new(steps);
    let words = steps.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, States)> = HashSet::new();
    let mut calls: Vec<(usize, States)> = Vec::new();
    let mut explored: u64 = 0;
    let mut deepest: Option<(usize, usize)> = None; // (linearized count, stuck op)
    let mut entry = entries.nodes[HEAD].next;
    loop {
        if finite_done == finite_total {
            // What is left may all not have happened.
            return Search::Linearizable;
        }
        let node = entries.nodes[entry];
        if entry != tail && node.call {
            let op = node.op;
            if let Some(next) = step_states(&state, steps[op].kind) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert((linearized.clone(), next.clone())) {
                    explored += 1;
                    if explored > budget {
                        return Search::OutOfBudget;
                    }
                    calls.push((entry, std::mem::replace(&mut state, next)));
                    if steps[op].is_finite() {
                        finite_done += 1;
                    }
                    entries.lift(entry);
                    entry = entries.nodes[HEAD].next;
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = node.next;
        } else {
            // A response reached before its operation was placed (or, defensively, the
            // end of the list): undo the most recent choice.
            if entry != tail && deepest.is_none_or(|(depth, _)| calls.len() > depth) {
                deepest = Some((calls.len(), node.op));
            }
            let Some((call, previous)) = calls.pop() else {
                return Search::Stuck {
                    op: deepest.map_or(0, |(_, op)| op),
                };
            };
            explored += 1;
            if explored > budget {
                return Search::OutOfBudget;
            }
            state = previous;
            let op = entries.nodes[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            if steps[op].is_finite() {
                finite_done -= 1;
            }
            entries.unlift(call);
            entry = entries.nodes[call].next;
        }
    }
}

/// The operations around step `at`: those overlapping it and the few that completed
/// just before it began, in invocation order.
fn window(ops: &[Operation], steps: &[Step], at: usize) -> Vec<String> {
    let culprit = &steps[at];
    let mut overlapping: Vec<&Step> = steps
        .iter()
        .filter(|s| s.invoke <= culprit.complete && s.complete >= culprit.invoke)
        .collect();
    let mut before: Vec<&Step> = steps
        .iter()
        .filter(|s| s.complete < culprit.invoke)
        .collect();
    before.sort_by_key(|s| s.complete);
    let keep_before = WINDOW.saturating_sub(overlapping.len()).clamp(2, 4);
    let skip = before.len().saturating_sub(keep_before);
    overlapping.extend(before.into_iter().skip(skip));
    overlapping.sort_by_key(|s| (s.invoke, s.index));
    overlapping.dedup_by_key(|s| s.index);
    overlapping
        .into_iter()
        .take(WINDOW)
        .map(|s| describe_op(&ops[s.index]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;

    /// A history with key k1 created Enabled with description "d" at [0, 10].
    fn created() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        b.ok(0, create("d"), 0, 10, super::super::testing::created("k1"));
        b
    }

    fn verdict_of(b: &HistoryBuilder) -> CheckResult {
        check(&b.build())
    }

    #[test]
    fn sequential_history_passes() {
        let mut b = created();
        b.ok(1, describe("k1"), 20, 30, key("Enabled", "d"));
        b.ok(1, disable("k1"), 40, 50, done());
        b.ok(1, describe("k1"), 60, 70, key("Disabled", "d"));
        b.ok(1, update_description("k1", "d2"), 80, 90, done());
        b.ok(1, schedule("k1"), 100, 110, done());
        b.ok(1, describe("k1"), 120, 130, key("PendingDeletion", "d2"));
        b.ok(1, cancel("k1"), 140, 150, done());
        b.ok(1, describe("k1"), 160, 170, key("Disabled", "d2"));
        b.ok(1, enable("k1"), 180, 190, done());
        b.ok(1, encrypt("e1", "k1", "h"), 200, 210, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn stale_read_after_completed_disable_is_a_violation() {
        let mut b = created();
        b.ok(1, disable("k1"), 20, 30, done());
        b.ok(2, describe("k1"), 40, 50, key("Enabled", "d"));
        let r = verdict_of(&b);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("k1"), "{:?}", r.details);
        assert!(r.details.iter().any(|l| l.contains("DisableKey")));
        assert!(r.details.iter().any(|l| l.contains("DescribeKey")));
    }

    #[test]
    fn encrypt_after_completed_disable_is_a_violation() {
        let mut b = created();
        b.ok(1, disable("k1"), 20, 30, done());
        b.ok(2, encrypt("e1", "k1", "h"), 40, 50, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn lost_description_update_is_a_violation() {
        let mut b = created();
        b.ok(1, update_description("k1", "new"), 20, 30, done());
        b.ok(2, describe("k1"), 40, 50, key("Enabled", "d"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn concurrent_read_may_see_either_side_of_a_write() {
        for seen in ["Enabled", "Disabled"] {
            let mut b = created();
            b.ok(1, disable("k1"), 20, 50, done());
            b.ok(2, describe("k1"), 30, 40, key(seen, "d"));
            assert_eq!(verdict_of(&b).verdict, Verdict::Pass, "{seen}");
        }
    }

    #[test]
    fn concurrent_writes_in_either_order() {
        // Disable and Enable overlap; later reads fix which one came last.
        for last in ["Enabled", "Disabled"] {
            let mut b = created();
            b.ok(1, disable("k1"), 20, 60, done());
            b.ok(2, enable("k1"), 30, 50, done());
            b.ok(3, describe("k1"), 70, 80, key(last, "d"));
            b.ok(3, describe("k1"), 90, 100, key(last, "d"));
            assert_eq!(verdict_of(&b).verdict, Verdict::Pass, "{last}");
        }
    }

    #[test]
    fn reads_that_flip_back_are_a_violation() {
        // Only one write: once a read saw it, a later read cannot un-see it.
        let mut b = created();
        b.ok(1, disable("k1"), 20, 100, done());
        b.ok(2, describe("k1"), 30, 40, key("Disabled", "d"));
        b.ok(3, describe("k1"), 50, 60, key("Enabled", "d"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn unknown_write_may_take_effect_later() {
        let mut b = created();
        b.info(1, disable("k1"), 20, 30);
        b.ok(2, describe("k1"), 40, 50, key("Enabled", "d"));
        b.ok(2, describe("k1"), 60, 70, key("Disabled", "d"));
        b.ok(2, encrypt("e1", "k1", "h"), 80, 90, ciphertext("h"));
        // The encrypt saw Enabled after a read saw Disabled: only one disable, no enable.
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        let mut b = created();
        b.info(1, disable("k1"), 20, 30);
        b.ok(2, describe("k1"), 40, 50, key("Enabled", "d"));
        b.ok(2, describe("k1"), 60, 70, key("Disabled", "d"));
        b.fail(2, encrypt("e2", "k1", "h"), 80, 90, "DisabledException");
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn unknown_write_may_never_take_effect() {
        let mut b = created();
        b.info(1, schedule("k1"), 20, 30);
        b.ok(2, describe("k1"), 40, 50, key("Enabled", "d"));
        b.ok(2, encrypt("e1", "k1", "h"), 60, 70, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn operation_never_completed_counts_as_unknown() {
        let mut b = created();
        b.info(1, disable("k1"), 20, 30);
        let mut h = b.build();
        // Drop the info: the disable stays open to the end of the history.
        h.events
            .retain(|e| !matches!(e.kind, crate::history::EventKind::Info { .. }));
        let mut b2 = HistoryBuilder::new();
        b2.ok(2, describe("k1"), 40, 50, key("Disabled", "d"));
        h.events.extend(b2.build().events);
        assert_eq!(check(&h).verdict, Verdict::Pass);
    }

    #[test]
    fn definite_failures_are_observations_and_change_nothing() {
        let mut b = created();
        b.ok(1, disable("k1"), 20, 30, done());
        // A refusal that says the key is Disabled, and an unrelated refusal: neither
        // moves the key.
        b.fail(2, encrypt("e1", "k1", "h"), 40, 50, "DisabledException");
        b.fail(2, enable("k1"), 60, 70, "AccessDeniedException");
        b.ok(2, describe("k1"), 80, 90, key("Disabled", "d"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn refusal_that_contradicts_the_state_is_a_violation() {
        let mut b = created();
        b.ok(1, describe("k1"), 20, 30, key("Enabled", "d"));
        b.fail(2, encrypt("e1", "k1", "h"), 40, 50, "DisabledException");
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        let mut b = created();
        b.fail(2, cancel("k1"), 40, 50, "KMSInvalidStateException");
        b.fail(2, enable("k1"), 60, 70, "KMSInvalidStateException");
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn cancel_deletion_returns_the_key_disabled() {
        let mut b = created();
        b.ok(1, schedule("k1"), 20, 30, done());
        b.fail(
            1,
            update_description("k1", "x"),
            31,
            32,
            "KMSInvalidStateException",
        );
        b.ok(1, cancel("k1"), 40, 50, done());
        b.ok(1, describe("k1"), 60, 70, key("Enabled", "d"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn ok_write_the_state_refuses_is_a_violation() {
        let mut b = created();
        b.ok(1, schedule("k1"), 20, 30, done());
        b.ok(1, enable("k1"), 40, 50, done());
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn key_created_before_the_history_is_learned_from_reads() {
        let mut b = HistoryBuilder::new();
        b.ok(1, describe("k0"), 0, 10, key("Disabled", "old"));
        b.ok(1, enable("k0"), 20, 30, done());
        b.ok(1, describe("k0"), 40, 50, key("Enabled", "old"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);

        let mut b = HistoryBuilder::new();
        b.ok(1, describe("k0"), 0, 10, key("Disabled", "old"));
        b.ok(1, describe("k0"), 40, 50, key("Disabled", "other"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut b = HistoryBuilder::new();
        b.ok(0, create("a"), 0, 10, super::super::testing::created("ka"));
        b.ok(5, create("b"), 0, 10, super::super::testing::created("kb"));
        b.ok(1, disable("ka"), 20, 30, done());
        b.ok(2, describe("kb"), 40, 50, key("Enabled", "b"));
        b.ok(2, describe("ka"), 60, 70, key("Disabled", "a"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn exhausted_budget_is_unknown_not_pass() {
        let mut b = created();
        for p in 0..12u64 {
            b.info(
                10 + p,
                if p % 2 == 0 {
                    disable("k1")
                } else {
                    enable("k1")
                },
                20 + p,
                30 + p,
            );
        }
        b.ok(1, describe("k1"), 100, 110, key("Enabled", "d"));
        b.ok(1, describe("k1"), 120, 130, key("Disabled", "d"));
        b.ok(1, describe("k1"), 140, 150, key("Enabled", "d"));
        b.ok(1, describe("k1"), 160, 170, key("Disabled", "zzz"));
        let r = check_with_budget(&b.build(), 10);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details[0].contains("k1"));
        // With a real budget the impossible description is found.
        assert_eq!(check(&b.build()).verdict, Verdict::Violation);
    }

    #[test]
    fn stale_policy_read_after_completed_put_is_a_violation() {
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", false), 20, 30, done());
        b.ok(1, put_policy("p2", "k1", true), 40, 50, done());
        b.ok(2, get_policy("k1"), 60, 70, policy(Some("p1"), false));
        let r = verdict_of(&b);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("GetKeyPolicy")));

        // The default policy is gone once a put completed.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", false), 20, 30, done());
        b.ok(2, get_policy("k1"), 40, 50, policy(None, false));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        // The right tag with the wrong variant is not the policy that was put either.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
        b.ok(2, get_policy("k1"), 40, 50, policy(Some("p1"), false));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn policy_reads_follow_the_puts() {
        let mut b = created();
        b.ok(2, get_policy("k1"), 12, 18, policy(None, false));
        b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
        b.ok(2, get_policy("k1"), 40, 50, policy(Some("p1"), true));
        b.ok(1, put_policy("p2", "k1", false), 60, 70, done());
        b.ok(2, get_policy("k1"), 80, 90, policy(Some("p2"), false));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn crypto_ok_under_a_deny_policy_is_a_violation() {
        // Encrypt after the deny put completed and before the open put was invoked.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
        b.ok(2, encrypt("e1", "k1", "h"), 40, 50, ciphertext("h"));
        b.ok(1, put_policy("p2", "k1", false), 60, 70, done());
        let r = verdict_of(&b);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r
            .details
            .iter()
            .any(|l| l.contains("Encrypt") && l.contains("cannot place")));

        for op in [generate("g1", "k1"), decrypt("d1", "e0", "k1")] {
            let mut b = created();
            b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
            let value = match op {
                Op::Decrypt { .. } => plaintext("h"),
                _ => ciphertext("h"),
            };
            b.ok(2, op, 40, 50, value);
            assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
        }
    }

    #[test]
    fn access_denied_crypto_without_a_deny_policy_is_a_violation() {
        // Only open policies were ever put.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", false), 20, 30, done());
        b.fail(2, encrypt("e1", "k1", "h"), 40, 50, "AccessDeniedException");
        b.ok(1, put_policy("p2", "k1", false), 60, 70, done());
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        // None at all: the default policy allows.
        let mut b = created();
        b.fail(
            2,
            decrypt("d1", "e0", "k1"),
            40,
            50,
            "AccessDeniedException",
        );
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        // A deny put that completed, then an open one that completed: denied after both.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
        b.ok(1, put_policy("p2", "k1", false), 40, 50, done());
        b.fail(2, generate("g1", "k1"), 60, 70, "AccessDeniedException");
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn access_denied_under_a_deny_policy_passes_in_any_state() {
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 30, done());
        b.fail(2, encrypt("e1", "k1", "h"), 40, 50, "AccessDeniedException");
        b.ok(1, disable("k1"), 60, 70, done());
        // Authorization comes first: denied although disabled; a state refusal is
        // legal too.
        b.fail(2, encrypt("e2", "k1", "h"), 80, 90, "AccessDeniedException");
        b.fail(2, encrypt("e3", "k1", "h"), 100, 110, "DisabledException");
        b.ok(1, enable("k1"), 120, 130, done());
        b.ok(1, put_policy("p2", "k1", false), 140, 150, done());
        b.ok(2, encrypt("e4", "k1", "h"), 160, 170, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn concurrent_put_and_crypto_may_order_either_way() {
        // The deny put overlaps an Encrypt that succeeded and one that was refused: the
        // success goes before the put, the refusal after.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 80, done());
        b.ok(2, encrypt("e1", "k1", "h"), 30, 40, ciphertext("h"));
        b.fail(3, encrypt("e2", "k1", "h"), 50, 60, "AccessDeniedException");
        b.ok(2, get_policy("k1"), 90, 100, policy(Some("p1"), true));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);

        // An open put overlapping: a refusal first (the old deny), then a success.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 10, 15, done());
        b.ok(1, put_policy("p2", "k1", false), 20, 80, done());
        b.fail(2, encrypt("e1", "k1", "h"), 30, 40, "AccessDeniedException");
        b.ok(3, encrypt("e2", "k1", "h"), 50, 60, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);

        // But not the other way round: with one deny put and no open one, a success
        // cannot follow a refusal.
        let mut b = created();
        b.ok(1, put_policy("p1", "k1", true), 20, 80, done());
        b.fail(2, encrypt("e1", "k1", "h"), 30, 40, "AccessDeniedException");
        b.ok(3, encrypt("e2", "k1", "h"), 50, 60, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn unknown_put_may_be_seen_or_not() {
        for seen in [true, false] {
            let mut b = created();
            b.info(1, put_policy("p1", "k1", true), 20, 30);
            b.ok(2, encrypt("e1", "k1", "h"), 40, 50, ciphertext("h"));
            let read = if seen {
                policy(Some("p1"), true)
            } else {
                policy(None, false)
            };
            b.ok(2, get_policy("k1"), 60, 70, read);
            if seen {
                b.fail(2, encrypt("e2", "k1", "h"), 80, 90, "AccessDeniedException");
            } else {
                b.ok(2, encrypt("e2", "k1", "h"), 80, 90, ciphertext("h"));
            }
            assert_eq!(verdict_of(&b).verdict, Verdict::Pass, "seen: {seen}");
        }

        // Once seen, it stays: crypto cannot succeed again without an open put.
        let mut b = created();
        b.info(1, put_policy("p1", "k1", true), 20, 30);
        b.fail(2, encrypt("e1", "k1", "h"), 40, 50, "AccessDeniedException");
        b.ok(2, encrypt("e2", "k1", "h"), 60, 70, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    #[test]
    fn policy_puts_and_reads_work_on_a_key_pending_deletion() {
        let mut b = created();
        b.ok(1, schedule("k1"), 20, 30, done());
        b.ok(1, put_policy("p1", "k1", true), 40, 50, done());
        b.ok(1, get_policy("k1"), 60, 70, policy(Some("p1"), true));
        b.fail(
            2,
            encrypt("e1", "k1", "h"),
            80,
            90,
            "KMSInvalidStateException",
        );
        b.fail(3, encrypt("e2", "k1", "h"), 80, 90, "AccessDeniedException");
        b.ok(1, cancel("k1"), 100, 110, done());
        b.ok(1, get_policy("k1"), 120, 130, policy(Some("p1"), true));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);

        // The server never refuses a policy change for the key's state.
        let mut b = created();
        b.ok(1, schedule("k1"), 20, 30, done());
        b.fail(
            1,
            put_policy("p1", "k1", false),
            40,
            50,
            "KMSInvalidStateException",
        );
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        // A key that does not exist has no policy.
        let mut b = HistoryBuilder::new();
        b.fail(1, put_policy("p1", "k9", false), 0, 10, "NotFoundException");
        b.fail(1, get_policy("k9"), 20, 30, "NotFoundException");
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);
    }

    #[test]
    fn policy_of_a_key_created_before_the_history_is_learned() {
        let mut b = HistoryBuilder::new();
        b.ok(1, get_policy("k0"), 0, 10, policy(Some("old"), true));
        b.fail(2, encrypt("e1", "k0", "h"), 20, 30, "AccessDeniedException");
        b.ok(1, get_policy("k0"), 40, 50, policy(Some("old"), true));
        assert_eq!(verdict_of(&b).verdict, Verdict::Pass);

        let mut b = HistoryBuilder::new();
        b.ok(1, get_policy("k0"), 0, 10, policy(Some("old"), true));
        b.ok(2, encrypt("e1", "k0", "h"), 20, 30, ciphertext("h"));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);

        let mut b = HistoryBuilder::new();
        b.fail(2, encrypt("e1", "k0", "h"), 0, 10, "AccessDeniedException");
        b.ok(1, get_policy("k0"), 20, 30, policy(None, false));
        assert_eq!(verdict_of(&b).verdict, Verdict::Violation);
    }

    /// Random concurrent histories produced by a real key (each operation takes effect
    /// at a random instant inside its interval; some answers are lost) are linearizable.
    #[test]
    fn generated_linearizable_histories_pass() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..30 {
            // (process, invoke, effect, complete, op kind)
            let mut planned = Vec::new();
            for p in 1..=4u64 {
                let mut t = 20 + next(10);
                for _ in 0..20 {
                    let effect = t + 1 + next(40);
                    let complete = effect + 1 + next(40);
                    planned.push((p, t, effect, complete, next(11)));
                    t = complete + 1 + next(5);
                }
            }
            planned.sort_by_key(|p| p.2);
            let mut b = created();
            let (mut state, mut desc) = ("Enabled", "d".to_string());
            let mut in_force: (Option<String>, bool) = (None, false);
            for (i, &(p, invoke, _, complete, kind)) in planned.iter().enumerate() {
                let changeable = state != "PendingDeletion";
                let lost = next(10) == 0;
                let (op, result): (Op, Result<Value, &str>) = match kind {
                    0 | 1 => (describe("k1"), Ok(key(state, &desc))),
                    2 | 3 => {
                        let target = if kind == 2 { "Enabled" } else { "Disabled" };
                        let op = if kind == 2 {
                            enable("k1")
                        } else {
                            disable("k1")
                        };
                        if !changeable {
                            (op, Err("KMSInvalidStateException"))
                        } else {
                            if !lost || next(2) == 0 {
                                state = target;
                            }
                            (op, Ok(done()))
                        }
                    }
                    4 => {
                        let d = format!("d{round}-{i}");
                        let op = update_description("k1", &d);
                        if !changeable {
                            (op, Err("KMSInvalidStateException"))
                        } else {
                            if !lost || next(2) == 0 {
                                desc = d;
                            }
                            (op, Ok(done()))
                        }
                    }
                    5 => {
                        if !changeable {
                            (schedule("k1"), Err("KMSInvalidStateException"))
                        } else {
                            if !lost || next(2) == 0 {
                                state = "PendingDeletion";
                            }
                            (schedule("k1"), Ok(done()))
                        }
                    }
                    6 => {
                        if changeable {
                            (cancel("k1"), Err("KMSInvalidStateException"))
                        } else {
                            if !lost || next(2) == 0 {
                                state = "Disabled";
                            }
                            (cancel("k1"), Ok(done()))
                        }
                    }
                    8 => {
                        let t = format!("p{round}-{i}");
                        let deny = next(3) == 0;
                        if !lost || next(2) == 0 {
                            in_force = (Some(t.clone()), deny);
                        }
                        (put_policy(&t, "k1", deny), Ok(done()))
                    }
                    9 => (
                        get_policy("k1"),
                        Ok(policy(in_force.0.as_deref(), in_force.1)),
                    ),
                    _ => {
                        let op = encrypt(&tag(), "k1", "h");
                        match state {
                            _ if in_force.1 => (op, Err("AccessDeniedException")),
                            "Enabled" => (op, Ok(ciphertext("h"))),
                            "Disabled" => (op, Err("DisabledException")),
                            _ => (op, Err("KMSInvalidStateException")),
                        }
                    }
                };
                match result {
                    _ if lost => b.info(p, op, invoke, complete),
                    Ok(v) => b.ok(p, op, invoke, complete, v),
                    Err(code) => b.fail(p, op, invoke, complete, code),
                }
            }
            let r = check(&b.build());
            assert_eq!(r.verdict, Verdict::Pass, "round {round}: {:?}", r.details);
        }
    }
}
