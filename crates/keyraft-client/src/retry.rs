//! The retry budget and the backoff schedule (see [`RetryPolicy`] for the why).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::options::RetryPolicy;

/// A token bucket shared by every call of one client.
pub(crate) struct RetryBudget {
    ratio: f64,
    floor_per_second: f64,
    max: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub(crate) fn new(policy: &RetryPolicy) -> RetryBudget {
        let max = policy.budget_max.max(0.0);
        RetryBudget {
            ratio: policy.budget_ratio.max(0.0),
            floor_per_second: policy.budget_floor_per_second.max(0.0),
            max,
            state: Mutex::new((max, Instant::now())),
        }
    }

    fn with<T>(&self, now: Instant, f: impl FnOnce(&mut f64) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (balance, at) = &mut *state;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *balance = (*balance + elapsed * self.floor_per_second).min(self.max);
        *at = now.max(*at);
        f(balance)
    }

    /// A call starts: it earns a fraction of a retry.
    pub(crate) fn deposit(&self) {
        self.deposit_at(Instant::now())
    }

    fn deposit_at(&self, now: Instant) {
        let (ratio, max) = (self.ratio, self.max);
        self.with(now, |b| *b = (*b + ratio).min(max));
    }

    /// Takes a token for one retry, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    fn withdraw_at(&self, now: Instant) -> bool {
        self.with(now, |b| {
            if *b >= 1.0 {
                *b -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// The tokens held now.
    pub(crate) fn balance(&self) -> f64 {
        self.with(Instant::now(), |b| *b)
    }
}

/// The wait before the next attempt: between half of `backoff` and all of it.
pub(crate) fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let extra = rand::thread_rng().gen_range(0..=half.as_micros() as u64);
    half + Duration::from_micros(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ratio: f64, floor: f64, max: f64) -> RetryPolicy {
        RetryPolicy {
            budget_ratio: ratio,
            budget_floor_per_second: floor,
            budget_max: max,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn retries_are_bounded_by_the_ratio_once_the_start_balance_is_spent() {
        let budget = RetryBudget::new(&policy(0.2, 0.0, 10.0));
        let now = Instant::now();
        let spent = (0..10).filter(|_| budget.withdraw_at(now)).count();
        assert_eq!(spent, 10);
        assert!(!budget.withdraw_at(now));
        // 1000 calls, each wanting a retry: about 200 get one.
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit_at(now);
            if budget.withdraw_at(now) {
                retries += 1;
            }
        }
        assert!((195..=200).contains(&retries), "{retries}");
    }

    #[test]
    fn the_floor_refills_over_time_up_to_the_cap() {
        let budget = RetryBudget::new(&policy(0.0, 10.0, 5.0));
        let t0 = Instant::now();
        while budget.withdraw_at(t0) {}
        assert!(!budget.withdraw_at(t0));
        let t1 = t0 + Duration::from_millis(300);
        assert!(budget.withdraw_at(t1));
        assert!(budget.withdraw_at(t1));
        assert!(budget.withdraw_at(t1));
        assert!(!budget.withdraw_at(t1));
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| budget.withdraw_at(t2)).count(), 5);
    }

    #[test]
    fn no_budget_means_no_retries() {
        let budget = RetryBudget::new(&RetryPolicy::none());
        budget.deposit();
        assert!(!budget.withdraw());
        assert_eq!(budget.balance(), 0.0);
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }
}
