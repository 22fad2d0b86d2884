//! What an operator reads when a client cannot connect: a failed handshake or login, logged at
//! INFO with the peer, the reason and what each side offered (as sshd's "Unable to negotiate
//! with …: no matching host key type found. Their offer: …").
//!
//! russh reports a failed negotiation as an error of the connection (at debug level only); the
//! listener hands it here when the connection ends. Login attempts are collected by the handler
//! as they are refused and logged once, when a connection that never logged in ends.

use std::net::SocketAddr;

use russh::AlgorithmKind;

/// Logs how a connection ended: at INFO if it ended in an error before any login was tried (a
/// handshake that failed, a peer that went away), at debug otherwise.
pub fn log_end(peer: SocketAddr, result: Result<(), russh::Error>, tried_login: bool) {
    match result {
        Ok(()) => tracing::debug!(peer = %peer, "ssh connection closed"),
        Err(e) if tried_login => tracing::debug!(peer = %peer, error = %e, "ssh connection ended"),
        // A peer that went away (a port probe, a client that gave up) is not a failed handshake.
        Err(russh::Error::IO(e)) => tracing::info!(peer = %peer, "ssh connection ended before login: {e}"),
        Err(e) => tracing::info!(peer = %peer, "ssh handshake failed: {}", describe(&e)),
    }
}

/// A handshake error in an operator's words; a failed negotiation names both sides' offers.
pub fn describe(e: &russh::Error) -> String {
    match e {
        russh::Error::NoCommonAlgo { kind, ours, theirs } => format!(
            "no common {} algorithm: client offered {}; server offers {}",
            kind_name(kind),
            theirs.join(","),
            ours.join(",")
        ),
        other => other.to_string(),
    }
}

fn kind_name(kind: &AlgorithmKind) -> &'static str {
    match kind {
        AlgorithmKind::Kex => "key exchange",
        AlgorithmKind::Key => "host key",
        AlgorithmKind::Cipher => "cipher",
        AlgorithmKind::Mac => "MAC",
        AlgorithmKind::Compression => "compression",
    }
}

/// The login attempts a connection made and had refused, in order.
#[derive(Debug, Default)]
pub struct LoginAttempts {
    user: Option<String>,
    tried: Vec<String>,
    /// A key the handler accepted, whose signature russh then checks on its own: if no login
    /// follows, that signature did not verify.
    accepted: Option<String>,
}

impl LoginAttempts {
    /// Records one refused attempt by `user`: what it tried (a method, a key) and why it failed.
    pub fn refused(&mut self, user: &str, tried: String, reason: &str) {
        self.user = Some(user.to_owned());
        let line = format!("{tried}: {reason}");
        // Clients try a key first unsigned, then signed: one line says it.
        if self.tried.last() != Some(&line) {
            self.tried.push(line);
        }
    }

    /// Records a key of `user`'s that was accepted, before russh checks its signature.
    pub fn accepted(&mut self, user: &str, tried: String) {
        self.user = Some(user.to_owned());
        self.accepted = Some(tried);
    }

    /// Whether the connection tried to log in, and failed, if it ends now without a login.
    pub fn failed(&self) -> bool {
        self.user.is_some()
    }

    /// Logs the attempts of a connection that ended without logging in; nothing if none.
    pub fn log_failed(&mut self, peer: SocketAddr) {
        if let Some(key) = self.accepted.take() {
            self.tried.push(format!(
                "{key}: the key is the tenant's, but its signature did not verify"
            ));
        }
        if let Some(user) = &self.user {
            let accepted: Vec<String> = super::host_keys::ALGORITHMS.iter().map(ToString::to_string).collect();
            tracing::info!(peer = %peer, user = %user,
                "sftp login failed: {}; server accepts publickey ({})",
                self.tried.join("; "), accepted.join(","));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_negotiation_names_both_offers() {
        let e = russh::Error::NoCommonAlgo {
            kind: AlgorithmKind::Key,
            ours: vec!["ssh-ed25519".into(), "rsa-sha2-256".into()],
            theirs: vec!["ssh-rsa".into(), "ecdsa-sha2-nistp256".into()],
        };
        assert_eq!(
            describe(&e),
            "no common host key algorithm: client offered ssh-rsa,ecdsa-sha2-nistp256; \
             server offers ssh-ed25519,rsa-sha2-256"
        );
    }

    #[test]
    fn a_key_tried_unsigned_then_signed_is_one_attempt() {
        let mut a = LoginAttempts::default();
        a.refused("acme", "publickey ssh-ed25519 SHA256:x".into(), "unknown user or key");
        a.refused("acme", "publickey ssh-ed25519 SHA256:x".into(), "unknown user or key");
        a.refused("acme", "password".into(), "public keys only");
        assert_eq!(a.tried.len(), 2);
    }
}
