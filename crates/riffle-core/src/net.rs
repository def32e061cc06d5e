//! IP address ranges in CIDR notation, for filters on the `ip` field.

use std::net::IpAddr;

/// An IPv4 or IPv6 range such as `10.0.0.0/8` or `2001:db8::/32`. Host bits
/// must be zero so a typo (`10.1.0.0/8`) is caught instead of widening the
/// range silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, crate::InvalidValue> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR range like \"10.0.0.0/8\""))?;
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IP address"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?;
        let cidr = Cidr { base, prefix };
        if cidr.bits(base) != cidr.bits(base) & cidr.mask() {
            return Err(format!("{text:?}: host bits must be zero").into());
        }
        Ok(cidr)
    }

    fn width(&self) -> u32 {
        if self.base.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn mask(&self) -> u128 {
        let width = self.width();
        let host_bits = width - self.prefix as u32;
        let full: u128 = if width == 32 {
            u32::MAX as u128
        } else {
            u128::MAX
        };
        if host_bits >= 128 {
            return 0;
        }
        full & !((1u128 << host_bits) - 1)
    }

    fn bits(&self, addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(v4) => u32::from(v4) as u128,
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    /// Whether `addr` lies in the range; an IPv4 address never matches an
    /// IPv6 range and vice versa (IPv4-mapped IPv6 addresses are compared as
    /// IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
            v4 => v4,
        };
        if addr.is_ipv4() != self.base.is_ipv4() {
            return false;
        }
        self.bits(addr) & self.mask() == self.bits(self.base)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_v4_and_v6() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("2001:db8::1")));
        let host = Cidr::parse("73.162.4.5/32").unwrap();
        assert!(host.contains(ip("73.162.4.5")));
        assert!(!host.contains(ip("73.162.4.6")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn errors_name_the_value() {
        assert_eq!(
            Cidr::parse("10.1.0.0/8").unwrap_err().message(),
            "\"10.1.0.0/8\": host bits must be zero"
        );
        assert_eq!(
            Cidr::parse("10.0.0.0").unwrap_err().message(),
            "\"10.0.0.0\" is not a CIDR range like \"10.0.0.0/8\""
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err().message(),
            "\"10.0.0.0/33\": prefix length must be 0..=32"
        );
        assert!(Cidr::parse("x/8")
            .unwrap_err()
            .message()
            .contains("not an IP address"));
    }
}
