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

use std::collections::HashMap;
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
    by_ip: HashMap<IpAddr, usize>,
    live: HashMap<u64, Entry>,
}

struct Entry {
    ip: IpAddr,
    /// The tick of the latest activity.
    last: u64,
    /// Responses in production (more than one on HTTP/2).
    busy: usize,
    evict: Arc<Notify>,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.live.remove(&id)?;
        if let Some(n) = self.by_ip.get_mut(&entry.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_ip.remove(&entry.ip);
            }
        }
        Some(entry)
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
        let of_ip = inner.by_ip.get(&ip).copied().unwrap_or(0);
        if self.per_ip != 0 && of_ip >= self.per_ip {
            return Err(Refused::PerAddress);
        }
        let mut evicted = None;
        if self.total != 0 && inner.live.len() >= self.total {
            let places = |ip: &IpAddr| inner.by_ip.get(ip).copied().unwrap_or(0);
            let victim = inner
                .live
                .iter()
                .filter(|(_, e)| e.busy == 0)
                .min_by_key(|(_, e)| (std::cmp::Reverse(places(&e.ip)), e.last))
                .map(|(id, _)| *id);
            let Some(victim) = victim.and_then(|id| inner.remove(id)) else {
                return Err(Refused::Full);
            };
            victim.evict.notify_one();
            evicted = Some(victim.ip);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let last = inner.tick();
        let evict = Arc::new(Notify::new());
        inner.live.insert(
            id,
            Entry {
                ip,
                last,
                busy: 0,
                evict: evict.clone(),
            },
        );
        *inner.by_ip.entry(ip).or_insert(0) += 1;
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
        let mut inner = self.conns.lock();
        let tick = inner.tick();
        if let Some(e) = inner.live.get_mut(&self.id) {
            e.last = tick;
        }
    }

    /// The connection is producing a response until the guard is dropped (which is
    /// activity too); `None` when it has lost its place already.
    pub fn busy(&self) -> Option<Busy> {
        let mut inner = self.conns.lock();
        let e = inner.live.get_mut(&self.id)?;
        e.busy += 1;
        Some(Busy {
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
        let mut inner = self.activity.conns.lock();
        let tick = inner.tick();
        if let Some(e) = inner.live.get_mut(&self.activity.id) {
            e.busy = e.busy.saturating_sub(1);
            e.last = tick;
        }
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
