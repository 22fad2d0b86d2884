//! What configuration knows of SFTP host key files: the default files, and the type a missing
//! file is to be created as, read from its name. Validation needs both (a missing file whose
//! name says no type is a configuration problem); `ingress::sftp::host_keys` reads and creates
//! the keys themselves, so config stays free of SSH code.

use std::path::{Path, PathBuf};

/// A type of host key dropsync creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyKind {
    Ed25519,
    /// ECDSA on NIST P-256, the curve every ECDSA client knows.
    Ecdsa,
    /// RSA, of the size `ssh-keygen -t rsa` makes.
    Rsa,
}

impl HostKeyKind {
    /// The type a key file to create has, read from its file name, as OpenSSH names them
    /// (`ssh_host_ed25519_key`, `ssh_host_ecdsa_key`, `ssh_host_rsa_key`).
    pub fn from_name(path: &Path) -> Option<HostKeyKind> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        // "ecdsa" before "rsa" would not matter ("ecdsa" holds no "rsa"), but ed25519 first
        // keeps a name like "ed25519_not_rsa" what it says first.
        [
            ("ed25519", HostKeyKind::Ed25519),
            ("ecdsa", HostKeyKind::Ecdsa),
            ("rsa", HostKeyKind::Rsa),
        ]
        .into_iter()
        .find(|(word, _)| name.contains(word))
        .map(|(_, kind)| kind)
    }
}

/// The default host key files in `state_dir`, as OpenSSH names its own.
pub fn default_paths(state_dir: &Path) -> Vec<PathBuf> {
    ["ssh_host_ed25519_key", "ssh_host_ecdsa_key", "ssh_host_rsa_key"]
        .into_iter()
        .map(|name| state_dir.join(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_to_create_follows_the_name() {
        let kind = |name: &str| HostKeyKind::from_name(Path::new(name));
        assert_eq!(kind("var/ssh_host_ed25519_key"), Some(HostKeyKind::Ed25519));
        assert_eq!(kind("var/ssh_host_ecdsa_key"), Some(HostKeyKind::Ecdsa));
        assert_eq!(kind("/etc/dropsync/ssh_host_rsa_key"), Some(HostKeyKind::Rsa));
        assert_eq!(kind("keys/Host-RSA.key"), Some(HostKeyKind::Rsa));
        assert_eq!(kind("keys/hostkey"), None);
        // Only the file name counts, not its folder.
        assert_eq!(kind("rsa/hostkey"), None);
    }

    #[test]
    fn the_defaults_are_the_three_types_in_order() {
        let paths = default_paths(Path::new("/var/lib/dropsync"));
        let kinds: Vec<_> = paths.iter().map(|p| HostKeyKind::from_name(p)).collect();
        assert_eq!(
            kinds,
            [
                Some(HostKeyKind::Ed25519),
                Some(HostKeyKind::Ecdsa),
                Some(HostKeyKind::Rsa)
            ]
        );
    }
}
