//! Wildcards, ARN patterns and policy variables.
//!
//! Policies match text three ways: action names (`kms:Gen*`, case-insensitive), resource
//! and condition ARNs (`arn:keyraft:*:111122223333:key/*`) and `StringLike` values. All
//! three use the same two wildcards — `*` for any run of characters, `?` for exactly one —
//! and one matcher. The matcher backtracks only to the last `*`, so its cost is bounded
//! by the product of the two lengths, never exponential.
//!
//! ARNs are compared component by component, split at `:`, as AWS documents for
//! `ArnLike`: `*` in the region does not swallow the account. The pattern's last
//! component takes the rest of the value, colons included, so `arn:keyraft:*` still
//! matches every Keyraft ARN and an alias name with a colon matches `alias/*`.
//!
//! Policy variables (`${aws:username}`, `${kms:CallerAccount, 'none'}`) exist only in
//! `2012-10-17` documents. A variable's value is inserted literally — a `*` in a user
//! name is not a wildcard — and `${*}`, `${?}` and `${$}` write a literal `*`, `?`, `$`.
//! A variable whose key has no single value, and no default, leaves the pattern unable to
//! match anything. Text that only looks like a variable (no closing brace, a key with
//! spaces) is kept as written.

use super::condition::ConditionContext;

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// A character that must be present as is.
    Lit(char),
    /// `*`: any run of characters, possibly empty.
    Any,
    /// `?`: exactly one character.
    One,
}

/// Compiles a pattern. With `vars`, policy variables are expanded from it; `None` if a
/// variable has no value (the pattern then matches nothing).
pub(crate) fn compile(raw: &str, vars: Option<&ConditionContext>) -> Option<Vec<Tok>> {
    let mut out = Vec::with_capacity(raw.len());
    let Some(ctx) = vars else {
        push_wild(raw, &mut out);
        return Some(out);
    };
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        push_wild(&rest[..start], &mut out);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            break;
        };
        match resolve(&after[..end], ctx) {
            Var::Value(v) => out.extend(v.chars().map(Tok::Lit)),
            Var::Missing => return None,
            Var::NotAVariable => push_wild(&rest[start..start + 2 + end + 1], &mut out),
        }
        rest = &after[end + 1..];
    }
    push_wild(rest, &mut out);
    Some(out)
}

/// Whether `value` matches a compiled pattern as a whole.
pub(crate) fn glob(pattern: &[Tok], value: &str) -> bool {
    let s: Vec<char> = value.chars().collect();
    glob_chars(pattern, &s)
}

/// Whether `value` matches a compiled ARN pattern, component by component.
pub(crate) fn arn_match(pattern: &[Tok], value: &str) -> bool {
    let parts: Vec<&[Tok]> = pattern.split(|t| *t == Tok::Lit(':')).collect();
    let values: Vec<&str> = value.splitn(parts.len(), ':').collect();
    parts.len() == values.len() && parts.iter().zip(values).all(|(p, v)| glob(p, v))
}

/// A compiled pattern read as plain text: wildcards stand for themselves. This is how
/// `StringEquals` and friends compare, after variables are expanded.
pub(crate) fn literal(pattern: &[Tok]) -> String {
    pattern
        .iter()
        .map(|t| match t {
            Tok::Lit(c) => *c,
            Tok::Any => '*',
            Tok::One => '?',
        })
        .collect()
}

fn push_wild(s: &str, out: &mut Vec<Tok>) {
    out.extend(s.chars().map(|c| match c {
        '*' => Tok::Any,
        '?' => Tok::One,
        c => Tok::Lit(c),
    }))
}

enum Var {
    Value(String),
    Missing,
    NotAVariable,
}

fn resolve(inner: &str, ctx: &ConditionContext) -> Var {
    let inner = inner.trim();
    match inner {
        "*" | "?" | "$" => return Var::Value(inner.to_string()),
        _ => {}
    }
    let (key, default) = match inner.split_once(',') {
        None => (inner, None),
        Some((key, default)) => {
            let default = default.trim();
            match default
                .strip_prefix('\'')
                .and_then(|d| d.strip_suffix('\''))
            {
                Some(d) if default.len() >= 2 => (key.trim(), Some(d)),
                _ => return Var::NotAVariable,
            }
        }
    };
    let well_formed = !key.is_empty()
        && key.contains(':')
        && key
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '{' | '}' | '$' | '\'' | ','));
    if !well_formed {
        return Var::NotAVariable;
    }
    match (ctx.get(key), default) {
        ([one], _) => Var::Value(one.clone()),
        (_, Some(d)) => Var::Value(d.to_string()),
        _ => Var::Missing,
    }
}

fn glob_chars(p: &[Tok], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and how much of the value it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(Tok::Any) => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(Tok::One) => {
                pi += 1;
                si += 1;
            }
            Some(Tok::Lit(c)) if *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|t| *t == Tok::Any))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str, v: &str) -> bool {
        glob(&compile(p, None).unwrap(), v)
    }

    fn a(p: &str, v: &str) -> bool {
        arn_match(&compile(p, None).unwrap(), v)
    }

    #[test]
    fn wildcards() {
        assert!(g("*", ""));
        assert!(g("*", "anything"));
        assert!(g("kms:gen*", "kms:generatedatakey"));
        assert!(!g("kms:gen*", "kms:encrypt"));
        assert!(g("kms:re*", "kms:reencryptfrom"));
        assert!(g("kms:?ecrypt", "kms:decrypt"));
        assert!(!g("kms:?ecrypt", "kms:ecrypt"));
        assert!(g("a*b*c", "aXXbYYc"));
        assert!(g("a*b*c", "abc"));
        assert!(!g("a*b*c", "acb"));
        assert!(g("*a", "aaa"));
        assert!(!g("", "a"));
        assert!(g("", ""));
        assert!(g("é?", "éé"), "characters, not bytes");
        // Pathological input stays fast.
        let long = "a".repeat(4000);
        assert!(!g(&"*a".repeat(50).replace("*a*a", "*a*b"), &long));
    }

    #[test]
    fn arns_by_component() {
        let key = "arn:keyraft:dev-1:111122223333:key/1234";
        assert!(a("*", key));
        assert!(a("arn:keyraft:*", key));
        assert!(a("arn:keyraft:*:111122223333:key/*", key));
        assert!(a("arn:keyraft:dev-?:*:*", key));
        assert!(!a("arn:keyraft:*:key/*", key), "* does not cross a colon");
        assert!(!a("arn:keyraft:dev-1:111122223333:key/1234:extra", key));
        assert!(a(
            "arn:keyraft:dev-1:111122223333:alias/*",
            "arn:keyraft:dev-1:111122223333:alias/a:b"
        ));
        assert!(!a("arn:keyraft:dev-1:*", "*"), "account-level resource");
    }

    #[test]
    fn variables() {
        let mut ctx = ConditionContext::new();
        ctx.insert("aws:username", ["bob*"]);
        ctx.insert("kms:EncryptionContextKeys", ["a", "b"]);
        let c = |p: &str| compile(p, Some(&ctx)).map(|t| literal(&t));
        assert_eq!(c("user/${aws:username}").as_deref(), Some("user/bob*"));
        assert_eq!(c("user/${AWS:UserName}").as_deref(), Some("user/bob*"));
        let t = compile("u/${aws:username}", Some(&ctx)).unwrap();
        assert!(
            glob(&t, "u/bob*") && !glob(&t, "u/bobby"),
            "values are literal"
        );
        assert_eq!(c("x${aws:nothing}"), None);
        assert_eq!(c("x${kms:EncryptionContextKeys}"), None, "multi-valued");
        assert_eq!(c("x${aws:nothing, 'dflt'}").as_deref(), Some("xdflt"));
        assert_eq!(c("x${aws:username,'d'}").as_deref(), Some("xbob*"));
        assert_eq!(c("${*}${?}${$}").as_deref(), Some("*?$"));
        assert!(!glob(&compile("${*}", Some(&ctx)).unwrap(), "x"));
        assert_eq!(c("${not a var}").as_deref(), Some("${not a var}"));
        assert_eq!(c("${unclosed").as_deref(), Some("${unclosed"));
        assert_eq!(c("${aws:x, dflt}").as_deref(), Some("${aws:x, dflt}"));
        assert_eq!(
            compile("${aws:username}", None).map(|t| literal(&t)),
            Some("${aws:username}".to_string()),
            "no expansion in 2008-10-17 documents"
        );
    }
}
