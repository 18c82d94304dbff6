//! `upstream.cookie_jar`: which upstream cookies a session keeps on the gateway
//! instead of in the browser (see [`crate::session::jar`]).
//!
//! Written as `false` or `"off"` (the default), `"builtin"` (the built-in list of
//! framework session cookies), `"all"`, or a list of cookie names. Deserialization
//! takes the shape; [`check`] the names.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest explicit list: every name is compared with every upstream cookie.
pub const MAX_NAMES: usize = 64;
/// Longest name accepted (browsers cap name and value at 4 KiB together).
pub const MAX_NAME_BYTES: usize = 256;

/// `upstream.cookie_jar`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CookieJar {
    /// Cookies go to the browser, as without a jar.
    #[default]
    Off,
    /// The built-in list ([`crate::session::jar::BUILTIN`]).
    Builtin,
    /// Every upstream cookie.
    All,
    /// These names (case-sensitive).
    Names(Vec<String>),
}

const EXPECTED: &str =
    r#"false, "off", "builtin", "all" or a list of cookie names like ["PHPSESSID"]"#;

impl Serialize for CookieJar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CookieJar::Off => s.serialize_str("off"),
            CookieJar::Builtin => s.serialize_str("builtin"),
            CookieJar::All => s.serialize_str("all"),
            CookieJar::Names(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CookieJar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct JarVisitor;
        impl<'de> Visitor<'de> for JarVisitor {
            type Value = CookieJar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<CookieJar, E> {
                if on {
                    Err(E::custom(format!(
                        "true is ambiguous: say which cookies, {EXPECTED}"
                    )))
                } else {
                    Ok(CookieJar::Off)
                }
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<CookieJar, E> {
                match text.trim().to_ascii_lowercase().as_str() {
                    "off" | "false" => Ok(CookieJar::Off),
                    "builtin" => Ok(CookieJar::Builtin),
                    "all" => Ok(CookieJar::All),
                    _ => Err(E::custom(format!(
                        "{text:?} is not a setting: {EXPECTED} (one name goes in a list: [{text:?}])"
                    ))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CookieJar, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if names.len() == MAX_NAMES {
                        return Err(de::Error::custom(format!(
                            "more than {MAX_NAMES} cookie names"
                        )));
                    }
                    names.push(name);
                }
                Ok(CookieJar::Names(names))
            }
        }
        d.deserialize_any(JarVisitor)
    }
}

impl CookieJar {
    pub fn is_on(&self) -> bool {
        *self != CookieJar::Off
    }
}

/// The problems with a configured value, one per bad name: each must be an RFC 6265
/// cookie-name (an RFC 9110 token) and listed once; an empty list is refused (write
/// `"off"`). (Naming one of the gateway's own cookies is harmless: those never reach
/// the upstream, and an upstream's attempt to set one is dropped before the jar.)
pub fn check(jar: &CookieJar) -> Vec<String> {
    let CookieJar::Names(names) = jar else {
        return Vec::new();
    };
    if names.is_empty() {
        return vec![r#"an empty list keeps nothing: write "off" (or false) for no jar"#.into()];
    }
    let mut problems = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.bytes().all(is_tchar) {
            problems.push(format!(
                "{name:?} is not a cookie name: 1 to {MAX_NAME_BYTES} token characters (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        } else if names[..i].contains(name) {
            problems.push(format!("{name:?} is listed twice"));
        }
    }
    problems
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_value: &str) -> Result<CookieJar, String> {
        #[derive(Deserialize)]
        struct Wrap {
            v: CookieJar,
        }
        toml::from_str::<Wrap>(&format!("v = {toml_value}"))
            .map(|w| w.v)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parse("false"), Ok(CookieJar::Off));
        assert_eq!(parse("\"off\""), Ok(CookieJar::Off));
        assert_eq!(parse("\"Builtin\""), Ok(CookieJar::Builtin));
        assert_eq!(parse("\"all\""), Ok(CookieJar::All));
        assert_eq!(
            parse(r#"["PHPSESSID", "my_app"]"#),
            Ok(CookieJar::Names(vec!["PHPSESSID".into(), "my_app".into()]))
        );
    }

    #[test]
    fn refused_forms() {
        assert!(parse("true").unwrap_err().contains("ambiguous"));
        let err = parse("\"PHPSESSID\"").unwrap_err();
        assert!(err.contains("[\"PHPSESSID\"]"), "{err}");
        assert!(parse("3").unwrap_err().contains("builtin"));
        let many = format!(
            "[{}]",
            (0..=MAX_NAMES)
                .map(|i| format!("\"c{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(parse(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn names_are_checked() {
        let names = |list: &[&str]| CookieJar::Names(list.iter().map(|s| s.to_string()).collect());
        assert!(check(&names(&["PHPSESSID", "ASP.NET_SessionId", ".ASPXAUTH"])).is_empty());
        assert_eq!(check(&names(&[])).len(), 1);
        for bad in ["", "a b", "a;b", "a=b", "näme", "a,b", "(x)"] {
            assert_eq!(check(&names(&[bad])).len(), 1, "{bad:?}");
        }
        assert!(check(&names(&["a", "a"]))[0].contains("twice"));
        assert!(check(&CookieJar::All).is_empty());
    }
}
