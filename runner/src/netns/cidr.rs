//! An IPv4 network in CIDR notation (`16.0.0.0/16`): the shape of TEST_SUBNET and of the control
//! network, and the arithmetic that turns an instance's host number into its address.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network: a base address whose host bits are all zero, and a prefix length.
///
/// ```
/// use tg_nix_runner::netns::Ipv4Cidr;
/// let subnet: Ipv4Cidr = "16.0.0.0/16".parse().unwrap();
/// assert_eq!(subnet.host(2), Some("16.0.0.2".parse().unwrap()));
/// assert_eq!(subnet.to_string(), "16.0.0.0/16");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Why a string is not an IPv4 network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IPv4 network: expected ADDRESS/PREFIX, like 16.0.0.0/16")]
    Syntax(String),
    #[error("prefix length {0} is out of range (0 to 32)")]
    Prefix(u8),
    #[error("{addr}/{prefix} has host bits set; the network is {network}/{prefix}")]
    HostBits { addr: Ipv4Addr, prefix: u8, network: Ipv4Addr },
}

impl Ipv4Cidr {
    /// The network `network/prefix`; `network` must have no host bits set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix(prefix));
        }
        let masked = network.to_bits() & mask(prefix);
        if masked != network.to_bits() {
            return Err(CidrError::HostBits { addr: network, prefix, network: Ipv4Addr::from_bits(masked) });
        }
        Ok(Ipv4Cidr { network, prefix })
    }

    /// A network known at compile time; an invalid one is a compile error when used in a const.
    pub(crate) const fn literal(network: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        assert!(prefix <= 32 && network.to_bits() & mask(prefix) == network.to_bits(), "not a network");
        Ipv4Cidr { network, prefix }
    }

    /// The base address (all host bits zero).
    pub const fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length, 0 to 32.
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask, e.g. 255.255.0.0 for a /16.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        addr.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// Whether the two networks share any address (then one contains the other).
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The address with host number `n` (the network address plus `n`), if it is a usable host
    /// address: not the network address (0) and not the broadcast address (all ones).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix));
        // Host number `size - 1` is the broadcast address.
        if n == 0 || u64::from(n) >= size.saturating_sub(1) {
            return None;
        }
        Some(Ipv4Addr::from_bits(self.network.to_bits() + n))
    }
}

/// The netmask of a prefix length as a host-order integer (`prefix` at most 32).
const fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p as u32),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Ipv4Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        // `u8::from_str` accepts a leading `+`; a prefix is plain digits.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        Ipv4Cidr::new(addr, prefix)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ipv4Cidr, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays() {
        for s in ["16.0.0.0/16", "192.18.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "1.2.3.4/32"] {
            assert_eq!(cidr(s).to_string(), s);
        }
        assert_eq!(cidr("16.0.0.0/16").netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(cidr("0.0.0.0/0").netmask(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn rejects_malformed_input() {
        for s in ["", "16.0.0.0", "16.0.0.0/", "16.0.0/16", "16.0.0.0/+16", "16.0.0.0/x", "16.0.0.0/16/1"] {
            assert!(matches!(s.parse::<Ipv4Cidr>(), Err(CidrError::Syntax(_))), "{s}");
        }
        assert_eq!("16.0.0.0/33".parse::<Ipv4Cidr>(), Err(CidrError::Prefix(33)));
        assert_eq!(
            "16.0.0.5/16".parse::<Ipv4Cidr>().unwrap_err().to_string(),
            "16.0.0.5/16 has host bits set; the network is 16.0.0.0/16"
        );
    }

    #[test]
    fn host_numbers_skip_network_and_broadcast() {
        let s = cidr("16.0.0.0/16");
        assert_eq!(s.host(0), None);
        assert_eq!(s.host(2), Some(Ipv4Addr::new(16, 0, 0, 2)));
        assert_eq!(s.host(258), Some(Ipv4Addr::new(16, 0, 1, 2)));
        assert_eq!(s.host(65534), Some(Ipv4Addr::new(16, 0, 255, 254)));
        assert_eq!(s.host(65535), None);
        assert_eq!(cidr("10.0.0.0/30").host(2), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(cidr("10.0.0.0/30").host(3), None);
        assert_eq!(cidr("10.0.0.0/31").host(1), None);
        assert_eq!(cidr("0.0.0.0/0").host(u32::MAX - 1), Some(Ipv4Addr::new(255, 255, 255, 254)));
    }

    #[test]
    fn contains_checks_the_prefix() {
        let s = cidr("192.18.0.0/16");
        assert!(s.contains(Ipv4Addr::new(192, 18, 200, 1)));
        assert!(!s.contains(Ipv4Addr::new(192, 19, 0, 1)));
    }

    #[test]
    fn overlap_is_symmetric() {
        let control = cidr("192.18.0.0/16");
        assert!(control.overlaps(&cidr("192.18.5.0/24")));
        assert!(cidr("192.18.5.0/24").overlaps(&control));
        assert!(cidr("192.0.0.0/8").overlaps(&control));
        assert!(!control.overlaps(&cidr("16.0.0.0/16")));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let s = cidr("16.0.0.0/16");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"16.0.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>("\"16.0.0.0/16\"").unwrap(), s);
        assert!(serde_json::from_str::<Ipv4Cidr>("\"16.0.0.1/16\"").is_err());
    }
}
