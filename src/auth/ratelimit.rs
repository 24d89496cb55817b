//! Password-guess throttling: failed logins and wrong `old_password`s, in three bounded
//! in-memory tables.
//!
//! * **Pairs** (client address, account): after `max_failures` failures within `window`
//!   (counted from the first), the pair is refused until that window ends. Keying on both
//!   means an attacker elsewhere cannot lock a user out, and one address cannot spray one
//!   account.
//! * **Accounts**: failures of one account from every address, forgotten `account_window`
//!   after the latest. Past `account_max_failures`, an address not known for the account
//!   gets one attempt per delay: 1 s after that failure, doubling with each further one, at
//!   most `account_max_delay`. The attempt a delay admits reserves it, so concurrent guesses
//!   from many addresses cannot share one delay.
//! * **Known addresses**: per account, the last [`KNOWN_PER_ACCOUNT`] addresses that proved
//!   the password (a login, or a right `old_password`). They are not held to the per-account
//!   delay (the pair limit still applies), so guessing spread over many addresses cannot
//!   lock the real user out. Kept in memory only: the counts they bypass are in memory too
//!   and start from nothing after a restart, and the first success after it teaches the
//!   address again. A password change forgets them (the API then teaches the address of a
//!   user who changed their own password again).
//!
//! Accounts are keyed by the SHA-256 of the username, so an entry has the same small size
//! whatever a client sends. Every table has a cap; expired entries are swept by age (at
//! least once per `window` while requests come), and a full table drops its least valuable
//! sixteenth first: entries not locked or delayed, oldest first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// An account's key: the SHA-256 of its username.
pub type AccountKey = [u8; 32];

pub fn account_key(username: &str) -> AccountKey {
    Sha256::digest(username.as_bytes()).into()
}

/// (client address, account) pairs kept (about 2.6 MiB at the cap).
pub const MAX_PAIRS: usize = 16_384;
/// Accounts with failures kept (about 2.4 MiB at the cap).
pub const MAX_ACCOUNTS: usize = 16_384;
/// Accounts whose known addresses are kept (about 1.2 MiB at the cap).
pub const MAX_KNOWN_ACCOUNTS: usize = 4_096;
/// Known addresses kept per account, the most recent ones.
pub const KNOWN_PER_ACCOUNT: usize = 8;
/// An address that has not proved the password for this long is no longer known.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest time between two sweeps of expired entries (shorter when `window` is).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The configured limits (`auth.*` keys).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Failures allowed per (address, account) within `window` (0 counts as 1).
    pub max_failures: u32,
    pub window: Duration,
    /// Failures of one account from every address before unknown addresses are delayed
    /// (0: no per-account ceiling).
    pub account_max_failures: u32,
    /// An account's failures are forgotten this long after its latest one.
    pub account_window: Duration,
    /// The longest per-account delay.
    pub account_max_delay: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Caps {
    pairs: usize,
    accounts: usize,
    known: usize,
}

const CAPS: Caps = Caps {
    pairs: MAX_PAIRS,
    accounts: MAX_ACCOUNTS,
    known: MAX_KNOWN_ACCOUNTS,
};

type PairKey = (Option<IpAddr>, AccountKey);

struct Pair {
    started: Instant,
    failures: u32,
}

struct Account {
    last_failure: Instant,
    failures: u32,
    /// Before this, an unknown address is refused (once past the ceiling).
    next_at: Instant,
}

struct Known {
    /// Most recent first.
    addrs: Vec<Option<IpAddr>>,
    last: Instant,
}

/// A map with a cap.
struct Table<K, V> {
    map: HashMap<K, V>,
    cap: usize,
}

impl<K: Eq + Hash + Clone, V> Table<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// Drops the entries that are no longer `live`, and gives memory back when most of the
    /// table is empty.
    fn sweep(&mut self, live: impl Fn(&V) -> bool) {
        self.map.retain(|_, v| live(v));
        if self.map.capacity() > 64 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to(self.map.len() * 2);
        }
    }

    /// Makes room for one more entry: expired entries go first, then the lowest-ranked
    /// sixteenth of the cap.
    fn make_room<R: Ord>(&mut self, live: impl Fn(&V) -> bool, rank: impl Fn(&V) -> R) {
        if self.map.len() < self.cap {
            return;
        }
        self.sweep(live);
        if self.map.len() < self.cap {
            return;
        }
        let batch = (self.cap / 16).clamp(1, self.map.len());
        let mut ranked: Vec<(R, K)> = self.map.iter().map(|(k, v)| (rank(v), k.clone())).collect();
        ranked.select_nth_unstable_by(batch - 1, |a, b| a.0.cmp(&b.0));
        for (_, k) in ranked.into_iter().take(batch) {
            self.map.remove(&k);
        }
    }
}

struct State {
    pairs: Table<PairKey, Pair>,
    accounts: Table<AccountKey, Account>,
    known: Table<AccountKey, Known>,
    swept: Instant,
}

/// One attempt the limiter admitted; give it back with its outcome
/// ([`LoginLimiter::failed`], [`LoginLimiter::succeeded`]).
#[derive(Debug)]
pub struct Attempt {
    ip: Option<IpAddr>,
    account: AccountKey,
    /// It holds the current per-account delay slot.
    reserved: bool,
}

pub struct LoginLimiter {
    limits: Limits,
    state: Mutex<State>,
}

/// Whole seconds to wait, rounded up, at least 1.
fn secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl LoginLimiter {
    pub fn new(limits: Limits) -> Self {
        Self::with_caps(limits, CAPS)
    }

    fn with_caps(mut limits: Limits, caps: Caps) -> Self {
        limits.max_failures = limits.max_failures.max(1);
        let now = Instant::now();
        Self {
            limits,
            state: Mutex::new(State {
                pairs: Table::new(caps.pairs),
                accounts: Table::new(caps.accounts),
                known: Table::new(caps.known),
                swept: now,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an attempt on `username`'s password from `ip`, or `Err(seconds to wait)`.
    pub fn admit(&self, ip: Option<IpAddr>, username: &str) -> Result<Attempt, u64> {
        self.admit_at(ip, username, Instant::now())
    }

    /// Checks an admitted attempt again right before its password is verified (it may have
    /// queued behind others meanwhile); `Err(seconds to wait)` when it may no longer go on.
    pub fn readmit(&self, attempt: &mut Attempt) -> Result<(), u64> {
        self.readmit_at(attempt, Instant::now())
    }

    /// The password was wrong.
    pub fn failed(&self, attempt: Attempt) {
        self.failed_at(&attempt, Instant::now());
    }

    /// The password was right: the pair's count is cleared and the address becomes known
    /// for the account. The account's count stays (an attacker elsewhere keeps their delay).
    pub fn succeeded(&self, attempt: Attempt) {
        self.succeeded_at(&attempt, Instant::now());
    }

    /// The account's password changed (or it was deleted): no address is known for it.
    pub fn forget_known(&self, username: &str) {
        self.lock().known.map.remove(&account_key(username));
    }

    fn admit_at(&self, ip: Option<IpAddr>, username: &str, now: Instant) -> Result<Attempt, u64> {
        let mut attempt = Attempt {
            ip,
            account: account_key(username),
            reserved: false,
        };
        self.readmit_at(&mut attempt, now)?;
        Ok(attempt)
    }

    fn readmit_at(&self, attempt: &mut Attempt, now: Instant) -> Result<(), u64> {
        let l = &self.limits;
        let mut guard = self.lock();
        let s = &mut *guard;
        self.sweep_if_due(s, now);
        if let Some(p) = s.pairs.map.get(&(attempt.ip, attempt.account))
            && p.failures >= l.max_failures
        {
            let elapsed = now.saturating_duration_since(p.started);
            if elapsed < l.window {
                return Err(secs(l.window - elapsed));
            }
        }
        if attempt.reserved || l.account_max_failures == 0 {
            return Ok(());
        }
        let Some(account) = s.accounts.map.get_mut(&attempt.account) else {
            return Ok(());
        };
        if !self.account_live(account, now) || account.failures < l.account_max_failures {
            return Ok(());
        }
        if s.known.map.get(&attempt.account).is_some_and(|k| {
            now.saturating_duration_since(k.last) < KNOWN_FOR && k.addrs.contains(&attempt.ip)
        }) {
            return Ok(());
        }
        if now < account.next_at {
            return Err(secs(account.next_at - now));
        }
        account.next_at = now + self.delay(account.failures);
        attempt.reserved = true;
        Ok(())
    }

    fn failed_at(&self, attempt: &Attempt, now: Instant) {
        let l = &self.limits;
        let mut guard = self.lock();
        let s = &mut *guard;
        self.sweep_if_due(s, now);
        let key = (attempt.ip, attempt.account);
        if !s.pairs.map.contains_key(&key) {
            s.pairs.make_room(
                |p| self.pair_live(p, now),
                |p| (p.failures >= l.max_failures, p.started),
            );
        }
        let p = s.pairs.map.entry(key).or_insert(Pair {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(p.started) >= l.window {
            p.started = now;
            p.failures = 0;
        }
        p.failures = p.failures.saturating_add(1);

        if l.account_max_failures == 0 {
            return;
        }
        if !s.accounts.map.contains_key(&attempt.account) {
            s.accounts.make_room(
                |a| self.account_live(a, now),
                |a| (a.failures >= l.account_max_failures, a.last_failure),
            );
        }
        let a = s.accounts.map.entry(attempt.account).or_insert(Account {
            last_failure: now,
            failures: 0,
            next_at: now,
        });
        if !self.account_live(a, now) {
            a.failures = 0;
            a.next_at = now;
        }
        a.failures = a.failures.saturating_add(1);
        a.last_failure = now;
        if a.failures >= l.account_max_failures {
            a.next_at = a.next_at.max(now + self.delay(a.failures));
        }
    }

    fn succeeded_at(&self, attempt: &Attempt, now: Instant) {
        let mut guard = self.lock();
        let s = &mut *guard;
        self.sweep_if_due(s, now);
        s.pairs.map.remove(&(attempt.ip, attempt.account));
        if !s.known.map.contains_key(&attempt.account) {
            s.known.make_room(|k| known_live(k, now), |k| k.last);
        }
        let k = s.known.map.entry(attempt.account).or_insert(Known {
            addrs: Vec::new(),
            last: now,
        });
        k.addrs.retain(|a| *a != attempt.ip);
        k.addrs.insert(0, attempt.ip);
        k.addrs.truncate(KNOWN_PER_ACCOUNT);
        k.last = now;
    }

    /// The delay after an account's `failures`-th failure (at or past the ceiling): 1 s,
    /// doubling with each further failure, at most `account_max_delay`.
    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures
            .saturating_sub(self.limits.account_max_failures)
            .min(32);
        Duration::from_secs(1u64 << doublings).min(self.limits.account_max_delay)
    }

    fn pair_live(&self, p: &Pair, now: Instant) -> bool {
        now.saturating_duration_since(p.started) < self.limits.window
    }

    fn account_live(&self, a: &Account, now: Instant) -> bool {
        now.saturating_duration_since(a.last_failure) < self.limits.account_window
    }

    /// Sweeps expired entries when the last sweep is older than `window` (at most a minute).
    fn sweep_if_due(&self, s: &mut State, now: Instant) {
        let every = self
            .limits
            .window
            .clamp(Duration::from_secs(1), SWEEP_EVERY);
        if now.saturating_duration_since(s.swept) < every {
            return;
        }
        s.swept = now;
        s.pairs.sweep(|p| self.pair_live(p, now));
        s.accounts.sweep(|a| self.account_live(a, now));
        s.known.sweep(|k| known_live(k, now));
    }

    /// Entries held: (pairs, accounts, accounts with known addresses).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.pairs.map.len(), s.accounts.map.len(), s.known.map.len())
    }
}

fn known_live(k: &Known, now: Instant) -> bool {
    now.saturating_duration_since(k.last) < KNOWN_FOR
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn limits(max: u32, window: u64) -> Limits {
        Limits {
            max_failures: max,
            window: Duration::from_secs(window),
            account_max_failures: 0,
            account_window: Duration::from_secs(3600),
            account_max_delay: Duration::from_secs(900),
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn fail(l: &LoginLimiter, ip: Option<IpAddr>, user: &str, now: Instant) {
        let a = l.admit_at(ip, user, now).unwrap();
        l.failed_at(&a, now);
    }

    #[test]
    fn locks_after_max_failures_per_pair_and_expires() {
        let l = LoginLimiter::new(limits(3, 60));
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&l, ip(1), "admin", t0);
        }
        assert_eq!(l.admit_at(ip(1), "admin", t0).unwrap_err(), 60);
        assert_eq!(l.admit_at(ip(1), "admin", t0 + 30 * S).unwrap_err(), 30);
        // Another user from the same address, and the same user elsewhere, are unaffected.
        assert!(l.admit_at(ip(1), "bob", t0).is_ok());
        assert!(l.admit_at(ip(2), "admin", t0).is_ok());
        // The window ends.
        assert!(l.admit_at(ip(1), "admin", t0 + 61 * S).is_ok());
    }

    #[test]
    fn success_clears_the_pair_count() {
        let l = LoginLimiter::new(limits(2, 60));
        let t0 = Instant::now();
        fail(&l, None, "a", t0);
        let a = l.admit_at(None, "a", t0).unwrap();
        l.succeeded_at(&a, t0);
        fail(&l, None, "a", t0);
        assert!(l.admit_at(None, "a", t0).is_ok());
    }

    #[test]
    fn a_queued_attempt_is_refused_when_the_pair_locked_meanwhile() {
        let l = LoginLimiter::new(limits(1, 60));
        let t0 = Instant::now();
        let mut queued = l.admit_at(ip(1), "a", t0).unwrap();
        fail(&l, ip(1), "a", t0);
        assert_eq!(l.readmit_at(&mut queued, t0), Err(60));
    }

    /// The memory figures above (and in docs/limits.md) assume entries this small: a
    /// table's buckets are a power of two at least 8/7 of the cap, each entry plus a byte.
    #[test]
    fn entries_are_small_whatever_the_username() {
        assert!(std::mem::size_of::<(PairKey, Pair)>() <= 80);
        assert!(std::mem::size_of::<(AccountKey, Account)>() <= 72);
        assert!(std::mem::size_of::<(AccountKey, Known)>() <= 72);
    }

    #[test]
    fn keys_are_fixed_size_digests() {
        let long = "x".repeat(1 << 20);
        assert_eq!(account_key(&long).len(), 32);
        assert_ne!(account_key(&long), account_key(&long[1..]));
        assert_eq!(account_key("admin"), account_key("admin"));
    }

    #[test]
    fn distinct_keys_stay_within_the_cap_and_the_oldest_go_first() {
        let mut lim = limits(5, 60);
        lim.account_max_failures = 20;
        let caps = Caps {
            pairs: 64,
            accounts: 64,
            known: 8,
        };
        let l = LoginLimiter::with_caps(lim, caps);
        let t0 = Instant::now();
        // Within one window (no entry expires), 10,000 distinct usernames.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(u64::from(i));
            fail(&l, ip(1), &format!("user{i}"), now);
            let (pairs, accounts, _) = l.sizes();
            assert!(pairs <= 64 && accounts <= 64, "{pairs} pairs, {accounts}");
        }
        let s = l.lock();
        // The newest are kept, the oldest were evicted.
        assert!(s.pairs.map.contains_key(&(ip(1), account_key("user9999"))));
        assert!(s.accounts.map.contains_key(&account_key("user9999")));
        assert!(!s.pairs.map.contains_key(&(ip(1), account_key("user0"))));
        assert!(!s.accounts.map.contains_key(&account_key("user0")));
        drop(s);
        // Known addresses: bounded per account and in all.
        for i in 0..100u8 {
            for user in 0..20 {
                let a = l.admit_at(ip(i), &format!("u{user}"), t0).unwrap();
                l.succeeded_at(&a, t0);
            }
        }
        let s = l.lock();
        assert!(s.known.map.len() <= 8);
        assert!(
            s.known
                .map
                .values()
                .all(|k| k.addrs.len() <= KNOWN_PER_ACCOUNT)
        );
    }

    #[test]
    fn locked_pairs_and_delayed_accounts_outlast_a_flood_of_single_failures() {
        let mut lim = limits(2, 60);
        lim.account_max_failures = 3;
        let caps = Caps {
            pairs: 32,
            accounts: 32,
            known: 8,
        };
        let l = LoginLimiter::with_caps(lim, caps);
        let t0 = Instant::now();
        // ip(0) is locked for victim, and victim is past its ceiling.
        fail(&l, ip(0), "victim", t0);
        fail(&l, ip(0), "victim", t0);
        fail(&l, ip(1), "victim", t0);
        for i in 0..1000u32 {
            fail(
                &l,
                ip(9),
                &format!("noise{i}"),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        let later = t0 + S + Duration::from_millis(500);
        assert!(
            l.admit_at(ip(0), "victim", later).is_err(),
            "pair still locked"
        );
        assert!(
            l.admit_at(ip(50), "victim", t0 + Duration::from_millis(10))
                .is_err(),
            "account still delayed"
        );
    }

    #[test]
    fn expired_entries_are_swept_and_memory_returns() {
        let mut lim = limits(5, 2);
        lim.account_max_failures = 20;
        lim.account_window = 10 * S;
        let l = LoginLimiter::new(lim);
        let t0 = Instant::now();
        for i in 0..5_000u32 {
            fail(&l, ip(1), &format!("user{i}"), t0);
        }
        assert_eq!(l.sizes(), (5_000, 5_000, 0));
        // After the pair window, the next call sweeps the pairs; after the account window,
        // the accounts.
        assert!(l.admit_at(ip(1), "x", t0 + 3 * S).is_ok());
        assert_eq!(l.sizes(), (0, 5_000, 0));
        assert!(l.admit_at(ip(1), "x", t0 + 11 * S).is_ok());
        assert_eq!(l.sizes(), (0, 0, 0));
        let s = l.lock();
        assert!(s.pairs.map.capacity() < 1_000, "{}", s.pairs.map.capacity());
        assert!(s.accounts.map.capacity() < 1_000);
    }

    #[test]
    fn the_default_caps_hold() {
        let mut lim = limits(5, 60);
        lim.account_max_failures = 20;
        let l = LoginLimiter::new(lim);
        let t0 = Instant::now();
        for i in 0..(MAX_PAIRS as u32 * 3) {
            let addr = Some(IpAddr::from((i % 251 + 1).to_be_bytes()));
            fail(&l, addr, &format!("user{i}"), t0);
        }
        let (pairs, accounts, _) = l.sizes();
        assert!(pairs <= MAX_PAIRS, "{pairs}");
        assert!(accounts <= MAX_ACCOUNTS, "{accounts}");
    }

    fn account_limits() -> Limits {
        Limits {
            max_failures: 5,
            window: Duration::from_secs(60),
            account_max_failures: 10,
            account_window: Duration::from_secs(3600),
            account_max_delay: Duration::from_secs(8),
        }
    }

    #[test]
    fn past_the_account_ceiling_unknown_addresses_wait_an_exponential_delay() {
        let l = LoginLimiter::new(account_limits());
        let t0 = Instant::now();
        // The real user logged in from ip(200) before.
        let a = l.admit_at(ip(200), "victim", t0).unwrap();
        l.succeeded_at(&a, t0);
        // 10 failures spread over 10 addresses reach the ceiling.
        for i in 0..10 {
            fail(&l, ip(i), "victim", t0);
        }
        // An 11th address, even with the right password, waits 1 s.
        assert_eq!(l.admit_at(ip(100), "victim", t0).unwrap_err(), 1);
        // The known address goes through at once.
        assert!(l.admit_at(ip(200), "victim", t0).is_ok());
        // After 1 s one attempt is admitted; it holds the slot, others wait.
        let t1 = t0 + S;
        let mut slot = l.admit_at(ip(101), "victim", t1).unwrap();
        assert!(l.admit_at(ip(102), "victim", t1).is_err());
        // Checked again when it reaches a hashing slot, it still goes on.
        assert!(l.readmit_at(&mut slot, t1).is_ok());
        l.failed_at(&slot, t1);
        // 11 failures: the next waits 2 s; then 4 s, then 8 s (the cap), and 8 s again.
        let mut t = t1;
        for (n, expected) in [2, 4, 8, 8].into_iter().enumerate() {
            let addr = ip(110 + u8::try_from(n).unwrap());
            assert_eq!(l.admit_at(addr, "victim", t).unwrap_err(), expected);
            t += Duration::from_secs(expected);
            fail(&l, addr, "victim", t);
        }
        // The pair limit still applies to the known address.
        for _ in 0..5 {
            fail(&l, ip(200), "victim", t);
        }
        assert_eq!(l.admit_at(ip(200), "victim", t).unwrap_err(), 60);
        // An hour without failures: the account's count is forgotten.
        let quiet = t + Duration::from_secs(3600);
        assert!(l.admit_at(ip(105), "victim", quiet).is_ok());
        // Other accounts were never affected.
        assert!(l.admit_at(ip(105), "other", t).is_ok());
    }

    #[test]
    fn a_password_change_forgets_the_known_addresses() {
        let l = LoginLimiter::new(account_limits());
        let t0 = Instant::now();
        let a = l.admit_at(ip(200), "victim", t0).unwrap();
        l.succeeded_at(&a, t0);
        for i in 0..10 {
            fail(&l, ip(i), "victim", t0);
        }
        assert!(l.admit_at(ip(200), "victim", t0).is_ok());
        l.forget_known("victim");
        assert!(l.admit_at(ip(200), "victim", t0).is_err());
    }

    #[test]
    fn no_account_ceiling_when_it_is_off() {
        let mut lim = account_limits();
        lim.account_max_failures = 0;
        let l = LoginLimiter::new(lim);
        let t0 = Instant::now();
        for i in 0..100 {
            fail(&l, ip(i), "victim", t0);
        }
        assert!(l.admit_at(ip(150), "victim", t0).is_ok());
        assert_eq!(l.sizes().1, 0);
    }
}
