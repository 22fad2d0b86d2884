//! Penalties for sources whose connections never log in, after OpenSSH's `PerSourcePenalties`.
//!
//! Each such connection pushes its source's penalty further into the future: by [`NO_AUTH`] for
//! one that closes without trying to log in, by [`GRACE_EXCEEDED`] for one that sits out the
//! login grace time. A source whose penalty runs more than [`THRESHOLD`] ahead is refused until
//! it has run down below it (at most [`MAX`] ahead). A load balancer's health check that connects
//! and closes every few seconds never builds one up; a scanner holding idle connections is
//! refused after two of them. Failed logins have their own rule (`max_auth_failures`).
//! Sources listed in `sftp.penalty_exempt` are never penalised. IPv6 sources count per /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::addresses::AddressList;

/// A connection that ended without trying to log in.
pub const NO_AUTH: Duration = Duration::from_secs(1);
/// A connection dropped at the end of the login grace time.
pub const GRACE_EXCEEDED: Duration = Duration::from_secs(10);
/// How far ahead a source's penalty may run before it is refused.
pub const THRESHOLD: Duration = Duration::from_secs(15);
/// How far ahead a penalty can ever run.
pub const MAX: Duration = Duration::from_secs(600);

/// Sources kept track of at most; past it, those whose penalty has run down are forgotten.
const TRACKED: usize = 10_000;

/// How a connection that never logged in ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLogin {
    /// It closed (or the handshake failed) without trying.
    Closed,
    /// It was dropped at the end of the login grace time.
    GraceExceeded,
}

pub struct Penalties {
    exempt: AddressList,
    until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Penalties {
    pub fn new(exempt: AddressList) -> Penalties {
        Penalties {
            exempt,
            until: Mutex::default(),
        }
    }

    /// Records a connection from `ip` that never logged in; returns whether the source is now
    /// refused.
    pub fn penalise(&self, ip: IpAddr, how: NoLogin) -> bool {
        if self.exempt.matches(ip) {
            return false;
        }
        let now = Instant::now();
        let add = match how {
            NoLogin::Closed => NO_AUTH,
            NoLogin::GraceExceeded => GRACE_EXCEEDED,
        };
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.len() >= TRACKED {
            until.retain(|_, u| *u > now);
        }
        let entry = until.entry(crate::ingress::bans::source_of(ip)).or_insert(now);
        *entry = ((*entry).max(now) + add).min(now + MAX);
        *entry > now + THRESHOLD
    }

    /// Whether connections from `ip` are refused now.
    pub fn refuses(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .get(&crate::ingress::bans::source_of(ip))
            .is_some_and(|u| *u > now + THRESHOLD)
    }

    /// A login from `ip` went through: its penalty is forgiven.
    pub fn forgive(&self, ip: IpAddr) {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&crate::ingress::bans::source_of(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_penalised_and_health_checks_are_not() {
        let p = Penalties::new(AddressList::parse(&["10.9.0.0/16".into()]).unwrap());
        let scanner: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!p.penalise(scanner, NoLogin::GraceExceeded));
        assert!(!p.refuses(scanner));
        assert!(
            p.penalise(scanner, NoLogin::GraceExceeded),
            "two idle connections: 20 s ahead"
        );
        assert!(p.refuses(scanner));
        // The same /64 is one source in IPv6.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff".parse().unwrap();
        p.penalise(a, NoLogin::GraceExceeded);
        p.penalise(b, NoLogin::GraceExceeded);
        assert!(p.refuses("2001:db8::42".parse().unwrap()));
        assert!(!p.refuses("2001:db8:0:1::42".parse().unwrap()));
        // Fifteen quick closes stay within the threshold; an exempt source is never refused.
        let check: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..14 {
            assert!(!p.penalise(check, NoLogin::Closed));
        }
        let lb: IpAddr = "10.9.3.4".parse().unwrap();
        for _ in 0..10 {
            assert!(!p.penalise(lb, NoLogin::GraceExceeded));
        }
        assert!(!p.refuses(lb));
        p.forgive(scanner);
        assert!(!p.refuses(scanner));
    }
}
