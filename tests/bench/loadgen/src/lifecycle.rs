//! Whether one client received every lifecycle event: a restarted machine goes
//! `SHUTDOWN_START` → `SHUTDOWN_SUCCESS` → `BOOTUP_START` → `BOOTUP_SUCCESS` → `SHUTDOWN_START`
//! …, so a client that missed (or got out of order) any event of a machine sees a transition
//! that is not one of these. The first event of each machine is taken as it comes. Read from
//! the raw text like `ts.rs`: the machine is the `uuid` inside the message's `body`.

use std::collections::HashMap;

const BODY_UUID: &[u8] = br#""body":{"uuid":""#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    ShutdownStart,
    ShutdownEnd,
    /// A failed shutdown leaves the machine running.
    ShutdownFail,
    BootStart,
    BootEnd,
    /// A failed boot leaves the machine in error, from which it may be started again.
    BootFail,
}

impl Step {
    fn of(kind: &[u8]) -> Option<Self> {
        Some(match kind {
            b"SHUTDOWN_START" => Self::ShutdownStart,
            b"SHUTDOWN_SUCCESS" => Self::ShutdownEnd,
            b"SHUTDOWN_FAIL" => Self::ShutdownFail,
            b"BOOTUP_START" => Self::BootStart,
            b"BOOTUP_SUCCESS" => Self::BootEnd,
            b"BOOTUP_FAIL" => Self::BootFail,
            _ => return None,
        })
    }

    fn may_follow(self, before: Self) -> bool {
        matches!(
            (before, self),
            (Self::ShutdownStart, Self::ShutdownEnd | Self::ShutdownFail)
                | (Self::ShutdownEnd, Self::BootStart)
                | (Self::BootStart, Self::BootEnd | Self::BootFail)
                | (Self::BootEnd | Self::ShutdownFail, Self::ShutdownStart)
                | (Self::BootFail, Self::BootStart | Self::ShutdownStart)
        )
    }
}

/// One client's check.
#[derive(Default)]
pub struct Lifecycle {
    last: HashMap<[u8; 36], Step>,
    /// Lifecycle events seen.
    pub events: u64,
    /// Events that did not follow their machine's previous one.
    pub gaps: u64,
}

impl Lifecycle {
    /// Checks one message of type `kind` (anything else is ignored).
    pub fn see(&mut self, kind: &[u8], msg: &[u8]) {
        let Some(step) = Step::of(kind) else {
            return;
        };
        let Some(machine) = body_uuid(msg) else {
            return;
        };
        self.events += 1;
        if let Some(before) = self.last.insert(machine, step)
            && !step.may_follow(before)
        {
            self.gaps += 1;
        }
    }
}

fn body_uuid(msg: &[u8]) -> Option<[u8; 36]> {
    let at = msg.windows(BODY_UUID.len()).position(|w| w == BODY_UUID)? + BODY_UUID.len();
    msg.get(at..at + 36)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: &str, machine: char) -> String {
        let uuid: String = std::iter::repeat_n(machine, 36).collect();
        format!(
            r#"{{"uuid":"00000000-0000-0000-0000-000000000000","type":"{kind}","body":{{"uuid":"{uuid}"}},"timestamp":"2026-12-05T00:00:00Z"}}"#
        )
    }

    fn run(events: &[(&str, char)]) -> Lifecycle {
        let mut l = Lifecycle::default();
        for (kind, m) in events {
            l.see(kind.as_bytes(), msg(kind, *m).as_bytes());
        }
        l
    }

    #[test]
    fn restarts_in_order_have_no_gaps_even_interleaved() {
        let l = run(&[
            ("BOOTUP_SUCCESS", 'a'),
            ("SHUTDOWN_START", 'a'),
            ("SHUTDOWN_START", 'b'),
            ("SHUTDOWN_SUCCESS", 'a'),
            ("SHUTDOWN_SUCCESS", 'b'),
            ("BOOTUP_START", 'a'),
            ("DATA_DYNAMIC", 'a'),
            ("BOOTUP_START", 'b'),
            ("BOOTUP_FAIL", 'b'),
            ("BOOTUP_SUCCESS", 'a'),
        ]);
        assert_eq!((l.events, l.gaps), (9, 0));
    }

    #[test]
    fn a_missed_or_reordered_event_is_a_gap() {
        let missed = run(&[
            ("SHUTDOWN_START", 'a'),
            ("BOOTUP_START", 'a'),
            ("BOOTUP_SUCCESS", 'a'),
        ]);
        assert_eq!(missed.gaps, 1);
        let reordered = run(&[
            ("SHUTDOWN_START", 'a'),
            ("BOOTUP_START", 'a'),
            ("SHUTDOWN_SUCCESS", 'a'),
        ]);
        assert_eq!(reordered.gaps, 2);
    }
}
