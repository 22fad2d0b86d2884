//! Retry delays shared by everything that retries: forwarding to a sink, polling FTP sources.

use std::time::Duration;

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
}
