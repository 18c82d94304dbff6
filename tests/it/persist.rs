//! Restarts that end no session (DESIGN.md §10), against the real binary: sessions
//! of both modes — a forked tab, a rotated token, tickets — survive SIGTERM and a
//! new process on the same snapshot; a session idle across the restart ends on time
//! with its `end` hook; `kill -9` loses no session; damaged snapshots are moved aside
//! and the gateway starts anyway; the file is mode 0600.
//! The config and snapshot helpers here are shared with `restart.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::common::process::{Gate, WAIT};
use crate::common::{upstream::Recorded, Upstream};
use crate::tab::{text, Browser, Site};

impl Site for Gate {
    fn url(&self, path: &str) -> String {
        Gate::url(self, path)
    }
}

/// Writes a config in `dir`: loopback ports, JSON logs, `persist.path` in `dir`,
/// hooks to the upstream, and `extra` TOML appended (sections may repeat keys only
/// if `extra` leaves them out here).
pub(crate) fn write_config(dir: &Path, upstream: &Upstream, session: &str, extra: &str) -> PathBuf {
    let path = dir.join("sessiongate.toml");
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
drain_timeout = "5s"
header_timeout = "2s"

[admin]
address = "127.0.0.1:0"

[upstream]
url = "{upstream}"

[session]
{session}

[hooks]
end = "/hooks/end"

[log]
format = "json"
level = "info"

[persist]
path = "{snapshot}"
{extra}
"#,
        upstream = upstream.url(),
        snapshot = snapshot_path(dir).display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("sessions.snap")
}

/// The `X-Session` the upstream saw on the last request to `path`.
fn seen_session(upstream: &Upstream, path: &str) -> Option<String> {
    upstream
        .requests()
        .iter()
        .rev()
        .find(|r| r.uri == path)
        .and_then(|r| r.header("x-session"))
}

/// `end` hook calls so far: `(session handle, reason)`.
pub(crate) fn end_hooks(upstream: &Upstream) -> Vec<(String, String)> {
    upstream
        .requests()
        .iter()
        .filter(|r| r.uri.starts_with("/hooks/end"))
        .map(|r: &Recorded| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (text(&body, "session"), text(&body, "reason"))
        })
        .collect()
}

/// Waits until the `end` hook for `handle` arrived; its reason.
async fn wait_end_hook(upstream: &Upstream, handle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((_, reason)) = end_hooks(upstream).into_iter().find(|(h, _)| h == handle) {
            return reason;
        }
        assert!(
            Instant::now() < deadline,
            "no end hook for {handle} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn tab_sessions_forks_rotations_and_tickets_survive_a_sigterm_restart() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Only the final snapshot (at SIGTERM) can carry the sessions: the interval is long.
    let config = write_config(
        dir.path(),
        &upstream,
        "mode = \"tab\"\ntimeout = \"4s\"\non_timeout = \"end\"\nactivity = \"request\"",
        "interval = \"1h\"",
    );
    let mut old = Gate::start(&config, &[]).await;

    let mut tab = Browser::new();
    tab.navigate(&old, "/").await;
    let first = tab.bootstrap(&old, "/", None, false).await;
    let (handle, token) = (text(&first, "handle"), text(&first, "token"));
    let fork = tab.bootstrap(&old, "/", Some(&token), true).await;
    assert_eq!(fork["reason"], "forked");
    let (fork_handle, fork_token) = (text(&fork, "handle"), text(&fork, "token"));
    let fork_ticket = text(&fork, "ticket");
    // Rotate the first tab's token.
    let login = tab
        .fetch(&old, "/respond?header=X-Session-Rotate:1", &token)
        .await;
    let rotated = login.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(rotated, token);
    // A third tab that stays idle from now on (timeout 4 s, `end` at once).
    let idle = tab.bootstrap(&old, "/", None, false).await;
    let idle_handle = text(&idle, "handle");
    let idle_since = Instant::now();

    old.signal(libc::SIGTERM);
    assert!(old.exit_within(Duration::from_secs(8)).await.success());
    let meta = std::fs::metadata(snapshot_path(dir.path())).expect("final snapshot written");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    let new = Gate::start(&config, &[]).await;
    let restored = new
        .saw("sessions restored from the snapshot")
        .expect("restored before it started");
    // The three tabs, and the session the first page load minted (first contact).
    assert_eq!(restored["restored"], 4, "{restored}");

    // The same tokens map to the same handles; the fork does not name its parent
    // again (it did before the restart).
    tab.fetch(&new, "/after", &rotated).await;
    assert_eq!(
        seen_session(&upstream, "/after").as_deref(),
        Some(handle.as_str())
    );
    let forked = tab.fetch(&new, "/fork-after", &fork_token).await;
    assert_eq!(forked.headers()["x-session-state"], "active");
    assert_eq!(
        seen_session(&upstream, "/fork-after").as_deref(),
        Some(fork_handle.as_str())
    );
    // A heartbeat continues the session.
    let beat = tab
        .post(&new, "heartbeat", Some(&rotated), json!({"activity": true}))
        .await;
    assert_eq!(beat.status(), StatusCode::OK);
    let beat: Value = beat.json().await.unwrap();
    assert_eq!(beat["state"], "active");
    // A ticket issued before the restart still works (once, in its browser).
    let page = tab
        .navigate(&new, &format!("/ticketed?__sg_t={fork_ticket}"))
        .await;
    assert_eq!(page.headers()["x-session-state"], "active");
    assert_eq!(
        seen_session(&upstream, "/ticketed").as_deref(),
        Some(fork_handle.as_str())
    );
    // The token the rotation replaced retired at the restart (no token is saved).
    let old_token = tab.fetch(&new, "/old-token", &token).await;
    assert_ne!(old_token.headers()["x-session-state"], "active");

    // The idle tab ends on time — 4 s after its last activity, however long the
    // restart took — with its `end` hook, and not before.
    let reason = wait_end_hook(&upstream, &idle_handle, Duration::from_secs(8)).await;
    assert_eq!(reason, "timeout");
    let ended_after = idle_since.elapsed();
    assert!(
        ended_after >= Duration::from_millis(3_900) && ended_after <= Duration::from_millis(6_000),
        "ended {ended_after:?} after its last activity"
    );
    drop(new);
}

#[tokio::test]
async fn browser_sessions_survive_a_restart_by_their_cookies() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream,
        "mode = \"browser\"",
        "interval = \"1h\"",
    );
    let mut old = Gate::start(&config, &[]).await;
    // The cookies are sent by hand: the new process listens on another port.
    let response = reqwest::get(old.url("/first")).await.unwrap();
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    let handle = seen_session(&upstream, "/first").expect("a session");
    old.signal(libc::SIGTERM);
    assert!(old.exit_within(Duration::from_secs(8)).await.success());

    let new = Gate::start(&config, &[]).await;
    let response = reqwest::Client::new()
        .get(new.url("/again"))
        .header("cookie", cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-session-state"], "active");
    assert_eq!(seen_session(&upstream, "/again"), Some(handle));
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no new session was minted"
    );
}

#[tokio::test]
async fn kill_9_loses_no_session() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "mode = \"tab\"", "interval = \"1s\"");
    let mut old = Gate::start(&config, &[]).await;
    let mut tab = Browser::new();
    tab.navigate(&old, "/").await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        let reply = tab.bootstrap(&old, "/", None, false).await;
        sessions.push((text(&reply, "handle"), text(&reply, "token")));
    }
    // One interval (plus the write) later the sessions are on disk.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    old.signal(libc::SIGKILL);
    old.exit_within(WAIT).await;

    let new = Gate::start(&config, &[]).await;
    for (i, (handle, token)) in sessions.iter().enumerate() {
        let path = format!("/after-kill-{i}");
        let response = tab.fetch(&new, &path, token).await;
        assert_eq!(response.headers()["x-session-state"], "active");
        assert_eq!(
            seen_session(&upstream, &path).as_deref(),
            Some(handle.as_str())
        );
    }
}

#[tokio::test]
async fn damaged_snapshots_are_moved_aside_and_the_gateway_starts_empty() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, "mode = \"tab\"", "interval = \"1h\"");
    // A real snapshot to damage.
    let mut gate = Gate::start(&config, &[]).await;
    let mut tab = Browser::new();
    tab.navigate(&gate, "/").await;
    tab.bootstrap(&gate, "/", None, false).await;
    gate.signal(libc::SIGTERM);
    assert!(gate.exit_within(WAIT).await.success());
    let good = std::fs::read(snapshot_path(dir.path())).unwrap();

    let mut foreign_version = good.clone();
    foreign_version[8] = 99;
    let mut flipped = good.clone();
    let middle = good.len() / 2;
    flipped[middle] ^= 0x01;
    let damaged: [(&str, Vec<u8>); 4] = [
        ("truncated", good[..good.len() - 7].to_vec()),
        ("bit flip", flipped),
        ("other version", foreign_version),
        (
            "not a snapshot",
            b"[session]\nnot = 'a snapshot'\n".to_vec(),
        ),
    ];
    for (what, bytes) in damaged {
        let snapshot = snapshot_path(dir.path());
        std::fs::write(&snapshot, &bytes).unwrap();
        let mut gate = Gate::start(&config, &[]).await;
        // It serves, with no session.
        let page = reqwest::get(gate.url("/")).await.unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{what}");
        assert!(
            gate.saw("sessions restored from the snapshot").is_none(),
            "{what}: restored from a damaged file"
        );
        assert!(
            !snapshot.exists() || std::fs::read(&snapshot).unwrap() != bytes,
            "{what}"
        );
        let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{what}: {aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "{what}");
        std::fs::remove_file(&aside[0]).unwrap();
        gate.signal(libc::SIGTERM);
        assert!(gate.exit_within(WAIT).await.success(), "{what}");
    }
}
