//! Address patterns as OpenSSH writes them in `from=` (sshd(8) "PATTERNS"): addresses, CIDR
//! networks, `*`/`?` wildcards and `!` to exclude; host names are not looked up.
//!
//! Takes a pattern list as text and gives an [`AddressList`] that says whether a peer's address
//! matches. Below config and ingress alike: an authorized_keys `from=` option and configuration
//! keys such as `sftp.penalty_exempt` read the same patterns.

use std::net::IpAddr;

/// A list of address patterns, matched as OpenSSH matches `from=`. The empty list (a
/// configuration key left out) matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(Vec<Pattern>);

impl AddressList {
    /// A configuration key's list, one or more patterns per item.
    pub fn parse(items: &[String]) -> Result<AddressList, String> {
        if items.is_empty() {
            return Ok(AddressList::default());
        }
        AddressList::parse_list(&items.join(","))
    }

    /// A comma-separated pattern list, as in `from="…"`; an empty one is an error.
    pub fn parse_list(list: &str) -> Result<AddressList, String> {
        parse_patterns(list).map(AddressList)
    }

    /// OpenSSH's rule: a negated pattern that matches refuses at once; otherwise some pattern
    /// must match. IPv4-mapped IPv6 peers are their IPv4 address.
    pub fn matches(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        let mut allowed = false;
        for p in &self.0 {
            if p.kind.matches(peer) {
                if p.negated {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    negated: bool,
    kind: PatternKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternKind {
    /// An address with a prefix length (a bare address is a /32 or /128).
    Cidr(IpAddr, u8),
    /// A pattern with `*` and `?`, matched against the address as text.
    Glob(String),
}

impl PatternKind {
    fn matches(&self, peer: IpAddr) -> bool {
        match self {
            PatternKind::Cidr(net, bits) => in_network(peer, *net, *bits),
            PatternKind::Glob(g) => glob_match(g.as_bytes(), peer.to_string().as_bytes()),
        }
    }
}

fn in_network(peer: IpAddr, net: IpAddr, bits: u8) -> bool {
    let mask = |len: u32, bits: u8| -> u128 {
        if bits == 0 {
            0
        } else {
            (!0u128 << (len - u32::from(bits))) & (!0u128 >> (128 - len))
        }
    };
    match (peer, net) {
        (IpAddr::V4(p), IpAddr::V4(n)) => {
            let m = mask(32, bits);
            u128::from(u32::from(p)) & m == u128::from(u32::from(n)) & m
        }
        (IpAddr::V6(p), IpAddr::V6(n)) => {
            let m = mask(128, bits);
            u128::from(p) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// `*` any run of characters, `?` any one.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&pattern[1..], text) || (!text.is_empty() && glob_match(pattern, &text[1..])),
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => glob_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

fn parse_patterns(list: &str) -> Result<Vec<Pattern>, String> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, body) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        let kind = if body.contains(['*', '?']) {
            PatternKind::Glob(body.to_owned())
        } else {
            let (addr, bits) = match body.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (body, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("from=: {raw:?} is not an address, a CIDR or a pattern (host names are not looked up)")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("from=: {raw:?} has a bad prefix length"))?,
            };
            if host_bits_set(addr, bits) {
                return Err(format!("from=: {raw:?} has host bits set beyond its /{bits}"));
            }
            PatternKind::Cidr(addr, bits)
        };
        out.push(Pattern { negated, kind });
    }
    if out.is_empty() {
        return Err("from= is empty".into());
    }
    Ok(out)
}

fn host_bits_set(addr: IpAddr, bits: u8) -> bool {
    let zeroed = match addr {
        IpAddr::V4(a) => {
            let m = if bits == 0 { 0 } else { !0u32 << (32 - u32::from(bits)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if bits == 0 {
                0
            } else {
                !0u128 << (128 - u32::from(bits))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    };
    zeroed != addr
}
