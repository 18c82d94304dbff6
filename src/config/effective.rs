//! The effective configuration as `sessiongate check` prints it: TOML that can be
//! fed back as a config file, with the derived values in force as comments.

use super::{Config, Heartbeat};

impl Config {
    /// The effective configuration as TOML, for `sessiongate check`. Keys whose
    /// value is derived (`session.countdown`, `session.abandon` when unset, an
    /// `"auto"` heartbeat) get a comment with the value in force, so the output can
    /// be fed back as a config file with the same meaning. Includes `admin.token`
    /// verbatim, so treat the output like the config file itself.
    pub fn to_effective_toml(&self) -> String {
        let text = match toml::to_string(self) {
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
