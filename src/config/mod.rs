//! Configuration: the typed model of `sessiongate.toml`.
//!
//! Every key has a default (see `config/sessiongate.toml` at the repository root, which
//! documents each one). Values are layered: built-in defaults < TOML file <
//! `SESSIONGATE_*` environment variables (`__` between levels). Loading lives in
//! [`load`](mod@load), semantic checks in [`validate`], and the duration syntax in [`duration`].

pub mod cidr;
pub mod cookie_jar;
pub mod duration;
pub mod effective;
pub mod errors;
pub mod load;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::lifetime::{millis, Beat, Lifetime};
pub use crate::lifetime::{Activity, OnTimeout};

pub use cidr::{Cidr, CidrError};
pub use cookie_jar::CookieJar;
pub use duration::Duration;
pub use load::{load, load_sourced, load_with_defaults, ConfigError, ConfigErrors, Loaded, Source};

/// The whole configuration, one field per TOML table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub session: SessionConfig,
    pub browser: BrowserConfig,
    pub hooks: HooksConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub persist: PersistConfig,
    pub store: StoreConfig,
}

/// `[listen]`: the public listener browsers connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub address: SocketAddr,
    /// rustls certificate and key; absent means plain HTTP (and h2c).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Time allowed for a whole request head, and for the TLS handshake.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish before connections close.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// Allowed `Origin`s for WebSockets and reserved POSTs; empty = the request's own Host.
    pub origins: Vec<String>,
    /// Longest a request body may send nothing (between frames, from the first wait
    /// on): past it, the request is answered 408 (or, once answered, aborted) and
    /// its connection closed.
    pub body_timeout: Duration,
    /// HTTP/2 concurrent streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams: u32,
    /// The scheme browsers use to reach the gateway: decides `Secure`/`__Host-`
    /// cookies, HSTS and the gateway's own `Origin`.
    pub public_scheme: PublicScheme,
    /// CIDR ranges of proxies whose `X-Forwarded-For`/`-Proto` are believed (see
    /// [`cidr`]); empty with `upstream.trust_forwarded = true` means every peer.
    pub trusted_proxies: Vec<String>,
}

/// `listen.public_scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublicScheme {
    /// https when the listener has TLS, or a trusted proxy said
    /// `X-Forwarded-Proto: https`; else http.
    Auto,
    Http,
    Https,
}

/// `listen.tls`: PEM files for the public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[upstream]`: the legacy application behind the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: String,
    /// Name of the request header that carries the session handle.
    pub header: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub trust_forwarded: bool,
    /// Most upstream requests in flight at once; over it, requests wait up to
    /// `connect_timeout` for a slot, then get 503.
    pub max_in_flight: usize,
    /// Which upstream cookies each session keeps on the gateway instead of in the
    /// browser (see [`crate::session::jar`]); off by default.
    pub cookie_jar: CookieJar,
}

/// `[session]`: identity and lifetime rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub mode: SessionMode,
    /// Idle time before the warning; zero means sessions never time out.
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Warning length; `None` means "equal to the session's timeout".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub countdown: Option<Duration>,
    /// Time without any signal before a session is abandoned; `None` means 2 × timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abandon: Option<Duration>,
    /// Absolute lifetime; zero means none.
    pub max_lifetime: Duration,
    /// `browser` mode: zero keeps the proxy's cookies session cookies (they end with
    /// the browser); a positive value gives them this `Max-Age` (never beyond what
    /// `max_lifetime` leaves), refreshed at most hourly while the session lives.
    pub cookie_lifetime: Duration,
    pub activity: Activity,
    pub duplicate_tab: DuplicateTab,
    pub max_sessions: usize,
    pub when_full: WhenFull,
    /// New sessions one client address may create per minute (burst of the same
    /// size); 0 = no limit. Keeps a flood from one address from filling
    /// `max_sessions` or evicting real users.
    pub new_per_client: u32,
    /// Live sessions one client address (IPv4 address, IPv6 /64) may hold at once;
    /// a new one over it gets 429. 0 = no limit.
    pub max_per_client: u32,
    /// Path prefixes that must carry a session (else 401).
    pub require: Vec<String>,
}

/// Where a session lives in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// One session per tab (sessionStorage), like Wisej's default.
    Tab,
    /// One session per browser profile, carried by a cookie, like ASP.NET.
    Browser,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionMode::Tab => "tab",
            SessionMode::Browser => "browser",
        }
    }
}

/// As written in the config (`tab`, `browser`): how it appears in log lines.
impl std::fmt::Display for SessionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a duplicated tab gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicateTab {
    New,
    Share,
}

/// What happens when `max_sessions` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    Reject,
    Evict,
}

/// `[browser]`: what the browser side sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserConfig {
    pub prefix: String,
    pub heartbeat: Heartbeat,
    pub inject: bool,
    /// Language of the countdown window and the ended notice: `"auto"` (the page's
    /// `<html lang>`, else the browser's language, else English) or a language tag
    /// whose language has built-in texts ([`LANGUAGES`]).
    pub language: String,
    /// Overrides of the built-in texts, in any language.
    pub text: BrowserText,
}

/// The languages the agent has built-in texts for (primary language subtags).
pub const LANGUAGES: [&str; 8] = ["en", "de", "fr", "es", "it", "pt", "nl", "pl"];

/// `browser.text`: strings of the countdown window and the ended notice that replace
/// the built-in ones. In `message`, `{seconds}` becomes the time left with its unit
/// in the page's language ("45 seconds", "45 Sekunden") and `{stay}` the text of the
/// Stay button.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserText {
    /// The countdown window's heading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The countdown window's text, with `{seconds}` (and `{stay}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The button that keeps the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stay: Option<String>,
    /// The button that ends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// The notice once the session has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The notice's link that starts a new session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Added to the notice when it stopped a form or a navigation: what was typed
    /// is still in the page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// Shown in the countdown window when "Stay" or "End" could not reach the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<String>,
}

impl BrowserText {
    /// Every key with its override, in the order of the table.
    pub fn entries(&self) -> [(&'static str, Option<&str>); 8] {
        [
            ("title", self.title.as_deref()),
            ("message", self.message.as_deref()),
            ("stay", self.stay.as_deref()),
            ("end", self.end.as_deref()),
            ("ended", self.ended.as_deref()),
            ("restart", self.restart.as_deref()),
            ("kept", self.kept.as_deref()),
            ("offline", self.offline.as_deref()),
        ]
    }

    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, value)| value.is_none())
    }
}

/// Heartbeat interval: `"auto"` or a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// `clamp(timeout / 4, 15 s, 60 s)`.
    Auto,
    Every(Duration),
}

/// `[hooks]`: calls into the upstream on session events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub start: String,
    pub timeout: String,
    pub end: String,
    pub budget: Duration,
    /// Non-empty: every hook request carries `X-Session-Signature`, an HMAC-SHA256
    /// of its body under this secret.
    pub secret: String,
}

/// `[admin]`: the operator listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: String,
}

/// Where sessions are kept (`store.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process: one gateway (the default).
    #[default]
    Memory,
    /// In Redis: several replicas share every session (DESIGN.md §10).
    Redis,
}

/// `[store]`: where sessions are kept (DESIGN.md §8, §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `redis://[user:password@]host:port/db` or `rediss://…` (TLS via rustls).
    pub url: String,
    /// Prepended to every Redis key, so several deployments can share one Redis.
    pub prefix: String,
    /// How long a replica keeps serving the sessions it holds while Redis is
    /// unreachable; past it, they are refused (not ended) until Redis is back.
    pub outage_grace: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "sessiongate:".into(),
            outage_grace: Duration::from_secs(300),
        }
    }
}

/// `[persist]`: the session table saved to disk and restored at start (DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistConfig {
    /// The snapshot file; empty = sessions live in memory only.
    pub path: PathBuf,
    /// How often the snapshot is written (and once more at shutdown).
    pub interval: Duration,
    /// A Unix socket for zero-downtime restarts: a running gateway listens on it and
    /// hands its listening sockets (and its final snapshot) to a new process started
    /// with `--takeover`; empty = no hand-off.
    pub handoff: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// ANSI colours in text logs.
    pub color: LogColor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether text log lines carry ANSI colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Only when the log goes to a terminal and `NO_COLOR` is not set.
    Auto,
    Always,
    Never,
}

impl LogColor {
    /// Whether to colour, given whether the log stream is a terminal and whether
    /// the `NO_COLOR` convention (<https://no-color.org>) asks for none.
    pub fn use_ansi(self, terminal: bool, no_color: bool) -> bool {
        match self {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => terminal && !no_color,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            origins: Vec::new(),
            body_timeout: Duration::from_secs(30),
            max_streams: 100,
            public_scheme: PublicScheme::Auto,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: "http://127.0.0.1:3000".into(),
            header: "X-Session".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            trust_forwarded: false,
            max_in_flight: 1024,
            cookie_jar: CookieJar::Off,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mode: SessionMode::Tab,
            timeout: Duration::from_secs(120),
            on_timeout: OnTimeout::Countdown,
            countdown: None,
            abandon: None,
            max_lifetime: Duration::ZERO,
            cookie_lifetime: Duration::ZERO,
            activity: Activity::Interaction,
            duplicate_tab: DuplicateTab::New,
            max_sessions: 100_000,
            when_full: WhenFull::Reject,
            new_per_client: 120,
            max_per_client: 200,
            require: Vec::new(),
        }
    }
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            prefix: "/__sessiongate".into(),
            heartbeat: Heartbeat::Auto,
            inject: true,
            language: "auto".into(),
            text: BrowserText::default(),
        }
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            start: String::new(),
            timeout: String::new(),
            end: String::new(),
            budget: Duration::from_secs(2),
            secret: String::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: String::new(),
        }
    }
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig {
            path: PathBuf::new(),
            interval: Duration::from_secs(10),
            handoff: PathBuf::new(),
        }
    }
}

impl PersistConfig {
    /// The snapshot file, if persistence is on.
    pub fn snapshot_path(&self) -> Option<&std::path::Path> {
        (!self.path.as_os_str().is_empty()).then_some(self.path.as_path())
    }

    /// The hand-off socket, if configured.
    pub fn handoff_path(&self) -> Option<&std::path::Path> {
        (!self.handoff.as_os_str().is_empty()).then_some(self.handoff.as_path())
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            color: LogColor::Auto,
        }
    }
}

impl SessionConfig {
    /// The lifetime rules these settings give (the heartbeat rule left at `auto`;
    /// [`Config::lifetime`] has the configured one).
    pub fn lifetime(&self) -> Lifetime {
        Lifetime::new(
            self.timeout.get(),
            self.on_timeout,
            self.countdown.map(|d| d.get()),
            self.abandon.map(|d| d.get()),
            self.max_lifetime.get(),
            self.activity,
        )
    }
}

impl Lifetime {
    /// The rules of a `[session]` table (see [`SessionConfig::lifetime`]).
    pub fn from_config(config: &SessionConfig) -> Self {
        config.lifetime()
    }
}

impl Config {
    /// The lifetime rules in force, heartbeat included.
    pub fn lifetime(&self) -> Lifetime {
        let beat = match self.browser.heartbeat {
            Heartbeat::Auto => Beat::Auto,
            Heartbeat::Every(every) => Beat::Every(millis(every.get())),
        };
        self.session.lifetime().with_beat(beat)
    }
}
