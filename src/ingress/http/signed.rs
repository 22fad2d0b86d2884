//! Upload URLs signed by dropsync (SPEC §10): HMAC-SHA256 over what the URL names (the tenant
//! and the upload) and when it expires, with a key created in `state_dir` on first start (as
//! the SSH host key is) and never sent anywhere. A URL needs no Authorization header; one
//! changed in any part, or used after it expired, is refused.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signing key's file in `state_dir`.
pub const KEY_FILE: &str = "http-signing.key";

/// Why a signed URL is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the upload URL expired; ask for a new one")]
    Expired,
    #[error("the upload URL's signature does not match it (was the URL changed?)")]
    Mismatch,
}

/// What a signature is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Upload,
    Session,
}

pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// Reads the key from `path`, or creates it there (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> io::Result<Signer> {
        let mut key = [0u8; 32];
        match std::fs::File::open(path) {
            Ok(mut f) => {
                f.read_exact(&mut key)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                key = rand::random();
                let tmp = path.with_extension(format!("tmp.{}.{:x}", std::process::id(), rand::random::<u64>()));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()?;
                // A link, not a rename: two nodes starting at once on one shared state_dir
                // must end with one key, the first one linked, and both using it.
                let linked = std::fs::hard_link(&tmp, path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => crate::fsutil::sync_dir(path.parent().unwrap_or(Path::new(".")))?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Signer::load_or_create(path),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(Signer { key })
    }

    /// A signer with a fixed key (tests and fuzzing).
    pub fn with_key(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    /// The MAC of `target` until `expires` for `purpose`: a signature made for one purpose (an
    /// upload URL, a console session) is never valid for another.
    fn mac(&self, purpose: Purpose, target: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        let domain = match purpose {
            Purpose::Upload => "dropsync-upload-v1",
            Purpose::Session => "dropsync-console-session-v1",
        };
        mac.update(format!("{domain}\n{target}\n{expires}").as_bytes());
        mac
    }

    /// The signature of upload `target` until `expires` (Unix seconds), in hex.
    pub fn sign(&self, target: &str, expires: i64) -> String {
        self.sign_for(Purpose::Upload, target, expires)
    }

    pub fn sign_for(&self, purpose: Purpose, target: &str, expires: i64) -> String {
        hex::encode(self.mac(purpose, target, expires).finalize().into_bytes())
    }

    /// Whether `signature` is upload `target`'s until `expires`, at `now` (compared in
    /// constant time).
    pub fn verify(&self, target: &str, expires: i64, signature: &str, now: i64) -> Result<(), SignError> {
        self.verify_for(Purpose::Upload, target, expires, signature, now)
    }

    pub fn verify_for(
        &self,
        purpose: Purpose,
        target: &str,
        expires: i64,
        signature: &str,
        now: i64,
    ) -> Result<(), SignError> {
        let given = hex::decode(signature).map_err(|_| SignError::Mismatch)?;
        self.mac(purpose, target, expires)
            .verify_slice(&given)
            .map_err(|_| SignError::Mismatch)?;
        if now >= expires {
            return Err(SignError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_starting_at_once_on_one_state_dir_end_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let signatures: Vec<String> = std::thread::scope(|s| {
            let started: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Signer::load_or_create(&path).unwrap().sign("/u", 1)))
                .collect();
            started.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(signatures.iter().all(|s| *s == signatures[0]), "{signatures:?}");
        assert_eq!(Signer::load_or_create(&path).unwrap().sign("/u", 1), signatures[0]);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(KEY_FILE)], "no temp file left");
    }

    #[test]
    fn a_signature_holds_for_its_target_until_it_expires() {
        let signer = Signer::with_key([7; 32]);
        let sig = signer.sign("acme/u1", 1000);
        assert_eq!(signer.verify("acme/u1", 1000, &sig, 999), Ok(()));
        assert_eq!(signer.verify("acme/u1", 1000, &sig, 1000), Err(SignError::Expired));
        assert_eq!(signer.verify("acme/u2", 1000, &sig, 1), Err(SignError::Mismatch));
        assert_eq!(signer.verify("acme/u1", 2000, &sig, 1), Err(SignError::Mismatch));
        assert_eq!(signer.verify("acme/u1", 1000, "zz", 1), Err(SignError::Mismatch));
        let other = Signer::with_key([8; 32]);
        assert_eq!(other.verify("acme/u1", 1000, &sig, 1), Err(SignError::Mismatch));
        // An upload URL's signature is no console session's, nor the other way round.
        assert_eq!(
            signer.verify_for(Purpose::Session, "acme/u1", 1000, &sig, 1),
            Err(SignError::Mismatch)
        );
        let session = signer.sign_for(Purpose::Session, "acme/u1", 1000);
        assert_eq!(signer.verify("acme/u1", 1000, &session, 1), Err(SignError::Mismatch));
    }

    #[test]
    fn the_key_is_created_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = Signer::load_or_create(&path).unwrap().sign("t", 1);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Signer::load_or_create(&path).unwrap().sign("t", 1), first);
    }
}
