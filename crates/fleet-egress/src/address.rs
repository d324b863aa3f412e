//! Which IP addresses are public (reachable on the internet and not the fleet's own networks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `addr` is a public unicast address. Loopback, private (RFC 1918), link-local,
/// shared (CGNAT, RFC 6598), benchmarking, documentation, reserved, multicast, broadcast and
/// unspecified IPv4 addresses are not; nor are IPv6 loopback, unspecified, unique-local,
/// link-local, multicast and documentation addresses, and IPv4-mapped or -compatible IPv6
/// addresses are judged by their IPv4 address.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(addr: Ipv4Addr) -> bool {
    let [a, b, c, _] = addr.octets();
    let not_public = addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_private()
        || addr.is_link_local()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240; // reserved
    !not_public
}

fn is_public_v6(addr: Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    let not_public = addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && addr.segments()[1] == 0x0db8) // documentation
        || (first == 0x0064 && addr.segments()[1] == 0xff9b) // NAT64 reaches IPv4 targets of any kind
        || is_ipv4_compatible(addr);
    !not_public
}

/// `::a.b.c.d` (deprecated IPv4-compatible form), which some stacks still route to IPv4.
fn is_ipv4_compatible(addr: Ipv6Addr) -> bool {
    let s = addr.segments();
    s[..6].iter().all(|&x| x == 0) && !addr.is_unspecified() && !addr.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn non_public_addresses() {
        for addr in [
            "127.0.0.1",
            "10.2.3.4",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::7f00:1",
            "64:ff9b::a00:1",
        ] {
            assert!(!public(addr), "{addr} counted as public");
        }
    }

    #[test]
    fn public_addresses() {
        for addr in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(public(addr), "{addr} counted as non-public");
        }
    }
}
