//! The JSON body of a hook call, captured from the session when the event happens.
//!
//! Captured in the observer (the session may be gone by the time the call is made),
//! serialized only in the hook task so the store's caller pays for neither the
//! allocation nor the encoding. Instants are wall-clock epoch milliseconds
//! ([`Clock::wall`]), the only time the backend can relate to.

use serde::Serialize;

use super::HookKind;
use crate::session::{Clock, EndReason, Handle, Millis, Session};

/// `{"event", "session", "parent", "reason", "created", "last_activity", "at"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Payload {
    pub event: HookKind,
    pub session: Handle,
    pub parent: Option<Handle>,
    pub reason: Option<EndReason>,
    pub created: u64,
    pub last_activity: u64,
    pub at: u64,
    /// Monotonic `last_activity`: names the idle period a `timeout` hook is about,
    /// so a late `handled` answer cannot keep a later one. Not sent.
    #[serde(skip)]
    pub idle_since: Millis,
}

impl Payload {
    /// The payload for `kind` on `session` at the monotonic instant `at`.
    pub(crate) fn capture(
        kind: HookKind,
        session: &Session,
        reason: Option<EndReason>,
        at: Millis,
        clock: &Clock,
    ) -> Self {
        Payload {
            event: kind,
            session: session.handle(),
            parent: session.parent(),
            reason,
            created: clock.wall(session.created()),
            last_activity: clock.wall(session.last_activity()),
            at: clock.wall(at),
            idle_since: session.last_activity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_values() {
        let session = Handle::from_u128(1);
        let parent = Handle::from_u128(2);
        let payload = Payload {
            event: HookKind::End,
            session,
            parent: Some(parent),
            reason: Some(EndReason::Abandoned),
            created: 10,
            last_activity: 20,
            at: 30,
            idle_since: 5,
        };
        let json = serde_json::to_value(payload).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event": "end",
                "session": session.to_string(),
                "parent": parent.to_string(),
                "reason": "abandoned",
                "created": 10,
                "last_activity": 20,
                "at": 30,
            })
        );
        let start = Payload {
            event: HookKind::Start,
            parent: None,
            reason: None,
            ..payload
        };
        let json = serde_json::to_value(start).unwrap();
        assert_eq!(json["event"], "start");
        assert!(json["parent"].is_null() && json["reason"].is_null());
    }
}
