//! IP addresses and CIDR blocks for `source.ip`, `remote.ip`, `ipBlocks` and `remoteIpBlocks`, and
//! the client address derived from `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`. Host bits below the prefix are
    /// ignored (`10.1.2.3/8` is `10.0.0.0/8`), as Envoy's CidrRange does.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("{text:?} is not an IP address or CIDR block (such as 10.0.0.0/8 or 2001:db8::/32)")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be between 0 and {max}"))?,
            Some(_) => return Err(format!("{text:?}: the prefix length must be a number between 0 and {max}")),
        };
        // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps.
        if let (IpAddr::V6(v6), true) = (network, prefix_len >= 96) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Ok(Cidr { network: IpAddr::V4(v4), prefix_len: prefix_len - 96 });
            }
        }
        Ok(Cidr { network, prefix_len })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => prefix_equal(
                u128::from(u32::from(network)) << 96,
                u128::from(u32::from(address)) << 96,
                self.prefix_len,
            ),
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                prefix_equal(u128::from(network), u128::from(address), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_equal(network: u128, address: u128, prefix_len: u8) -> bool {
    if prefix_len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix_len.min(128)));
    network & mask == address & mask
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as dual-stack listeners report IPv4 peers) are
/// their IPv4 address, so `10.0.0.0/8` matches them.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    }
}

/// An address as Envoy or a proxy writes it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`, `[::1]`.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(canonical)
}

/// The client address `remote.ip` stands for.
///
/// Envoy is expected to run with `use_remote_address: true` (its recommended edge setting, and
/// Istio's on gateways): it then appends one entry to `X-Forwarded-For` for the connection (the
/// peer, or its own address when the peer is loopback) before this filter runs. That entry is not
/// a hop of its own and is skipped. Each of the `trusted_proxies` proxies in front of Envoy
/// appended the address it saw, so the client is the remaining entry `trusted_proxies` places from
/// the right; everything left of it is whatever the client chose to send. With 0 the peer itself
/// is the client and the header is ignored. Too few entries fall back to the peer (as Envoy does);
/// an entry that is not an address means no remote address.
pub fn remote_address<'a>(
    forwarded_for: impl Iterator<Item = &'a str>,
    peer: Option<IpAddr>,
    trusted_proxies: u32,
) -> Option<IpAddr> {
    if trusted_proxies == 0 {
        return peer;
    }
    let mut hops: Vec<&str> =
        forwarded_for.flat_map(|header| header.split(',')).map(str::trim).filter(|hop| !hop.is_empty()).collect();
    // Envoy's own entry.
    hops.pop();
    let wanted = usize::try_from(trusted_proxies).unwrap_or(usize::MAX);
    if hops.len() < wanted {
        return peer;
    }
    hops.get(hops.len() - wanted).and_then(|hop| parse_address(hop))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn blocks_contain_addresses() {
        let cases = [
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("192.168.10.0/24", "192.168.10.255", true),
            ("192.168.10.0/24", "192.168.11.0", false),
            ("1.2.3.4", "1.2.3.4", true),
            ("1.2.3.4", "1.2.3.5", false),
            ("1.2.3.4/32", "1.2.3.4", true),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "::1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::1", "::1", true),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("::ffff:10.0.0.0/104", "10.0.0.1", true),
        ];
        for (block, address, want) in cases {
            assert_eq!(Cidr::parse(block).expect(block).contains(ip(address)), want, "{block} {address}");
        }
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in
            ["", "10.0.0", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8/8", "host", "1.2.3.4:80"]
        {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_with_and_without_ports() {
        assert_eq!(parse_address("127.0.0.1:5555"), Some(ip("127.0.0.1")));
        assert_eq!(parse_address(" 10.0.0.1 "), Some(ip("10.0.0.1")));
        assert_eq!(parse_address("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_address("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_address("::ffff:10.0.0.1"), Some(ip("10.0.0.1")));
        for bad in ["", "unknown", "1.2.3.4:port", "_hidden"] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn remote_address_counts_trusted_proxies_from_the_right() {
        let peer = Some(ip("10.0.0.9"));
        // Every header ends with the entry Envoy appended itself (the peer, or for a loopback
        // peer its own address, 192.0.2.2 here).
        let cases: [(&[&str], u32, Option<&str>); 12] = [
            // No trusted proxy: the header is the client's own text and is ignored.
            (&["6.6.6.6, 10.0.0.9"], 0, Some("10.0.0.9")),
            // One trusted proxy (a load balancer) appended the client it saw.
            (&["6.6.6.6, 203.0.113.7, 10.0.0.9"], 1, Some("203.0.113.7")),
            (&["203.0.113.7, 192.0.2.2"], 1, Some("203.0.113.7")),
            // Two trusted proxies, headers split over several lines.
            (&["6.6.6.6, 203.0.113.7", "192.168.0.1", "10.0.0.9"], 2, Some("203.0.113.7")),
            (&["203.0.113.7:4711, 10.0.0.9"], 1, Some("203.0.113.7")),
            (&["[2001:db8::7]:443, 10.0.0.9"], 1, Some("2001:db8::7")),
            (&["6.6.6.6,, 203.0.113.7,10.0.0.9"], 1, Some("203.0.113.7")),
            // Fewer entries than trusted proxies: fall back to the peer.
            (&[], 1, Some("10.0.0.9")),
            (&["10.0.0.9"], 1, Some("10.0.0.9")),
            (&["203.0.113.7, 10.0.0.9"], 2, Some("10.0.0.9")),
            // Garbage where the client address should be: no remote address at all.
            (&["6.6.6.6, unknown, 10.0.0.9"], 1, None),
            (&["unknown, 10.0.0.9"], 1, None),
        ];
        for (headers, trusted, want) in cases {
            assert_eq!(remote_address(headers.iter().copied(), peer, trusted), want.map(ip), "{headers:?} {trusted}");
        }
        assert_eq!(remote_address(["1.2.3.4"].into_iter(), None, 0), None);
    }
}
