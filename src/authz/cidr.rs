//! IP addresses and CIDR blocks for `source.ip`, `remote.ip`, `ipBlocks` and `remoteIpBlocks`.

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
            format!(
                "{text_q} is not an IP address or CIDR block (such as 10.0.0.0/8 or 2001:db8::/32)",
                text_q = crate::json::Quoted(text)
            )
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    format!(
                        "{text_q}: the prefix length must be between 0 and {max}",
                        text_q = crate::json::Quoted(text)
                    )
                })?
            }
            Some(_) => {
                return Err(format!(
                    "{text_q}: the prefix length must be a number between 0 and {max}",
                    text_q = crate::json::Quoted(text)
                ))
            }
        };
        Ok(Cidr { network, prefix_len })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        // As Envoy's CidrRange: an IPv6 address is never in an IPv4 block, IPv4-mapped or not.
        // Envoy itself reports a dual-stack listener's IPv4 peers as IPv4; a mapped address can
        // only come from X-Forwarded-For, which Envoy keeps as written.
        match (self.network, address) {
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

/// An address as Envoy writes `source.address`: `1.2.3.4:80`, `[::1]:80` (or without the port).
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok()
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
            // Envoy's CidrRange: the IP versions must agree (no IPv4-mapped equivalence).
            ("10.0.0.0/8", "::ffff:10.0.0.1", false),
            ("::ffff:10.0.0.0/104", "10.0.0.1", false),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.1", true),
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
        assert_eq!(parse_address("::ffff:10.0.0.1"), Some(ip("::ffff:10.0.0.1")));
        for bad in ["", "unknown", "1.2.3.4:port", "_hidden"] {
            assert_eq!(parse_address(bad), None, "{bad:?}");
        }
    }
}
