//! Conditions: the `Condition` block of a statement, and the request values it tests.
//!
//! A `Condition` block maps operators to condition keys to values:
//!
//! ```json
//! "Condition": {
//!   "StringEquals": {"kms:EncryptionContext:Department": ["Finance", "Audit"]},
//!   "ForAllValues:StringLike": {"kms:EncryptionContextKeys": "Dept*"},
//!   "Bool": {"aws:SecureTransport": true}
//! }
//! ```
//!
//! The parser flattens it into one [`Condition`] per operator and key, and a statement
//! applies only if every one of them holds. The rules are AWS's, precisely:
//!
//! - Several **values** for one key are OR'ed: the condition holds if the request value
//!   matches any of them. Several **keys** under one operator, and several operators, are
//!   AND'ed.
//! - A **negated** operator (`StringNotEquals`, `StringNotEqualsIgnoreCase`,
//!   `StringNotLike`, `NumericNotEquals`, `DateNotEquals`, `ArnNotEquals`, `ArnNotLike`)
//!   is exactly "not the positive one": it holds if *no* request value matches *any*
//!   policy value — and so it holds when the key is missing. Every other operator fails
//!   on a missing key.
//! - The **`IfExists`** suffix makes an operator hold when the key is missing; with the
//!   key present it changes nothing. `Null` takes no suffix.
//! - **`ForAnyValue:`** holds if at least one request value satisfies the operator (each
//!   value tested on its own, negation included), so it fails on an empty or missing set.
//!   **`ForAllValues:`** holds if every request value does, so it holds on an empty or
//!   missing set — the classic trap, which `Null` or a second condition closes.
//! - **`Null`** with `true` holds when the key is missing; with `false` when present.
//! - Condition **key names** are case-insensitive (including the part after
//!   `kms:EncryptionContext:`); **values** are case-sensitive except for the `IgnoreCase`
//!   operators and `Bool`.
//! - `StringLike` and the `Arn*` operators take `*` and `?` wildcards (see the pattern
//!   rules in the module docs); `ArnEquals` and `ArnLike` are the same test, as in AWS.
//! - `IpAddress` and `NotIpAddress` (for `aws:SourceIp`) take addresses or CIDR ranges
//!   (`10.0.0.0/8`, `2001:db8::/32`); an IPv4 range never holds an IPv6 address.
//! - Numbers are decimals (`-12`, `3.5`); dates are RFC 3339 text or epoch seconds. A
//!   policy value that does not parse makes the document malformed; a request value that
//!   does not parse matches nothing (so the negated operators hold).
//!
//! A key with no values (an empty list) counts as missing: the service puts a key in the
//! [`ConditionContext`] only when the request has a value for it. Unknown keys are fine in
//! a policy, as in AWS; they are simply never present.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::document::{malformed, quoted};
use super::json::Json;
use super::pattern::{arn_match, compile, glob, literal, Tok};
use super::time::{parse_instant, Instant};
use crate::error::KmsError;
use crate::key::EncryptionContext;

/// The values of the condition keys of one request: lowercased key name → values.
///
/// A key is either absent or has at least one value; inserting an empty list removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionContext {
    values: BTreeMap<String, Vec<String>>,
}

impl ConditionContext {
    /// An empty context.
    pub fn new() -> ConditionContext {
        ConditionContext::default()
    }

    /// Sets the values of `key` (any case), replacing earlier ones. An empty list removes
    /// the key.
    pub fn insert<I, S>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        if values.is_empty() {
            self.values.remove(&normalize_key(key));
        } else {
            self.values.insert(normalize_key(key), values);
        }
    }

    /// Adds one value to `key` (any case), keeping the ones it has.
    pub fn push(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .entry(normalize_key(key))
            .or_default()
            .push(value.into());
    }

    /// The values of `key` (any case); empty if the request has none.
    pub fn get(&self, key: &str) -> &[String] {
        self.values
            .get(&normalize_key(key))
            .map_or(&[], Vec::as_slice)
    }

    /// Removes `key` (any case).
    pub fn remove(&mut self, key: &str) {
        self.values.remove(&normalize_key(key));
    }

    /// Every key (lowercased) and its values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Sets `kms:EncryptionContext:<key>` for every pair and `kms:EncryptionContextKeys`
    /// to the keys, as KMS does, replacing any encryption context set before. The key part of the condition key is matched
    /// case-insensitively, like every condition key name; the values stay as given. Two
    /// pairs whose keys differ only in case give the condition key two values.
    pub fn insert_encryption_context(&mut self, context: &EncryptionContext) {
        // Replace, never merge with, a context set before (both key forms start so).
        self.values
            .retain(|k, _| !k.starts_with("kms:encryptioncontext"));
        for (k, v) in context {
            self.push(&format!("kms:EncryptionContext:{k}"), v.clone());
            self.push("kms:EncryptionContextKeys", k.clone());
        }
    }
}

/// The case-folded form of a condition key name, as a [`ConditionContext`] stores it.
pub fn normalize_key(key: &str) -> String {
    key.to_lowercase()
}

/// `ForAnyValue:` or `ForAllValues:`, the set qualifiers for multi-valued keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SetQualifier {
    /// At least one request value must satisfy the operator; an empty set fails.
    ForAnyValue,
    /// Every request value must satisfy the operator; an empty set passes.
    ForAllValues,
}

/// A condition operator without its qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BaseOperator {
    /// Exact, case-sensitive string match.
    StringEquals,
    /// Negated `StringEquals`.
    StringNotEquals,
    /// String match ignoring case.
    StringEqualsIgnoreCase,
    /// Negated `StringEqualsIgnoreCase`.
    StringNotEqualsIgnoreCase,
    /// Case-sensitive match with `*` and `?` wildcards.
    StringLike,
    /// Negated `StringLike`.
    StringNotLike,
    /// Numbers are equal.
    NumericEquals,
    /// Negated `NumericEquals`.
    NumericNotEquals,
    /// The request's number is less than the policy's.
    NumericLessThan,
    /// The request's number is at most the policy's.
    NumericLessThanEquals,
    /// The request's number is greater than the policy's.
    NumericGreaterThan,
    /// The request's number is at least the policy's.
    NumericGreaterThanEquals,
    /// The instants are equal.
    DateEquals,
    /// Negated `DateEquals`.
    DateNotEquals,
    /// The request's instant is before the policy's.
    DateLessThan,
    /// The request's instant is not after the policy's.
    DateLessThanEquals,
    /// The request's instant is after the policy's.
    DateGreaterThan,
    /// The request's instant is not before the policy's.
    DateGreaterThanEquals,
    /// Boolean match (`true`/`false`, any case).
    Bool,
    /// `true`: the key is missing; `false`: it is present.
    Null,
    /// ARN match with wildcards, component by component (same as `ArnLike`).
    ArnEquals,
    /// Negated `ArnEquals`.
    ArnNotEquals,
    /// ARN match with wildcards, component by component.
    ArnLike,
    /// Negated `ArnLike`.
    ArnNotLike,
    /// The request's IP address is in one of the policy's addresses or CIDR ranges.
    IpAddress,
    /// Negated `IpAddress`.
    NotIpAddress,
}

impl BaseOperator {
    /// Every operator.
    pub const ALL: [BaseOperator; 26] = [
        BaseOperator::StringEquals,
        BaseOperator::StringNotEquals,
        BaseOperator::StringEqualsIgnoreCase,
        BaseOperator::StringNotEqualsIgnoreCase,
        BaseOperator::StringLike,
        BaseOperator::StringNotLike,
        BaseOperator::NumericEquals,
        BaseOperator::NumericNotEquals,
        BaseOperator::NumericLessThan,
        BaseOperator::NumericLessThanEquals,
        BaseOperator::NumericGreaterThan,
        BaseOperator::NumericGreaterThanEquals,
        BaseOperator::DateEquals,
        BaseOperator::DateNotEquals,
        BaseOperator::DateLessThan,
        BaseOperator::DateLessThanEquals,
        BaseOperator::DateGreaterThan,
        BaseOperator::DateGreaterThanEquals,
        BaseOperator::Bool,
        BaseOperator::Null,
        BaseOperator::ArnEquals,
        BaseOperator::ArnNotEquals,
        BaseOperator::ArnLike,
        BaseOperator::ArnNotLike,
        BaseOperator::IpAddress,
        BaseOperator::NotIpAddress,
    ];

    /// The AWS name, e.g. `StringEquals`.
    pub fn as_str(self) -> &'static str {
        use BaseOperator::*;
        match self {
            StringEquals => "StringEquals",
            StringNotEquals => "StringNotEquals",
            StringEqualsIgnoreCase => "StringEqualsIgnoreCase",
            StringNotEqualsIgnoreCase => "StringNotEqualsIgnoreCase",
            StringLike => "StringLike",
            StringNotLike => "StringNotLike",
            NumericEquals => "NumericEquals",
            NumericNotEquals => "NumericNotEquals",
            NumericLessThan => "NumericLessThan",
            NumericLessThanEquals => "NumericLessThanEquals",
            NumericGreaterThan => "NumericGreaterThan",
            NumericGreaterThanEquals => "NumericGreaterThanEquals",
            DateEquals => "DateEquals",
            DateNotEquals => "DateNotEquals",
            DateLessThan => "DateLessThan",
            DateLessThanEquals => "DateLessThanEquals",
            DateGreaterThan => "DateGreaterThan",
            DateGreaterThanEquals => "DateGreaterThanEquals",
            Bool => "Bool",
            Null => "Null",
            ArnEquals => "ArnEquals",
            ArnNotEquals => "ArnNotEquals",
            ArnLike => "ArnLike",
            ArnNotLike => "ArnNotLike",
            IpAddress => "IpAddress",
            NotIpAddress => "NotIpAddress",
        }
    }

    /// Whether the operator is the negation of a positive one (and so holds on a missing
    /// key).
    pub fn is_negated(self) -> bool {
        use BaseOperator::*;
        matches!(
            self,
            StringNotEquals
                | StringNotEqualsIgnoreCase
                | StringNotLike
                | NumericNotEquals
                | DateNotEquals
                | ArnNotEquals
                | ArnNotLike
                | NotIpAddress
        )
    }

    fn family(self) -> Family {
        use BaseOperator::*;
        match self {
            StringEquals | StringNotEquals => Family::String(StrTest::Exact),
            StringEqualsIgnoreCase | StringNotEqualsIgnoreCase => {
                Family::String(StrTest::IgnoreCase)
            }
            StringLike | StringNotLike => Family::String(StrTest::Like),
            NumericEquals | NumericNotEquals => Family::Numeric(Cmp::Eq),
            NumericLessThan => Family::Numeric(Cmp::Lt),
            NumericLessThanEquals => Family::Numeric(Cmp::Le),
            NumericGreaterThan => Family::Numeric(Cmp::Gt),
            NumericGreaterThanEquals => Family::Numeric(Cmp::Ge),
            DateEquals | DateNotEquals => Family::Date(Cmp::Eq),
            DateLessThan => Family::Date(Cmp::Lt),
            DateLessThanEquals => Family::Date(Cmp::Le),
            DateGreaterThan => Family::Date(Cmp::Gt),
            DateGreaterThanEquals => Family::Date(Cmp::Ge),
            Bool => Family::Bool,
            Null => Family::Null,
            ArnEquals | ArnNotEquals | ArnLike | ArnNotLike => Family::Arn,
            IpAddress | NotIpAddress => Family::Ip,
        }
    }
}

/// A full condition operator: an optional set qualifier, the operator, and `IfExists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConditionOperator {
    /// `ForAnyValue:` / `ForAllValues:`, if given.
    pub set: Option<SetQualifier>,
    /// The operator itself.
    pub base: BaseOperator,
    /// Whether the name ends in `IfExists`.
    pub if_exists: bool,
}

impl ConditionOperator {
    /// Parses an operator name such as `ForAllValues:StringLikeIfExists`. Names are
    /// case-sensitive, as in AWS. `Null` takes neither a set qualifier nor `IfExists`.
    pub fn parse(name: &str) -> Option<ConditionOperator> {
        let (set, rest) = if let Some(rest) = name.strip_prefix("ForAnyValue:") {
            (Some(SetQualifier::ForAnyValue), rest)
        } else if let Some(rest) = name.strip_prefix("ForAllValues:") {
            (Some(SetQualifier::ForAllValues), rest)
        } else {
            (None, name)
        };
        let (base_name, if_exists) = match rest.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (rest, false),
        };
        let base = BaseOperator::ALL
            .into_iter()
            .find(|b| b.as_str() == base_name)?;
        if base == BaseOperator::Null && (set.is_some() || if_exists) {
            return None;
        }
        Some(ConditionOperator {
            set,
            base,
            if_exists,
        })
    }
}

impl fmt::Display for ConditionOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.set {
            Some(SetQualifier::ForAnyValue) => f.write_str("ForAnyValue:")?,
            Some(SetQualifier::ForAllValues) => f.write_str("ForAllValues:")?,
            None => {}
        }
        f.write_str(self.base.as_str())?;
        if self.if_exists {
            f.write_str("IfExists")?;
        }
        Ok(())
    }
}

/// One test of a statement's `Condition` block: an operator, a key and its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    operator: ConditionOperator,
    key: String,
    values: Vec<String>,
}

impl Condition {
    /// The operator.
    pub fn operator(&self) -> ConditionOperator {
        self.operator
    }

    /// The condition key, as written in the policy.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The policy's values (booleans and numbers in their JSON text form); any one may
    /// match.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether the condition holds for a request. With `variables`, policy variables in
    /// string and ARN values are expanded from `ctx` (2012-10-17 documents).
    pub fn holds(&self, ctx: &ConditionContext, variables: bool) -> bool {
        let request = ctx.get(&self.key);
        let op = self.operator;
        if op.base == BaseOperator::Null {
            let absent = request.is_empty();
            return self
                .values
                .iter()
                .any(|v| v.eq_ignore_ascii_case("true") == absent);
        }
        let vars = variables.then_some(ctx);
        let family = op.base.family();
        let policy: Vec<Compiled> = self
            .values
            .iter()
            .map(|v| Compiled::new(family, v, vars))
            .collect();
        // One request value against the operator: any policy value matches, negated.
        let single = |value: &str| policy.iter().any(|p| p.matches(value)) != op.base.is_negated();
        match op.set {
            None if request.is_empty() => op.if_exists || op.base.is_negated(),
            None => {
                let any = request.iter().any(|v| policy.iter().any(|p| p.matches(v)));
                any != op.base.is_negated()
            }
            Some(SetQualifier::ForAnyValue) if request.is_empty() => op.if_exists,
            Some(SetQualifier::ForAnyValue) => request.iter().any(|v| single(v)),
            Some(SetQualifier::ForAllValues) => request.iter().all(|v| single(v)),
        }
    }
}

/// Parses a statement's `Condition` block (`path` is e.g. `Statement[0].Condition`).
pub(crate) fn parse_block(path: &str, json: Json) -> Result<Vec<Condition>, KmsError> {
    let Json::Object(operators) = json else {
        return Err(malformed(
            path,
            format!("expected an object, found {}", json.kind()),
        ));
    };
    let mut out = Vec::new();
    let mut seen_ops: Vec<String> = Vec::new();
    for (op_name, block) in operators {
        let op_path = format!("{path}.{op_name}");
        if seen_ops.contains(&op_name) {
            return Err(malformed(&op_path, "duplicate condition operator"));
        }
        let Some(operator) = ConditionOperator::parse(&op_name) else {
            return Err(malformed(
                path,
                format!("unknown condition operator {}", quoted(&op_name)),
            ));
        };
        seen_ops.push(op_name);
        let Json::Object(keys) = block else {
            return Err(malformed(
                &op_path,
                format!("expected an object, found {}", block.kind()),
            ));
        };
        if keys.is_empty() {
            return Err(malformed(&op_path, "must name at least one condition key"));
        }
        let mut seen_keys: Vec<String> = Vec::new();
        for (key, value) in keys {
            let key_path = format!("{op_path}.{key}");
            check_key(&op_path, &key)?;
            let folded = normalize_key(&key);
            if seen_keys.contains(&folded) {
                return Err(malformed(
                    &key_path,
                    "duplicate condition key (key names are case-insensitive)",
                ));
            }
            seen_keys.push(folded);
            let values = parse_values(&key_path, operator.base.family(), value)?;
            out.push(Condition {
                operator,
                key,
                values,
            });
        }
    }
    Ok(out)
}

fn check_key(op_path: &str, key: &str) -> Result<(), KmsError> {
    let prefixed = key.split_once(':').is_some_and(|(prefix, name)| {
        !prefix.is_empty()
            && !name.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if prefixed {
        Ok(())
    } else {
        Err(malformed(
            op_path,
            format!(
                "condition key {} must have a service prefix, like \"kms:CallerAccount\" or \"aws:PrincipalArn\"",
                quoted(key)
            ),
        ))
    }
}

fn parse_values(path: &str, family: Family, json: Json) -> Result<Vec<String>, KmsError> {
    let items = match json {
        Json::Array(items) if items.is_empty() => {
            return Err(malformed(path, "must have at least one value"))
        }
        Json::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, j)| (format!("{path}[{i}]"), j))
            .collect(),
        other => vec![(path.to_string(), other)],
    };
    let mut out = Vec::with_capacity(items.len());
    for (item_path, item) in items {
        let text = match item {
            Json::String(s) => s,
            Json::Number(n) => n,
            Json::Bool(b) => b.to_string(),
            other => {
                return Err(malformed(
                    &item_path,
                    format!(
                        "expected a string, number or boolean (or an array of them), found {}",
                        other.kind()
                    ),
                ))
            }
        };
        let problem = match family {
            Family::Numeric(_) if parse_number(&text).is_none() => Some("is not a number"),
            Family::Date(_) if parse_instant(&text).is_none() => {
                Some("is not a date (use ISO 8601 such as 2026-01-01T00:00:00Z, or epoch seconds)")
            }
            Family::Bool | Family::Null if parse_bool(&text).is_none() => {
                Some("must be \"true\" or \"false\"")
            }
            Family::Ip if Cidr::parse(&text).is_none() => {
                Some("is not an IP address or CIDR range (such as 10.0.0.0/8 or 2001:db8::/32)")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(malformed(
                &item_path,
                format!("{} {problem}", quoted(&text)),
            ));
        }
        out.push(text);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy)]
enum Family {
    String(StrTest),
    Numeric(Cmp),
    Date(Cmp),
    Bool,
    Null,
    Arn,
    Ip,
}

#[derive(Debug, Clone, Copy)]
enum StrTest {
    Exact,
    IgnoreCase,
    Like,
}

/// How the request value must compare to the policy value.
#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds(self, request_vs_policy: Ordering) -> bool {
        match self {
            Cmp::Eq => request_vs_policy == Ordering::Equal,
            Cmp::Lt => request_vs_policy == Ordering::Less,
            Cmp::Le => request_vs_policy != Ordering::Greater,
            Cmp::Gt => request_vs_policy == Ordering::Greater,
            Cmp::Ge => request_vs_policy != Ordering::Less,
        }
    }
}

/// A policy value made ready to compare against request values.
enum Compiled {
    Exact(String),
    IgnoreCase(String),
    Like(Vec<Tok>),
    Arn(Vec<Tok>),
    Number(f64, Cmp),
    Date(Instant, Cmp),
    Bool(bool),
    Ip(Cidr),
    /// Matches nothing: a variable without a value, or (impossible after parsing) a value
    /// that does not parse.
    Nothing,
}

impl Compiled {
    fn new(family: Family, value: &str, vars: Option<&ConditionContext>) -> Compiled {
        match family {
            Family::String(test) => match (compile(value, vars), test) {
                (None, _) => Compiled::Nothing,
                (Some(p), StrTest::Exact) => Compiled::Exact(literal(&p)),
                (Some(p), StrTest::IgnoreCase) => Compiled::IgnoreCase(literal(&p).to_lowercase()),
                (Some(p), StrTest::Like) => Compiled::Like(p),
            },
            Family::Arn => compile(value, vars).map_or(Compiled::Nothing, Compiled::Arn),
            Family::Numeric(cmp) => {
                parse_number(value).map_or(Compiled::Nothing, |n| Compiled::Number(n, cmp))
            }
            Family::Date(cmp) => {
                parse_instant(value).map_or(Compiled::Nothing, |d| Compiled::Date(d, cmp))
            }
            Family::Ip => Cidr::parse(value).map_or(Compiled::Nothing, Compiled::Ip),
            Family::Bool | Family::Null => {
                parse_bool(value).map_or(Compiled::Nothing, Compiled::Bool)
            }
        }
    }

    fn matches(&self, request: &str) -> bool {
        match self {
            Compiled::Exact(p) => p == request,
            Compiled::IgnoreCase(p) => *p == request.to_lowercase(),
            Compiled::Like(p) => glob(p, request),
            Compiled::Arn(p) => arn_match(p, request),
            Compiled::Number(p, cmp) => parse_number(request)
                .and_then(|r| r.partial_cmp(p))
                .is_some_and(|o| cmp.holds(o)),
            Compiled::Date(p, cmp) => parse_instant(request).is_some_and(|r| cmp.holds(r.cmp(p))),
            Compiled::Bool(p) => parse_bool(request) == Some(*p),
            Compiled::Ip(range) => request.parse::<IpAddr>().is_ok_and(|ip| range.contains(ip)),
            Compiled::Nothing => false,
        }
    }
}

/// A decimal number: optional sign, digits, optional fraction. No exponents, no `inf`.
fn parse_number(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (body, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    s.parse().ok()
}

/// An IP address range: an address and how many leading bits of it must match.
#[derive(Debug, Clone, Copy)]
struct Cidr {
    net: IpAddr,
    prefix: u32,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (all its bits).
    fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let bits = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().ok().filter(|n| *n <= bits)?
            }
            Some(_) => return None,
        };
        Some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range. IPv4 ranges hold only IPv4 addresses, IPv6 ranges
    /// only IPv6 ones.
    fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(a)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
            _ => return false,
        };
        // Shifting by the full width (prefix 0) compares nothing: every address matches.
        let shift = bits - self.prefix;
        net.checked_shr(shift).unwrap_or(0) == ip.checked_shr(shift).unwrap_or(0)
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names() {
        for base in BaseOperator::ALL {
            let op = ConditionOperator::parse(base.as_str()).unwrap();
            assert_eq!(op.to_string(), base.as_str());
            if base != BaseOperator::Null {
                for name in [
                    format!("{}IfExists", base.as_str()),
                    format!("ForAnyValue:{}", base.as_str()),
                    format!("ForAllValues:{}IfExists", base.as_str()),
                ] {
                    assert_eq!(ConditionOperator::parse(&name).unwrap().to_string(), name);
                }
            }
        }
        for bad in [
            "NullIfExists",
            "ForAnyValue:Null",
            "stringequals",
            "StringEqual",
            "ForAnyValues:StringEquals",
            "ForAllValues:",
            "IfExists",
            "",
        ] {
            assert_eq!(ConditionOperator::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("10"), Some(10.0));
        assert_eq!(parse_number("-1.5"), Some(-1.5));
        assert_eq!(parse_number("+2"), Some(2.0));
        for bad in ["", "-", "1.", ".5", "1e3", "inf", "NaN", "0x10", " 1"] {
            assert_eq!(parse_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn context_keys_fold_case() {
        let mut ctx = ConditionContext::new();
        ctx.insert("AWS:UserName", ["Bob"]);
        assert_eq!(ctx.get("aws:username"), ["Bob"]);
        ctx.insert("aws:username", Vec::<String>::new());
        assert!(ctx.is_empty());
        let ec: EncryptionContext = [("Dept", "Finance"), ("dept", "x"), ("Project", "Y")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ctx.insert_encryption_context(&ec);
        assert_eq!(ctx.get("kms:encryptioncontext:DEPT"), ["Finance", "x"]);
        assert_eq!(
            ctx.get("kms:EncryptionContextKeys"),
            ["Dept", "Project", "dept"]
        );
    }
}
