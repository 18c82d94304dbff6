//! The duration syntax of the config file: `"120s"`, `"2m"`, `"1h 30m"`, or a bare
//! integer number of seconds (`timeout = 0`). A value that is not one of these is
//! refused with a reason that says what is accepted, never the parser's own wording.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configured duration. Zero often means "off"; the key's docs say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            f.write_str("0s")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

/// What every rejected duration is told to look like.
const EXPECTED: &str = r#"expected a duration like "90s", "5m" or "1h" (or whole seconds)"#;
/// Appended when the value was negative.
const NOT_NEGATIVE: &str = "negative values are not allowed";

/// Why `text` is not a duration, in the operator's terms: the value, what was wrong
/// with it when that can be said simply, and what is accepted.
fn invalid(text: &str) -> String {
    let text = text.trim();
    if text.starts_with('-') {
        return format!("invalid duration {text:?}: {NOT_NEGATIVE}; {EXPECTED}");
    }
    match humantime::parse_duration(text) {
        Err(humantime::DurationError::UnknownUnit { unit, .. }) if !unit.is_empty() => {
            format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d); {EXPECTED}"
            )
        }
        Err(humantime::DurationError::UnknownUnit { .. }) => {
            format!("invalid duration {text:?}: a unit is missing; {EXPECTED}")
        }
        Err(humantime::DurationError::NumberOverflow) => {
            format!("invalid duration {text:?}: too large; {EXPECTED}")
        }
        _ => format!("invalid duration {text:?}: {EXPECTED}"),
    }
}

/// Parses the text form: whole seconds or a humantime duration.
fn parse_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map(Duration)
        .map_err(|_| invalid(text))
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a duration like "90s", "5m" or "1h" (or whole seconds)"#)
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs).map(Duration::from_secs).map_err(|_| {
            E::custom(format!(
                "invalid duration {secs}: {NOT_NEGATIVE}; {EXPECTED}"
            ))
        })
    }

    // `timeout = 1.5` reads naturally as seconds; refusing it would only be pedantic.
    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        std::time::Duration::try_from_secs_f64(secs)
            .map(Duration)
            .map_err(|_| {
                let why = if secs < 0.0 {
                    NOT_NEGATIVE
                } else {
                    "not a finite number of seconds"
                };
                E::custom(format!("invalid duration {secs}: {why}; {EXPECTED}"))
            })
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_text(text).map_err(E::custom)
    }
}

impl Serialize for super::Heartbeat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            super::Heartbeat::Auto => s.serialize_str("auto"),
            super::Heartbeat::Every(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for super::Heartbeat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeartbeatVisitor;
        impl Visitor<'_> for HeartbeatVisitor {
            type Value = super::Heartbeat;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto" or a duration like "30s""#)
            }
            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
                DurationVisitor.visit_u64(secs).map(super::Heartbeat::Every)
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                DurationVisitor.visit_i64(secs).map(super::Heartbeat::Every)
            }
            fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Self::Value, E> {
                DurationVisitor.visit_f64(secs).map(super::Heartbeat::Every)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                if text.trim().eq_ignore_ascii_case("auto") {
                    Ok(super::Heartbeat::Auto)
                } else {
                    parse_text(text)
                        .map(super::Heartbeat::Every)
                        .map_err(|reason| E::custom(format!("{reason}, or \"auto\"")))
                }
            }
        }
        d.deserialize_any(HeartbeatVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Heartbeat;
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(toml_value: &str) -> Result<T, String> {
        #[derive(Deserialize)]
        struct Wrap<T> {
            v: T,
        }
        toml::from_str::<Wrap<T>>(&format!("v = {toml_value}"))
            .map(|w| w.v)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parse::<Duration>("120"), Ok(Duration::from_secs(120)));
        assert_eq!(parse::<Duration>("\"120\""), Ok(Duration::from_secs(120)));
        assert_eq!(parse::<Duration>("\"120s\""), Ok(Duration::from_secs(120)));
        assert_eq!(parse::<Duration>("\"2m\""), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse::<Duration>("\"1h 30m\""),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            parse::<Duration>("\"250ms\""),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse::<Duration>("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse::<Duration>("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejected_forms_say_what_is_accepted() {
        let expected = r#"expected a duration like "90s", "5m" or "1h" (or whole seconds)"#;
        for (input, says) in [
            (
                "\"soon\"",
                r#"invalid duration "soon": expected a duration like"#,
            ),
            (
                "\"-5s\"",
                r#"invalid duration "-5s": negative values are not allowed; expected"#,
            ),
            (
                "-5",
                "invalid duration -5: negative values are not allowed; expected",
            ),
            (
                "-1.5",
                "invalid duration -1.5: negative values are not allowed",
            ),
            (
                "\"10 minuts\"",
                r#"invalid duration "10 minuts": unknown unit "minuts" (use ms, s, m, h or d); expected"#,
            ),
            ("\"10\"", ""),
            ("\"5 5\"", r#"invalid duration "5 5": a unit is missing"#),
            ("\"\"", r#"invalid duration "": expected a duration like"#),
        ] {
            match parse::<Duration>(input) {
                Ok(d) => assert!(says.is_empty(), "{input} parsed as {d}"),
                Err(err) => {
                    assert!(err.starts_with(says), "{input}: {err}");
                    assert!(err.ends_with(expected), "{input}: {err}");
                    // The parsing library's wording never reaches the operator.
                    assert!(!err.contains("expected number at"), "{input}: {err}");
                    assert!(!err.contains("supported units"), "{input}: {err}");
                }
            }
        }
        let err = parse::<Heartbeat>("\"sometimes\"").unwrap_err();
        assert!(err.ends_with(r#"(or whole seconds), or "auto""#), "{err}");
    }

    #[test]
    fn rejected_forms_name_the_value() {
        for (input, needle) in [
            ("-5", "-5"),
            ("\"abc\"", "\"abc\""),
            ("-1.5", "-1.5"),
            ("true", ""),
        ] {
            let err = parse::<Duration>(input).expect_err(input);
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(120),
            Duration::from_secs(5400),
            Duration::from_millis(1500),
        ] {
            assert_eq!(parse::<Duration>(&format!("\"{d}\"")), Ok(d), "{d}");
        }
        assert_eq!(Duration::from_secs(120).to_string(), "2m");
        assert_eq!(Duration::ZERO.to_string(), "0s");
    }

    #[test]
    fn heartbeat() {
        assert_eq!(parse::<Heartbeat>("\"auto\""), Ok(Heartbeat::Auto));
        assert_eq!(parse::<Heartbeat>("\"AUTO\""), Ok(Heartbeat::Auto));
        assert_eq!(
            parse::<Heartbeat>("\"30s\""),
            Ok(Heartbeat::Every(Duration::from_secs(30)))
        );
        assert_eq!(
            parse::<Heartbeat>("20"),
            Ok(Heartbeat::Every(Duration::from_secs(20)))
        );
        assert!(parse::<Heartbeat>("\"sometimes\"").is_err());
    }
}
