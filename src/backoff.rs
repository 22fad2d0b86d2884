//! Retrying, shared by everything that retries (intake, forwarding to a sink, reports, polling
//! FTP sources): whether a retry can help ([`Retry`]), and how long to wait before it.

use std::time::Duration;

/// Whether trying the same thing again later can succeed. Each stage's error type answers it,
/// and the stage decides from that one answer: back off and try again, or give up (`failed`,
/// reported, or left until the configuration changes).
pub trait Retry {
    fn retry_helps(&self) -> bool;
}

/// Local I/O: a full disk, a busy device or a dropped connection may clear; a refused
/// permission, a path that is not there, a name or an argument the system will not take, or a
/// read-only file system will not, however often it is tried.
impl Retry for std::io::Error {
    fn retry_helps(&self) -> bool {
        use std::io::ErrorKind::*;
        !matches!(
            self.kind(),
            PermissionDenied | NotFound | InvalidInput | InvalidFilename | ReadOnlyFilesystem
        )
    }
}

/// Exponential backoff with jitter: `min * 2^(attempt-1)`, capped at `max`, then a random point
/// in its upper half so that many conversations failing together do not retry in lockstep.
pub fn exponential(attempt: i64, min: Duration, max: Duration) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let d = min.saturating_mul(2u32.saturating_pow(exp)).min(max);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

/// `d` moved by up to ±10 %, so that pollers started together drift apart.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(600));
        for attempt in 1..40 {
            let d = exponential(attempt, min, max);
            let full = min
                .saturating_mul(2u32.saturating_pow((attempt - 1).min(30) as u32))
                .min(max);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
        assert!(exponential(30, min, max) <= max);
    }

    #[test]
    fn io_errors_no_retry_can_mend_say_so() {
        let helps = |code| std::io::Error::from_raw_os_error(code).retry_helps();
        for code in [
            libc::EACCES,
            libc::EPERM,
            libc::ENOENT,
            libc::EINVAL,
            libc::ENAMETOOLONG,
            libc::EROFS,
        ] {
            assert!(!helps(code), "{}", std::io::Error::from_raw_os_error(code));
        }
        for code in [
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EIO,
            libc::EAGAIN,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
        ] {
            assert!(helps(code), "{}", std::io::Error::from_raw_os_error(code));
        }
        assert!(std::io::Error::other("a hiccup").retry_helps());
    }
}
