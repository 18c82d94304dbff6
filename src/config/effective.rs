//! The effective configuration as `sessiongate check` prints it: TOML that can be
//! fed back as a config file, with the derived values in force as comments.

use super::{Config, Heartbeat};

/// What `check` prints instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// The effective configuration as TOML, for `sessiongate check`. Keys whose
    /// value is derived (`session.countdown`, `session.abandon` when unset, an
    /// `"auto"` heartbeat) get a comment with the value in force, so the output can
    /// be fed back as a config file with the same meaning. Secrets (`admin.token`,
    /// `hooks.secret`) are shown as [`REDACTED`] when set, so the output can be
    /// pasted into a ticket.
    pub fn to_effective_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [&mut shown.admin.token, &mut shown.hooks.secret] {
            if !secret.is_empty() {
                *secret = REDACTED.to_string();
            }
        }
        let text = match toml::to_string(&shown) {
            Ok(text) => text,
            Err(e) => return format!("# cannot render the configuration as TOML: {e}\n"),
        };
        let timeout = self.session.timeout.get();
        let never = if timeout.is_zero() {
            "; timeout = 0 means never"
        } else {
            ""
        };
        let rules = self.lifetime();
        let ms = crate::lifetime::millis(timeout);
        let duration = |ms| super::Duration::from(std::time::Duration::from_millis(ms));
        let countdown = duration(rules.countdown_for(ms));
        let abandon = duration(rules.abandon_for(ms));
        let heartbeat = duration(rules.heartbeat_for(ms));

        let mut out = String::with_capacity(text.len() + 200);
        let mut table = String::new();
        for line in text.lines() {
            if line.starts_with('[') {
                table = line.trim_matches(['[', ']']).to_owned();
            }
            out.push_str(line);
            if table == "browser"
                && line.starts_with("heartbeat =")
                && self.browser.heartbeat == Heartbeat::Auto
            {
                out.push_str(&format!(
                    "  # = {heartbeat} for timeout {}",
                    self.session.timeout
                ));
            }
            out.push('\n');
            if table != "session" {
                continue;
            }
            // Serialization order is mode, timeout, on_timeout, countdown?, abandon?,
            // so a derived value goes right where an explicit one would be.
            if line.starts_with("on_timeout =") {
                if self.session.countdown.is_none() {
                    out.push_str(&format!(
                        "# countdown = \"{countdown}\" (derived: = timeout{never})\n"
                    ));
                }
                if self.session.countdown.is_none() && self.session.abandon.is_none() {
                    out.push_str(&format!(
                        "# abandon = \"{abandon}\" (derived: 2 × timeout{never})\n"
                    ));
                }
            } else if line.starts_with("countdown =") && self.session.abandon.is_none() {
                out.push_str(&format!(
                    "# abandon = \"{abandon}\" (derived: 2 × timeout{never})\n"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_empty_ones_stay_empty() {
        let mut config = Config::default();
        config.admin.token = "admin-secret-value".into();
        config.hooks.secret = "hook-secret-value".into();
        let text = config.to_effective_toml();
        assert!(!text.contains("admin-secret-value"), "{text}");
        assert!(!text.contains("hook-secret-value"), "{text}");
        assert_eq!(text.matches(REDACTED).count(), 2, "{text}");
        assert!(!Config::default().to_effective_toml().contains(REDACTED));
    }
}
