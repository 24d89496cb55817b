//! The power-transition tracker every backend keeps per machine, as pure logic: which
//! transition Orchard asked for and has not seen finish, and which events close it when the
//! machine is seen running or off. The functions return the [`Step`]s to take, in order; a
//! backend applies them with [`apply`] through its own `emit` and status reporting (which
//! skips a status equal to the last one reported).

use crate::{Event, MachineStatus};

/// A transition Orchard asked for and has not seen finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pending {
    #[default]
    None,
    Boot,
    Shutdown {
        restart: bool,
        /// Tells one shutdown from the next (a backend that waits for it); 0 if unused.
        generation: u64,
    },
    /// Forced off; what it interrupted is closed with a failure once the machine is off.
    ForceOff {
        interrupted: Interrupted,
    },
}

/// What a force-off cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupted {
    Nothing,
    Boot,
    Shutdown,
}

/// One thing a backend does, in order, as a transition moves.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Emit this event.
    Emit(Event),
    /// Report this status (`state_changed` unless it is the last one reported).
    Status(MachineStatus),
    /// A restart's shutdown finished: begin a boot ([`begin_boot`]) and start the machine.
    Restart,
}

/// Whether a status is one of the off ones (`stopped`, `error`).
pub fn is_off(status: MachineStatus) -> bool {
    matches!(status, MachineStatus::Stopped | MachineStatus::Error)
}

impl Pending {
    /// The status Orchard reports: the backend's own, overlaid with a transition under way.
    pub fn overlay(self, raw: MachineStatus) -> MachineStatus {
        match self {
            Self::Boot if is_off(raw) => MachineStatus::Booting,
            Self::Shutdown { .. } if !is_off(raw) => MachineStatus::ShuttingDown,
            _ => raw,
        }
    }

    /// What this becomes when the machine is forced off (a second force-off keeps what the
    /// first interrupted).
    pub fn force_off(self) -> Self {
        let interrupted = match self {
            Self::Boot => Interrupted::Boot,
            Self::Shutdown { .. } => Interrupted::Shutdown,
            Self::ForceOff { interrupted } => interrupted,
            Self::None => Interrupted::Nothing,
        };
        Self::ForceOff { interrupted }
    }

    /// Whether a machine now seen as `raw` closes this transition: `Some(true)` if it is
    /// running and a boot was pending, `Some(false)` if it is off and anything but nothing
    /// was pending, `None` otherwise (report [`Pending::overlay`]).
    pub fn settled_by(self, raw: MachineStatus) -> Option<bool> {
        match self {
            Self::Boot if raw == MachineStatus::Running => Some(true),
            Self::Shutdown { .. } | Self::ForceOff { .. } | Self::Boot if is_off(raw) => {
                Some(false)
            }
            _ => None,
        }
    }
}

/// A boot Orchard asked for: the pending transition and its first steps.
pub fn begin_boot(uuid: &str) -> (Pending, Vec<Step>) {
    let steps = vec![
        Step::Emit(Event::BootStart {
            uuid: uuid.to_owned(),
        }),
        Step::Status(MachineStatus::Booting),
    ];
    (Pending::Boot, steps)
}

/// A stop (or, with `restart`, a restart) Orchard asked for.
pub fn begin_shutdown(uuid: &str, restart: bool, generation: u64) -> (Pending, Vec<Step>) {
    let steps = vec![
        Step::Emit(Event::ShutdownStart {
            uuid: uuid.to_owned(),
        }),
        Step::Status(MachineStatus::ShuttingDown),
    ];
    (
        Pending::Shutdown {
            restart,
            generation,
        },
        steps,
    )
}

/// The machine runs now: closes a boot under way, or reports an unrequested one whole.
pub fn started(pending: Pending, uuid: &str) -> Vec<Step> {
    let mut steps = Vec::with_capacity(4);
    if pending != Pending::Boot {
        steps.push(Step::Emit(Event::BootStart {
            uuid: uuid.to_owned(),
        }));
        steps.push(Step::Status(MachineStatus::Booting));
    }
    steps.push(Step::Status(MachineStatus::Running));
    steps.push(Step::Emit(Event::BootSuccess {
        uuid: uuid.to_owned(),
    }));
    steps
}

/// How a backend words the failures that a machine turning off closes.
#[derive(Clone, Copy, Debug)]
pub struct OffWording {
    /// A boot a force-off interrupted.
    pub boot_interrupted: &'static str,
    /// A shutdown a force-off interrupted.
    pub shutdown_interrupted: &'static str,
}

/// The machine is off now (`off`: `stopped` or `error`): reports it and closes what was under
/// way. `boot_failure` is the error of a pending boot that ended so.
pub fn stopped(
    pending: Pending,
    uuid: &str,
    off: MachineStatus,
    boot_failure: impl FnOnce() -> String,
    wording: &OffWording,
) -> Vec<Step> {
    let mut steps = vec![Step::Status(off)];
    let uuid = uuid.to_owned();
    let fail = |error: &str| Event::BootFail {
        uuid: uuid.clone(),
        error: error.to_owned(),
    };
    match pending {
        Pending::None
        | Pending::ForceOff {
            interrupted: Interrupted::Nothing,
        } => {}
        Pending::Boot => steps.push(Step::Emit(fail(&boot_failure()))),
        Pending::Shutdown { restart, .. } => {
            steps.push(Step::Emit(Event::ShutdownSuccess { uuid: uuid.clone() }));
            if restart {
                steps.push(Step::Restart);
            }
        }
        Pending::ForceOff {
            interrupted: Interrupted::Boot,
        } => steps.push(Step::Emit(fail(wording.boot_interrupted))),
        Pending::ForceOff {
            interrupted: Interrupted::Shutdown,
        } => steps.push(Step::Emit(Event::ShutdownFail {
            uuid: uuid.clone(),
            error: wording.shutdown_interrupted.to_owned(),
        })),
    }
    steps
}

/// A transition that could not even begin: the failure event that closes it, or, when
/// nothing that has a failure event was pending, the error back (for the log).
pub fn aborted(pending: Pending, uuid: &str, error: String) -> Result<Event, String> {
    let uuid = uuid.to_owned();
    match pending {
        Pending::Boot => Ok(Event::BootFail { uuid, error }),
        Pending::Shutdown { .. } => Ok(Event::ShutdownFail { uuid, error }),
        Pending::ForceOff { .. } | Pending::None => Err(error),
    }
}

/// Takes `steps` in order on `state` with the backend's own emit and status reporting;
/// returns whether a restart is due (see [`Step::Restart`]).
pub fn apply<S>(
    steps: Vec<Step>,
    state: &mut S,
    mut emit: impl FnMut(&mut S, Event),
    mut status: impl FnMut(&mut S, MachineStatus),
) -> bool {
    let mut restart = false;
    for step in steps {
        match step {
            Step::Emit(event) => emit(state, event),
            Step::Status(s) => status(state, s),
            Step::Restart => restart = true,
        }
    }
    restart
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineStatus as S;

    const WORDING: OffWording = OffWording {
        boot_interrupted: "boot cut",
        shutdown_interrupted: "shutdown cut",
    };

    fn emit(e: Event) -> Step {
        Step::Emit(e)
    }

    fn u() -> String {
        "m1".to_owned()
    }

    #[test]
    fn begin_boot_and_shutdown() {
        let (p, steps) = begin_boot("m1");
        assert_eq!(p, Pending::Boot);
        assert_eq!(
            steps,
            [
                emit(Event::BootStart { uuid: u() }),
                Step::Status(S::Booting)
            ]
        );
        let (p, steps) = begin_shutdown("m1", true, 7);
        assert_eq!(
            p,
            Pending::Shutdown {
                restart: true,
                generation: 7
            }
        );
        assert_eq!(
            steps,
            [
                emit(Event::ShutdownStart { uuid: u() }),
                Step::Status(S::ShuttingDown)
            ]
        );
    }

    #[test]
    fn started_closes_a_boot_or_reports_one_whole() {
        assert_eq!(
            started(Pending::Boot, "m1"),
            [
                Step::Status(S::Running),
                emit(Event::BootSuccess { uuid: u() })
            ]
        );
        assert_eq!(
            started(Pending::None, "m1"),
            [
                emit(Event::BootStart { uuid: u() }),
                Step::Status(S::Booting),
                Step::Status(S::Running),
                emit(Event::BootSuccess { uuid: u() })
            ]
        );
    }

    #[test]
    fn stopped_closes_what_was_pending() {
        let why = || "died".to_owned();
        assert_eq!(
            stopped(Pending::None, "m1", S::Error, why, &WORDING),
            [Step::Status(S::Error)]
        );
        assert_eq!(
            stopped(Pending::Boot, "m1", S::Stopped, why, &WORDING),
            [
                Step::Status(S::Stopped),
                emit(Event::BootFail {
                    uuid: u(),
                    error: "died".into()
                })
            ]
        );
        let (stop, _) = begin_shutdown("m1", false, 0);
        let (restart, _) = begin_shutdown("m1", true, 0);
        let success = emit(Event::ShutdownSuccess { uuid: u() });
        assert_eq!(
            stopped(stop, "m1", S::Stopped, why, &WORDING),
            [Step::Status(S::Stopped), success.clone()]
        );
        assert_eq!(
            stopped(restart, "m1", S::Stopped, why, &WORDING),
            [Step::Status(S::Stopped), success, Step::Restart]
        );
    }

    #[test]
    fn a_force_off_fails_what_it_interrupted() {
        let why = String::new;
        let p = Pending::None.force_off();
        assert_eq!(stopped(p, "m1", S::Stopped, why, &WORDING).len(), 1);
        // A second force-off keeps what the first interrupted.
        let p = Pending::Boot.force_off().force_off();
        assert_eq!(
            stopped(p, "m1", S::Stopped, why, &WORDING)[1],
            emit(Event::BootFail {
                uuid: u(),
                error: "boot cut".into()
            })
        );
        let p = begin_shutdown("m1", true, 1).0.force_off();
        assert_eq!(
            stopped(p, "m1", S::Stopped, why, &WORDING),
            [
                Step::Status(S::Stopped),
                emit(Event::ShutdownFail {
                    uuid: u(),
                    error: "shutdown cut".into()
                })
            ]
        );
    }

    #[test]
    fn aborted_fails_a_boot_or_shutdown_only() {
        assert_eq!(
            aborted(Pending::Boot, "m1", "no".into()),
            Ok(Event::BootFail {
                uuid: u(),
                error: "no".into()
            })
        );
        assert_eq!(
            aborted(begin_shutdown("m1", false, 0).0, "m1", "no".into()),
            Ok(Event::ShutdownFail {
                uuid: u(),
                error: "no".into()
            })
        );
        assert_eq!(aborted(Pending::None, "m1", "no".into()), Err("no".into()));
        assert_eq!(
            aborted(Pending::Boot.force_off(), "m1", "no".into()),
            Err("no".into())
        );
    }

    #[test]
    fn overlay_and_settled_by() {
        assert_eq!(Pending::Boot.overlay(S::Stopped), S::Booting);
        assert_eq!(Pending::Boot.overlay(S::Running), S::Running);
        let stop = begin_shutdown("m1", false, 0).0;
        assert_eq!(stop.overlay(S::Running), S::ShuttingDown);
        assert_eq!(stop.overlay(S::Stopped), S::Stopped);
        assert_eq!(Pending::None.overlay(S::Paused), S::Paused);
        assert_eq!(Pending::Boot.settled_by(S::Running), Some(true));
        assert_eq!(Pending::Boot.settled_by(S::Error), Some(false));
        assert_eq!(stop.settled_by(S::Stopped), Some(false));
        assert_eq!(stop.settled_by(S::Running), None);
        assert_eq!(
            Pending::None.force_off().settled_by(S::Stopped),
            Some(false)
        );
        assert_eq!(Pending::None.settled_by(S::Stopped), None);
    }

    #[test]
    fn apply_takes_the_steps_in_order() {
        let mut seen = Vec::new();
        let mut steps = started(Pending::None, "m1");
        steps.push(Step::Restart);
        let restart = apply(
            steps.clone(),
            &mut seen,
            |v, e| v.push(Step::Emit(e)),
            |v, s| v.push(Step::Status(s)),
        );
        assert!(restart);
        steps.pop();
        assert_eq!(seen, steps);
    }
}
