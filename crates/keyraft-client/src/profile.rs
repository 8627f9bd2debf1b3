//! # Named profiles in a shared credentials file
//!
//! Like the AWS SDKs, a client can take its credentials — and, unlike them, also its
//! region and endpoints — from named sections of a small INI-like file, so that a
//! developer with access to several clusters switches with `KEYRAFT_PROFILE=prod`
//! instead of juggling four environment variables. The file is
//! `$HOME/.keyraft/credentials` unless `KEYRAFT_SHARED_CREDENTIALS_FILE` names another:
//!
//! ```text
//! # Lines starting with # or ; are comments.
//! [default]
//! keyraft_access_key_id = KRAK...
//! keyraft_secret_access_key = ...
//! region = dev-1
//! endpoints = http://127.0.0.1:7101, http://127.0.0.1:7102
//!
//! [prod]
//! keyraft_access_key_id = ...
//! keyraft_secret_access_key = ...
//! region = eu-1
//! endpoints = http://kms-a.internal:7101
//! ```
//!
//! The grammar is deliberately small: `[name]` starts a section (`[profile name]` is
//! accepted too, as in AWS's config file), `key = value` sets a key in it (surrounding
//! blanks trimmed, the value may contain `=`), keys are case-insensitive, keys this
//! library does not know are ignored (the file may serve other tools), and a later
//! section or key of the same name overrides an earlier one. Anything else — a key
//! outside a section, a line that is neither, an empty section name — is an error that
//! names its line, because a silently skipped line is how credentials end up wrong.
//! Values are never part of an error message.
//!
//! Which setting wins when several sources have one is described on
//! [`ConfigBuilder`](crate::ConfigBuilder).

use std::collections::BTreeMap;
use std::fmt;

/// One named section of a credentials file; every field is optional.
///
/// ```
/// let profiles = keyraft_client::profile::parse("[dev]\nregion = dev-1\n")?;
/// assert_eq!(profiles["dev"].region.as_deref(), Some("dev-1"));
/// assert!(profiles["dev"].access_key_id.is_none());
/// # Ok::<(), keyraft_client::profile::ProfileError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// `keyraft_access_key_id`.
    pub access_key_id: Option<String>,
    /// `keyraft_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `endpoints`, comma-separated in the file.
    pub endpoints: Option<Vec<String>>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// A line of a credentials file that cannot be read.
///
/// ```
/// let err = keyraft_client::profile::parse("region = x\n").unwrap_err();
/// assert_eq!(err.line, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ProfileError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it (never the line's value).
    pub message: String,
}

/// Parses a credentials file into its profiles, by name.
///
/// ```
/// let text = "
/// [default]
/// keyraft_access_key_id = AK1
/// keyraft_secret_access_key = s3cr=t
/// endpoints = http://a:7101, http://b:7101
/// ";
/// let profiles = keyraft_client::profile::parse(text)?;
/// let p = &profiles["default"];
/// assert_eq!(p.secret_access_key.as_deref(), Some("s3cr=t"));
/// assert_eq!(p.endpoints.as_deref(), Some(&["http://a:7101".to_string(), "http://b:7101".to_string()][..]));
/// # Ok::<(), keyraft_client::profile::ProfileError>(())
/// ```
pub fn parse(text: &str) -> Result<BTreeMap<String, Profile>, ProfileError> {
    let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
    let mut current: Option<String> = None;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: &str| ProfileError {
            line,
            message: message.to_string(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| err("a section header must end with `]`"))?
                .trim();
            let name = match name.strip_prefix("profile ") {
                Some(n) => n.trim(),
                None => name,
            };
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(err("empty or malformed section name"));
            }
            profiles.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        let (key, value) = trimmed
            .split_once('=')
            .ok_or_else(|| err("expected `[name]` or `key = value`"))?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(err("a key is missing before `=`"));
        }
        let name = current
            .as_ref()
            .ok_or_else(|| err("a key outside any `[name]` section"))?;
        let value = value.trim();
        let value = (!value.is_empty()).then(|| value.to_string());
        let profile = profiles.entry(name.clone()).or_default();
        match key.as_str() {
            "keyraft_access_key_id" => profile.access_key_id = value,
            "keyraft_secret_access_key" => profile.secret_access_key = value,
            "region" => profile.region = value,
            "endpoints" => {
                profile.endpoints = value.map(|v| split_endpoints(&v)).filter(|e| !e.is_empty())
            }
            _ => {}
        }
    }
    Ok(profiles)
}

/// Splits a comma-separated endpoint list, dropping blanks.
pub(crate) fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_comments_and_blanks() {
        let text = "\u{feff}# top comment\n\n[default]\n  KEYRAFT_ACCESS_KEY_ID =  AK1  \n\
                    keyraft_secret_access_key=a=b=c\n; another comment\nregion = dev-1\n\
                    endpoints = http://a:1 ,, http://b:2 ,\nunknown_key = ignored\n\
                    [profile prod]\nregion = eu-1\n[ spaced ]\n";
        let p = parse(text).unwrap();
        assert_eq!(
            p.keys().collect::<Vec<_>>(),
            vec!["default", "prod", "spaced"]
        );
        let d = &p["default"];
        assert_eq!(d.access_key_id.as_deref(), Some("AK1"));
        assert_eq!(d.secret_access_key.as_deref(), Some("a=b=c"));
        assert_eq!(d.region.as_deref(), Some("dev-1"));
        assert_eq!(
            d.endpoints.clone().unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert_eq!(p["prod"].region.as_deref(), Some("eu-1"));
        assert_eq!(p["spaced"], Profile::default());
    }

    #[test]
    fn later_sections_and_keys_override_and_empty_values_unset() {
        let text = "[a]\nregion = one\nkeyraft_access_key_id = X\n[b]\nregion = b\n\
                    [a]\nregion = two\nkeyraft_access_key_id =\nendpoints = ,\n";
        let p = parse(text).unwrap();
        assert_eq!(p["a"].region.as_deref(), Some("two"));
        assert_eq!(p["a"].access_key_id, None);
        assert_eq!(p["a"].endpoints, None);
        assert_eq!(p["b"].region.as_deref(), Some("b"));
    }

    #[test]
    fn errors_name_the_line_and_never_the_value() {
        let cases = [
            ("keyraft_secret_access_key = hunter2\n", 1),
            ("[ok]\nthis line has no equals sign hunter2\n", 2),
            ("[ok]\n\n[broken\n", 3),
            ("[]\n", 1),
            ("[ok]\n = hunter2\n", 2),
            ("[a]]\n", 1),
        ];
        for (text, line) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let p = parse("[d]\nkeyraft_secret_access_key = hunter2\n").unwrap();
        let shown = format!("{:?}", p["d"]);
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("redacted"));
    }
}
