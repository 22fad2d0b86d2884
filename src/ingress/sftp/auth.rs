//! Who may log in: each tenant's public keys (inline `authorized_keys` and an OpenSSH
//! `authorized_keys_file`), and per-source accounting of failed logins (IPv6 per /64) with temporary bans.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use russh::keys::ssh_key::{Algorithm, AuthorizedKeys, PublicKey, public::KeyData};

use super::key_options::{KeyOptions, KeyRefused};

use crate::tenant::{Tenant, TenantId};

/// Tenant id -> the keys it may log in with, each with its options (comments do not count).
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    keys: HashMap<String, (TenantId, Vec<(KeyData, KeyOptions)>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant}: {message}")]
pub struct KeyError {
    pub tenant: String,
    pub message: String,
}

/// RSA keys shorter than this are refused (OpenSSH's own minimum since 9.x is 1024; NIST and
/// every current guide say 2048).
const MIN_RSA_BITS: u32 = 2048;

/// Parses OpenSSH authorized_keys text: each key with its options, which must be ones dropsync
/// honours (see [`KeyOptions`]).
pub fn parse_authorized_keys(text: &str) -> Result<Vec<(KeyData, KeyOptions)>, String> {
    let mut out = Vec::new();
    for (i, entry) in AuthorizedKeys::new(text).enumerate() {
        let entry = entry.map_err(|e| format!("key {} cannot be read: {e}", i + 1))?;
        let key = entry.public_key();
        let name = format!("key {} ({})", i + 1, key.fingerprint(Default::default()));
        if let KeyData::Rsa(rsa) = key.key_data()
            && rsa.key_size() < MIN_RSA_BITS
        {
            return Err(format!(
                "{name}: an RSA key of {} bits; at least {MIN_RSA_BITS} are needed",
                rsa.key_size()
            ));
        }
        let options = KeyOptions::parse(entry.config_opts().iter()).map_err(|e| format!("{name}: {e}"))?;
        out.push((key.key_data().clone(), options));
    }
    Ok(out)
}

/// Why a login was refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such tenant, or not one of its keys.
    UnknownKey,
    /// One of its keys, but its options say no (from=, expiry-time=).
    Options(KeyRefused),
    /// An RSA signature with SHA-1 (`ssh-rsa`).
    Sha1,
}

impl Refusal {
    pub fn reason(&self) -> String {
        match self {
            Refusal::UnknownKey => "unknown user or key".to_owned(),
            Refusal::Sha1 => "ssh-rsa (SHA-1) signatures are refused: use rsa-sha2-256/512".to_owned(),
            Refusal::Options(why) => why.to_string(),
        }
    }
}

impl KeyStore {
    pub fn from_tenants(tenants: &[Tenant]) -> Result<KeyStore, KeyError> {
        let mut keys = HashMap::new();
        for t in tenants {
            let err = |message: String| KeyError {
                tenant: t.id.to_string(),
                message,
            };
            let mut list = Vec::new();
            for line in &t.authorized_keys {
                list.extend(parse_authorized_keys(line).map_err(err)?);
            }
            if let Some(file) = &t.authorized_keys_file {
                let text =
                    std::fs::read_to_string(file).map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
                list.extend(parse_authorized_keys(&text).map_err(err)?);
            }
            keys.insert(t.id.as_str().to_owned(), (t.id.clone(), list));
        }
        Ok(KeyStore { keys })
    }

    /// The tenant `user` is, if `key` (signing with `algorithm`) is one of its keys and its
    /// options let `peer` in now.
    pub fn check(
        &self,
        user: &str,
        key: &PublicKey,
        algorithm: &Algorithm,
        peer: IpAddr,
        now: i64,
    ) -> Result<TenantId, Refusal> {
        if *algorithm == (Algorithm::Rsa { hash: None }) {
            return Err(Refusal::Sha1);
        }
        let (id, keys) = self.keys.get(user).ok_or(Refusal::UnknownKey)?;
        let (_, options) = keys
            .iter()
            .find(|(k, _)| k == key.key_data())
            .ok_or(Refusal::UnknownKey)?;
        options.allows(peer, now).map_err(Refusal::Options)?;
        Ok(id.clone())
    }

    /// Whether `key` is still one of `tenant`'s keys (a reload may have removed it).
    pub fn has(&self, tenant: &TenantId, key: &KeyData) -> bool {
        self.keys
            .get(tenant.as_str())
            .is_some_and(|(_, keys)| keys.iter().any(|(k, _)| k == key))
    }
}

/// Failed logins per source (an IPv4 address, or an IPv6 /64, as penalties count them); a source
/// with `max_failures` failed connections within `ban_time` is refused for `ban_time`.
pub struct Bans {
    max_failures: u32,
    ban_time: Duration,
    state: Mutex<HashMap<IpAddr, Failures>>,
}

/// Failed logins of one source: how many, since when, and banned until when.
type Failures = (u32, Instant, Option<Instant>);

impl Bans {
    pub fn new(max_failures: u32, ban_time: Duration) -> Self {
        Bans {
            max_failures: max_failures.max(1),
            ban_time,
            state: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let source = super::admission::source_of(ip);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.get(&source) {
            Some((_, _, Some(until))) if *until > Instant::now() => true,
            Some((_, _, Some(_))) => {
                state.remove(&source);
                false
            }
            _ => false,
        }
    }

    /// Records a failed login; returns true if its source is now banned.
    pub fn failed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Forget IPs whose window passed, so the map stays small.
        if state.len() > 10_000 {
            state.retain(|_, (_, since, until)| {
                until.is_some_and(|u| u > now) || now.duration_since(*since) < self.ban_time
            });
        }
        let entry = state.entry(super::admission::source_of(ip)).or_insert((0, now, None));
        if now.duration_since(entry.1) > self.ban_time {
            *entry = (0, now, None);
        }
        entry.0 += 1;
        if entry.0 >= self.max_failures {
            entry.2 = Some(now + self.ban_time);
            return true;
        }
        false
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&super::admission::source_of(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn keys_match_by_material_not_comment_and_options_are_kept() {
        let with_opts = format!("no-pty,from=\"10.0.0.0/8\" {ED} ops@acme");
        let a = parse_authorized_keys(&with_opts).unwrap();
        let b = parse_authorized_keys(&format!("{ED} someone-else")).unwrap();
        assert_eq!(a[0].0, b[0].0);
        assert!(a[0].1.allows("10.1.2.3".parse().unwrap(), 0).is_ok());
        assert!(a[0].1.allows("127.0.0.1".parse().unwrap(), 0).is_err());
        assert!(b[0].1.allows("127.0.0.1".parse().unwrap(), 0).is_ok());
        let bad = parse_authorized_keys(&format!("command=\"/bin/sh\" {ED} x")).unwrap_err();
        assert!(
            bad.starts_with("key 1 (SHA256:") && bad.contains("cannot be honoured"),
            "{bad}"
        );
        assert!(parse_authorized_keys("ssh-ed25519 notbase64").is_err());
        assert_eq!(parse_authorized_keys("# comment\n\n").unwrap().len(), 0);
    }

    #[test]
    fn bans_after_repeated_failures() {
        let bans = Bans::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!bans.failed(ip));
        assert!(!bans.failed(ip));
        assert!(!bans.is_banned(ip));
        assert!(bans.failed(ip));
        assert!(bans.is_banned(ip));
        assert!(!bans.is_banned("127.0.0.8".parse().unwrap()));
    }

    /// An IPv6 host has a /64 to pick addresses from: failures count per /64, as penalties and
    /// `max_startups_per_source` do, so a new address per attempt gains nothing.
    #[test]
    fn ipv6_failures_count_per_64() {
        let bans = Bans::new(3, Duration::from_secs(60));
        for ip in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:3"] {
            bans.failed(ip.parse().unwrap());
        }
        assert!(bans.is_banned("2001:db8::42".parse().unwrap()), "the whole /64");
        assert!(!bans.is_banned("2001:db8:0:1::1".parse().unwrap()), "the next /64");
        bans.succeeded("2001:db8::7".parse().unwrap());
        assert!(
            !bans.is_banned("2001:db8::1".parse().unwrap()),
            "a login clears its /64"
        );
    }
}
