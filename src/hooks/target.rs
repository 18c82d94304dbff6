//! Where each hook goes: a path joined to `upstream.url`, or an absolute `http://`
//! URL; empty means the hook is off.
//!
//! Resolved once at start so that a call parses nothing. `config::validate` already
//! rejects bad targets; the errors here guard a `Config` built in code.

use http::uri::{PathAndQuery, Scheme, Uri};

use super::{HookKind, HooksError};
use crate::config::HooksConfig;

const EXPECTED: &str =
    "must be empty, a path on the upstream starting with \"/\", or an absolute http:// URL";

/// The resolved target of each hook, indexed by [`HookKind`].
#[derive(Debug)]
pub(crate) struct Targets([Option<Uri>; 3]);

impl Targets {
    pub(crate) fn resolve(hooks: &HooksConfig, upstream_url: &str) -> Result<Self, HooksError> {
        Ok(Targets([
            resolve("hooks.start", &hooks.start, upstream_url)?,
            resolve("hooks.timeout", &hooks.timeout, upstream_url)?,
            resolve("hooks.end", &hooks.end, upstream_url)?,
        ]))
    }

    pub(crate) fn get(&self, kind: HookKind) -> Option<&Uri> {
        self.0[kind as usize].as_ref()
    }
}

fn resolve(key: &'static str, target: &str, upstream_url: &str) -> Result<Option<Uri>, HooksError> {
    let bad = |reason: &'static str| HooksError::Target {
        key,
        target: target.to_string(),
        reason,
    };
    if target.is_empty() {
        return Ok(None);
    }
    // A network-path reference ("//host/x") would silently point at another host.
    if target.starts_with("//") {
        return Err(bad(EXPECTED));
    }
    if target.starts_with('/') {
        return on_upstream(target, upstream_url).map(Some).map_err(bad);
    }
    let uri: Uri = target.parse().map_err(|_| bad(EXPECTED))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) if !authority.host().is_empty() => Ok(Some(uri)),
        (Some("https"), _) => Err(bad("https hooks are not supported yet")),
        _ => Err(bad(EXPECTED)),
    }
}

/// `path` under `upstream.url`, joined the way proxied requests are (the upstream's
/// own path prefix, then the path).
fn on_upstream(path: &str, upstream_url: &str) -> Result<Uri, &'static str> {
    let base: Uri = upstream_url
        .parse()
        .map_err(|_| "is a path, but upstream.url is not a valid URL")?;
    if base.scheme() != Some(&Scheme::HTTP) {
        return Err("is a path, but upstream.url is not an http:// URL");
    }
    let authority = base
        .authority()
        .cloned()
        .ok_or("is a path, but upstream.url has no host")?;
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    let path_and_query = PathAndQuery::try_from(joined).map_err(|_| EXPECTED)?;
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| EXPECTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(target: &str, upstream: &str) -> Result<Option<String>, HooksError> {
        resolve("hooks.end", target, upstream).map(|uri| uri.map(|u| u.to_string()))
    }

    #[test]
    fn paths_join_the_upstream_and_urls_stay() {
        let up = "http://127.0.0.1:3000";
        assert_eq!(one("", up).unwrap(), None);
        assert_eq!(
            one("/hooks/end", up).unwrap().as_deref(),
            Some("http://127.0.0.1:3000/hooks/end")
        );
        assert_eq!(
            one("/hooks/end?v=1", "http://app:8000/legacy/")
                .unwrap()
                .as_deref(),
            Some("http://app:8000/legacy/hooks/end?v=1")
        );
        assert_eq!(
            one("http://hooks.internal:9000/end", up)
                .unwrap()
                .as_deref(),
            Some("http://hooks.internal:9000/end")
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        let up = "http://127.0.0.1:3000";
        for bad in [
            "hooks/end",
            "//other/end",
            "https://h/end",
            "ftp://h/end",
            "http:///x",
        ] {
            assert!(one(bad, up).is_err(), "{bad} accepted");
        }
        assert!(one("/hooks/end", "https://app").is_err());
        assert!(one("/hooks/end", "not a url").is_err());
        // An absolute hook does not need a usable upstream URL.
        assert!(one("http://h/end", "not a url").is_ok());
    }
}
