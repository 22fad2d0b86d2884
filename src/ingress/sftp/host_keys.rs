//! The SFTP server's host keys: takes the configured key files, gives russh its keys and the
//! host key algorithms to offer, and onboarding the fingerprints a client will be shown.
//!
//! As OpenSSH and SFTPGo do, dropsync offers an ed25519, an ECDSA P-256 and an RSA key, so that
//! clients that know only ECDSA or RSA host keys (JSch of the 0.1.5x generation, older WinSCP and
//! appliances) can connect. A missing file is created on first start, of the type its name says
//! (`…ed25519…`, `…ecdsa…`, `…rsa…`), and kept; an existing file is read whatever its type. RSA
//! signs with rsa-sha2-512/256 only, never SHA-1 `ssh-rsa` (RFC 8332).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::{EcdsaCurve, LineEnding, PrivateKey, PublicKey};
use russh::keys::{Algorithm, HashAlg};

use crate::config::host_keys::HostKeyKind;

/// The size of the RSA keys dropsync creates ([`HostKeyKind::Rsa`]): OpenSSH's default since 9.0 (`ssh-keygen -t rsa`).
const RSA_BITS: usize = 3072;

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {message}")]
    Key { path: String, message: String },
    #[error("host key {path}: a {kind} key, which dropsync cannot offer (use ed25519, ecdsa or rsa)")]
    Unsupported { path: String, kind: String },
    #[error(
        "host key {path} does not exist and its name does not say which key to create: \
         name it after its type (ed25519, ecdsa or rsa), e.g. ssh_host_ecdsa_key"
    )]
    UnknownType { path: String },
    #[error("host keys {first} and {second} are both {kind} keys: a server offers one key of each type")]
    SameType {
        first: String,
        second: String,
        kind: String,
    },
}

/// Reads every key in `paths`, creating those that are missing; refuses two of one type.
pub fn load_or_create_all(paths: &[PathBuf]) -> Result<Vec<PrivateKey>, HostKeyError> {
    let mut keys: Vec<(PrivateKey, &PathBuf)> = Vec::new();
    for path in paths {
        let key = load_or_create(path)?;
        if let Some((_, first)) = keys.iter().find(|(k, _)| same_type(k, &key)) {
            return Err(HostKeyError::SameType {
                first: first.display().to_string(),
                second: path.display().to_string(),
                kind: type_name(key.public_key()),
            });
        }
        keys.push((key, path));
    }
    Ok(keys.into_iter().map(|(k, _)| k).collect())
}

/// Reads the key at `path`, or creates one of the type its name says (mode 0600, written under
/// a temp name, fsynced and renamed, so a crash leaves the whole key or none).
pub fn load_or_create(path: &Path) -> Result<PrivateKey, HostKeyError> {
    let err = |message: String| HostKeyError::Key {
        path: path.display().to_string(),
        message,
    };
    if path.exists() {
        let key = PrivateKey::read_openssh_file(path).map_err(|e| err(e.to_string()))?;
        if !offerable(&key.algorithm()) {
            return Err(HostKeyError::Unsupported {
                path: path.display().to_string(),
                kind: type_name(key.public_key()),
            });
        }
        return Ok(key);
    }
    let kind = HostKeyKind::from_name(path).ok_or_else(|| HostKeyError::UnknownType {
        path: path.display().to_string(),
    })?;
    let key = generate(kind).map_err(|e| err(e.to_string()))?;
    write_private(path, &key).map_err(|e| err(e.to_string()))?;
    // Another node's key may have been linked first: the one on disk is the key.
    let key = PrivateKey::read_openssh_file(path).map_err(|e| err(e.to_string()))?;
    tracing::info!(path = %path.display(), fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
        "created SSH host key ({})", type_name(key.public_key()));
    Ok(key)
}

fn generate(kind: HostKeyKind) -> Result<PrivateKey, russh::keys::ssh_key::Error> {
    let mut rng = rand::rng();
    match kind {
        HostKeyKind::Ed25519 => PrivateKey::random(&mut rng, Algorithm::Ed25519),
        HostKeyKind::Ecdsa => PrivateKey::random(
            &mut rng,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        ),
        // ssh-key's own default size is not OpenSSH's: the size is chosen here.
        HostKeyKind::Rsa => PrivateKey::new(KeypairData::from(RsaKeypair::random(&mut rng, RSA_BITS)?), ""),
    }
}

fn write_private(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = crate::fsutil::temp_beside(path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        // A link, not a rename: nodes starting at once on one shared state_dir keep the key
        // linked first (the caller reads it back), so clients see one host key whichever node
        // answers.
        .and_then(|()| match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        })
        .and_then(|()| crate::fsutil::sync_dir(dir));
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Whether russh can sign with a key of this algorithm.
fn offerable(algorithm: &Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } | Algorithm::Rsa { .. }
    )
}

fn same_type(a: &PrivateKey, b: &PrivateKey) -> bool {
    match (a.algorithm(), b.algorithm()) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        (x, y) => x == y,
    }
}

/// The algorithms russh may negotiate: as host keys (filtered by the keys it holds) and as the
/// `server-sig-algs` it announces for client keys (so also what a failed login's log names). russh's default list ends with SHA-1
/// `ssh-rsa`, left out here for both.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// A key's type as `ssh-keygen -l` prints it: ED25519, ECDSA, RSA.
fn type_name(key: &PublicKey) -> String {
    match key.algorithm() {
        Algorithm::Ed25519 => "ED25519".into(),
        Algorithm::Ecdsa { .. } => "ECDSA".into(),
        Algorithm::Rsa { .. } => "RSA".into(),
        other => other.as_str().to_ascii_uppercase(),
    }
}

/// What a client will be shown of each host key in `paths`: `SHA256:… (TYPE)`, or why not.
pub fn fingerprints(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|path| match PrivateKey::read_openssh_file(path) {
            Ok(key) => format!(
                "{} ({})",
                key.public_key().fingerprint(HashAlg::Sha256),
                type_name(key.public_key())
            ),
            Err(_) if !path.exists() => format!("{} (created on the daemon's first start)", path.display()),
            Err(e) => format!("{}: {e}", path.display()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::host_keys::default_paths;

    #[test]
    fn created_keys_are_kept_and_two_of_a_type_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = default_paths(dir.path());
        let first: Vec<String> = load_or_create_all(&paths)
            .unwrap()
            .iter()
            .map(|k| k.public_key().to_openssh().unwrap())
            .collect();
        let again: Vec<String> = load_or_create_all(&paths)
            .unwrap()
            .iter()
            .map(|k| k.public_key().to_openssh().unwrap())
            .collect();
        assert_eq!(first, again);
        assert!(first[2].starts_with("ssh-rsa "), "{}", first[2]);
        let twice = [paths[0].clone(), dir.path().join("other_ed25519_key")];
        assert!(matches!(load_or_create_all(&twice), Err(HostKeyError::SameType { .. })));
        let unknown = [dir.path().join("hostkey")];
        assert!(matches!(
            load_or_create_all(&unknown),
            Err(HostKeyError::UnknownType { .. })
        ));
    }
}
