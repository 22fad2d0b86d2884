//! Bearer tokens (SPEC §10): the operator's (`[http] admin_tokens_file`) and each tenant's
//! (`api_tokens_file`), one a line. Only their SHA-256 is kept in memory, and a presented token
//! is compared with every one of them in constant time, so neither a memory dump nor the time an
//! answer takes gives a token away.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::tenant::TenantId;

/// Shortest token taken from a file: anything shorter could be guessed.
pub const MIN_TOKEN_LEN: usize = 20;

/// Who a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

/// Every token in force, hashed.
#[derive(Default)]
pub struct Tokens {
    known: Vec<([u8; 32], Caller)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} line {line}: a token of {len} characters; at least {MIN_TOKEN_LEN} are needed")]
    TooShort { path: String, line: usize, len: usize },
}

impl Tokens {
    /// Reads the admin tokens file and every tenant's.
    pub fn load(config: &Config) -> Result<Tokens, TokenError> {
        let mut tokens = Tokens::default();
        if let Some(file) = config.http.as_ref().and_then(|h| h.admin_tokens_file.as_deref()) {
            tokens.read(file, Caller::Admin)?;
        }
        for tenant in &config.tenants {
            if let Some(file) = &tenant.api_tokens_file {
                tokens.read(file, Caller::Tenant(tenant.id.clone()))?;
            }
        }
        Ok(tokens)
    }

    fn read(&mut self, file: &Path, caller: Caller) -> Result<(), TokenError> {
        let path = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| TokenError::Read {
            path: path.clone(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokenError::TooShort {
                    path,
                    line: i + 1,
                    len: token.len(),
                });
            }
            self.known.push((hash(token), caller.clone()));
        }
        Ok(())
    }

    /// Who `presented` is, if anyone. Every known token is compared, whichever matches.
    pub fn who(&self, presented: &str) -> Option<Caller> {
        self.who_hashed(&hash(presented))
    }

    /// Who the token of SHA-256 `hashed` is, if it is still in force.
    pub fn who_hashed(&self, hashed: &[u8; 32]) -> Option<Caller> {
        let mut found = None;
        for (known, caller) in &self.known {
            if bool::from(known.ct_eq(hashed)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// A token's SHA-256, as kept in memory (and in a console session, to revoke it with the token).
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: 32 random bytes, URL-safe base64 (43 characters).
pub fn new_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_known_by_their_hash_and_short_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.tokens");
        let t = new_token();
        std::fs::write(&admin, format!("# ops\n\n{t}\n")).unwrap();
        let mut tokens = Tokens::default();
        tokens.read(&admin, Caller::Admin).unwrap();
        assert_eq!(tokens.who(&t), Some(Caller::Admin));
        assert_eq!(tokens.who(&t[1..]), None);
        assert_eq!(tokens.who(""), None);
        std::fs::write(&admin, "short\n").unwrap();
        let e = tokens.read(&admin, Caller::Admin).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("at least 20"), "{e}");
    }
}
