//! Table tests: `testdata/evaluate.json` (policy × request × decision),
//! `testdata/conditions.json` (every condition operator) and `testdata/parse.json`
//! (the grammar, and the pointer of every malformed-document message). Each table says
//! in its `about` how to read it; the harness here only feeds it through the public API
//! and reports every failing row at once.

use std::collections::BTreeMap;

use serde_json::Value;

use super::time::parse_instant;
use super::*;
use crate::error::ErrorCode;
use crate::ids::AccountId;
use crate::key::EncryptionContext;

const EVALUATE: &str = include_str!("testdata/evaluate.json");
const CONDITIONS: &str = include_str!("testdata/conditions.json");
const PARSE: &str = include_str!("testdata/parse.json");

const BOB: &str = "arn:keyraft:iam::111122223333:user/bob";
const KEY: &str = "arn:keyraft:dev-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

fn table(text: &str) -> Value {
    serde_json::from_str(text).expect("table is valid JSON")
}

fn str_field<'a>(case: &'a Value, name: &str) -> Option<&'a str> {
    case.get(name).and_then(Value::as_str)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect(),
        Value::String(s) => vec![s.clone()],
        other => panic!("expected a string or a list of strings, found {other}"),
    }
}

fn encryption_context(v: &Value) -> EncryptionContext {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Fills a request's context from a table's `{key: value(s), "$ec": {...}}` object.
fn fill_context(ctx: &mut ConditionContext, spec: &Value) {
    for (key, value) in spec.as_object().unwrap() {
        if key == "$ec" {
            ctx.insert_encryption_context(&encryption_context(value));
        } else {
            ctx.insert(key, strings(value));
        }
    }
}

fn decision_name(d: &Decision) -> String {
    match d {
        Decision::Allow(AllowedBy::KeyPolicy) => "allow:key".into(),
        Decision::Allow(AllowedBy::PrincipalPolicy) => "allow:principal".into(),
        Decision::Allow(AllowedBy::Grant) => "allow:grant".into(),
        Decision::Allow(AllowedBy::AccountRoot) => "allow:root".into(),
        Decision::ExplicitDeny(s) if s.kind == PolicyKind::Key => "deny:explicit:key".into(),
        Decision::ExplicitDeny(_) => "deny:explicit:principal".into(),
        Decision::ImplicitDeny {
            missing: PolicyKind::Key,
        } => "deny:implicit:key".into(),
        Decision::ImplicitDeny {
            missing: PolicyKind::Principal,
        } => "deny:implicit:principal".into(),
    }
}

fn report(failures: Vec<String>, rows: usize) {
    assert!(
        failures.is_empty(),
        "{} of {rows} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn evaluate_table() {
    let t = table(EVALUATE);
    let principals = t["principals"].as_object().unwrap();
    let policies = t["policies"].as_object().unwrap();
    let parse = |name: &str, kind| {
        let doc = policies
            .get(name)
            .unwrap_or_else(|| panic!("no policy {name}"));
        PolicyDocument::parse(&doc.to_string(), kind)
            .unwrap_or_else(|e| panic!("policy {name}: {e}"))
    };
    assert_eq!(t["key_arn"], KEY);
    let cases = t["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let name = str_field(case, "name").unwrap();
        let key_policy = str_field(case, "key").map(|n| parse(n, PolicyKind::Key));
        let principal_policies: Vec<PolicyDocument> = case
            .get("principal")
            .map(strings)
            .unwrap_or_default()
            .iter()
            .map(|n| parse(n, PolicyKind::Principal))
            .collect();
        let caller = str_field(case, "caller").unwrap_or("bob");
        let caller = principals
            .get(caller)
            .and_then(Value::as_str)
            .unwrap_or(caller);
        let default_resource = if key_policy.is_some() {
            KEY
        } else {
            ANY_RESOURCE
        };
        let mut req = AuthzRequest::new(
            AuthzPrincipal::parse(caller).unwrap(),
            str_field(case, "action").unwrap_or("kms:Encrypt"),
            str_field(case, "resource").unwrap_or(default_resource),
        );
        if let Some(ctx) = case.get("context") {
            fill_context(&mut req.context, ctx);
        }
        if let Some(ec) = case.get("ec") {
            req = req.with_encryption_context(&encryption_context(ec));
        }
        if let Some(time) = str_field(case, "time") {
            let secs = parse_instant(time).unwrap().secs;
            req = req.with_time_ms(u64::try_from(secs).unwrap() * 1000);
        }
        let grant = case.get("grant").and_then(Value::as_bool).unwrap_or(false);
        let refs: Vec<&PolicyDocument> = principal_policies.iter().collect();
        let decision = evaluate(key_policy.as_ref(), &refs, grant, &req);
        let got = decision_name(&decision);
        let want = str_field(case, "expect").unwrap();
        if got != want {
            failures.push(format!("  {name}: expected {want}, got {decision:?}"));
        }
        if let Some(sid) = str_field(case, "sid") {
            match &decision {
                Decision::ExplicitDeny(s) if s.sid.as_deref() == Some(sid) => {}
                other => failures.push(format!("  {name}: expected Sid {sid}, got {other:?}")),
            }
        }
        // Whatever the outcome, a denial renders an AWS-style message.
        if let Some(message) = decision.denial_message(&req) {
            assert!(message.starts_with(&format!("User: {} is not authorized", caller)));
        }
    }
    report(failures, cases.len());
}

#[test]
fn conditions_table() {
    let t = table(CONDITIONS);
    let cases = t["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut rows = 0;
    for case in cases {
        let name = str_field(case, "name").unwrap();
        let version = str_field(case, "version").unwrap_or("2012-10-17");
        let doc = serde_json::json!({
            "Version": version,
            "Statement": {"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": case["condition"]}
        });
        let policy = PolicyDocument::parse(&doc.to_string(), PolicyKind::Principal)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, check) in case["checks"].as_array().unwrap().iter().enumerate() {
            rows += 1;
            let mut req =
                AuthzRequest::new(AuthzPrincipal::parse(BOB).unwrap(), "kms:Encrypt", KEY);
            req.context = ConditionContext::new();
            fill_context(&mut req.context, &check[0]);
            let want = check[1].as_bool().unwrap();
            let got = evaluate(None, &[&policy], false, &req).is_allowed();
            if got != want {
                failures.push(format!(
                    "  {name} [check {i}] {}: expected {want}, got {got}",
                    check[0]
                ));
            }
        }
    }
    report(failures, rows);
}

/// Every operator, with and without `IfExists` and set qualifiers, on a missing key and
/// on present ones: the rules of the module docs, checked exhaustively rather than by
/// example.
#[test]
fn every_operator_form_on_missing_and_present_keys() {
    use condition::BaseOperator;
    let sample = |base: BaseOperator| match base.as_str() {
        s if s.starts_with("String") => ("x", ["x", "y"]),
        s if s.starts_with("Numeric") => ("1", ["1", "2"]),
        s if s.starts_with("Date") => ("1970-01-01T00:00:01Z", ["1", "2"]),
        s if s.ends_with("IpAddress") => ("10.0.0.0/8", ["10.1.2.3", "192.168.0.1"]),
        s if s.starts_with("Arn") => (
            "arn:keyraft:iam::111122223333:root",
            ["arn:keyraft:iam::111122223333:root", "arn:x"],
        ),
        _ => ("true", ["true", "false"]),
    };
    let holds = |op: &str, value: &str, request: &[&str]| {
        let doc = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": {"Effect": "Allow", "Action": "*", "Condition": {op: {"test:key": value}}}
        });
        let policy = PolicyDocument::parse(&doc.to_string(), PolicyKind::Principal)
            .unwrap_or_else(|e| panic!("{op}: {e}"));
        let mut req = AuthzRequest::new(AuthzPrincipal::parse(BOB).unwrap(), "kms:Encrypt", "*");
        req.context = ConditionContext::new();
        req.context.insert("TEST:Key", request.iter().copied());
        evaluate(None, &[&policy], false, &req).is_allowed()
    };
    let mut forms = 0;
    for base in BaseOperator::ALL {
        let (value, present) = sample(base);
        let name = base.as_str();
        if base == BaseOperator::Null {
            assert!(holds(name, "true", &[]) && !holds(name, "true", &["x"]));
            assert!(!holds(name, "false", &[]) && holds(name, "false", &["x"]));
            forms += 1;
            continue;
        }
        // Missing key: negated operators hold, others fail; IfExists and ForAllValues
        // always hold; ForAnyValue fails unless IfExists.
        assert_eq!(holds(name, value, &[]), base.is_negated(), "{name}");
        assert!(
            holds(&format!("{name}IfExists"), value, &[]),
            "{name}IfExists"
        );
        assert!(
            holds(&format!("ForAllValues:{name}"), value, &[]),
            "ForAllValues:{name}"
        );
        assert!(
            !holds(&format!("ForAnyValue:{name}"), value, &[]),
            "ForAnyValue:{name}"
        );
        assert!(holds(&format!("ForAnyValue:{name}IfExists"), value, &[]));
        assert!(holds(&format!("ForAllValues:{name}IfExists"), value, &[]));
        // Present keys: IfExists changes nothing, and a negated operator is exactly the
        // negation of its positive twin.
        for request in [&present[..1], &present[1..], &present[..]] {
            let plain = holds(name, value, request);
            assert_eq!(
                holds(&format!("{name}IfExists"), value, request),
                plain,
                "{name} {request:?}"
            );
            for set in ["ForAnyValue:", "ForAllValues:"] {
                assert_eq!(
                    holds(&format!("{set}{name}"), value, request),
                    holds(&format!("{set}{name}IfExists"), value, request),
                    "{set}{name} {request:?}"
                );
            }
            if let Some(positive) = name
                .strip_prefix("StringNot")
                .map(|r| format!("String{r}"))
                .or_else(|| {
                    name.strip_prefix("NumericNot")
                        .map(|r| format!("Numeric{r}"))
                })
                .or_else(|| name.strip_prefix("DateNot").map(|r| format!("Date{r}")))
                .or_else(|| name.strip_prefix("ArnNot").map(|r| format!("Arn{r}")))
                .or_else(|| name.strip_prefix("Not").map(str::to_string))
            {
                assert_eq!(
                    plain,
                    !holds(&positive, value, request),
                    "{name} {request:?}"
                );
            }
        }
        forms += 6;
    }
    assert_eq!(forms, 25 * 6 + 1);
}

#[test]
fn parse_table() {
    let t = table(PARSE);
    let cases = t["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let name = str_field(case, "name").unwrap();
        let text = match str_field(case, "text") {
            Some(text) => text.to_string(),
            None => case["doc"].to_string(),
        };
        let kind = match str_field(case, "kind") {
            Some("principal") => PolicyKind::Principal,
            _ => PolicyKind::Key,
        };
        let result = PolicyDocument::parse(&text, kind);
        match (str_field(case, "error"), result) {
            (None, Ok(doc)) => {
                if doc.text() != text {
                    failures.push(format!("  {name}: text not kept verbatim"));
                }
            }
            (None, Err(e)) => failures.push(format!("  {name}: expected valid, got {e}")),
            (Some(want), Ok(_)) => failures.push(format!("  {name}: expected error {want:?}")),
            (Some(want), Err(e)) => {
                let contains = str_field(case, "contains").unwrap_or("");
                if e.code != ErrorCode::MalformedPolicyDocument
                    || !e.message.starts_with(want)
                    || !e.message.contains(contains)
                {
                    failures.push(format!(
                        "  {name}: expected {want:?} (containing {contains:?}), got {e}"
                    ));
                }
            }
        }
    }
    report(failures, cases.len());
}

#[test]
fn size_limit_is_32_kib_of_text() {
    let skeleton = |pad: usize| {
        format!(
            r#"{{"Statement": {{"Sid": "{}", "Effect": "Allow", "Principal": "*", "Action": "*"}}}}"#,
            "x".repeat(pad)
        )
    };
    let base = skeleton(0).len();
    let exact = skeleton(MAX_POLICY_BYTES - base);
    assert_eq!(exact.len(), 32_768);
    assert!(PolicyDocument::parse(&exact, PolicyKind::Key).is_ok());
    let over = skeleton(MAX_POLICY_BYTES - base + 1);
    let err = PolicyDocument::parse(&over, PolicyKind::Key).unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedPolicyDocument);
    assert_eq!(
        err.message,
        "Policy document is 32769 bytes; the limit is 32768"
    );
    // Bytes, not characters: 'é' is two bytes.
    let multibyte = skeleton(0).replace(
        "\"Sid\": \"\"",
        &format!("\"Sid\": \"{}\"", "é".repeat(16_400)),
    );
    assert!(multibyte.chars().count() < MAX_POLICY_BYTES && multibyte.len() > MAX_POLICY_BYTES);
    assert!(PolicyDocument::parse(&multibyte, PolicyKind::Key).is_err());
}

#[test]
fn default_key_policy_is_the_aws_default() {
    let account = AccountId::parse("111122223333").unwrap();
    let doc = PolicyDocument::default_key_policy(&account);
    assert_eq!(
        doc.text(),
        r#"{
  "Version": "2012-10-17",
  "Id": "key-default-1",
  "Statement": [
    {
      "Sid": "Enable IAM User Permissions",
      "Effect": "Allow",
      "Principal": {
        "AWS": "arn:keyraft:iam::111122223333:root"
      },
      "Action": "kms:*",
      "Resource": "*"
    }
  ]
}"#
    );
    // The text parses back into exactly the model built beside it.
    assert_eq!(
        PolicyDocument::parse(doc.text(), PolicyKind::Key).unwrap(),
        doc
    );
    assert_eq!(doc.version(), PolicyVersion::V2012);
    assert_eq!(doc.id(), Some("key-default-1"));
    assert_eq!(
        doc.statements()[0].sid(),
        Some("Enable IAM User Permissions")
    );
    // And it does what it says: the root user directly, users through their policies.
    let root = AuthzRequest::new(
        AuthzPrincipal::parse("111122223333").unwrap(),
        "kms:PutKeyPolicy",
        KEY,
    );
    assert_eq!(
        evaluate(Some(&doc), &[], false, &root),
        Decision::Allow(AllowedBy::KeyPolicy)
    );
}

#[test]
fn documents_round_trip_through_serde() {
    let t = table(PARSE);
    for case in t["cases"].as_array().unwrap() {
        if !case["error"].is_null() {
            continue;
        }
        let kind = match str_field(case, "kind") {
            Some("principal") => PolicyKind::Principal,
            _ => PolicyKind::Key,
        };
        let doc = PolicyDocument::parse(&case["doc"].to_string(), kind).unwrap();
        let json = serde_json::to_string(&doc).unwrap();
        let back: PolicyDocument = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }
}

#[test]
fn version_defaults_to_2008() {
    let doc = PolicyDocument::parse(
        r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "*"}}"#,
        PolicyKind::Key,
    )
    .unwrap();
    assert_eq!(doc.version(), PolicyVersion::V2008);
    assert_eq!(doc.kind(), PolicyKind::Key);
    assert_eq!(doc.id(), None);
    let s = &doc.statements()[0];
    assert_eq!(s.effect(), Effect::Allow);
    assert_eq!(
        s.principal(),
        Some(&PrincipalElement::Principal(Principals::Any))
    );
    assert_eq!(s.resource(), None);
    assert_eq!(s.action(), &ActionElement::Action(vec!["*".into()]));
}

#[test]
fn denial_messages_use_aws_phrasing() {
    let key_policy = PolicyDocument::parse(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "NoDecrypt", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}]}"#,
        PolicyKind::Key,
    )
    .unwrap();
    let deny_encrypt = PolicyDocument::parse(
        r#"{"Version": "2012-10-17", "Statement": {"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"}}"#,
        PolicyKind::Principal,
    )
    .unwrap();
    let bob = || AuthzPrincipal::parse(BOB).unwrap();
    let message = |key: Option<&PolicyDocument>, iam: &[&PolicyDocument], action: &str| {
        let resource = if key.is_some() { KEY } else { ANY_RESOURCE };
        let req = AuthzRequest::new(bob(), action, resource);
        let err = evaluate(key, iam, false, &req)
            .into_result(&req)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::AccessDenied);
        err.message
    };
    assert_eq!(
        message(Some(&key_policy), &[], "kms:Decrypt"),
        format!("User: {BOB} is not authorized to perform: kms:Decrypt on resource: {KEY} with an explicit deny in a resource-based policy")
    );
    assert_eq!(
        message(Some(&key_policy), &[&deny_encrypt], "kms:Encrypt"),
        format!("User: {BOB} is not authorized to perform: kms:Encrypt on resource: {KEY} with an explicit deny in an identity-based policy")
    );
    assert_eq!(
        message(Some(&key_policy), &[], "kms:Encrypt"),
        format!("User: {BOB} is not authorized to perform: kms:Encrypt on resource: {KEY} because no identity-based policy allows the kms:Encrypt action")
    );
    let other_account_key = KEY.replace("111122223333", "444455556666");
    let carol_req = AuthzRequest::new(
        AuthzPrincipal::parse("arn:keyraft:iam::444455556666:user/carol").unwrap(),
        "kms:Encrypt",
        KEY,
    );
    assert_eq!(
        evaluate(Some(&key_policy), &[], false, &carol_req).denial_message(&carol_req),
        Some(format!("User: arn:keyraft:iam::444455556666:user/carol is not authorized to perform: kms:Encrypt on resource: {KEY} because no resource-based policy allows the kms:Encrypt action"))
    );
    assert_ne!(other_account_key, KEY);
    assert_eq!(
        message(None, &[], "kms:CreateKey"),
        format!("User: {BOB} is not authorized to perform: kms:CreateKey on resource: * because no identity-based policy allows the kms:CreateKey action")
    );
    let ok = AuthzRequest::new(
        AuthzPrincipal::parse("111122223333").unwrap(),
        "kms:CreateKey",
        "*",
    );
    assert_eq!(
        evaluate(None, &[], false, &ok).into_result(&ok),
        Ok(AllowedBy::AccountRoot)
    );
}

#[test]
fn explicit_deny_names_the_statement() {
    let allow = PolicyDocument::parse(
        r#"{"Statement": {"Effect": "Allow", "Action": "*"}}"#,
        PolicyKind::Principal,
    )
    .unwrap();
    let deny = PolicyDocument::parse(
        r#"{"Statement": [{"Effect": "Allow", "Action": "*"}, {"Sid": "Stop", "Effect": "Deny", "Action": "kms:*"}]}"#,
        PolicyKind::Principal,
    )
    .unwrap();
    let req = AuthzRequest::new(AuthzPrincipal::parse(BOB).unwrap(), "kms:ListKeys", "*");
    assert_eq!(
        evaluate(None, &[&allow, &deny], false, &req),
        Decision::ExplicitDeny(StatementRef {
            kind: PolicyKind::Principal,
            policy: 1,
            statement: 1,
            sid: Some("Stop".into()),
        })
    );
}

#[test]
fn request_builders_fill_condition_keys() {
    let session =
        AuthzPrincipal::parse("arn:keyraft:sts::111122223333:assumed-role/admin/s1").unwrap();
    let ec: EncryptionContext = BTreeMap::from([("Dept".to_string(), "Finance".to_string())]);
    let req = AuthzRequest::new(session, "kms:Decrypt", KEY)
        .with_encryption_context(&ec)
        .with_time_ms(1_767_225_600_999)
        .with_value("kms:ViaService", ["s3.dev-1.keyraft"]);
    let get = |k: &str| req.context.get(k).to_vec();
    assert_eq!(
        get("aws:PrincipalArn"),
        ["arn:keyraft:iam::111122223333:role/admin"]
    );
    assert_eq!(get("aws:PrincipalType"), ["AssumedRole"]);
    assert_eq!(get("aws:PrincipalAccount"), ["111122223333"]);
    assert_eq!(get("kms:CallerAccount"), ["111122223333"]);
    assert!(get("aws:username").is_empty(), "sessions have no user name");
    assert_eq!(get("kms:EncryptionContext:dept"), ["Finance"]);
    assert_eq!(get("kms:EncryptionContextKeys"), ["Dept"]);
    assert_eq!(get("aws:CurrentTime"), ["2026-01-01T00:00:00Z"]);
    assert_eq!(get("aws:EpochTime"), ["1767225600"]);
    assert_eq!(get("kms:viaservice"), ["s3.dev-1.keyraft"]);

    let user = AuthzRequest::new(AuthzPrincipal::parse(BOB).unwrap(), "kms:Encrypt", KEY);
    assert_eq!(user.context.get("aws:username"), ["bob"]);
    assert_eq!(user.context.get("aws:PrincipalType"), ["User"]);

    let meta = crate::KeyMetadata {
        key_id: crate::KeyId::parse("1234abcd-12ab-34cd-56ef-1234567890ab").unwrap(),
        arn: KEY.to_string(),
        account: AccountId::parse("111122223333").unwrap(),
        description: String::new(),
        key_state: crate::KeyState::Enabled,
        key_spec: crate::KeySpec::Hmac256,
        key_usage: crate::KeyUsage::GenerateVerifyMac,
        origin: crate::Origin::External,
        key_manager: crate::KeyManager::Customer,
        creation_date_ms: 0,
        epoch: 0,
        current_version: 1,
        deletion_date_ms: None,
        rotation_period_days: None,
        next_rotation_ms: None,
        valid_to_ms: None,
    };
    let keyed = AuthzRequest::new(AuthzPrincipal::parse(BOB).unwrap(), "kms:GenerateMac", "*")
        .with_key(&meta);
    assert_eq!(keyed.resource, KEY);
    assert_eq!(keyed.context.get("kms:KeySpec"), ["HMAC_256"]);
    assert_eq!(keyed.context.get("kms:KeyUsage"), ["GENERATE_VERIFY_MAC"]);
    assert_eq!(keyed.context.get("kms:KeyOrigin"), ["EXTERNAL"]);
}

mod grants {
    use super::*;
    use crate::error::KmsError;

    const ALICE: &str = "arn:keyraft:iam::111122223333:user/alice";
    const ROLE: &str = "arn:keyraft:iam::111122223333:role/app";
    const SESSION: &str = "arn:keyraft:sts::111122223333:assumed-role/app/s1";

    fn ec(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn equals(pairs: &[(&str, &str)]) -> GrantConstraints {
        GrantConstraints {
            encryption_context_equals: Some(ec(pairs)),
            encryption_context_subset: None,
        }
    }

    fn subset(pairs: &[(&str, &str)]) -> GrantConstraints {
        GrantConstraints {
            encryption_context_equals: None,
            encryption_context_subset: Some(ec(pairs)),
        }
    }

    fn allows(grant: &Grant, who: &str, op: GrantOperation, context: &EncryptionContext) -> bool {
        grant.allows(&GrantRequest {
            principal: &AuthzPrincipal::parse(who).unwrap(),
            operation: op,
            encryption_context: context,
            new_grant: None,
        })
    }

    #[test]
    fn operation_names_round_trip() {
        for op in GrantOperation::ALL {
            assert_eq!(GrantOperation::parse(op.as_str()), Ok(op));
            assert_eq!(op.action(), format!("kms:{op}"));
        }
        let err = GrantOperation::parse("decrypt").unwrap_err();
        assert_eq!(err.code, ErrorCode::Validation);
        assert!(
            err.message.contains("[Decrypt, Encrypt,"),
            "{}",
            err.message
        );
        assert_eq!(
            GrantOperation::ALL
                .iter()
                .filter(|o| o.allows_constraints())
                .count(),
            10
        );
    }

    #[test]
    fn construction_validates() {
        use GrantOperation::*;
        let v = |r: Result<Grant, KmsError>| r.unwrap_err().code;
        assert_eq!(
            v(Grant::new("bob", &[Decrypt], None)),
            ErrorCode::Validation
        );
        assert_eq!(v(Grant::new(BOB, &[], None)), ErrorCode::Validation);
        assert_eq!(
            v(Grant::new(
                BOB,
                &[Decrypt, Sign],
                Some(subset(&[("a", "b")]))
            )),
            ErrorCode::Validation
        );
        for op in [
            Sign,
            Verify,
            GetPublicKey,
            DescribeKey,
            GenerateMac,
            VerifyMac,
        ] {
            let err = Grant::new(BOB, &[op], Some(equals(&[]))).unwrap_err();
            assert!(err.message.contains(op.as_str()), "{}", err.message);
        }
        // Constraints are fine with operations that take a context, and CreateGrant and
        // RetireGrant; empty constraints are no constraints.
        let g = Grant::new(
            BOB,
            &[
                Decrypt,
                GenerateDataKeyPair,
                ReEncryptTo,
                CreateGrant,
                RetireGrant,
                Decrypt,
            ],
            Some(subset(&[("a", "b")])),
        )
        .unwrap();
        assert_eq!(g.operations().len(), 5);
        let g = Grant::new(BOB, &[Sign], Some(GrantConstraints::default())).unwrap();
        assert_eq!(g.constraints(), None);
        assert_eq!(g.grantee_principal(), BOB);
        assert!(Grant::new("111122223333", &[Encrypt], None).is_ok());
        assert!(Grant::new(ROLE, &[Encrypt], None).is_ok());
    }

    #[test]
    fn grantee_and_operation() {
        use GrantOperation::*;
        let g = Grant::new(BOB, &[Encrypt, Decrypt], None).unwrap();
        let none = ec(&[]);
        assert!(allows(&g, BOB, Encrypt, &none));
        assert!(allows(&g, BOB, Decrypt, &ec(&[("any", "thing")])));
        assert!(!allows(&g, BOB, GenerateDataKey, &none));
        assert!(!allows(&g, ALICE, Encrypt, &none));
        assert!(
            !allows(&g, "111122223333", Encrypt, &none),
            "root is not bob"
        );
        let role = Grant::new(ROLE, &[Encrypt], None).unwrap();
        assert!(
            allows(&role, SESSION, Encrypt, &none),
            "role grants cover sessions"
        );
        assert!(!allows(
            &role,
            "arn:keyraft:sts::111122223333:assumed-role/other/s1",
            Encrypt,
            &none
        ));
        let account = Grant::new("111122223333", &[Encrypt], None).unwrap();
        assert!(allows(
            &account,
            "arn:keyraft:iam::111122223333:root",
            Encrypt,
            &none
        ));
        assert!(!allows(&account, BOB, Encrypt, &none));
    }

    #[test]
    fn encryption_context_equals() {
        use GrantOperation::*;
        let g = Grant::new(
            BOB,
            &[Decrypt, RetireGrant],
            Some(equals(&[("Dept", "Finance")])),
        )
        .unwrap();
        assert!(allows(&g, BOB, Decrypt, &ec(&[("Dept", "Finance")])));
        assert!(!allows(
            &g,
            BOB,
            Decrypt,
            &ec(&[("Dept", "Finance"), ("x", "y")])
        ));
        assert!(!allows(&g, BOB, Decrypt, &ec(&[("Dept", "finance")])));
        assert!(!allows(&g, BOB, Decrypt, &ec(&[("dept", "Finance")])));
        assert!(!allows(&g, BOB, Decrypt, &ec(&[])));
        assert!(allows(&g, BOB, RetireGrant, &ec(&[])), "no context to test");
        let empty = Grant::new(BOB, &[Encrypt], Some(equals(&[]))).unwrap();
        assert!(allows(&empty, BOB, Encrypt, &ec(&[])));
        assert!(!allows(&empty, BOB, Encrypt, &ec(&[("a", "b")])));
    }

    #[test]
    fn encryption_context_subset() {
        use GrantOperation::*;
        let g = Grant::new(
            BOB,
            &[GenerateDataKey],
            Some(subset(&[("Dept", "Finance"), ("Env", "prod")])),
        )
        .unwrap();
        assert!(allows(
            &g,
            BOB,
            GenerateDataKey,
            &ec(&[("Dept", "Finance"), ("Env", "prod")])
        ));
        assert!(allows(
            &g,
            BOB,
            GenerateDataKey,
            &ec(&[("Dept", "Finance"), ("Env", "prod"), ("Extra", "1")])
        ));
        assert!(!allows(
            &g,
            BOB,
            GenerateDataKey,
            &ec(&[("Dept", "Finance")])
        ));
        assert!(!allows(
            &g,
            BOB,
            GenerateDataKey,
            &ec(&[("Dept", "Finance"), ("Env", "dev")])
        ));
        let both = GrantConstraints {
            encryption_context_equals: Some(ec(&[("a", "1"), ("b", "2")])),
            encryption_context_subset: Some(ec(&[("a", "1")])),
        };
        let g = Grant::new(BOB, &[Encrypt], Some(both)).unwrap();
        assert!(allows(&g, BOB, Encrypt, &ec(&[("a", "1"), ("b", "2")])));
        assert!(!allows(&g, BOB, Encrypt, &ec(&[("a", "1")])));
    }

    #[test]
    fn create_grant_may_not_widen() {
        use GrantOperation::*;
        let parent = Grant::new(
            BOB,
            &[Decrypt, Encrypt, CreateGrant],
            Some(subset(&[("Dept", "Finance")])),
        )
        .unwrap();
        let bob = AuthzPrincipal::parse(BOB).unwrap();
        let none = ec(&[]);
        let create = |child: Option<&Grant>| {
            parent.allows(&GrantRequest {
                principal: &bob,
                operation: CreateGrant,
                encryption_context: &none,
                new_grant: child,
            })
        };
        let child = |ops: &[GrantOperation], c: Option<GrantConstraints>| {
            Grant::new(ALICE, ops, c).unwrap()
        };
        assert!(!create(None), "the new grant is needed to decide");
        assert!(create(Some(&child(
            &[Decrypt],
            Some(subset(&[("Dept", "Finance")]))
        ))));
        assert!(create(Some(&child(
            &[Decrypt],
            Some(subset(&[("Dept", "Finance"), ("Env", "prod")]))
        ))));
        assert!(create(Some(&child(
            &[Decrypt, Encrypt],
            Some(equals(&[("Dept", "Finance"), ("Env", "prod")]))
        ))));
        assert!(!create(Some(&child(&[Decrypt], None))), "unconstrained");
        assert!(!create(Some(&child(
            &[Decrypt],
            Some(subset(&[("Env", "prod")]))
        ))));
        assert!(!create(Some(&child(
            &[Decrypt],
            Some(equals(&[("Env", "prod")]))
        ))));
        assert!(
            !create(Some(&child(
                &[Decrypt, GenerateDataKey],
                Some(subset(&[("Dept", "Finance")]))
            ))),
            "an operation the parent lacks"
        );
        // An unconstrained parent may delegate anything it has, constrained or not.
        let open = Grant::new(BOB, &[Decrypt, CreateGrant], None).unwrap();
        assert!(open.allows(&GrantRequest {
            principal: &bob,
            operation: CreateGrant,
            encryption_context: &none,
            new_grant: Some(&child(&[Decrypt], None)),
        }));
    }

    #[test]
    fn constraints_cover() {
        let c = |e: Option<&[(&str, &str)]>, s: Option<&[(&str, &str)]>| GrantConstraints {
            encryption_context_equals: e.map(ec),
            encryption_context_subset: s.map(ec),
        };
        let ab: &[(&str, &str)] = &[("a", "1"), ("b", "2")];
        let a: &[(&str, &str)] = &[("a", "1")];
        assert!(c(None, None).covers(&c(None, None)));
        assert!(!c(None, Some(a)).covers(&c(None, None)));
        assert!(c(None, Some(a)).covers(&c(None, Some(ab))));
        assert!(!c(None, Some(ab)).covers(&c(None, Some(a))));
        assert!(c(None, Some(a)).covers(&c(Some(ab), None)));
        assert!(c(Some(ab), None).covers(&c(Some(ab), None)));
        assert!(
            !c(Some(ab), None).covers(&c(None, Some(ab))),
            "supersets of ab"
        );
        assert!(!c(Some(a), None).covers(&c(Some(ab), None)));
        // A child whose own constraints admit nothing is vacuously at least as strict.
        assert!(c(Some(a), None).covers(&c(Some(a), Some(&[("z", "9")]))));
    }

    #[test]
    fn grants_feed_the_evaluator() {
        let key_policy =
            PolicyDocument::default_key_policy(&AccountId::parse("111122223333").unwrap());
        let g = Grant::new(
            ALICE,
            &[GrantOperation::Decrypt],
            Some(subset(&[("app", "x")])),
        )
        .unwrap();
        let alice = AuthzPrincipal::parse(ALICE).unwrap();
        for (context, want) in [(ec(&[("app", "x")]), true), (ec(&[("app", "y")]), false)] {
            let grant_allows = g.allows(&GrantRequest {
                principal: &alice,
                operation: GrantOperation::Decrypt,
                encryption_context: &context,
                new_grant: None,
            });
            let req = AuthzRequest::new(alice.clone(), GrantOperation::Decrypt.action(), KEY)
                .with_encryption_context(&context);
            let decision = evaluate(Some(&key_policy), &[], grant_allows, &req);
            assert_eq!(decision.is_allowed(), want, "{context:?}");
            if want {
                assert_eq!(decision, Decision::Allow(AllowedBy::Grant));
            }
        }
    }
}
