//! The one scheduler thread's timer queue: boots and shutdowns that finish later.
//!
//! A step carries the machine's transition token from when it was scheduled; the machine
//! bumps its token on every transition, so a step overtaken by events (a force-off during a
//! boot, a deletion) finds a newer token and does nothing.

use std::cmp::Ordering;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The boot finishes (successfully, unless the machine is tagged `fail-boot`).
    Boot,
    /// The graceful shutdown finishes; for a restart, a boot follows.
    Shutdown { restart: bool },
    /// Status changes saved late (at most one state-file write per second for them).
    Flush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Task {
    pub uuid: String,
    pub token: u64,
    pub step: Step,
}

struct Timer {
    due: Instant,
    seq: u64,
    task: Task,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
    stopped: bool,
}

#[derive(Default)]
pub(crate) struct Timers {
    queue: Mutex<Queue>,
    cv: Condvar,
}

impl Timers {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn schedule(&self, delay: Duration, task: Task) {
        let mut q = self.lock();
        if q.stopped {
            return;
        }
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Reverse(Timer {
            due: Instant::now() + delay,
            seq,
            task,
        }));
        drop(q);
        self.cv.notify_one();
    }

    /// Drops the pending steps of a machine.
    pub(crate) fn cancel(&self, uuid: &str) {
        self.lock().heap.retain(|Reverse(t)| t.task.uuid != uuid);
    }

    /// Ends the queue: `next` returns `None` from now on.
    pub(crate) fn stop(&self) {
        let mut q = self.lock();
        q.stopped = true;
        q.heap.clear();
        drop(q);
        self.cv.notify_all();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Waits for the next due step; `None` once stopped.
    pub(crate) fn next(&self) -> Option<Task> {
        let mut q = self.lock();
        loop {
            if q.stopped {
                return None;
            }
            let now = Instant::now();
            let due = q.heap.peek().map(|Reverse(t)| t.due);
            match due {
                Some(due) if due <= now => return q.heap.pop().map(|Reverse(t)| t.task),
                Some(due) => {
                    q = self
                        .cv
                        .wait_timeout(q, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => q = self.cv.wait(q).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn task(uuid: &str) -> Task {
        Task {
            uuid: uuid.into(),
            token: 1,
            step: Step::Boot,
        }
    }

    #[test]
    fn due_order_cancel_and_stop() {
        let t = Arc::new(Timers::default());
        t.schedule(Duration::from_millis(30), task("late"));
        t.schedule(Duration::from_millis(10), task("early"));
        t.schedule(Duration::from_millis(20), task("gone"));
        t.cancel("gone");
        assert_eq!(t.next().unwrap().uuid, "early");
        assert_eq!(t.next().unwrap().uuid, "late");
        let t2 = t.clone();
        let waiter = std::thread::spawn(move || t2.next());
        t.stop();
        assert_eq!(waiter.join().unwrap(), None);
    }
}
