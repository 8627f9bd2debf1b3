//! Policy documents: the JSON grammar, its parser and the parsed model.
//!
//! The grammar is AWS IAM's:
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Id": "optional",
//!   "Statement": [{
//!     "Sid": "optional, unique",
//!     "Effect": "Allow" | "Deny",
//!     "Principal" | "NotPrincipal": "*" | {"AWS": <arn or account id, or a list>, "Service": ...},
//!     "Action" | "NotAction": "kms:Encrypt" | ["kms:Gen*", ...],
//!     "Resource" | "NotResource": "*" | "<arn pattern>" | [...],
//!     "Condition": {"<operator>": {"<key>": <value or list>}}
//!   }]
//! }
//! ```
//!
//! Key policies must name a principal in every statement; principal (identity-based)
//! policies must not, since they apply to whoever they are attached to. `Version` may be
//! left out (it then means `2008-10-17`, which has no policy variables). A statement
//! without `Resource` applies to every resource. Element names are case-sensitive, and a
//! name that is unknown or given twice makes the document malformed, with a pointer to it.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::condition::{self, Condition, ConditionContext};
use super::json::Json;
use super::pattern::{arn_match, compile, glob};
use super::principal::{PrincipalId, Principals};
use crate::error::{ErrorCode, KmsError};
use crate::ids::{truncate, AccountId};

/// The largest policy document accepted, in bytes of text (AWS's 32 KB).
pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Which kind of policy a document is; it decides whether statements name principals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// A key policy (resource-based): every statement has `Principal` or `NotPrincipal`.
    Key,
    /// A principal policy (identity-based), attached to a user or role: no statement names
    /// a principal.
    Principal,
}

impl PolicyKind {
    /// How AWS's messages call this kind: `resource-based` or `identity-based`.
    pub fn aws_term(self) -> &'static str {
        match self {
            PolicyKind::Key => "resource-based",
            PolicyKind::Principal => "identity-based",
        }
    }
}

/// The policy language version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyVersion {
    /// `2008-10-17`, also what a document without `Version` means: no policy variables.
    V2008,
    /// `2012-10-17`, the current version: policy variables are expanded.
    V2012,
}

impl PolicyVersion {
    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVersion::V2008 => "2008-10-17",
            PolicyVersion::V2012 => "2012-10-17",
        }
    }
}

/// Whether a statement allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// `"Allow"`.
    Allow,
    /// `"Deny"`.
    Deny,
}

/// A statement's `Principal` or `NotPrincipal` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalElement {
    /// `Principal`: the statement applies to these principals.
    Principal(Principals),
    /// `NotPrincipal`: the statement applies to everyone else.
    NotPrincipal(Principals),
}

/// A statement's `Action` or `NotAction` element: action patterns such as `kms:Gen*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionElement {
    /// `Action`: the statement applies to actions matching any pattern.
    Action(Vec<String>),
    /// `NotAction`: the statement applies to actions matching none.
    NotAction(Vec<String>),
}

/// A statement's `Resource` or `NotResource` element: ARN patterns or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResourceElement {
    /// `Resource`: the statement applies to resources matching any pattern.
    Resource(Vec<String>),
    /// `NotResource`: the statement applies to resources matching none.
    NotResource(Vec<String>),
}

/// One statement of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    sid: Option<String>,
    effect: Effect,
    principal: Option<PrincipalElement>,
    action: ActionElement,
    resource: Option<ResourceElement>,
    conditions: Vec<Condition>,
}

impl Statement {
    /// The statement id, if given.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// Allow or Deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The principals (always present in key policies, never in principal policies).
    pub fn principal(&self) -> Option<&PrincipalElement> {
        self.principal.as_ref()
    }

    /// The actions.
    pub fn action(&self) -> &ActionElement {
        &self.action
    }

    /// The resources; `None` means every resource.
    pub fn resource(&self) -> Option<&ResourceElement> {
        self.resource.as_ref()
    }

    /// The conditions, all of which must hold.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Whether the statement covers this action, resource and condition context — every
    /// element except the principal, which the evaluator weighs separately.
    pub fn matches(
        &self,
        action: &str,
        resource: &str,
        ctx: &ConditionContext,
        version: PolicyVersion,
    ) -> bool {
        let variables = version == PolicyVersion::V2012;
        let action = action.to_lowercase();
        let action_listed = |patterns: &[String]| {
            patterns
                .iter()
                .any(|p| compile(&p.to_lowercase(), None).is_some_and(|t| glob(&t, &action)))
        };
        let action_ok = match &self.action {
            ActionElement::Action(p) => action_listed(p),
            ActionElement::NotAction(p) => !action_listed(p),
        };
        if !action_ok {
            return false;
        }
        let vars = variables.then_some(ctx);
        let resource_listed = |patterns: &[String]| {
            patterns
                .iter()
                .any(|p| compile(p, vars).is_some_and(|t| arn_match(&t, resource)))
        };
        let resource_ok = match &self.resource {
            None => true,
            Some(ResourceElement::Resource(p)) => resource_listed(p),
            Some(ResourceElement::NotResource(p)) => !resource_listed(p),
        };
        resource_ok && self.conditions.iter().all(|c| c.holds(ctx, variables))
    }
}

/// A parsed policy document, with the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    text: String,
    kind: PolicyKind,
    version: PolicyVersion,
    id: Option<String>,
    statements: Vec<Statement>,
}

impl PolicyDocument {
    /// Parses and validates a policy document of the given kind. Every fault is a
    /// `MalformedPolicyDocumentException` whose message starts with where it is
    /// (`Statement[1].Effect: ...`).
    pub fn parse(text: &str, kind: PolicyKind) -> Result<PolicyDocument, KmsError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(malformed_doc(format!(
                "Policy document is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Err(malformed_doc("Policy document is empty"));
        }
        let json = Json::parse(text)
            .map_err(|e| malformed_doc(format!("Policy document is not valid JSON: {e}")))?;
        let Json::Object(members) = json else {
            return Err(malformed_doc(format!(
                "Policy document must be a JSON object, found {}",
                json.kind()
            )));
        };
        let mut top = Fields::take("", members, &["Version", "Id", "Statement"])?;
        let version = match top.remove("Version") {
            None => PolicyVersion::V2008,
            Some(Json::String(v)) if v == "2012-10-17" => PolicyVersion::V2012,
            Some(Json::String(v)) if v == "2008-10-17" => PolicyVersion::V2008,
            Some(_) => {
                return Err(malformed(
                    "Version",
                    "must be \"2012-10-17\" or \"2008-10-17\"",
                ))
            }
        };
        let id = top.string("Id")?;
        let statements = match top.remove("Statement") {
            None => return Err(malformed("Statement", "is required")),
            Some(obj @ Json::Object(_)) => vec![("Statement".to_string(), obj)],
            Some(Json::Array(items)) if items.is_empty() => {
                return Err(malformed("Statement", "must have at least one statement"))
            }
            Some(Json::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("Statement[{i}]"), s))
                .collect(),
            Some(other) => {
                return Err(malformed(
                    "Statement",
                    format!(
                        "expected an object or an array of objects, found {}",
                        other.kind()
                    ),
                ))
            }
        };
        let mut sids = HashSet::new();
        let mut parsed = Vec::with_capacity(statements.len());
        for (path, json) in statements {
            let statement = parse_statement(&path, json, kind)?;
            if let Some(sid) = &statement.sid {
                if !sids.insert(sid.clone()) {
                    return Err(malformed(
                        &format!("{path}.Sid"),
                        format!("{} is used by another statement", quoted(sid)),
                    ));
                }
            }
            parsed.push(statement);
        }
        Ok(PolicyDocument {
            text: text.to_string(),
            kind,
            version,
            id,
            statements: parsed,
        })
    }

    /// AWS's default key policy for a key of `account`: the account (its root user, and
    /// through its principal policies everyone in it) may do everything with the key.
    /// The text is stable, pretty-printed JSON.
    pub fn default_key_policy(account: &AccountId) -> PolicyDocument {
        let root = PrincipalId::Root(account.clone());
        let text = format!(
            r#"{{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {{
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {{
        "AWS": "{root}"
      }},
      "Action": "kms:*",
      "Resource": "*"
    }}
  ]
}}"#
        );
        PolicyDocument {
            text,
            kind: PolicyKind::Key,
            version: PolicyVersion::V2012,
            id: Some("key-default-1".to_string()),
            statements: vec![Statement {
                sid: Some("Enable IAM User Permissions".to_string()),
                effect: Effect::Allow,
                principal: Some(PrincipalElement::Principal(Principals::Listed(vec![root]))),
                action: ActionElement::Action(vec!["kms:*".to_string()]),
                resource: Some(ResourceElement::Resource(vec!["*".to_string()])),
                conditions: Vec::new(),
            }],
        }
    }

    /// The document exactly as it was given (what GetKeyPolicy returns).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Key or principal policy.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The language version.
    pub fn version(&self) -> PolicyVersion {
        self.version
    }

    /// The optional policy `Id`.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The statements, in document order.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

impl fmt::Display for PolicyDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `MalformedPolicyDocumentException` pointing at `path`.
pub(crate) fn malformed(path: &str, what: impl fmt::Display) -> KmsError {
    if path.is_empty() {
        malformed_doc(what.to_string())
    } else {
        malformed_doc(format!("{path}: {what}"))
    }
}

fn malformed_doc(message: impl Into<String>) -> KmsError {
    KmsError::new(ErrorCode::MalformedPolicyDocument, message)
}

/// Caller text for a message: quoted, and shortened if long.
pub(crate) fn quoted(s: &str) -> String {
    format!("\"{}\"", truncate(s))
}

/// An object's members, by name, after checking names against the grammar.
struct Fields {
    path: String,
    members: Vec<(&'static str, Json)>,
}

impl Fields {
    fn take(
        path: &str,
        members: Vec<(String, Json)>,
        allowed: &[&'static str],
    ) -> Result<Fields, KmsError> {
        let mut out: Vec<(&'static str, Json)> = Vec::with_capacity(members.len());
        for (name, value) in members {
            let Some(known) = allowed.iter().copied().find(|a| *a == name) else {
                let hint = allowed
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(&name))
                    .map(|a| format!(" (did you mean \"{a}\"?)"))
                    .unwrap_or_default();
                let place = if path.is_empty() { "top-level " } else { "" };
                return Err(malformed(
                    path,
                    format!("unknown {place}field {}{hint}", quoted(&name)),
                ));
            };
            if out.iter().any(|(n, _)| *n == known) {
                return Err(malformed(&join(path, known), "given more than once"));
            }
            out.push((known, value));
        }
        Ok(Fields {
            path: path.to_string(),
            members: out,
        })
    }

    fn remove(&mut self, name: &str) -> Option<Json> {
        let i = self.members.iter().position(|(n, _)| *n == name)?;
        Some(self.members.swap_remove(i).1)
    }

    fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, KmsError> {
        match self.remove(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(malformed(
                &self.path(name),
                format!("expected a string, found {}", other.kind()),
            )),
        }
    }

    /// At most one of two mutually exclusive elements (`Action`/`NotAction`, ...).
    fn either(
        &mut self,
        yes: &'static str,
        no: &'static str,
    ) -> Result<Option<(&'static str, Json)>, KmsError> {
        match (self.remove(yes), self.remove(no)) {
            (Some(_), Some(_)) => Err(malformed(
                &self.path,
                format!("has both \"{yes}\" and \"{no}\"; give one"),
            )),
            (Some(j), None) => Ok(Some((yes, j))),
            (None, Some(j)) => Ok(Some((no, j))),
            (None, None) => Ok(None),
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn parse_statement(path: &str, json: Json, kind: PolicyKind) -> Result<Statement, KmsError> {
    let Json::Object(members) = json else {
        return Err(malformed(
            path,
            format!("expected an object, found {}", json.kind()),
        ));
    };
    let mut f = Fields::take(
        path,
        members,
        &[
            "Sid",
            "Effect",
            "Principal",
            "NotPrincipal",
            "Action",
            "NotAction",
            "Resource",
            "NotResource",
            "Condition",
        ],
    )?;
    let sid = f.string("Sid")?;
    let effect = match f.remove("Effect") {
        None => return Err(malformed(path, "\"Effect\" is required")),
        Some(Json::String(e)) if e == "Allow" => Effect::Allow,
        Some(Json::String(e)) if e == "Deny" => Effect::Deny,
        Some(_) => {
            return Err(malformed(
                &f.path("Effect"),
                "must be \"Allow\" or \"Deny\"",
            ))
        }
    };
    let principal = match (f.either("Principal", "NotPrincipal")?, kind) {
        (None, PolicyKind::Key) => {
            return Err(malformed(
                path,
                "\"Principal\" or \"NotPrincipal\" is required in a key policy",
            ))
        }
        (Some((name, _)), PolicyKind::Principal) => {
            return Err(malformed(
                &f.path(name),
                "not allowed in a principal (identity-based) policy",
            ))
        }
        (None, PolicyKind::Principal) => None,
        (Some((name, json)), PolicyKind::Key) => {
            let principals = parse_principals(&f.path(name), json)?;
            Some(if name == "Principal" {
                PrincipalElement::Principal(principals)
            } else {
                PrincipalElement::NotPrincipal(principals)
            })
        }
    };
    let action = match f.either("Action", "NotAction")? {
        None => return Err(malformed(path, "\"Action\" or \"NotAction\" is required")),
        Some((name, json)) => {
            let actions = string_list(&f.path(name), json, check_action)?;
            if name == "Action" {
                ActionElement::Action(actions)
            } else {
                ActionElement::NotAction(actions)
            }
        }
    };
    let resource = match f.either("Resource", "NotResource")? {
        None => None,
        Some((name, json)) => {
            let resources = string_list(&f.path(name), json, check_resource)?;
            Some(if name == "Resource" {
                ResourceElement::Resource(resources)
            } else {
                ResourceElement::NotResource(resources)
            })
        }
    };
    let conditions = match f.remove("Condition") {
        None => Vec::new(),
        Some(json) => condition::parse_block(&f.path("Condition"), json)?,
    };
    Ok(Statement {
        sid,
        effect,
        principal,
        action,
        resource,
        conditions,
    })
}

/// A string or a non-empty array of strings, each checked by `check`.
fn string_list(
    path: &str,
    json: Json,
    check: fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, KmsError> {
    let items: Vec<(String, Json)> = match json {
        Json::Array(items) if items.is_empty() => {
            return Err(malformed(path, "must not be an empty array"))
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
        let Json::String(s) = item else {
            return Err(malformed(
                &item_path,
                format!("expected a string, found {}", item.kind()),
            ));
        };
        check(&s).map_err(|why| malformed(&item_path, why))?;
        out.push(s);
    }
    Ok(out)
}

/// `*`, or `<service>:<action pattern>` such as `kms:Encrypt` or `kms:Gen*`.
fn check_action(a: &str) -> Result<(), String> {
    if a == "*" {
        return Ok(());
    }
    let Some((service, name)) = a.split_once(':') else {
        return Err(format!(
            "{} must have a service prefix, like \"kms:Encrypt\" (or be \"*\")",
            quoted(a)
        ));
    };
    if service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!("{}: bad service prefix", quoted(a)));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?')
    {
        return Err(format!(
            "{}: an action name has letters, digits and the wildcards * and ?",
            quoted(a)
        ));
    }
    Ok(())
}

/// `*` or an ARN pattern.
fn check_resource(r: &str) -> Result<(), String> {
    if r == "*" || r.starts_with("arn:") {
        Ok(())
    } else {
        Err(format!("{} must be \"*\" or an ARN", quoted(r)))
    }
}

fn parse_principals(path: &str, json: Json) -> Result<Principals, KmsError> {
    let members =
        match json {
            Json::String(s) if s == "*" => return Ok(Principals::Any),
            Json::Object(members) if !members.is_empty() => members,
            _ => return Err(malformed(
                path,
                "must be \"*\" or an object such as {\"AWS\": \"<principal ARN or account id>\"}",
            )),
        };
    let mut any = false;
    let mut ids = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in members {
        let entry_path = format!("{path}.{name}");
        if seen.contains(&name) {
            return Err(malformed(&entry_path, "given more than once"));
        }
        seen.push(name.clone());
        match name.as_str() {
            "AWS" => {
                let check = |p: &str| match p {
                    "*" => Ok(()),
                    p => PrincipalId::parse_reason(p).map(|_| ()),
                };
                for principal in string_list(&entry_path, value, check)? {
                    if principal == "*" {
                        any = true;
                    } else {
                        let id = PrincipalId::parse_reason(&principal)
                            .map_err(|why| malformed(&entry_path, why))?;
                        ids.push(id);
                    }
                }
            }
            "Service" => {
                for service in string_list(&entry_path, value, check_service)? {
                    ids.push(PrincipalId::Service(service));
                }
            }
            other => {
                return Err(malformed(
                    path,
                    format!(
                        "principal type {} is not supported (use \"AWS\" or \"Service\")",
                        quoted(other)
                    ),
                ))
            }
        }
    }
    Ok(if any {
        Principals::Any
    } else {
        Principals::Listed(ids)
    })
}

/// A service principal name such as `logs.keyraft.internal`.
fn check_service(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a service principal name", quoted(s)))
    }
}
