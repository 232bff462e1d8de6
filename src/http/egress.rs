//! Which addresses outgoing requests to caller-chosen URLs (async callbacks) may reach.
//!
//! A caller names the callback URL, so without a check anyone who may enqueue a call can make
//! the gateway POST to addresses only it can reach: the cloud metadata service
//! (`169.254.169.254`, `fd00:ec2::254`), link-local services, or with the strict policy the
//! private network. Refused always: link-local, unspecified, broadcast, multicast and known
//! metadata addresses (IPv4 ones also inside IPv4-mapped, IPv4-compatible and NAT64 IPv6
//! addresses). With [`EgressPolicy::deny_private`]: also loopback, private, shared (CGNAT) and
//! unique-local ranges. Loopback stays allowed by default, since callbacks to the gateway's own
//! `/function/...` chain functions.
//!
//! The check runs twice: on the URL when a call is accepted (a literal address, in any form the
//! system's resolver reads as a number, gets 400), and on the addresses a host name resolves to
//! when connecting, so the address actually connected to is always one that was checked (DNS
//! answers that change between the two checks included).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// Where outgoing requests to caller-chosen URLs may go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Also refuse loopback, private, shared and unique-local addresses.
    pub deny_private: bool,
}

/// Starts every message that refuses an address, so callers can tell a refusal (final) from a
/// failure (worth retrying).
pub const REFUSED: &str = "refused: ";

/// Cloud metadata services that are not link-local addresses.
const METADATA: [IpAddr; 2] = [
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // AWS, over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
];

impl EgressPolicy {
    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if METADATA.contains(&ip) {
            return Some("a cloud metadata address");
        }
        match ip {
            IpAddr::V4(v4) => self.refusal_v4(v4),
            IpAddr::V6(v6) => {
                if let Some(v4) = embedded_v4(v6) {
                    return self.refusal_v4(v4);
                }
                let first = v6.segments()[0];
                if v6.is_unspecified() {
                    Some("the unspecified address")
                } else if first & 0xffc0 == 0xfe80 {
                    Some("a link-local address")
                } else if v6.is_multicast() {
                    Some("a multicast address")
                } else if self.deny_private && v6.is_loopback() {
                    Some("a loopback address")
                } else if self.deny_private && first & 0xfe00 == 0xfc00 {
                    Some("a unique-local address")
                } else {
                    None
                }
            }
        }
    }

    fn refusal_v4(&self, ip: Ipv4Addr) -> Option<&'static str> {
        let [a, b, ..] = ip.octets();
        if ip.is_link_local() {
            Some("a link-local address")
        } else if ip.is_unspecified() || a == 0 {
            Some("the unspecified address")
        } else if ip.is_broadcast() {
            Some("the broadcast address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if METADATA.contains(&IpAddr::V4(ip)) {
            Some("a cloud metadata address")
        } else if self.deny_private && ip.is_loopback() {
            Some("a loopback address")
        } else if self.deny_private && ip.is_private() {
            Some("a private address")
        } else if self.deny_private && a == 100 && (64..128).contains(&b) {
            Some("a shared (carrier-grade NAT) address")
        } else {
            None
        }
    }

    /// Checks the host of a URL: a literal address (or a number the system's resolver would
    /// read as one, such as `2852039166` or `0xa9fea9fe`) must be allowed. Host names are
    /// checked when connecting.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = match bare.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => numeric_v4(bare).map(IpAddr::V4),
        };
        match ip.and_then(|ip| self.refusal(ip).map(|why| (ip, why))) {
            Some((ip, why)) => Err(format!(
                "{REFUSED}{host} is {why} ({ip}), which callbacks may not reach"
            )),
            None => Ok(()),
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// Reads `host` as the C library's `inet_aton` does: one to four parts separated by dots, each
/// decimal, octal (leading `0`) or hexadecimal (leading `0x`), the last filling the remaining
/// bytes.
fn numeric_v4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16).ok()?
        } else if part.len() > 1 && part.starts_with('0') {
            u32::from_str_radix(&part[1..], 8).ok()?
        } else {
            part.parse::<u32>().ok()?
        };
        values.push(value);
    }
    let (last, leading) = values.split_last()?;
    let mut address: u32 = 0;
    for (i, v) in leading.iter().enumerate() {
        if *v > 255 {
            return None;
        }
        address |= v << (24 - 8 * i);
    }
    let room = 32 - 8 * leading.len() as u32;
    if room < 32 && *last >= (1u32 << room) {
        return None;
    }
    Some(Ipv4Addr::from(address | last))
}

/// A resolver that drops the addresses the policy refuses, and fails when none is left, so a
/// connection only ever goes to an address that was checked.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    /// The system's resolver.
    inner: GaiResolver,
    /// What may be reached.
    policy: EgressPolicy,
}

impl CheckedResolver {
    /// A resolver for `policy`.
    pub fn new(policy: EgressPolicy) -> Self {
        CheckedResolver {
            inner: GaiResolver::new(),
            policy,
        }
    }
}

/// The addresses a [`CheckedResolver`] allows.
pub type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = Addrs;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy;
        let resolving = self.inner.call(name.clone());
        Box::pin(async move {
            let all: Vec<SocketAddr> = resolving.await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.refusal(a.ip()).is_none())
                .collect();
            if allowed.is_empty()
                && let Some(first) = all.first()
            {
                let why = policy.refusal(first.ip()).unwrap_or("refused");
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{REFUSED}{} resolves to {why} ({}), which callbacks may not reach",
                        name.as_str(),
                        first.ip()
                    ),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_refuses_link_local_and_metadata_in_every_spelling() {
        let p = EgressPolicy::default();
        for host in [
            "169.254.169.254",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[64:ff9b::169.254.169.254]",
            "[fd00:ec2::254]",
            "[fe80::1]",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "100.100.100.200",
            "0.0.0.0",
            "[::]",
            "224.0.0.1",
        ] {
            assert!(p.check_host(host).is_err(), "{host}");
        }
        for host in [
            "127.0.0.1",
            "[::1]",
            "10.0.0.8",
            "192.168.1.1",
            "example.com",
            "8.8.8.8",
            "callbacks.internal",
        ] {
            assert!(p.check_host(host).is_ok(), "{host}");
        }
    }

    #[test]
    fn the_strict_policy_refuses_private_and_loopback_too() {
        let p = EgressPolicy { deny_private: true };
        for host in [
            "127.0.0.1",
            "[::1]",
            "10.0.0.8",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "[fd12::1]",
            "[::ffff:10.0.0.1]",
            "2130706433",
        ] {
            assert!(p.check_host(host).is_err(), "{host}");
        }
        assert!(p.check_host("8.8.8.8").is_ok());
        assert!(p.check_host("[2001:db8::1]").is_ok());
    }

    #[test]
    fn inet_aton_forms() {
        assert_eq!(numeric_v4("127.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(numeric_v4("0x7f.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(numeric_v4("1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(numeric_v4("1.2.3.256"), None);
        assert_eq!(numeric_v4("example"), None);
        assert_eq!(numeric_v4("1.2.3.4.5"), None);
        assert_eq!(numeric_v4("4294967296"), None);
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        use tower_service::Service;
        let mut strict = CheckedResolver::new(EgressPolicy { deny_private: true });
        let name: Name = "localhost".parse().unwrap();
        let err = strict.call(name.clone()).await.unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let mut default = CheckedResolver::new(EgressPolicy::default());
        assert!(default.call(name).await.unwrap().next().is_some());
    }
}
