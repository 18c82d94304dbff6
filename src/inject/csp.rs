//! May the agent's `<script src>` run under the page's Content-Security-Policy, and
//! with which nonce?
//!
//! DESIGN.md §5: a policy is never weakened. The agent is an external same-origin
//! script, so a policy lets it run when its effective script directive allows
//! `'self'` or `*`; otherwise the page's own nonce is reused. Anything else (hashes
//! only, host lists, `'none'`) means the page is not injected.
//!
//! Every policy of every `Content-Security-Policy` header must be satisfied (several
//! headers, and comma-separated policies in one header, are all enforced by the
//! browser). `Content-Security-Policy-Report-Only` policies are held to the same
//! standard so the agent never floods an operator's report endpoint.
//!
//! Deliberately not evaluated: host and scheme sources (`https:`, `example.com`) —
//! matching them needs the page's origin and is rarely the only way a page allows its
//! own scripts. A policy that relies on them is treated as not allowing the agent,
//! which errs on the side of leaving the page alone.

use http::header::{CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY_REPORT_ONLY};
use http::HeaderMap;

/// The page's policies do not allow the agent's script, not even with a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocked;

/// What one policy asks of the agent's script element.
#[derive(Debug, PartialEq, Eq)]
enum Need {
    /// Allowed as it is.
    Nothing,
    /// Allowed with any one of these nonces.
    Nonce(Vec<String>),
    /// Not allowed.
    Blocked,
}

/// The nonce the tag must carry (`None`: none needed), or [`Blocked`].
pub(crate) fn nonce_for(headers: &HeaderMap) -> Result<Option<String>, Blocked> {
    // Nonces every nonce-only policy accepts; `None` until such a policy is seen.
    let mut common: Option<Vec<String>> = None;
    let values = headers
        .get_all(CONTENT_SECURITY_POLICY)
        .iter()
        .chain(headers.get_all(CONTENT_SECURITY_POLICY_REPORT_ONLY).iter());
    for value in values {
        // CSP is ASCII; stray bytes become U+FFFD, which matches no keyword, so a
        // mangled policy can only make the answer stricter.
        let text = String::from_utf8_lossy(value.as_bytes());
        for policy in text.split(',') {
            match need(policy) {
                Need::Nothing => {}
                Need::Blocked => return Err(Blocked),
                Need::Nonce(nonces) => {
                    common = Some(match common {
                        None => nonces,
                        Some(previous) => previous
                            .into_iter()
                            .filter(|nonce| nonces.contains(nonce))
                            .collect(),
                    });
                }
            }
        }
    }
    match common {
        None => Ok(None),
        Some(nonces) => nonces.into_iter().next().map(Some).ok_or(Blocked),
    }
}

/// Evaluates one serialized policy (CSP3 §2.2.1: directives split on `;`, the first
/// occurrence of a name wins, names are case-insensitive).
fn need(policy: &str) -> Need {
    let mut script_src_elem = None;
    let mut script_src = None;
    let mut default_src = None;
    for directive in policy.split(';') {
        let mut tokens = directive.split_ascii_whitespace();
        let Some(name) = tokens.next() else {
            continue;
        };
        let slot = if name.eq_ignore_ascii_case("script-src-elem") {
            &mut script_src_elem
        } else if name.eq_ignore_ascii_case("script-src") {
            &mut script_src
        } else if name.eq_ignore_ascii_case("default-src") {
            &mut default_src
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = Some(tokens);
        }
    }
    // The directive a `<script src>` element is checked against (CSP3 §6.8.2,
    // "effective directive" with its fallback list).
    let Some(sources) = script_src_elem.or(script_src).or(default_src) else {
        return Need::Nothing;
    };
    let sources: Vec<&str> = sources.collect();
    // With 'strict-dynamic', 'self', '*' and host sources are ignored: only nonces
    // and hashes count.
    let strict_dynamic = sources
        .iter()
        .any(|source| source.eq_ignore_ascii_case("'strict-dynamic'"));
    if !strict_dynamic
        && sources
            .iter()
            .any(|source| *source == "*" || source.eq_ignore_ascii_case("'self'"))
    {
        return Need::Nothing;
    }
    let nonces: Vec<String> = sources.iter().filter_map(|s| nonce_of(s)).collect();
    if nonces.is_empty() {
        // Hashes cannot allow an external script without SRI; 'none', hosts and
        // schemes are not evaluated (see the module comment).
        Need::Blocked
    } else {
        Need::Nonce(nonces)
    }
}

/// The value of a `'nonce-VALUE'` source, if `source` is a well-formed one
/// (CSP3 `base64-value`: `[A-Za-z0-9+/_-]+` then at most two `=`).
fn nonce_of(source: &str) -> Option<String> {
    const PREFIX: &str = "'nonce-";
    let head = source.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let value = source.get(PREFIX.len()..)?.strip_suffix('\'')?;
    let body = value.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && value.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-'));
    well_formed.then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(csp: &[&str], report_only: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in csp {
            map.append(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        for value in report_only {
            map.append(
                CONTENT_SECURITY_POLICY_REPORT_ONLY,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn check(csp: &[&str]) -> Result<Option<String>, Blocked> {
        nonce_for(&headers(csp, &[]))
    }

    #[test]
    fn no_policy_or_no_script_directive_allows() {
        assert_eq!(check(&[]), Ok(None));
        assert_eq!(check(&["img-src 'none'; frame-ancestors 'none'"]), Ok(None));
        assert_eq!(check(&[""]), Ok(None));
    }

    #[test]
    fn self_and_star_allow_without_nonce() {
        assert_eq!(check(&["script-src 'self'"]), Ok(None));
        assert_eq!(check(&["script-src 'SELF' 'nonce-abc'"]), Ok(None));
        assert_eq!(check(&["script-src *"]), Ok(None));
    }

    #[test]
    fn nonce_is_reused() {
        assert_eq!(
            check(&["script-src 'nonce-r4nd0m+/=' 'sha256-abc='"]),
            Ok(Some("r4nd0m+/=".into()))
        );
        // The keyword part is case-insensitive, the value is not.
        assert_eq!(check(&["script-src 'NONCE-AbC'"]), Ok(Some("AbC".into())));
    }

    #[test]
    fn strict_dynamic_ignores_self() {
        assert_eq!(
            check(&["script-src 'self' 'strict-dynamic' 'nonce-n1'"]),
            Ok(Some("n1".into()))
        );
        assert_eq!(check(&["script-src 'self' 'strict-dynamic'"]), Err(Blocked));
    }

    #[test]
    fn hashes_hosts_and_none_block() {
        assert_eq!(check(&["script-src 'sha256-abcd'"]), Err(Blocked));
        assert_eq!(check(&["script-src 'none'"]), Err(Blocked));
        assert_eq!(check(&["script-src https://cdn.example"]), Err(Blocked));
        assert_eq!(check(&["script-src"]), Err(Blocked));
    }

    #[test]
    fn malformed_nonces_are_ignored() {
        assert_eq!(check(&["script-src 'nonce-'"]), Err(Blocked));
        assert_eq!(check(&["script-src 'nonce-a\"b'"]), Err(Blocked));
        assert_eq!(check(&["script-src 'nonce-ab==='"]), Err(Blocked));
        assert_eq!(check(&["script-src nonce-ab"]), Err(Blocked));
    }

    #[test]
    fn directive_fallback_order() {
        // default-src applies when there is no script directive.
        assert_eq!(check(&["default-src 'self'"]), Ok(None));
        assert_eq!(check(&["default-src 'none'"]), Err(Blocked));
        assert_eq!(
            check(&["default-src 'nonce-d'; img-src *"]),
            Ok(Some("d".into()))
        );
        // script-src wins over default-src, script-src-elem over both.
        assert_eq!(check(&["default-src 'none'; script-src 'self'"]), Ok(None));
        assert_eq!(
            check(&["script-src 'self'; script-src-elem 'nonce-e'"]),
            Ok(Some("e".into()))
        );
        // The first occurrence of a directive wins.
        assert_eq!(
            check(&["script-src 'none'; script-src 'self'"]),
            Err(Blocked)
        );
        assert_eq!(check(&["SCRIPT-SRC 'self'"]), Ok(None));
    }

    #[test]
    fn every_policy_must_agree() {
        // Two headers: both enforced.
        assert_eq!(
            check(&["script-src 'self'", "script-src 'nonce-x'"]),
            Ok(Some("x".into()))
        );
        assert_eq!(
            check(&["script-src 'self'", "default-src 'none'"]),
            Err(Blocked)
        );
        // Two policies in one header.
        assert_eq!(
            check(&["script-src 'nonce-x' 'nonce-y', script-src 'nonce-y'"]),
            Ok(Some("y".into()))
        );
        assert_eq!(
            check(&["script-src 'nonce-x'", "script-src 'nonce-y'"]),
            Err(Blocked)
        );
    }

    #[test]
    fn report_only_counts_too() {
        assert_eq!(
            nonce_for(&headers(&["script-src 'self'"], &["script-src 'none'"])),
            Err(Blocked)
        );
        assert_eq!(
            nonce_for(&headers(&[], &["script-src 'nonce-r'"])),
            Ok(Some("r".into()))
        );
    }
}
