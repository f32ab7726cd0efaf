//! Rate limits (GCRA via governor), keyed per requester, target, sender or client IP. A refused
//! request gets 429 `throttled` with `Retry-After`. Idle keys are dropped by the sweeper.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

struct Limit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    /// A burst of `burst`, then one more every `period`.
    fn new(burst: u32, period: Duration) -> Limit<K> {
        let quota = Quota::with_period(period)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("non-zero burst"));
        Limit {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::Throttled {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

pub struct RateLimits {
    enabled: bool,
    bundle_pair: Limit<(u64, u64)>,
    bundle_target: Limit<u64>,
    send: Limit<u64>,
    anonymous: Limit<IpAddr>,
    password_check: Limit<u64>,
    attachment_create: Limit<u64>,
}

impl RateLimits {
    /// The defaults of the API: bundles per requester and target 10 then 1/min, per target 100
    /// then 30/min; sends 200 then 20/s per sender; anonymous routes 20 then 1 per 6 s per IP;
    /// `current_password` checks 5 then 1/min per account.
    pub fn new(enabled: bool) -> RateLimits {
        RateLimits {
            enabled,
            bundle_pair: Limit::new(10, Duration::from_secs(60)),
            bundle_target: Limit::new(100, Duration::from_secs(2)),
            send: Limit::new(200, Duration::from_millis(50)),
            anonymous: Limit::new(20, Duration::from_secs(6)),
            password_check: Limit::new(5, Duration::from_secs(60)),
            attachment_create: Limit::new(50, Duration::from_millis(1200)),
        }
    }

    pub fn bundle(&self, requester: u64, target: u64) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        self.bundle_pair.check(&(requester, target))?;
        self.bundle_target.check(&target)
    }

    pub fn send(&self, sender: u64) -> Result<(), ApiError> {
        if self.enabled {
            self.send.check(&sender)?;
        }
        Ok(())
    }

    /// Register, login and password reset share one budget per client IP.
    pub fn anonymous(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match ip {
            Some(ip) if self.enabled => self.anonymous.check(&ip),
            _ => Ok(()),
        }
    }

    /// A `current_password` check by `account` (password change, account deletion). Charged
    /// before the hash, right or wrong, so a burst of guesses is refused without costing one.
    pub fn password_check(&self, account: u64) -> Result<(), ApiError> {
        if self.enabled {
            self.password_check.check(&account)?;
        }
        Ok(())
    }

    /// An upload created by `account`: a burst of 50, then one every 1.2 s.
    pub fn attachment_create(&self, account: u64) -> Result<(), ApiError> {
        if self.enabled {
            self.attachment_create.check(&account)?;
        }
        Ok(())
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    pub fn sweep(&self) {
        self.bundle_pair.sweep();
        self.bundle_target.sweep();
        self.send.sweep();
        self.anonymous.sweep();
        self.password_check.sweep();
        self.attachment_create.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_limit_refuses_after_the_burst_with_a_retry_after() {
        let limits = RateLimits::new(true);
        for _ in 0..10 {
            limits.bundle(1, 2).unwrap();
        }
        match limits.bundle(1, 2) {
            Err(ApiError::Throttled { retry_after_secs }) => assert!(retry_after_secs >= 1),
            other => panic!("expected throttled, got {other:?}"),
        }
        // Another requester still has its own budget.
        limits.bundle(3, 2).unwrap();
    }

    #[test]
    fn password_checks_are_limited_per_account() {
        let limits = RateLimits::new(true);
        for _ in 0..5 {
            limits.password_check(7).unwrap();
        }
        assert!(matches!(
            limits.password_check(7),
            Err(ApiError::Throttled { .. })
        ));
        limits.password_check(8).unwrap();
    }

    #[test]
    fn disabled_limits_never_refuse() {
        let limits = RateLimits::new(false);
        for _ in 0..1000 {
            limits.bundle(1, 2).unwrap();
            limits.anonymous(Some([127, 0, 0, 1].into())).unwrap();
        }
    }
}
