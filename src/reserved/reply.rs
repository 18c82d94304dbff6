//! The JSON the reserved endpoints answer with, as types (see `PROTOCOL.md` beside
//! the agent for the wire protocol they make up). Times are milliseconds since the
//! Unix epoch, so the agent can compare them with `Date.now()`.

use serde::Serialize;

use crate::session::Handle;

/// `POST session`: the tab's session, a ticket for the bootstrap page's own reload
/// and a few for the next page.
#[derive(Debug, Serialize)]
pub struct SessionReply {
    /// Only when the tab must learn it: new, forked, expired, or rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub handle: Handle,
    pub ticket: Option<String>,
    pub tickets: Vec<String>,
    /// `resumed`, `new`, `forked` or `expired`.
    pub reason: &'static str,
}

/// `GET status`, `POST heartbeat`, `POST extend` and `POST end`: the session's state,
/// and while it lives its deadlines.
#[derive(Debug, Serialize)]
pub struct StateReply {
    /// `active`, `warning`, `ended` or `none`.
    pub state: &'static str,
    #[serde(flatten)]
    pub live: Option<LiveReply>,
}

/// What the agent needs to know of a live session.
#[derive(Debug, Serialize)]
pub struct LiveReply {
    pub handle: Handle,
    pub now: u64,
    /// When the countdown starts (`null`: never).
    pub warn_at: Option<u64>,
    /// When the session ends without activity (`null`: never).
    pub deadline: Option<u64>,
    /// When it is abandoned without any signal (`null`: never).
    pub abandon_at: Option<u64>,
    /// The heartbeat interval in milliseconds.
    pub heartbeat: u64,
    /// Fresh tickets for the agent's pool.
    pub tickets: Vec<String>,
    /// The current token when the caller presented one that was rotated away.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl StateReply {
    /// A reply without a live session (`none` or `ended`).
    pub fn gone(state: &'static str) -> StateReply {
        StateReply { state, live: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_sessions_say_only_their_state() {
        let json = serde_json::to_value(StateReply::gone("none")).unwrap();
        assert_eq!(json, serde_json::json!({ "state": "none" }));
    }

    #[test]
    fn live_sessions_flatten_their_deadlines() {
        let reply = StateReply {
            state: "active",
            live: Some(LiveReply {
                handle: Handle::nil(),
                now: 1,
                warn_at: Some(2),
                deadline: None,
                abandon_at: Some(3),
                heartbeat: 4,
                tickets: vec!["t".into()],
                token: None,
            }),
        };
        let json = serde_json::to_value(reply).unwrap();
        assert_eq!(json["state"], "active");
        assert_eq!(json["warn_at"], 2);
        assert!(json["deadline"].is_null());
        assert_eq!(json["tickets"][0], "t");
        assert!(json.get("token").is_none());
    }
}
