//! The registry of open HTTP connections behind `http.max_connections` and
//! `http.max_connections_per_ip`. Each connection has a place; when every place is taken, a
//! new connection evicts one that is not producing a response (the idea of sshd's
//! `MaxStartups`), so that connections which hold a place without completing requests
//! cannot keep the daemon full. A connection is producing a response from the moment it has
//! a whole request (or its answer is ready, whichever comes first) until that response has
//! been written, and is never evicted then. The per-address cap refuses at once, without
//! evicting anything.
//!
//! The victim is the least recently active connection (activity: its start, a request
//! arriving, a response finished) of the address holding the most places. Recency alone
//! is not enough: under a flood of reconnecting clients a new connection lives only until
//! `max_connections` newer ones have arrived, which can be shorter than a TLS handshake or
//! a busy client's delay before its request, so an honest client could be pushed out before
//! it has said anything. Taking from the heaviest address first means a flood from a few
//! addresses only evicts itself; a flood from as many addresses as there are places falls
//! back to recency.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Counts the open connections against their caps (0: none) and picks eviction victims.
pub struct Conns {
    total: usize,
    per_ip: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// A logical clock: bumped at every activity, so that older activity has a lower tick.
    clock: u64,
    live: HashMap<u64, Entry>,
    by_ip: HashMap<IpAddr, Address>,
}

struct Entry {
    ip: IpAddr,
    /// The tick of the latest activity.
    last: u64,
    /// Responses in production (more than one on HTTP/2).
    busy: usize,
    evict: Arc<Notify>,
}

/// The connections of one address.
#[derive(Default)]
struct Address {
    places: usize,
    /// `(last, id)` of those not producing a response, least recently active first.
    idle: BTreeSet<(u64, u64)>,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn insert(&mut self, id: u64, ip: IpAddr, evict: Arc<Notify>) {
        let last = self.tick();
        self.live.insert(
            id,
            Entry {
                ip,
                last,
                busy: 0,
                evict,
            },
        );
        let address = self.by_ip.entry(ip).or_default();
        address.places += 1;
        address.idle.insert((last, id));
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.live.remove(&id)?;
        if let Some(address) = self.by_ip.get_mut(&entry.ip) {
            address.places = address.places.saturating_sub(1);
            address.idle.remove(&(entry.last, id));
            if address.places == 0 {
                self.by_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    /// Activity on `id`; `busy` changes its count of responses in production by +1 or -1.
    fn update(&mut self, id: u64, busy: isize, activity: bool) -> bool {
        let tick = if activity { self.tick() } else { 0 };
        let Inner { live, by_ip, .. } = self;
        let Some(e) = live.get_mut(&id) else {
            return false;
        };
        let mut idle = by_ip.get_mut(&e.ip).map(|a| &mut a.idle);
        if e.busy == 0
            && let Some(idle) = idle.as_mut()
        {
            idle.remove(&(e.last, id));
        }
        if activity {
            e.last = tick;
        }
        e.busy = e.busy.saturating_add_signed(busy);
        if e.busy == 0
            && let Some(idle) = idle
        {
            idle.insert((e.last, id));
        }
        true
    }

    /// The least recently active connection not producing a response of the address
    /// holding the most places.
    fn victim(&self) -> Option<u64> {
        self.by_ip
            .values()
            .filter_map(|a| a.idle.first().map(|&(last, id)| (a.places, last, id)))
            .min_by_key(|&(places, last, _)| (std::cmp::Reverse(places), last))
            .map(|(_, _, id)| id)
    }
}

/// Why a new connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address already has `http.max_connections_per_ip` connections.
    PerAddress,
    /// Every place is taken and every holder is producing a response.
    Full,
}

/// An admitted connection, and the address of the one it evicted to get its place.
pub struct Admitted {
    pub conn: Conn,
    pub evicted: Option<IpAddr>,
}

impl Conns {
    pub fn new(total: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            per_ip,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `ip`: refused when its address is at its cap; when
    /// every place is taken, the least recently active connection not producing a response
    /// of the address holding the most places is evicted (told through [`Conn::evicted`])
    /// and loses its place at once; refused when there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let mut inner = self.lock();
        let of_ip = inner.by_ip.get(&ip).map_or(0, |a| a.places);
        if self.per_ip != 0 && of_ip >= self.per_ip {
            return Err(Refused::PerAddress);
        }
        let mut evicted = None;
        if self.total != 0 && inner.live.len() >= self.total {
            let Some(victim) = inner.victim().and_then(|id| inner.remove(id)) else {
                return Err(Refused::Full);
            };
            victim.evict.notify_one();
            evicted = Some(victim.ip);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let evict = Arc::new(Notify::new());
        inner.insert(id, ip, evict.clone());
        Ok(Admitted {
            conn: Conn {
                activity: Activity {
                    id,
                    conns: self.clone(),
                },
                evict,
            },
            evicted,
        })
    }

    /// Connections holding a place.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().live.len()
    }
}

/// One connection's place; released when dropped (or taken away by an eviction).
pub struct Conn {
    activity: Activity,
    evict: Arc<Notify>,
}

impl Conn {
    /// Resolves once a newer connection has evicted this one (at once if it already has).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// What the connection's requests report their activity through.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.activity.conns.lock().remove(self.activity.id);
    }
}

/// Reports a connection's activity; a no-op once the connection has lost its place.
#[derive(Clone)]
pub struct Activity {
    id: u64,
    conns: Arc<Conns>,
}

impl Activity {
    /// Something happened on the connection (a request arrived).
    pub fn touch(&self) {
        self.conns.lock().update(self.id, 0, true);
    }

    /// The connection is producing a response until the guard is dropped (which is
    /// activity too); `None` when it has lost its place already.
    pub fn busy(&self) -> Option<Busy> {
        self.conns.lock().update(self.id, 1, false).then(|| Busy {
            activity: self.clone(),
        })
    }
}

/// A response in production; see [`Activity::busy`].
pub struct Busy {
    activity: Activity,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity
            .conns
            .lock()
            .update(self.activity.id, -1, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn evicted(c: &Conn) -> bool {
        c.evicted().now_or_never().is_some()
    }

    #[test]
    fn a_full_registry_evicts_the_least_recently_active_idle_connection() {
        let conns = Conns::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let first = conns.admit(a).unwrap().conn;
        let second = conns.admit(b).unwrap().conn;
        let third = conns.admit(b).unwrap().conn;
        // The oldest has a request arriving: it is now the most recently active.
        first.activity().touch();
        let fourth = conns.admit(c).unwrap();
        assert_eq!(fourth.evicted, Some(b), "the least recently active goes");
        assert!(evicted(&second) && !evicted(&first) && !evicted(&third));
        assert_eq!(conns.open(), 3, "the victim lost its place at once");
        drop(second);
        assert_eq!(
            conns.open(),
            3,
            "dropping an evicted connection frees nothing more"
        );

        // A connection producing a response is never evicted, however old.
        let busy = third.activity().busy().unwrap();
        let fifth = conns.admit(c).unwrap();
        assert_eq!(fifth.evicted, Some(a), "the busy one is passed over");
        assert!(evicted(&first) && !evicted(&third));
        // Its response finished: that is activity, and it can be evicted again.
        drop(busy);
        let g1 = fourth.conn.activity().busy().unwrap();
        let g2 = fifth.conn.activity().busy().unwrap();
        let sixth = conns.admit(a).unwrap();
        assert_eq!(sixth.evicted, Some(b));
        assert!(evicted(&third));
        drop((g1, g2));
    }

    #[test]
    fn the_address_holding_the_most_places_loses_one_first() {
        let conns = Conns::new(4, 0);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let lone = conns.admit(a).unwrap().conn;
        let flood: Vec<Conn> = (0..3).map(|_| conns.admit(b).unwrap().conn).collect();
        // The lone connection is the least recently active, but its address holds one place
        // and the flood's three: the flood's oldest goes first, then the next.
        let mut newer = Vec::new();
        for victim in &flood[..2] {
            let next = conns.admit(c).unwrap();
            assert_eq!(next.evicted, Some(b));
            assert!(evicted(victim) && !evicted(&lone));
            newer.push(next.conn);
        }
        // a, b and c hold 1, 1 and 2 places: one of c's goes, its least recently active.
        let next = conns.admit(b).unwrap();
        assert_eq!(next.evicted, Some(c));
        assert!(evicted(&newer[0]) && !evicted(&newer[1]) && !evicted(&lone));
        // b holds two again (the flood's last and the newcomer): its older one goes.
        let last = conns.admit(c).unwrap();
        assert_eq!(last.evicted, Some(b));
        assert!(evicted(&flood[2]) && !evicted(&next.conn) && !evicted(&lone));
        // One place per address: plain recency.
        let singles = Conns::new(2, 0);
        let first = singles.admit(a).unwrap().conn;
        let second = singles.admit(b).unwrap().conn;
        first.activity().touch();
        assert_eq!(singles.admit(c).unwrap().evicted, Some(b));
        assert!(evicted(&second) && !evicted(&first));
    }

    impl Inner {
        /// The per-address index agrees with the connections, and the victim is the one a
        /// plain scan of every connection picks.
        fn check(&self) {
            let mut places: HashMap<IpAddr, usize> = HashMap::new();
            for e in self.live.values() {
                *places.entry(e.ip).or_default() += 1;
            }
            assert_eq!(places.len(), self.by_ip.len());
            for (ip, a) in &self.by_ip {
                assert_eq!(Some(&a.places), places.get(ip));
                let idle: BTreeSet<(u64, u64)> = self
                    .live
                    .iter()
                    .filter(|(_, e)| e.ip == *ip && e.busy == 0)
                    .map(|(id, e)| (e.last, *id))
                    .collect();
                assert_eq!(a.idle, idle);
            }
            let scanned = self
                .live
                .iter()
                .filter(|(_, e)| e.busy == 0)
                .min_by_key(|(_, e)| (std::cmp::Reverse(places[&e.ip]), e.last))
                .map(|(id, _)| *id);
            assert_eq!(self.victim(), scanned);
        }
    }

    #[test]
    fn the_index_agrees_with_a_plain_scan_through_random_activity() {
        let conns = Conns::new(16, 6);
        let mut open: Vec<Conn> = Vec::new();
        let mut busy: Vec<Busy> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pick = |n: usize| usize::try_from(x >> 33).unwrap() % n.max(1);
            match x % 5 {
                0 | 1 => {
                    let ip: IpAddr = [10, 0, 0, u8::try_from(x % 4).unwrap()].into();
                    if let Ok(a) = conns.admit(ip) {
                        open.push(a.conn);
                    }
                }
                2 if !open.is_empty() => open[pick(open.len())].activity().touch(),
                3 if !open.is_empty() => busy.extend(open[pick(open.len())].activity().busy()),
                4 if !busy.is_empty() => drop(busy.swap_remove(pick(busy.len()))),
                _ if !open.is_empty() => drop(open.swap_remove(pick(open.len()))),
                _ => {}
            }
            open.retain(|c| !evicted(c));
            conns.lock().check();
        }
    }

    #[test]
    fn the_per_address_cap_refuses_without_evicting_and_all_busy_refuses() {
        let conns = Conns::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = conns.admit(a).unwrap().conn;
        let a2 = conns.admit(a).unwrap().conn;
        assert_eq!(conns.admit(a).err(), Some(Refused::PerAddress));
        let b1 = conns.admit(b).unwrap().conn;
        // Full, and a's address at its cap: refused, nobody evicted.
        assert_eq!(conns.admit(a).err(), Some(Refused::PerAddress));
        assert!(!evicted(&a1) && !evicted(&a2) && !evicted(&b1));
        // Full, and every holder producing a response: refused.
        let guards: Vec<Busy> = [&a1, &a2, &b1]
            .iter()
            .filter_map(|c| c.activity().busy())
            .collect();
        assert_eq!(guards.len(), 3);
        assert_eq!(conns.admit(b).err(), Some(Refused::Full));
        drop(guards);
        drop(a1);
        assert!(conns.admit(b).is_ok(), "a released place is free again");
        let unlimited = Conns::new(0, 0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.admit(a).ok()).collect();
        assert_eq!(held.len(), 1000);
    }
}
