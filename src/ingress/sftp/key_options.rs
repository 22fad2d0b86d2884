//! authorized_keys options with their OpenSSH meaning (sshd(8) "AUTHORIZED_KEYS FILE FORMAT").
//!
//! `from="pattern-list"` limits where a key may log in from, `expiry-time="timespec"` when it
//! stops working; `restrict` and the `no-*` options forbid what dropsync never allows anyway
//! (ptys, forwarding, X11, user rc), so they are honoured by construction. Any other option
//! (`command=`, `environment=`, `permitopen=`, `cert-authority`, …) is something dropsync
//! cannot honour, and makes the key a configuration error rather than a key that silently
//! does more (or less) than its line says.

use std::net::IpAddr;

/// What a key's options allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `from=`: the address patterns, as written (None: from anywhere).
    from: Option<Vec<Pattern>>,
    /// `expiry-time=`: unix seconds after which the key no longer logs in.
    expires_at: Option<i64>,
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

/// Options that restrict what dropsync never allows anyway.
const HONOURED_BY_CONSTRUCTION: &[&str] = &[
    "restrict",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
];

impl KeyOptions {
    /// Parses a key's options (`opt,opt="value",…` as ssh-key splits them).
    pub fn parse<'a>(options: impl IntoIterator<Item = &'a str>) -> Result<KeyOptions, String> {
        let mut out = KeyOptions::default();
        for opt in options {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.trim_matches('"'))),
                None => (opt, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("from", Some(v)) => out.from = Some(parse_patterns(v)?),
                ("expiry-time", Some(v)) => out.expires_at = Some(parse_expiry(v)?),
                (n, None) if HONOURED_BY_CONSTRUCTION.contains(&n) => {}
                _ => {
                    return Err(format!(
                        "option {opt:?} cannot be honoured by dropsync (it serves SFTP only); \
                         allowed: from=, expiry-time=, restrict, no-*"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether the key may log in from `peer` at `now` (unix seconds); if not, why.
    pub fn allows(&self, peer: IpAddr, now: i64) -> Result<(), String> {
        if let Some(at) = self.expires_at
            && now > at
        {
            return Err("the key expired (expiry-time)".into());
        }
        if let Some(patterns) = &self.from
            && !matches_from(patterns, peer.to_canonical())
        {
            return Err(format!("{peer} is not in the key's from= list"));
        }
        Ok(())
    }
}

/// A list of address patterns as in `from=` (addresses, CIDR, `*`/`?`, `!` to exclude), for
/// configuration keys such as `sftp.penalty_exempt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(Vec<Pattern>);

impl AddressList {
    pub fn parse(items: &[String]) -> Result<AddressList, String> {
        if items.is_empty() {
            return Ok(AddressList::default());
        }
        Ok(AddressList(parse_patterns(&items.join(","))?))
    }

    pub fn matches(&self, peer: IpAddr) -> bool {
        matches_from(&self.0, peer.to_canonical())
    }
}

/// OpenSSH's rule: a negated pattern that matches refuses at once; otherwise some pattern
/// must match.
fn matches_from(patterns: &[Pattern], peer: IpAddr) -> bool {
    let mut allowed = false;
    for p in patterns {
        if p.kind.matches(peer) {
            if p.negated {
                return false;
            }
            allowed = true;
        }
    }
    allowed
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

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, read in UTC (sshd reads the system's zone;
/// a daemon's zone is UTC on the machines this runs on, and UTC is stated in the README).
fn parse_expiry(v: &str) -> Result<i64, String> {
    if ![8, 12, 14].contains(&v.len()) {
        return Err(format!("expiry-time {v:?} is not YYYYMMDD[HHMM[SS]]"));
    }
    let padded = format!("{v:0<14}");
    chrono::NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S")
        .map(|t| t.and_utc().timestamp())
        .map_err(|_| format!("expiry-time {v:?} is not YYYYMMDD[HHMM[SS]]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<KeyOptions, String> {
        KeyOptions::parse(s.split(',').filter(|o| !o.is_empty()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn from_lists_match_as_openssh_does() {
        let o = KeyOptions::parse(["from=\"10.0.0.0/8,!10.1.0.0/16,192.168.1.?\""]).unwrap();
        assert!(o.allows(ip("10.2.3.4"), 0).is_ok());
        assert!(o.allows(ip("10.1.3.4"), 0).is_err(), "a negated match refuses");
        assert!(o.allows(ip("192.168.1.7"), 0).is_ok());
        assert!(o.allows(ip("192.168.1.77"), 0).is_err());
        assert!(o.allows(ip("127.0.0.1"), 0).is_err());
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert!(o.allows(ip("::ffff:10.2.3.4"), 0).is_ok());
        let v6 = KeyOptions::parse(["from=\"2001:db8::/32\""]).unwrap();
        assert!(v6.allows(ip("2001:db8::1"), 0).is_ok());
        assert!(v6.allows(ip("2001:db9::1"), 0).is_err());
        // Only negations: nothing matches positively, so nothing is allowed.
        assert!(
            KeyOptions::parse(["from=\"!10.0.0.1\""])
                .unwrap()
                .allows(ip("10.0.0.2"), 0)
                .is_err()
        );
        assert!(
            KeyOptions::parse(["from=\"*\""])
                .unwrap()
                .allows(ip("203.0.113.9"), 0)
                .is_ok()
        );
    }

    #[test]
    fn bad_lists_and_unknown_options_are_errors() {
        assert!(opts("from=\"10.0.0.1/8\"").unwrap_err().contains("host bits"));
        assert!(opts("from=\"10.0.0.0/33\"").unwrap_err().contains("prefix"));
        assert!(opts("from=\"host.example\"").unwrap_err().contains("not looked up"));
        assert!(opts("command=\"/bin/sh\"").unwrap_err().contains("cannot be honoured"));
        assert!(opts("permitopen=\"x:1\"").is_err());
        assert!(opts("restrict,no-pty,no-port-forwarding,no-X11-forwarding").is_ok());
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let o = opts("expiry-time=\"20200101\"").unwrap();
        let jan_2020 = 1_577_836_800;
        assert!(o.allows(ip("127.0.0.1"), jan_2020).is_ok());
        assert!(o.allows(ip("127.0.0.1"), jan_2020 + 1).unwrap_err().contains("expired"));
        assert_eq!(parse_expiry("202001011230").unwrap(), jan_2020 + 12 * 3600 + 30 * 60);
        assert!(parse_expiry("2020").is_err());
    }
}
