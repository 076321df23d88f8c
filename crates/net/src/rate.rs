//! A token bucket: the one rate limiter behind every quota of the network layer.

use std::time::Instant;

use crate::config::Rate;

/// Holds up to `burst` tokens, refilled at `per_sec`; each admitted event takes one.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(self.rate.per_sec)).min(f64::from(self.rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::new(10, 5), t0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5);
        // 10 per second: 0.5 s later, 5 more (the burst caps it).
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..8).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..8).filter(|_| b.take(t2)).count(), 1);
    }
}
