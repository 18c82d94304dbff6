//! Who is asking, and how they reached us: the public scheme, the client address,
//! and the `X-Forwarded-*` headers the upstream gets (DESIGN.md §3, §5).
//!
//! Behind a load balancer that terminates TLS, the peer is the balancer and the
//! listener speaks plain HTTP; only the balancer's `X-Forwarded-For` and
//! `X-Forwarded-Proto` say who the client is and that it used https. Those headers
//! are believed from *trusted* peers only ([`Trust`]):
//!
//! - `listen.trusted_proxies` lists CIDR ranges. The client address is then found as
//!   nginx's `real_ip_recursive` and Envoy's `xff_num_trusted_hops` find it: walking
//!   `X-Forwarded-For` from the right, every hop inside the ranges is a proxy, and the
//!   first one outside them is the client (the leftmost hop when all are proxies).
//! - With no ranges and `upstream.trust_forwarded = true`, every peer is trusted, but
//!   nothing behind it: the client is the last hop, the one the peer appended.
//! - Otherwise nobody is: the client is the peer, and forwarded headers change nothing.
//!
//! The public scheme is `listen.public_scheme`, or under `auto` https when the
//! listener has TLS or a trusted peer says `X-Forwarded-Proto: https`. It is decided
//! per request, since it depends on the peer.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::FORWARDED;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::config::{Cidr, CidrError, Config, PublicScheme};

/// The scheme browsers use to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// https: cookies are `Secure` with the `__Host-` prefix, answers carry HSTS.
    pub fn is_secure(self) -> bool {
        self == Scheme::Https
    }
}

/// Whose forwarded headers are believed.
#[derive(Debug, Clone)]
enum Believed {
    Nobody,
    /// Every peer, one hop deep (`upstream.trust_forwarded` without ranges).
    AnyPeer,
    /// Peers and hops inside these ranges.
    Ranges(Vec<Cidr>),
}

/// The trust rules of the public listener, made once from the configuration.
#[derive(Debug, Clone)]
pub struct Trust {
    believed: Believed,
    public: PublicScheme,
}

/// Longest `X-Forwarded-For` chain walked (hops beyond it are not looked at; the
/// leftmost hop walked is then the client). hyper's header limit bounds the input
/// anyway; this bounds the work and the copy kept per request.
const MAX_HOPS: usize = 32;

impl Trust {
    /// `listen.public_scheme`, `listen.trusted_proxies` and `upstream.trust_forwarded`.
    pub fn new(
        public: PublicScheme,
        trusted_proxies: &[String],
        trust_forwarded: bool,
    ) -> Result<Trust, CidrError> {
        let ranges = trusted_proxies
            .iter()
            .map(|text| text.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        let believed = match (ranges.is_empty(), trust_forwarded) {
            (false, _) => Believed::Ranges(ranges),
            (true, true) => Believed::AnyPeer,
            (true, false) => Believed::Nobody,
        };
        Ok(Trust { believed, public })
    }

    pub fn from_config(config: &Config) -> Result<Trust, CidrError> {
        Trust::new(
            config.listen.public_scheme,
            &config.listen.trusted_proxies,
            config.upstream.trust_forwarded,
        )
    }

    fn trusts_peer(&self, peer: IpAddr) -> bool {
        match &self.believed {
            Believed::Nobody => false,
            Believed::AnyPeer => true,
            Believed::Ranges(ranges) => ranges.iter().any(|r| r.contains(peer)),
        }
    }

    /// Whether a hop named in `X-Forwarded-For` is itself a trusted proxy (so the
    /// hop to its left is believed too).
    fn trusts_hop(&self, hop: IpAddr) -> bool {
        match &self.believed {
            Believed::Nobody | Believed::AnyPeer => false,
            Believed::Ranges(ranges) => ranges.iter().any(|r| r.contains(hop)),
        }
    }

    /// How a request arrived: from `peer`, on a listener with or without TLS.
    pub fn arrival(&self, headers: &HeaderMap, peer: IpAddr, tls: bool) -> Arrival {
        let peer = peer.to_canonical();
        let trusted = self.trusts_peer(peer);
        let mut hops = Vec::new();
        let mut client = peer;
        if trusted {
            for hop in hops_from_the_right(headers).take(MAX_HOPS) {
                let Some(hop) = hop else { break };
                client = hop;
                hops.push(hop);
                if !self.trusts_hop(hop) {
                    break;
                }
            }
            hops.reverse();
        }
        let scheme = match self.public {
            PublicScheme::Http => Scheme::Http,
            PublicScheme::Https => Scheme::Https,
            PublicScheme::Auto if tls => Scheme::Https,
            PublicScheme::Auto if trusted && says_https(headers) => Scheme::Https,
            PublicScheme::Auto => Scheme::Http,
        };
        Arrival {
            client,
            scheme,
            forwarded: Forwarded {
                peer,
                trusted,
                hops,
            },
        }
    }
}

/// What [`Trust::arrival`] found out about one request.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The address per-client limits apply to and the upstream hears of first.
    pub client: IpAddr,
    /// The scheme the browser used.
    pub scheme: Scheme,
    /// What the upstream's `X-Forwarded-*` headers are made from.
    pub forwarded: Forwarded,
}

/// The forwarding facts of one request, to write the upstream's headers from.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The connection's peer (IPv4-mapped addresses as IPv4).
    peer: IpAddr,
    /// Whether the peer's forwarded headers are believed.
    trusted: bool,
    /// The believed `X-Forwarded-For` hops, left to right, starting with the client
    /// (empty when the peer is not trusted or sent none).
    hops: Vec<IpAddr>,
}

impl Forwarded {
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Sets `X-Forwarded-For/-Proto/-Host` for the upstream, replacing whatever the
    /// request carried (DESIGN.md §5). The `X-Forwarded-For` sent always starts with
    /// the client address:
    ///
    /// - from an untrusted peer: `X-Forwarded-For: <peer>`, `X-Forwarded-Proto:
    ///   <public scheme>`, `X-Forwarded-Host: <host>` (removed when there is no
    ///   host), and an RFC 7239 `Forwarded` header is removed, since a backend might
    ///   believe it instead;
    /// - from a trusted peer: the believed hops (the client and the trusted proxies
    ///   after it) with the peer appended — hops left of the client were written by
    ///   nobody the gateway trusts and are dropped — and the peer's `-Proto`/`-Host`
    ///   and `Forwarded` are kept (`-Proto`/`-Host` set as above when absent).
    ///
    /// `host` is the request's host as the client addressed it: the `Host` header for
    /// HTTP/1.1, the `:authority` for HTTP/2. The caller captures it before scrubbing,
    /// which may remove `Host` if a `Connection` line names it.
    pub fn apply(&self, headers: &mut HeaderMap, scheme: Scheme, host: Option<&HeaderValue>) {
        let mut chain = String::with_capacity(16 * (self.hops.len() + 1));
        for hop in &self.hops {
            chain.push_str(&hop.to_string());
            chain.push_str(", ");
        }
        chain.push_str(&self.peer.to_string());
        set_or_remove(headers, X_FORWARDED_FOR, Bytes::from(chain));
        if !self.trusted || !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
        }
        if !self.trusted || !headers.contains_key(X_FORWARDED_HOST) {
            match host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST, host.clone());
                }
                None => {
                    headers.remove(X_FORWARDED_HOST);
                }
            }
        }
        if !self.trusted {
            headers.remove(FORWARDED);
        }
    }
}

/// Every `X-Forwarded-For` hop from the right (last line first), `None` for one
/// that is not an IP address (the walk stops there). A hop may carry a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as some balancers write it.
fn hops_from_the_right(headers: &HeaderMap) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','))
        .map(|hop| std::str::from_utf8(hop).unwrap_or("").trim())
        .filter(|hop| !hop.is_empty())
        .map(parse_hop)
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip().to_canonical())
}

/// `X-Forwarded-Proto` names https: its first value (the scheme the outermost proxy
/// saw), in any case.
fn says_https(headers: &HeaderMap) -> bool {
    headers
        .get(X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// `insert` (replacing every client line), or `remove` if the bytes are somehow not
/// a valid value: a client-controlled value must never survive by accident.
fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Bytes) {
    match HeaderValue::from_maybe_shared(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::headers::tests::{map, values};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nobody() -> Trust {
        Trust::new(PublicScheme::Auto, &[], false).unwrap()
    }

    fn any_peer() -> Trust {
        Trust::new(PublicScheme::Auto, &[], true).unwrap()
    }

    fn ranges(list: &[&str]) -> Trust {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Trust::new(PublicScheme::Auto, &list, false).unwrap()
    }

    #[test]
    fn an_untrusted_peer_changes_nothing() {
        let h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        for trust in [nobody(), ranges(&["10.0.0.0/8"])] {
            let arrival = trust.arrival(&h, ip("127.0.0.1"), false);
            assert_eq!(arrival.client, ip("127.0.0.1"));
            assert_eq!(arrival.scheme, Scheme::Http);
            assert!(!arrival.forwarded.trusted());
        }
        // A TLS listener is https whoever the peer is.
        let arrival = nobody().arrival(&h, ip("127.0.0.1"), true);
        assert_eq!(arrival.scheme, Scheme::Https);
    }

    #[test]
    fn any_peer_believes_one_hop() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1, 3.3.3.3"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "HTTPS"),
        ]);
        let arrival = any_peer().arrival(&h, ip("10.0.0.7"), false);
        assert_eq!(arrival.client, ip("2.2.2.2"), "the hop the peer appended");
        assert_eq!(arrival.scheme, Scheme::Https);
        assert_eq!(arrival.forwarded.hops, [ip("2.2.2.2")]);
        // No header: the peer is the client.
        let arrival = any_peer().arrival(&HeaderMap::new(), ip("10.0.0.7"), false);
        assert_eq!(arrival.client, ip("10.0.0.7"));
        assert_eq!(arrival.scheme, Scheme::Http);
    }

    #[test]
    fn ranges_walk_from_the_right_to_the_first_untrusted_hop() {
        let trust = ranges(&["10.0.0.0/8", "fd00::/8"]);
        let h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.1.1, fd00::2")]);
        let arrival = trust.arrival(&h, ip("10.0.0.1"), false);
        assert_eq!(arrival.client, ip("203.0.113.5"));
        assert_eq!(
            arrival.forwarded.hops,
            [ip("203.0.113.5"), ip("10.1.1.1"), ip("fd00::2")]
        );
        // Every hop trusted: the leftmost is the client.
        let h = map(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            trust.arrival(&h, ip("10.0.0.1"), false).client,
            ip("10.9.9.9")
        );
        // Garbage stops the walk: the last address passed is the client.
        let h = map(&[("x-forwarded-for", "6.6.6.6, unknown, 10.1.1.1")]);
        assert_eq!(
            trust.arrival(&h, ip("10.0.0.1"), false).client,
            ip("10.1.1.1")
        );
        let h = map(&[("x-forwarded-for", "garbage")]);
        assert_eq!(
            trust.arrival(&h, ip("10.0.0.1"), false).client,
            ip("10.0.0.1")
        );
        // Ports and mapped addresses.
        let h = map(&[("x-forwarded-for", "[2001:db8::9]:4711, 192.0.2.1:80")]);
        assert_eq!(
            trust.arrival(&h, ip("10.0.0.1"), false).client,
            ip("192.0.2.1")
        );
        let h = map(&[("x-forwarded-for", "::ffff:192.0.2.9")]);
        let mapped_peer = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let arrival = trust.arrival(&h, mapped_peer, false);
        assert!(
            arrival.forwarded.trusted(),
            "a mapped peer is its IPv4 address"
        );
        assert_eq!(arrival.client, ip("192.0.2.9"));
        // IPv6 peers.
        let arrival = trust.arrival(&h, ip("fd00::1"), false);
        assert!(arrival.forwarded.trusted());
    }

    #[test]
    fn the_public_scheme() {
        let https = map(&[("x-forwarded-proto", "https, http")]);
        let http = map(&[("x-forwarded-proto", "http")]);
        let trust = ranges(&["127.0.0.0/8"]);
        assert_eq!(
            trust.arrival(&https, ip("127.0.0.1"), false).scheme,
            Scheme::Https
        );
        assert_eq!(
            trust.arrival(&http, ip("127.0.0.1"), false).scheme,
            Scheme::Http
        );
        assert_eq!(
            trust.arrival(&http, ip("127.0.0.1"), true).scheme,
            Scheme::Https
        );
        assert_eq!(
            trust.arrival(&https, ip("192.0.2.1"), false).scheme,
            Scheme::Http
        );
        let fixed = |scheme| Trust::new(scheme, &[], false).unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            fixed(PublicScheme::Https)
                .arrival(&h, ip("192.0.2.1"), false)
                .scheme,
            Scheme::Https
        );
        assert_eq!(
            fixed(PublicScheme::Http)
                .arrival(&https, ip("192.0.2.1"), true)
                .scheme,
            Scheme::Http
        );
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(Trust::new(PublicScheme::Auto, &["10.0.0.1/8".into()], false).is_err());
    }

    #[test]
    fn untrusted_forwarded_replaces_everything() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let arrival = nobody().arrival(&h, ip("10.0.0.7"), false);
        let host = HeaderValue::from_static("app.example");
        arrival.forwarded.apply(&mut h, arrival.scheme, Some(&host));
        assert_eq!(values(&h, "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["app.example"]);
        assert!(!h.contains_key(FORWARDED));
    }

    #[test]
    fn untrusted_without_host_removes_client_host() {
        let mut h = map(&[("x-forwarded-host", "evil.example")]);
        let arrival = nobody().arrival(&h, IpAddr::V6(Ipv6Addr::LOCALHOST), true);
        arrival.forwarded.apply(&mut h, arrival.scheme, None);
        assert_eq!(values(&h, "x-forwarded-for"), ["::1"]);
        assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn mapped_ipv4_is_written_as_ipv4() {
        let mut h = HeaderMap::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let arrival = nobody().arrival(&h, mapped, false);
        arrival.forwarded.apply(&mut h, arrival.scheme, None);
        assert_eq!(values(&h, "x-forwarded-for"), ["192.0.2.1"]);
    }

    #[test]
    fn trusted_appends_the_peer_and_keeps_the_rest() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1, 3.3.3.3 "),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
            ("forwarded", "for=1.1.1.1"),
        ]);
        let arrival = ranges(&["10.0.0.0/8", "2.2.2.2"]).arrival(&h, ip("10.0.0.7"), false);
        assert_eq!(arrival.client, ip("3.3.3.3"));
        let host = HeaderValue::from_static("internal:8080");
        arrival.forwarded.apply(&mut h, arrival.scheme, Some(&host));
        assert_eq!(
            values(&h, "x-forwarded-for"),
            ["3.3.3.3, 2.2.2.2, 10.0.0.7"],
            "starts with the client; the forgeable part is dropped"
        );
        assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["public.example"]);
        assert_eq!(values(&h, "forwarded"), ["for=1.1.1.1"]);

        let mut h = map(&[("x-forwarded-for", "6.6.6.6")]);
        let arrival = any_peer().arrival(&h, ip("127.0.0.1"), false);
        arrival.forwarded.apply(&mut h, arrival.scheme, None);
        assert_eq!(values(&h, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    }

    #[test]
    fn trusted_fills_missing() {
        let mut h = HeaderMap::new();
        let host = HeaderValue::from_static("app.example");
        let arrival = any_peer().arrival(&h, ip("10.0.0.7"), true);
        arrival.forwarded.apply(&mut h, arrival.scheme, Some(&host));
        assert_eq!(values(&h, "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&h, "x-forwarded-host"), ["app.example"]);
    }

    #[test]
    fn long_chains_are_walked_only_so_far() {
        let chain = vec!["10.0.0.9"; 100].join(", ");
        let h = map(&[("x-forwarded-for", chain.as_str())]);
        let arrival = ranges(&["10.0.0.0/8"]).arrival(&h, ip("10.0.0.1"), false);
        assert_eq!(arrival.forwarded.hops.len(), MAX_HOPS);
        assert_eq!(arrival.client, ip("10.0.0.9"));
    }

    proptest! {
        #[test]
        fn prop_untrusted_forwarded_ignores_client(
            xff in "[0-9a-f.:, ]{0,30}", proto in "[a-z]{1,6}", v4 in any::<u32>(),
        ) {
            let mut h = map(&[("x-forwarded-for", xff.as_str()), ("x-forwarded-proto", proto.as_str()),
                ("forwarded", "for=x")]);
            let peer = IpAddr::V4(Ipv4Addr::from(v4));
            let arrival = ranges(&["10.0.0.0/8"]).arrival(&h, peer, true);
            if !arrival.forwarded.trusted() {
                prop_assert_eq!(arrival.client, peer);
            }
            let arrival = nobody().arrival(&h, peer, true);
            prop_assert_eq!(arrival.client, peer);
            arrival.forwarded.apply(&mut h, arrival.scheme, None);
            let peer_text = peer.to_string();
            prop_assert_eq!(values(&h, "x-forwarded-for"), vec![peer_text.as_str()]);
            prop_assert_eq!(values(&h, "x-forwarded-proto"), vec!["https"]);
            prop_assert!(!h.contains_key(FORWARDED));
        }

        /// Whatever a trusted peer sends, the client is the peer or one of the hops
        /// it named, and the chain sent upstream starts with it and ends with the peer.
        #[test]
        fn prop_trusted_chain_starts_with_the_client(
            hops in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..6),
        ) {
            let text: Vec<String> = hops
                .iter()
                .map(|(inside, last)| if *inside { format!("10.0.0.{last}") } else { format!("192.0.2.{last}") })
                .collect();
            let line = text.join(", ");
            let mut h = HeaderMap::new();
            if !line.is_empty() {
                h.insert(X_FORWARDED_FOR, HeaderValue::from_str(&line).unwrap());
            }
            let arrival = ranges(&["10.0.0.0/8"]).arrival(&h, ip("10.0.0.1"), false);
            arrival.forwarded.apply(&mut h, arrival.scheme, None);
            let sent = values(&h, "x-forwarded-for")[0].to_string();
            let client_text = arrival.client.to_string();
            prop_assert!(sent.starts_with(&client_text), "{} vs {}", sent, client_text);
            prop_assert!(sent.ends_with("10.0.0.1"));
            if let Some(first_outside) = text.iter().rev().find(|h| h.starts_with("192.")) {
                prop_assert_eq!(&client_text, first_outside);
            }
        }
    }
}
