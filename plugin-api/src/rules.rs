//! Rules every backend applies the same way, shared so that users get one behaviour and one
//! wording whatever the backend: which power action a status allows (and why not), and what a
//! machine title may be.

use crate::{MachineStatus, PluginError, PowerAction};

/// The longest machine title, in characters.
pub const MAX_TITLE_CHARS: usize = 128;

/// A status as users read it: `shutting down`.
pub fn status_text(status: MachineStatus) -> String {
    status.as_str().replace('_', " ")
}

/// Whether `action` is allowed from `status`, and if not, why.
pub fn check_transition(status: MachineStatus, action: PowerAction) -> Result<(), PluginError> {
    use MachineStatus as S;
    use PowerAction as A;
    let allowed = match action {
        A::Start => matches!(status, S::Stopped | S::Error),
        A::Stop => matches!(status, S::Running | S::Paused | S::Suspended),
        A::Restart | A::Suspend => status == S::Running,
        A::Resume => matches!(status, S::Suspended | S::Paused),
        A::ForceOff => status != S::Stopped,
    };
    if allowed {
        return Ok(());
    }
    let now = status_text(status);
    let message = match (action, status) {
        (A::Start | A::Resume, S::Running) => "machine is already running".to_owned(),
        (A::Start, S::Booting) => "machine is already booting".to_owned(),
        (A::Start, S::Paused | S::Suspended) => format!("machine is {now}; resume it instead"),
        (A::Stop | A::ForceOff, S::Stopped) => "machine is already stopped".to_owned(),
        (A::Stop, S::ShuttingDown) => "machine is already shutting down".to_owned(),
        (A::Stop, S::Booting) => {
            "machine is booting; wait for it to finish or force it off".to_owned()
        }
        (A::Suspend, S::Suspended) => "machine is already suspended".to_owned(),
        (A::Restart | A::Suspend | A::Stop, _) => format!("machine is not running (it is {now})"),
        (A::Resume, _) => format!("machine is not suspended or paused (it is {now})"),
        _ => format!("cannot {} a machine that is {now}", action.as_str()),
    };
    Err(PluginError::InvalidState(message))
}

pub fn check_title(title: &str) -> Result<(), PluginError> {
    if title.trim().is_empty() {
        return Err(PluginError::InvalidArgument(
            "title must not be empty".into(),
        ));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(PluginError::InvalidArgument(format!(
            "title must be at most {MAX_TITLE_CHARS} characters"
        )));
    }
    if title.chars().any(char::is_control) {
        return Err(PluginError::InvalidArgument(
            "title must not contain control characters".into(),
        ));
    }
    Ok(())
}
