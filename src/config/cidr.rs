//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a bare address
//! for exactly that host), as `listen.trusted_proxies` lists them.
//!
//! Parsing is strict so that a typo cannot silently trust the wrong network: a range
//! whose address has bits set past its prefix (`10.0.0.1/8`) is refused with the
//! range that was probably meant. Matching treats an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.1`, what a dual-stack socket reports) as the IPv4 address it is.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a text is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or a CIDR range such as \"10.0.0.0/8\" or \"fd00::/8\"")]
    Address(String),
    #[error("{text:?}: the prefix length must be a number from 0 to {max}")]
    Prefix { text: String, max: u8 },
    #[error("{text:?} has bits set past the /{prefix} prefix; did you mean \"{meant}\"?")]
    HostBits {
        text: String,
        prefix: u8,
        meant: String,
    },
}

impl Cidr {
    /// The network's address (all bits past the prefix are zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses count as IPv4
    /// on both sides; an IPv4 address never matches an IPv6 network or the reverse.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix);
                u32::from(ip) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix);
                u128::from(ip) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let (address, prefix) = match trimmed.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (trimmed, None),
        };
        let written: IpAddr = address
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        // `::ffff:10.0.0.0/104` is the IPv4 range `10.0.0.0/8`: matching compares
        // canonical addresses, so the range is kept in its IPv4 form.
        let address = written.to_canonical();
        let max: u8 = if written.is_ipv4() { 32 } else { 128 };
        let shift: u8 = if written.is_ipv6() && address.is_ipv4() {
            96
        } else {
            0
        };
        let written_prefix = match prefix {
            None => max,
            Some(p) => {
                let bad = || CidrError::Prefix {
                    text: text.to_owned(),
                    max,
                };
                // Only plain decimal digits: "+8" or " 8" are typos, not prefixes.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let p: u8 = p.parse().map_err(|_| bad())?;
                if p > max || p < shift {
                    return Err(bad());
                }
                p
            }
        };
        let prefix = written_prefix.saturating_sub(shift);
        let cidr = Cidr {
            network: address,
            prefix,
        };
        let network = match address {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & mask_v4(prefix)).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask_v6(prefix)).into()),
        };
        if network != address {
            return Err(CidrError::HostBits {
                text: text.to_owned(),
                prefix: written_prefix,
                meant: Cidr { network, prefix }.to_string(),
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "mapped IPv4");
        assert!(!net.contains(ip("::1")));
        let host = cidr("192.0.2.7");
        assert_eq!(host.prefix(), 32);
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")), "v4 range, v6 address");
        assert!(cidr("127.0.0.0/8").contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv6_ranges() {
        let net = cidr("2001:db8::/32");
        assert!(net.contains(ip("2001:db8:1::5")));
        assert!(!net.contains(ip("2001:db9::5")));
        assert!(!net.contains(ip("10.0.0.1")));
        assert!(cidr("::1/128").contains(ip("::1")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(cidr("::/0").contains(ip("fe80::1")));
        // A mapped range is the IPv4 range it denotes.
        let mapped = cidr("::ffff:10.0.0.0/104");
        assert_eq!(mapped, cidr("10.0.0.0/8"));
        assert!(cidr("::ffff:10.0.0.1").contains(ip("10.0.0.1")));
    }

    #[test]
    fn bad_ranges_say_why() {
        for bad in [
            "",
            "10.0.0",
            "example.com",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "::/129",
            "::ffff:10.0.0.0/95",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let error = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"10.0.0.1/8\" has bits set past the /8 prefix; did you mean \"10.0.0.0/8\"?"
        );
        let error = "2001:db8::1/32".parse::<Cidr>().unwrap_err();
        assert!(error.to_string().contains("2001:db8::/32"), "{error}");
    }

    #[test]
    fn display_round_trips() {
        for text in ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32", "::1/128"] {
            assert_eq!(cidr(text).to_string(), text);
            assert_eq!(cidr(&cidr(text).to_string()), cidr(text));
        }
    }
}
