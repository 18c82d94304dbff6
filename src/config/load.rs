//! Loading: defaults < TOML file < environment, with every problem reported.
//!
//! serde stops at the first error, but an operator fixing a broken deployment wants
//! the whole list at once. So extraction is iterative: deserialize the merged
//! values; on an error, record it (with the file or environment variable that
//! supplied the key), replace the offending key by its default (or drop it when it
//! has none, e.g. an unknown key), and try again. The repaired configuration is then
//! checked semantically by [`validate`](super::validate::validate).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

pub use super::errors::{ConfigError, ConfigErrors, Source};
use super::{validate, Config};

/// Prefix of the environment variables that override the file (`__` between levels).
pub const ENV_PREFIX: &str = "SESSIONGATE_";

/// The name given to the environment layer's metadata, to recognize it in errors.
const ENV_LAYER: &str = "environment";

/// Every deserialization error fixes at least one key, so a config with more errors
/// than this is garbage; the bound only guards against a repair that does not help.
const MAX_ROUNDS: usize = 256;

/// Loads the configuration: built-in defaults, then the TOML file at `path` (which
/// must exist when given), then `SESSIONGATE_*` environment variables. Returns every
/// problem found, each naming its file or variable, the key and the reason.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_with_defaults(path, Config::default())
}

/// [`load`] on top of other built-in defaults (`sessiongate demo` starts from a
/// loopback listener); the file and the environment still override them.
pub fn load_with_defaults(path: Option<&Path>, defaults: Config) -> Result<Config, ConfigErrors> {
    load_sourced(path, defaults).map(|loaded| loaded.config)
}

/// A loaded configuration that still knows which layer supplied each value.
pub struct Loaded {
    pub config: Config,
    figment: Figment,
}

impl Loaded {
    /// Where the value of `key` (dotted, e.g. `listen.address`) came from:
    /// [`Source::Default`] when neither the file nor the environment set it.
    pub fn source(&self, key: &str) -> Source {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        source_of(&self.figment, &path)
    }
}

/// [`load_with_defaults`], keeping the sources: `sessiongate demo` moves to a free
/// port only when the operator did not choose the address.
pub fn load_sourced(path: Option<&Path>, defaults: Config) -> Result<Loaded, ConfigErrors> {
    let mut errors = Vec::new();
    let mut figment = Figment::from(Serialized::defaults(defaults));
    let mut file_ok = true;
    if let Some(path) = path {
        match FileLayer::read(path) {
            Ok(layer) => figment = figment.merge(layer),
            Err(error) => {
                errors.push(error);
                file_ok = false;
            }
        }
    }
    figment = figment.merge(env_layer());
    // Without the file, the values the semantic checks would see are not the ones
    // the operator wrote; report only what is wrong in the layers that did load.
    let config = extract(&figment, file_ok, &mut errors);
    sort_by_section(&mut errors);
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, figment }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Extracts and validates a [`Config`] from an arbitrary figment, reporting every
/// problem. For tests and embedders; [`load`] builds the standard layering.
pub fn load_from(figment: &Figment) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let config = extract(figment, true, &mut errors);
    sort_by_section(&mut errors);
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Orders problems like the reference file (whole-file problems first, unknown
/// sections last) so the list reads top to bottom; the sort is stable, so within a
/// section type errors precede semantic ones as they were found.
fn sort_by_section(errors: &mut [ConfigError]) {
    const SECTIONS: [&str; 9] = [
        "listen", "upstream", "session", "browser", "hooks", "admin", "log", "persist", "store",
    ];
    errors.sort_by_key(|e| {
        let section = e.key.split(['.', '[']).next().unwrap_or_default();
        if section.is_empty() {
            0
        } else {
            SECTIONS
                .iter()
                .position(|s| *s == section)
                .map_or(SECTIONS.len() + 1, |i| i + 1)
        }
    });
}

/// The environment layer, with metadata that names the variable behind a key.
pub fn env_layer() -> impl Provider {
    EnvLayer(Env::prefixed(ENV_PREFIX).split("__"))
}

/// Deserializes `figment` into a [`Config`], repairing and recording each error;
/// then, when `semantic`, adds the validation problems. Returns the (repaired)
/// config unless it could not be extracted at all.
fn extract(figment: &Figment, semantic: bool, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let mut root = match figment.find_value("") {
        Ok(root) => root,
        Err(error) => {
            // A provider failed as a whole (e.g. the file vanished between reads).
            for e in error {
                let source = match e.metadata.as_ref().and_then(|md| md.source.as_ref()) {
                    Some(figment::Source::File(path)) => Source::File(path.clone()),
                    _ => Source::Default,
                };
                errors.push(ConfigError {
                    key: String::new(),
                    source,
                    reason: e.kind.to_string(),
                });
            }
            return None;
        }
    };
    let defaults = match Value::serialize(Config::default()) {
        Ok(defaults) => defaults,
        Err(e) => {
            errors.push(ConfigError {
                key: String::new(),
                source: Source::Default,
                reason: format!("cannot serialize the built-in defaults: {e}"),
            });
            return None;
        }
    };

    let first_error = errors.len();
    let mut coerced: HashSet<Vec<String>> = HashSet::new();
    let mut repaired: HashSet<Vec<String>> = HashSet::new();
    let mut config = None;
    for _ in 0..MAX_ROUNDS {
        let error = match <Config as serde::Deserialize>::deserialize(&root) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(error) => error,
        };
        let mut progress = false;
        for e in error {
            let key = display_key(&e.path);
            let source = source_of(figment, &e.path);
            // Environment values are parsed as TOML-ish literals, so a numeric token or
            // a `true` header name arrives as a number or bool. When a string was
            // wanted, retry once with the variable's raw text before complaining.
            if let (Kind::InvalidType(..), Source::Env(var)) = (&e.kind, &source) {
                if !coerced.contains(&e.path) {
                    if let Ok(raw) = std::env::var(var) {
                        if set_path(&mut root, &e.path, Value::from(raw)) {
                            coerced.insert(e.path.clone());
                            progress = true;
                            continue;
                        }
                    }
                }
            }
            let found = root.find_ref(&e.path.join("."));
            let reason = describe(&e.kind, found, &source);
            errors.push(ConfigError {
                key,
                source,
                reason,
            });
            if repaired.insert(e.path.clone()) && repair(&mut root, &defaults, &e.path) {
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }

    let config = config?;
    if semantic {
        // A key already reported was replaced by its default; checking that default
        // would only produce a confusing second message for the same line.
        let reported: HashSet<String> = errors[first_error..]
            .iter()
            .map(|e| e.key.clone())
            .collect();
        for (key, reason) in validate::validate(&config) {
            if reported.contains(&key) {
                continue;
            }
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            errors.push(ConfigError {
                source: source_of(figment, &path),
                key,
                reason,
            });
        }
    }
    Some(config)
}

/// The TOML file, read once up front so that a missing file or a syntax error is
/// reported with the path as the operator gave it and a line and column.
struct FileLayer {
    path: PathBuf,
    contents: String,
}

impl FileLayer {
    fn read(path: &Path) -> Result<FileLayer, ConfigError> {
        let fail = |reason: String| ConfigError {
            key: String::new(),
            source: Source::File(path.to_owned()),
            reason,
        };
        let contents = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read the file: {e}")))?;
        if let Err(e) = contents.parse::<toml::Table>() {
            let at = e
                .span()
                .map(|span| {
                    let (line, column) = line_column(&contents, span.start);
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            return Err(fail(format!(
                "TOML syntax error{at}: {}",
                e.message().trim()
            )));
        }
        Ok(FileLayer {
            path: path.to_owned(),
            contents,
        })
    }
}

impl Provider for FileLayer {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.contents).data()
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `Env` whose metadata interpolates a key path back to the variable that set it,
/// e.g. `listen.adress` → `SESSIONGATE_LISTEN__ADRESS`.
struct EnvLayer(Env);

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_LAYER).interpolater(|_: &Profile, keys: &[&str]| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.0.data()
    }
}

/// The environment variable behind `keys`. figment matches the prefix and names
/// case-insensitively (and `.` like `__`), so the canonical spelling is only a guess;
/// prefer the variable that is actually set. For a table (`listen.tls`) that only
/// exists because of a deeper variable, name that variable.
fn env_var_name(keys: &[&str]) -> String {
    let canonical = format!(
        "{ENV_PREFIX}{}",
        keys.iter()
            .map(|k| k.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join("__")
    );
    if std::env::var_os(&canonical).is_some() {
        return canonical;
    }
    let wanted = keys.join(".").to_ascii_lowercase();
    let mut deeper = None;
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name
            .get(..ENV_PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
            .map(|_| &name[ENV_PREFIX.len()..])
        else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        if key == wanted {
            return name.to_owned();
        }
        if deeper.is_none() && key.starts_with(&format!("{wanted}.")) {
            deeper = Some(name.to_owned());
        }
    }
    deeper.unwrap_or(canonical)
}

/// Which layer supplied the value at `path`: the deepest key figment can find
/// (array elements are not addressable, so `listen.origins.0` → `listen.origins`).
fn source_of(figment: &Figment, path: &[String]) -> Source {
    for len in (1..=path.len()).rev() {
        let key = path[..len].join(".");
        if let Some(md) = figment.find_metadata(&key) {
            return match &md.source {
                Some(figment::Source::File(file)) => Source::File(file.clone()),
                _ if md.name == ENV_LAYER => {
                    Source::Env(md.interpolate(&Profile::Default, &path[..len]))
                }
                _ => Source::Default,
            };
        }
    }
    Source::Default
}

/// `listen.origins.0` → `listen.origins[0]`.
fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// A short reason for a deserialization error, naming the offending value.
fn describe(kind: &Kind, found: Option<&Value>, source: &Source) -> String {
    match kind {
        Kind::UnknownField(_, expected) => {
            let mut reason = format!("unknown key (expected one of: {})", expected.join(", "));
            if let Source::Env(var) = source {
                if !var.contains("__")
                    && var.len() > ENV_PREFIX.len()
                    && var[ENV_PREFIX.len()..].contains('_')
                {
                    reason
                        .push_str("; use \"__\" between levels, e.g. SESSIONGATE_LISTEN__ADDRESS");
                }
            }
            reason
        }
        Kind::UnknownVariant(value, expected) => {
            format!(
                "invalid value {value:?} (expected one of: {})",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => {
            let mut reason = format!("expected {}, found {actual}", friendly(expected));
            if matches!(source, Source::Env(_)) && expected.contains("sequence") {
                reason.push_str("; write a list as [\"a\", \"b\"]");
            }
            reason
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}, expected {}", friendly(expected))
        }
        Kind::MissingField(field) => format!("missing key {field:?}"),
        Kind::Message(message) => match found.and_then(scalar_text) {
            // e.g. SocketAddr's "invalid socket address syntax" does not say which.
            Some((raw, shown)) if !message.contains(&raw) => format!("{shown}: {message}"),
            _ => message.clone(),
        },
        other => other.to_string(),
    }
}

/// serde names Rust types in "expected" texts; operators write TOML.
fn friendly(expected: &str) -> &str {
    match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer",
        "a boolean" | "bool" => "true or false",
        other => other,
    }
}

/// The value as written (`raw`, to see whether a message already names it) and as
/// shown in a reason (strings quoted, numbers and booleans bare).
fn scalar_text(value: &Value) -> Option<(String, String)> {
    let raw = match value {
        Value::String(_, s) => return Some((s.clone(), format!("{s:?}"))),
        Value::Bool(_, b) => b.to_string(),
        Value::Char(_, c) => c.to_string(),
        Value::Num(..) => value
            .to_u128()
            .map(|n| n.to_string())
            .or_else(|| value.to_i128().map(|n| n.to_string()))
            .or_else(|| value.to_f64().map(|n| n.to_string()))?,
        _ => return None,
    };
    Some((raw.clone(), raw))
}

/// Sets the value at `path` (all but the last component must be tables).
fn set_path(root: &mut Value, path: &[String], value: Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = root;
    for key in parents {
        node = match node {
            Value::Dict(_, dict) => match dict.get_mut(key) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Dict(_, dict) if dict.contains_key(last) => {
            dict.insert(last.clone(), value);
            true
        }
        _ => false,
    }
}

/// Makes the error at `path` go away: the outermost key along `path` that has no
/// default (an unknown key, an unset `Option`) is removed; otherwise the deepest
/// table entry is reset to its default. Arrays and scalars are replaced whole, since
/// serde points at an element, not at something that can be patched on its own.
/// Returns whether anything changed.
fn repair(root: &mut Value, defaults: &Value, path: &[String]) -> bool {
    let mut node = root;
    let mut default = Some(defaults);
    for (i, key) in path.iter().enumerate() {
        let Value::Dict(_, dict) = node else {
            return false;
        };
        let default_here = default.and_then(Value::as_dict).and_then(|d| d.get(key));
        let descend = i + 1 < path.len()
            && default_here.is_some_and(|d| matches!(d, Value::Dict(..)))
            && matches!(dict.get(key), Some(Value::Dict(..)));
        if !descend {
            return match default_here {
                Some(d) => dict.insert(key.clone(), d.clone()).as_ref() != Some(d),
                None => dict.remove(key).is_some(),
            };
        }
        node = match dict.get_mut(key) {
            Some(child) => child,
            None => return false,
        };
        default = default_here;
    }
    false
}

#[cfg(test)]
// figment::Jail's closures must return figment's (large) Result; nothing to box.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::config::{Duration, Heartbeat, SessionMode};
    use figment::Jail;

    fn reference_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sessiongate.toml")
    }

    fn errors_of(path: Option<&Path>) -> Vec<ConfigError> {
        match load(path) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(errors) => errors.0,
        }
    }

    fn find<'a>(errors: &'a [ConfigError], key: &str) -> &'a ConfigError {
        errors
            .iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("no error for {key} in {errors:#?}"))
    }

    #[test]
    fn defaults_load() {
        Jail::expect_with(|_| {
            assert_eq!(load(None), Ok(Config::default()));
            Ok(())
        });
    }

    #[test]
    fn file_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                r#"
                [listen]
                address = "127.0.0.1:8443"
                max_connections = 5
                [session]
                mode = "browser"
                timeout = 30
                countdown = "2m"
                "#,
            )?;
            let config = load(Some(Path::new("gate.toml"))).expect("loads");
            assert_eq!(config.listen.address.port(), 8443);
            assert_eq!(config.listen.max_connections, 5);
            assert_eq!(config.session.mode, SessionMode::Browser);
            assert_eq!(config.session.timeout, Duration::from_secs(30));
            assert_eq!(config.session.countdown, Some(Duration::from_secs(120)));
            assert_eq!(config.session.abandon, None);
            assert_eq!(config.upstream, Config::default().upstream);
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                "[session]\ntimeout = \"5m\"\n[admin]\ntoken = \"from-the-file-123\"\n",
            )?;
            jail.set_env("SESSIONGATE_SESSION__TIMEOUT", "30s");
            jail.set_env("SESSIONGATE_SESSION__ABANDON", "600");
            jail.set_env("SESSIONGATE_LISTEN__ADDRESS", "127.0.0.1:9000");
            // Looks like a number to figment's env parser; must stay a string.
            jail.set_env("SESSIONGATE_ADMIN__TOKEN", "0123456789012345678901");
            jail.set_env("SESSIONGATE_UPSTREAM__TRUST_FORWARDED", "true");
            let config = load(Some(Path::new("gate.toml"))).expect("loads");
            assert_eq!(config.session.timeout, Duration::from_secs(30));
            assert_eq!(config.session.abandon, Some(Duration::from_secs(600)));
            assert_eq!(config.listen.address.port(), 9000);
            assert_eq!(config.admin.token, "0123456789012345678901");
            assert!(config.upstream.trust_forwarded);
            Ok(())
        });
    }

    #[test]
    fn sources_say_who_set_a_key() {
        Jail::expect_with(|jail| {
            jail.create_file("gate.toml", "[admin]\naddress = \"127.0.0.1:9999\"\n")?;
            jail.set_env("SESSIONGATE_SESSION__TIMEOUT", "30s");
            let loaded =
                load_sourced(Some(Path::new("gate.toml")), Config::default()).expect("loads");
            assert_eq!(loaded.source("listen.address"), Source::Default);
            assert_eq!(
                loaded.source("admin.address"),
                Source::File("gate.toml".into())
            );
            assert_eq!(
                loaded.source("session.timeout"),
                Source::Env("SESSIONGATE_SESSION__TIMEOUT".into())
            );
            Ok(())
        });
    }

    #[test]
    fn duration_errors_name_the_source_and_say_what_is_accepted() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                "[session]\ntimeout = \"soon\"\ncountdown = \"10 minuts\"\n",
            )?;
            jail.set_env("SESSIONGATE_SESSION__ABANDON", "-5s");
            let text = ConfigErrors(errors_of(Some(Path::new("gate.toml")))).to_string();
            for line in [
                "gate.toml: session.timeout: invalid duration \"soon\": expected a duration \
                 like \"90s\", \"5m\" or \"1h\" (or whole seconds)",
                "gate.toml: session.countdown: invalid duration \"10 minuts\": unknown unit \
                 \"minuts\" (use ms, s, m, h or d); expected a duration like \"90s\", \"5m\" \
                 or \"1h\" (or whole seconds)",
                "environment SESSIONGATE_SESSION__ABANDON: session.abandon: invalid duration \
                 \"-5s\": negative values are not allowed; expected a duration like \"90s\", \
                 \"5m\" or \"1h\" (or whole seconds)",
            ] {
                assert!(
                    text.lines().any(|l| l == line),
                    "no line {line:?} in\n{text}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn trust_keys_from_the_file_and_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                "[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\npublic_scheme = \"https\"\n\
                 body_timeout = \"5s\"\nmax_streams = 50\n[upstream]\nmax_in_flight = 64\n",
            )?;
            let config = load(Some(Path::new("gate.toml"))).expect("loads");
            assert_eq!(config.listen.trusted_proxies, ["10.0.0.0/8", "::1"]);
            assert_eq!(
                config.listen.public_scheme,
                super::super::PublicScheme::Https
            );
            assert_eq!(config.listen.body_timeout, Duration::from_secs(5));
            assert_eq!(config.listen.max_streams, 50);
            assert_eq!(config.upstream.max_in_flight, 64);

            jail.set_env("SESSIONGATE_LISTEN__TRUSTED_PROXIES", "[\"10.0.0.1/8\"]");
            jail.set_env("SESSIONGATE_LISTEN__PUBLIC_SCHEME", "ftp");
            let errors = errors_of(Some(Path::new("gate.toml")));
            let text = ConfigErrors(errors.clone()).to_string();
            assert_eq!(errors.len(), 2, "{text}");
            assert!(
                text.contains(
                    "environment SESSIONGATE_LISTEN__TRUSTED_PROXIES: listen.trusted_proxies: \
                     \"10.0.0.1/8\" has bits set past the /8 prefix; did you mean \"10.0.0.0/8\"?"
                ),
                "{text}"
            );
            assert!(
                text.contains(
                    "environment SESSIONGATE_LISTEN__PUBLIC_SCHEME: listen.public_scheme:"
                ),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                r#"
                listen.header_timeout = 15
                listen.idle_timeout = "2m"
                upstream.response_timeout = "1h 30m"
                hooks.budget = "1500ms"
                browser.heartbeat = 20
                "#,
            )?;
            let config = load(Some(Path::new("gate.toml"))).expect("loads");
            assert_eq!(config.listen.header_timeout, Duration::from_secs(15));
            assert_eq!(config.listen.idle_timeout, Duration::from_secs(120));
            assert_eq!(config.upstream.response_timeout, Duration::from_secs(5400));
            assert_eq!(config.hooks.budget, Duration::from_millis(1500));
            assert_eq!(
                config.browser.heartbeat,
                Heartbeat::Every(Duration::from_secs(20))
            );
            Ok(())
        });
    }

    #[test]
    fn missing_file_and_syntax_errors_name_the_file() {
        Jail::expect_with(|jail| {
            let errors = errors_of(Some(Path::new("nope.toml")));
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].source, Source::File("nope.toml".into()));
            assert!(
                errors[0]
                    .to_string()
                    .starts_with("nope.toml: cannot read the file"),
                "{}",
                errors[0]
            );

            jail.create_file("bad.toml", "[session]\ntimeout = \"30s\n")?;
            jail.set_env("SESSIONGATE_LOG__LEVL", "debug");
            let errors = errors_of(Some(Path::new("bad.toml")));
            let text = ConfigErrors(errors.clone()).to_string();
            assert_eq!(errors.len(), 2, "{text}");
            assert!(
                text.contains("bad.toml: TOML syntax error at line 2"),
                "{text}"
            );
            // The environment is still checked when the file is broken.
            assert!(
                text.contains("environment SESSIONGATE_LOG__LEVL: log.levl: unknown key"),
                "{text}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_reported_with_their_source() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                "[listen]\nadress = \"0.0.0.0:80\"\n[extra]\nx = 1\n",
            )?;
            jail.set_env("SESSIONGATE_SESSION__TIMEOT", "30s");
            jail.set_env("SESSIONGATE_LISTEN_ADDRESS", "0.0.0.0:80");
            let errors = errors_of(Some(Path::new("gate.toml")));
            assert_eq!(errors.len(), 4, "{errors:#?}");

            let adress = find(&errors, "listen.adress");
            assert_eq!(adress.source, Source::File("gate.toml".into()));
            assert_eq!(
                adress.to_string(),
                "gate.toml: listen.adress: unknown key (expected one of: address, tls, header_timeout, \
                 idle_timeout, drain_timeout, max_connections, max_header_bytes, origins, body_timeout, \
                 max_streams, public_scheme, trusted_proxies)"
            );
            assert_eq!(
                find(&errors, "extra").source,
                Source::File("gate.toml".into())
            );

            let timeot = find(&errors, "session.timeot");
            assert_eq!(
                timeot.source,
                Source::Env("SESSIONGATE_SESSION__TIMEOT".into())
            );
            assert!(timeot.to_string().starts_with(
                "environment SESSIONGATE_SESSION__TIMEOT: session.timeot: unknown key"
            ));

            let single = find(&errors, "listen_address");
            assert_eq!(
                single.source,
                Source::Env("SESSIONGATE_LISTEN_ADDRESS".into())
            );
            assert!(
                single.reason.contains("use \"__\" between levels"),
                "{}",
                single.reason
            );
            Ok(())
        });
    }

    #[test]
    fn every_problem_is_reported() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "gate.toml",
                r#"
                [listen]
                adress = "0.0.0.0:80"
                address = "nowhere"
                max_connections = -1
                origins = ["https://ok.example", 7]
                tls = { cert = "cert.pem" }

                [upstream]
                url = "ftp://x"

                [session]
                timeout = "abc"
                mode = "tabs"
                countdown = "soon"
                max_sessions = 0

                [browser]
                prefix = "/SG/"
                "#,
            )?;
            jail.set_env("SESSIONGATE_LOG__FORMAT", "xml");
            jail.set_env("SESSIONGATE_ADMIN__TOKEN", "short");
            let errors = errors_of(Some(Path::new("gate.toml")));
            let text = ConfigErrors(errors.clone()).to_string();
            let file = Source::File("gate.toml".into());
            for key in [
                "listen.adress",
                "listen.address",
                "listen.max_connections",
                "listen.origins[1]",
                "listen.tls",
                "upstream.url",
                "session.timeout",
                "session.mode",
                "session.countdown",
                "session.max_sessions",
                "browser.prefix",
            ] {
                assert_eq!(find(&errors, key).source, file, "{key}\n{text}");
            }
            assert_eq!(
                find(&errors, "log.format").source,
                Source::Env("SESSIONGATE_LOG__FORMAT".into())
            );
            assert_eq!(
                find(&errors, "admin.token").source,
                Source::Env("SESSIONGATE_ADMIN__TOKEN".into())
            );
            assert_eq!(errors.len(), 13, "{text}");
            assert_eq!(text.lines().count(), 13, "{text}");
            for needle in [
                "gate.toml: session.timeout: invalid duration \"abc\"",
                "gate.toml: session.mode: invalid value \"tabs\" (expected one of: tab, browser)",
                "gate.toml: listen.address: \"nowhere\": invalid socket address syntax",
                "gate.toml: listen.tls: missing key \"key\"",
                "gate.toml: upstream.url: \"ftp://x\" has scheme \"ftp\"",
                "environment SESSIONGATE_LOG__FORMAT: log.format: invalid value \"xml\"",
            ] {
                assert!(text.contains(needle), "missing {needle:?} in\n{text}");
            }
            Ok(())
        });
    }

    #[test]
    fn shipped_reference_config_equals_defaults() {
        Jail::expect_with(|_| {
            let path = reference_path();
            assert_eq!(load(Some(&path)), Ok(Config::default()));
            Ok(())
        });
    }

    #[test]
    fn reference_config_documents_every_key() {
        let text = std::fs::read_to_string(reference_path()).expect("reference config");
        // Uncomment the optional keys so that they count as documented.
        let text = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|l| {
                        l.split_once(" = ").is_some_and(|(key, value)| {
                            key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                                && format!("v = {value}").parse::<toml::Table>().is_ok()
                        })
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let documented: toml::Table = text.parse().expect("reference config parses");
        let mut full = Config::default();
        full.session.countdown = Some(Duration::from_secs(1));
        full.session.abandon = Some(Duration::from_secs(1));
        full.listen.tls = Some(crate::config::TlsConfig {
            cert: "c".into(),
            key: "k".into(),
        });
        let expected = toml::Table::try_from(&full).expect("serializes");
        for (section, keys) in &expected {
            let keys = keys.as_table().expect("section");
            let have = documented
                .get(section)
                .and_then(toml::Value::as_table)
                .unwrap_or_else(|| panic!("section [{section}] missing"));
            for key in keys.keys() {
                assert!(have.contains_key(key), "{section}.{key} is not documented");
            }
        }
    }

    #[test]
    fn effective_toml_round_trips() {
        Jail::expect_with(|jail| {
            let text = Config::default().to_effective_toml();
            assert!(
                text.contains("# countdown = \"2m\" (derived: = timeout)"),
                "{text}"
            );
            assert!(
                text.contains("# abandon = \"4m\" (derived: 2 × timeout)"),
                "{text}"
            );
            jail.create_file("effective.toml", &text)?;
            assert_eq!(
                load(Some(Path::new("effective.toml"))),
                Ok(Config::default())
            );

            let mut custom = Config::default();
            custom.session.countdown = Some(Duration::from_secs(45));
            custom.session.timeout = Duration::from_secs(90);
            custom.listen.origins = vec!["https://app.example".into()];
            custom.browser.heartbeat = Heartbeat::Every(Duration::from_secs(20));
            custom.admin.token = "0123456789abcdef".into();
            let text = custom.to_effective_toml();
            assert!(text.contains("countdown = \"45s\""), "{text}");
            assert!(
                text.contains("# abandon = \"3m\" (derived: 2 × timeout)"),
                "{text}"
            );
            // Secrets are redacted (and the placeholder is no valid token, so the
            // output cannot be used as it is); with them put back, it reads back the
            // same.
            assert!(!text.contains("0123456789abcdef"), "{text}");
            jail.create_file("redacted.toml", &text)?;
            assert!(load(Some(Path::new("redacted.toml"))).is_err());
            let restored = text.replace(crate::config::effective::REDACTED, "0123456789abcdef");
            jail.create_file("custom.toml", &restored)?;
            assert_eq!(load(Some(Path::new("custom.toml"))), Ok(custom));
            Ok(())
        });
    }

    #[test]
    fn effective_toml_with_tls_round_trips() {
        Jail::expect_with(|jail| {
            jail.create_file("cert.pem", "cert")?;
            jail.create_file("key.pem", "key")?;
            let mut custom = Config::default();
            custom.listen.tls = Some(crate::config::TlsConfig {
                cert: "cert.pem".into(),
                key: "key.pem".into(),
            });
            custom.session.abandon = Some(Duration::from_secs(600));
            let text = custom.to_effective_toml();
            assert!(text.contains("# countdown = \"2m\""), "{text}");
            jail.create_file("tls.toml", &text)?;
            assert_eq!(load(Some(Path::new("tls.toml"))), Ok(custom));
            Ok(())
        });
    }

    #[test]
    fn keys_and_repairs() {
        assert_eq!(
            display_key(&["listen".into(), "origins".into(), "2".into()]),
            "listen.origins[2]"
        );
        let defaults = Value::serialize(Config::default()).expect("defaults");
        let mut root = defaults.clone();
        assert!(set_path(
            &mut root,
            &["session".into(), "timeout".into()],
            Value::from("abc")
        ));
        assert!(repair(
            &mut root,
            &defaults,
            &["session".into(), "timeout".into()]
        ));
        assert_eq!(root, defaults);
        assert!(!repair(
            &mut root,
            &defaults,
            &["session".into(), "timeout".into()]
        ));
        assert_eq!(line_column("a\nbc\nd", 4), (2, 3));
    }
}
