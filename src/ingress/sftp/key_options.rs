//! authorized_keys options with their OpenSSH meaning (sshd(8) "AUTHORIZED_KEYS FILE FORMAT").
//!
//! `from="pattern-list"` limits where a key may log in from, `expiry-time="timespec"` when it
//! stops working; `restrict` and the `no-*` options forbid what dropsync never allows anyway
//! (ptys, forwarding, X11, user rc), so they are honoured by construction. Any other option
//! (`command=`, `environment=`, `permitopen=`, `cert-authority`, …) is something dropsync
//! cannot honour, and makes the key a configuration error rather than a key that silently
//! does more (or less) than its line says.

use std::net::IpAddr;

use crate::addresses::AddressList;

/// What a key's options allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `from=`: the address patterns, as written (None: from anywhere).
    from: Option<AddressList>,
    /// `expiry-time=`: unix seconds after which the key no longer logs in.
    expires_at: Option<i64>,
}

/// Why a key's options make it a configuration error. The key's line is to be fixed: no retry
/// helps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyOptionError {
    /// An option dropsync cannot honour, as written.
    #[error(
        "option {0:?} cannot be honoured by dropsync (it serves SFTP only); allowed: from=, expiry-time=, restrict, no-*"
    )]
    Unhonoured(String),
    /// A `from=` list that does not parse, and why.
    #[error("{0}")]
    From(String),
    /// An `expiry-time=` that is no time, as written.
    #[error("expiry-time {0:?} is not YYYYMMDD[HHMM[SS]]")]
    Expiry(String),
}

/// Why a key's options refuse a login. The key itself is good: a login from an address its
/// `from=` allows, before its expiry, succeeds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    #[error("the key expired (expiry-time)")]
    Expired,
    #[error("{0} is not in the key's from= list")]
    NotFrom(IpAddr),
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
    pub fn parse<'a>(options: impl IntoIterator<Item = &'a str>) -> Result<KeyOptions, KeyOptionError> {
        let mut out = KeyOptions::default();
        for opt in options {
            let (name, value) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.trim_matches('"'))),
                None => (opt, None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("from", Some(v)) => out.from = Some(AddressList::parse_list(v).map_err(KeyOptionError::From)?),
                ("expiry-time", Some(v)) => out.expires_at = Some(parse_expiry(v)?),
                (n, None) if HONOURED_BY_CONSTRUCTION.contains(&n) => {}
                _ => return Err(KeyOptionError::Unhonoured(opt.to_owned())),
            }
        }
        Ok(out)
    }

    /// Whether the key may log in from `peer` at `now` (unix seconds); if not, why.
    pub fn allows(&self, peer: IpAddr, now: i64) -> Result<(), KeyRefused> {
        if let Some(at) = self.expires_at
            && now > at
        {
            return Err(KeyRefused::Expired);
        }
        if let Some(from) = &self.from
            && !from.matches(peer)
        {
            return Err(KeyRefused::NotFrom(peer));
        }
        Ok(())
    }
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, read in UTC (sshd reads the system's zone;
/// a daemon's zone is UTC on the machines this runs on, and UTC is stated in the README).
fn parse_expiry(v: &str) -> Result<i64, KeyOptionError> {
    if ![8, 12, 14].contains(&v.len()) {
        return Err(KeyOptionError::Expiry(v.to_owned()));
    }
    let padded = format!("{v:0<14}");
    chrono::NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S")
        .map(|t| t.and_utc().timestamp())
        .map_err(|_| KeyOptionError::Expiry(v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<KeyOptions, KeyOptionError> {
        KeyOptions::parse(s.split(',').filter(|o| !o.is_empty()))
    }

    fn refusal(s: &str) -> String {
        opts(s).unwrap_err().to_string()
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
        assert!(refusal("from=\"10.0.0.1/8\"").contains("host bits"));
        assert!(refusal("from=\"10.0.0.0/33\"").contains("prefix"));
        assert!(refusal("from=\"host.example\"").contains("not looked up"));
        assert!(refusal("command=\"/bin/sh\"").contains("cannot be honoured"));
        assert!(opts("permitopen=\"x:1\"").is_err());
        assert!(opts("restrict,no-pty,no-port-forwarding,no-X11-forwarding").is_ok());
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let o = opts("expiry-time=\"20200101\"").unwrap();
        let jan_2020 = 1_577_836_800;
        assert!(o.allows(ip("127.0.0.1"), jan_2020).is_ok());
        assert_eq!(o.allows(ip("127.0.0.1"), jan_2020 + 1), Err(KeyRefused::Expired));
        assert_eq!(parse_expiry("202001011230").unwrap(), jan_2020 + 12 * 3600 + 30 * 60);
        assert!(parse_expiry("2020").is_err());
    }
}
