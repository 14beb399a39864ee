//! Which addresses a partner URL may reach (server-side request forgery).
//!
//! A partner URL is checked when it is saved ([`check_url`]: scheme, user info, literal IP hosts in any spelling the
//! URL parser accepts) and again at send time, after DNS: the bridge resolves the host, passes every address to
//! [`filter_resolved`], connects only to the addresses it returns, and follows no redirects. One forbidden address
//! among the answers refuses the host (a DNS-rebinding record set mixing public and private answers).
//!
//! Refused: unspecified, loopback, private (RFC 1918), shared/CGNAT (100.64/10), link-local (169.254/16 with the
//! cloud metadata address 169.254.169.254, fe80::/10), unique-local (fc00::/7), site-local (fec0::/10), multicast,
//! broadcast, documentation, benchmarking and reserved ranges, `0.0.0.0/8`, IPv4-mapped and IPv4-compatible IPv6
//! addresses (whatever they embed), NAT64 and 6to4 addresses embedding a refused IPv4 address, Teredo, and the
//! host names `localhost` / `*.localhost`.
//!
//! `allow_private` is for local use only (the demo, tests, a partner simulator on this machine): it admits
//! loopback, private, CGNAT and unique-local addresses and `localhost`, never link-local (the metadata service),
//! multicast, broadcast, unspecified, documentation or reserved ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("the URL must not carry a user name or password")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("{host} is refused: {reason}")]
    Forbidden { host: String, reason: &'static str },
    #[error("{0} resolved to no address")]
    NoAddress(String),
}

/// The reason `ip` may not be reached, if it may not (the strict policy: no private addresses either).
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    classify(ip).map(|(reason, _)| reason)
}

/// `Ok` when `ip` may be reached under the policy (`allow_private`: see the module docs).
pub fn check_ip(ip: IpAddr, allow_private: bool) -> Result<(), &'static str> {
    match classify(ip) {
        None => Ok(()),
        Some((_, true)) if allow_private => Ok(()),
        Some((reason, _)) => Err(reason),
    }
}

/// Checks a partner URL without DNS: http(s), no user info, and a literal IP host (in any form the URL parser
/// normalises: `2130706433`, `0x7f.1`, `0177.0.0.1`, `[::ffff:127.0.0.1]`) that is allowed. Host names pass here
/// (except `localhost`); their addresses are checked by [`filter_resolved`] at connect time.
pub fn check_url(url: &Url, allow_private: bool) -> Result<(), SsrfError> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(SsrfError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SsrfError::UserInfo);
    }
    let forbidden = |host: String, reason| Err(SsrfError::Forbidden { host, reason });
    match url.host().ok_or(SsrfError::NoHost)? {
        Host::Ipv4(ip) => check_ip(IpAddr::V4(ip), allow_private).or_else(|reason| forbidden(ip.to_string(), reason)),
        Host::Ipv6(ip) => check_ip(IpAddr::V6(ip), allow_private).or_else(|reason| forbidden(ip.to_string(), reason)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !allow_private && (name == "localhost" || name.ends_with(".localhost")) {
                return forbidden(name, "localhost");
            }
            if name.is_empty() {
                return Err(SsrfError::NoHost);
            }
            Ok(())
        }
    }
}

/// The resolved addresses of `host` the bridge may connect to: all of them, or an error when any one is refused
/// (or there is none).
pub fn filter_resolved(
    host: &str,
    addrs: impl IntoIterator<Item = SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, SsrfError> {
    let addrs: Vec<SocketAddr> = addrs.into_iter().collect();
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress(host.to_owned()));
    }
    for addr in &addrs {
        if let Err(reason) = check_ip(addr.ip(), allow_private) {
            return Err(SsrfError::Forbidden { host: format!("{host} ({})", addr.ip()), reason });
        }
    }
    Ok(addrs)
}

/// `(reason, allowed for local use)` for a refused address; `None` for a public one.
fn classify(ip: IpAddr) -> Option<(&'static str, bool)> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<(&'static str, bool)> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => ("the cloud metadata address", false),
        _ if ip.is_broadcast() => ("the broadcast address", false),
        (0, _, _) => ("an unspecified or 'this network' address (0.0.0.0/8)", false),
        (10, _, _) => ("a private address (10.0.0.0/8)", true),
        (100, 64..=127, _) => ("a shared (CGNAT) address (100.64.0.0/10)", true),
        (127, _, _) => ("a loopback address", true),
        (169, 254, _) => ("a link-local address (169.254.0.0/16)", false),
        (172, 16..=31, _) => ("a private address (172.16.0.0/12)", true),
        (192, 0, 0) => ("an IETF protocol assignment (192.0.0.0/24)", false),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => ("a documentation address", false),
        (192, 88, 99) => ("the deprecated 6to4 relay anycast range (192.88.99.0/24)", false),
        (192, 168, _) => ("a private address (192.168.0.0/16)", true),
        (198, 18..=19, _) => ("a benchmarking address (198.18.0.0/15)", false),
        (224..=239, _, _) => ("a multicast address", false),
        (240..=255, _, _) => ("a reserved address (240.0.0.0/4)", false),
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<(&'static str, bool)> {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return Some(("the unspecified address", false));
    }
    if ip.is_loopback() {
        return Some(("a loopback address", true));
    }
    // ::ffff:a.b.c.d and the deprecated ::a.b.c.d reach IPv4 hosts on dual-stack sockets: the embedded address
    // decides its category, and a public one is still refused (no partner publishes such a record).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(classify_v4(v4).unwrap_or(("an IPv4-mapped IPv6 address", true)));
    }
    if seg[..6] == [0; 6] {
        let v4 = ip.to_ipv4().expect("the first 96 bits are zero");
        return Some(classify_v4(v4).unwrap_or(("an IPv4-compatible IPv6 address", false)));
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address a gateway will reach: check it.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = seg;
        return classify_v4(embedded_v4(hi, lo));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return Some(("a local-use NAT64 address (64:ff9b:1::/48)", false));
    }
    if seg[0] == 0x2002 {
        return classify_v4(embedded_v4(seg[1], seg[2]));
    }
    Some(match seg[0] {
        0x2001 if seg[1] == 0 => ("a Teredo address (2001::/32)", false),
        0x2001 if seg[1] == 0xdb8 => ("a documentation address (2001:db8::/32)", false),
        0x2001 if seg[1] < 0x200 => ("an IETF protocol assignment (2001::/23)", false),
        0x3fff if seg[1] < 0x1000 => ("a documentation address (3fff::/20)", false),
        0x100 if seg[1..4] == [0, 0, 0] => ("a discard-only address (100::/64)", false),
        s if s & 0xfe00 == 0xfc00 => ("a unique-local address (fc00::/7)", true),
        s if s & 0xffc0 == 0xfe80 => ("a link-local address (fe80::/10)", false),
        s if s & 0xffc0 == 0xfec0 => ("a site-local address (fec0::/10)", false),
        s if s & 0xff00 == 0xff00 => ("a multicast address", false),
        // Everything outside global unicast (2000::/3) is reserved.
        s if s & 0xe000 != 0x2000 => ("a reserved IPv6 address", false),
        _ => return None,
    })
}

fn embedded_v4(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_addresses() {
        for (addr, private_ok) in [
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("100.64.0.1", true),
            ("100.127.255.254", true),
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("169.254.169.254", false),
            ("169.254.0.1", false),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", true),
            ("198.18.0.1", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("::", false),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:8.8.8.8", true),
            ("::127.0.0.1", true),
            ("::8.8.8.8", false),
            ("64:ff9b::7f00:1", true),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b:1::1", false),
            ("2002:7f00:1::", true),
            ("2002:c0a8:101::1", true),
            ("2002:a9fe:a9fe::", false),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("2001:2::1", false),
            ("3fff::1", false),
            ("100::1", false),
            ("fc00::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("4000::1", false),
            ("::2", false),
        ] {
            let a = ip(addr);
            assert!(is_forbidden(a).is_some(), "{addr} must be refused");
            assert!(check_ip(a, false).is_err(), "{addr}");
            assert_eq!(check_ip(a, true).is_ok(), private_ok, "{addr} with allow_private");
        }
        assert_eq!(is_forbidden(ip("169.254.169.254")), Some("the cloud metadata address"));
        assert_eq!(is_forbidden(ip("::ffff:127.0.0.1")), Some("a loopback address"));
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.167.1.1",
            "169.253.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(is_forbidden(ip(addr)), None, "{addr}");
            assert!(check_ip(ip(addr), false).is_ok());
        }
    }

    fn url_check(u: &str, allow_private: bool) -> Result<(), SsrfError> {
        check_url(&Url::parse(u).unwrap(), allow_private)
    }

    #[test]
    fn literal_hosts_in_every_spelling() {
        for u in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://127.1/",
            "http://127.0.0.1./",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0xa9fea9fe/",
            "http://10.1.2.3:8080/x",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "https://0/",
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert!(
                matches!(url_check(u, false), Err(SsrfError::Forbidden { .. })),
                "{u} must be refused: {:?}",
                url_check(u, false)
            );
        }
        // The parser really turned these into IPv4 hosts.
        assert_eq!(Url::parse("http://2130706433/").unwrap().host_str(), Some("127.0.0.1"));
        assert_eq!(Url::parse("http://0x7f.1/").unwrap().host_str(), Some("127.0.0.1"));
        assert_eq!(Url::parse("http://0177.0.0.1/").unwrap().host_str(), Some("127.0.0.1"));
        assert_eq!(Url::parse("http://0xa9fea9fe/").unwrap().host_str(), Some("169.254.169.254"));
        assert_eq!(Url::parse("http://[::ffff:127.0.0.1]/").unwrap().host_str(), Some("[::ffff:7f00:1]"));
        let err = url_check("http://2130706433/", false).unwrap_err();
        assert_eq!(err.to_string(), "127.0.0.1 is refused: a loopback address");
    }

    #[test]
    fn allow_private_is_for_local_partners_only() {
        assert!(url_check("http://127.0.0.1:9999/p/acme", true).is_ok());
        assert!(url_check("http://localhost:9999/p/acme", true).is_ok());
        assert!(url_check("http://10.0.0.5/", true).is_ok());
        assert!(url_check("http://169.254.169.254/", true).is_err(), "never the metadata service");
        assert!(url_check("http://[fe80::1]/", true).is_err());
        assert!(url_check("http://0.0.0.0/", true).is_err());
    }

    #[test]
    fn scheme_user_info_and_names() {
        assert!(url_check("https://partner.example/x?y=1", false).is_ok());
        assert!(url_check("http://8.8.8.8/", false).is_ok());
        assert_eq!(url_check("ftp://partner.example/", false), Err(SsrfError::Scheme("ftp".into())));
        assert_eq!(url_check("file:///etc/passwd", false), Err(SsrfError::Scheme("file".into())));
        assert_eq!(url_check("gopher://partner.example/", false), Err(SsrfError::Scheme("gopher".into())));
        assert_eq!(url_check("http://user:pw@partner.example/", false), Err(SsrfError::UserInfo));
        assert_eq!(url_check("http://user@partner.example/", false), Err(SsrfError::UserInfo));
        // "a@b" tricks: the real host is after the last '@'.
        assert_eq!(url_check("http://partner.example@127.0.0.1/", false), Err(SsrfError::UserInfo));
        // Names that merely look like addresses are names; DNS decides, checked by filter_resolved.
        assert!(url_check("http://127.0.0.1.nip.io/", false).is_ok());
    }

    #[test]
    fn any_refused_answer_refuses_the_host() {
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let ok = filter_resolved("p.example", [sa("93.184.216.34:443"), sa("[2606:2800:220:1::1]:443")], false);
        assert_eq!(ok.unwrap().len(), 2);
        let rebinding = filter_resolved("p.example", [sa("93.184.216.34:443"), sa("127.0.0.1:443")], false);
        assert_eq!(
            rebinding.unwrap_err(),
            SsrfError::Forbidden { host: "p.example (127.0.0.1)".into(), reason: "a loopback address" }
        );
        assert!(matches!(
            filter_resolved("p.example", [sa("[::ffff:a9fe:a9fe]:80")], true),
            Err(SsrfError::Forbidden { reason: "the cloud metadata address", .. })
        ));
        assert_eq!(filter_resolved("p.example", [], false), Err(SsrfError::NoAddress("p.example".into())));
        assert!(filter_resolved("localhost", [sa("127.0.0.1:8080")], true).is_ok());
    }
}
