//! Audit events as CloudTrail-like JSON, for `AuditTail` and `keyraft audit tail`.

use serde_json::{json, Value};

use keyraft_types::{AuditEvent, EventType};

/// Renders one event with CloudTrail's field names plus the chain fields.
pub(crate) fn event_json(e: &AuditEvent, region: &str) -> Value {
    let r = &e.record;
    let p = &r.request_parameters;
    let mut params = serde_json::Map::new();
    if let Some(k) = &p.key_id {
        params.insert("keyId".into(), json!(k));
    }
    if let Some(c) = &p.encryption_context {
        params.insert("encryptionContext".into(), json!(c));
    }
    if let Some(a) = &p.encryption_algorithm {
        params.insert("encryptionAlgorithm".into(), json!(a));
    }
    if let Some(s) = &p.key_spec {
        params.insert("keySpec".into(), json!(s));
    }
    if let Some(n) = p.number_of_bytes {
        params.insert("numberOfBytes".into(), json!(n));
    }
    if let Some(n) = p.node_id {
        params.insert("nodeId".into(), json!(n));
    }
    if let Some(a) = &p.alias_name {
        params.insert("aliasName".into(), json!(a));
    }
    if let Some(k) = &p.target_key_id {
        params.insert("targetKeyId".into(), json!(k));
    }
    if let Some(k) = &p.destination_key_id {
        params.insert("destinationKeyId".into(), json!(k));
    }
    if let Some(c) = &p.destination_encryption_context {
        params.insert("destinationEncryptionContext".into(), json!(c));
    }
    if let Some(t) = &p.tag_keys {
        params.insert("tagKeys".into(), json!(t));
    }
    if let Some(d) = &p.description {
        params.insert("description".into(), json!(d));
    }
    if let Some(a) = &p.signing_algorithm {
        params.insert("signingAlgorithm".into(), json!(a));
    }
    if let Some(m) = &p.message_type {
        params.insert("messageType".into(), json!(m));
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.event_time_ms);
    json!({
        "eventVersion": "1.08",
        "sequence": e.sequence,
        "eventTime": humantime::format_rfc3339_millis(time).to_string(),
        "eventSource": "keyraft",
        "eventName": r.event_name,
        "eventType": match r.event_type {
            EventType::AwsApiCall => "AwsApiCall",
            EventType::AwsServiceEvent => "AwsServiceEvent",
        },
        "awsRegion": region,
        "requestID": r.request_id,
        "eventID": r.event_id,
        "readOnly": r.read_only,
        "userIdentity": {
            "type": r.user_identity.identity_type,
            "arn": r.user_identity.principal_arn,
            "accountId": r.user_identity.account_id,
            "accessKeyId": r.user_identity.access_key_id,
        },
        "sourceIPAddress": r.source_ip,
        "userAgent": r.user_agent,
        "node": r.node_id,
        "requestParameters": Value::Object(params),
        "resources": r.resources.iter().map(|arn| json!({"ARN": arn})).collect::<Vec<_>>(),
        "errorCode": e.error_code,
        "errorMessage": e.error_message,
        "keyEpochs": r.key_checks.iter().map(|c| json!({"keyId": c.key_id.as_str(), "epoch": c.epoch})).collect::<Vec<_>>(),
        "prevHash": e.prev_hash,
        "hash": e.hash,
    })
}

/// What an audit query asks for; an event matches when every given filter does.
pub(crate) struct AuditFilter {
    pub start_ms: u64,
    pub end_ms: u64,
    pub key_id: String,
    pub principal_arn: String,
    pub event_name: String,
    pub outcome: Option<bool>,
    pub event_id: String,
    /// `Some(account)`: only events of that account (a caller who is not the region's
    /// administrator sees its own account's trail only).
    pub account: Option<String>,
}

impl AuditFilter {
    pub(crate) fn matches(&self, e: &AuditEvent) -> bool {
        let r = &e.record;
        let t = r.event_time_ms;
        (self.start_ms == 0 || t >= self.start_ms)
            && (self.end_ms == 0 || t <= self.end_ms)
            && (self.event_name.is_empty() || r.event_name == self.event_name)
            && (self.event_id.is_empty() || r.event_id == self.event_id)
            && (self.principal_arn.is_empty()
                || r.user_identity.principal_arn == self.principal_arn)
            && self.outcome.is_none_or(|ok| e.error_code.is_none() == ok)
            && (self.key_id.is_empty()
                || r.request_parameters.key_id.as_deref() == Some(self.key_id.as_str())
                || r.resources
                    .iter()
                    .any(|arn| arn == &self.key_id || arn.ends_with(&format!("/{}", self.key_id))))
            && self.account.as_ref().is_none_or(|a| {
                r.user_identity.account_id == *a
                    || r.resources
                        .iter()
                        .any(|arn| arn.split(':').nth(4) == Some(a))
            })
    }
}
