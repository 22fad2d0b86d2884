//! Who may log in: each tenant's public keys (inline `authorized_keys` and an OpenSSH
//! `authorized_keys_file`). Failed logins are counted in [`crate::ingress::bans`].

use std::collections::HashMap;
use std::net::IpAddr;

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
}
