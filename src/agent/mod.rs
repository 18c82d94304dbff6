//! TEMPORARY STUB (replaced by the agent branch).
pub const AGENT_JS: &str = "";
pub fn version() -> &'static str {
    "0"
}
pub fn bootstrap_page(challenge: &str, nonce: &str, prefix: &str, share: bool) -> String {
    format!("<!doctype html><meta name=\"sessiongate-challenge\" content=\"{challenge}\"><meta name=\"sessiongate-prefix\" content=\"{prefix}\"><meta name=\"sessiongate-duplicate-tab\" content=\"{}\"><script nonce=\"{nonce}\"></script>", if share {"share"} else {"new"})
}
pub fn bootstrap_csp(nonce: &str) -> String {
    format!("default-src 'none'; script-src 'nonce-{nonce}'")
}
pub fn loop_page() -> String {
    "loop".into()
}
