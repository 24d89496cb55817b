//! Failed-login throttling keyed on (client IP, username): after `max_failures` failures
//! within `window`, that pair is refused until the window that began with the first failure
//! ends. Keying on both means an attacker elsewhere cannot lock a user out, and one address
//! cannot spray one account.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    state: Mutex<HashMap<(Option<IpAddr>, String), Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the pair is locked out.
    pub fn check(&self, ip: Option<IpAddr>, username: &str) -> Result<(), u64> {
        self.check_at(ip, username, Instant::now())
    }

    fn check_at(&self, ip: Option<IpAddr>, username: &str, now: Instant) -> Result<(), u64> {
        let map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(ip, username.to_owned())) {
            Some(w) if w.failures >= self.max_failures => {
                let elapsed = now.duration_since(w.started);
                if elapsed < self.window {
                    Err((self.window - elapsed).as_secs().max(1))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, ip: Option<IpAddr>, username: &str) {
        self.record_failure_at(ip, username, Instant::now());
    }

    fn record_failure_at(&self, ip: Option<IpAddr>, username: &str, now: Instant) {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, w| now.duration_since(w.started) < window);
        }
        let w = map.entry((ip, username.to_owned())).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= self.window {
            w.started = now;
            w.failures = 0;
        }
        w.failures += 1;
    }

    pub fn record_success(&self, ip: Option<IpAddr>, username: &str) {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(ip, username.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_per_pair_and_expires() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: Option<IpAddr> = "10.0.0.1".parse().ok();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(ip, "admin", t0).is_ok());
            l.record_failure_at(ip, "admin", t0);
        }
        assert_eq!(l.check_at(ip, "admin", t0), Err(60));
        // Another user from the same address, and the same user elsewhere, are unaffected.
        assert!(l.check_at(ip, "bob", t0).is_ok());
        assert!(l.check_at("10.0.0.2".parse().ok(), "admin", t0).is_ok());
        // The window ends.
        assert!(
            l.check_at(ip, "admin", t0 + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn success_clears_the_count() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        l.record_failure(None, "a");
        l.record_success(None, "a");
        l.record_failure(None, "a");
        assert!(l.check(None, "a").is_ok());
    }
}
