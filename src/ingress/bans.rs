//! Failed logins per source, over SFTP and HTTP alike (one count, one ban): a source that keeps
//! guessing keys or tokens is refused on both doors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins per source (an IPv4 address, or an IPv6 /64, as penalties count them); a source
/// with `max_failures` failed connections within `ban_time` is refused for `ban_time`.
pub struct Bans {
    max_failures: u32,
    ban_time: Duration,
    state: Mutex<HashMap<IpAddr, Failures>>,
}

/// Failed logins of one source: how many, since when, and banned until when.
type Failures = (u32, Instant, Option<Instant>);

/// `[sftp]`'s defaults: 6 failures within 10 minutes ban for 10 minutes.
impl Default for Bans {
    fn default() -> Self {
        Bans::new(6, Duration::from_secs(600))
    }
}

impl Bans {
    pub fn new(max_failures: u32, ban_time: Duration) -> Self {
        Bans {
            max_failures: max_failures.max(1),
            ban_time,
            state: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let source = source_of(ip);
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
        let entry = state.entry(source_of(ip)).or_insert((0, now, None));
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
            .remove(&source_of(ip));
    }
}

/// Where connections come from, for bans, penalties and `max_startups_per_source`: an IPv4 address, or an IPv6
/// /64 (one host's share of a network; per address would let one host take all).
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
