//! Telling systemd how drover is doing (`sd_notify`): ready, stopping, a status line, more
//! time. A no-op outside systemd (no `NOTIFY_SOCKET`).

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// `READY=1`: start-up is over (`Type=notify` holds boot until then).
pub fn ready() {
    notify(NotifyState::Ready);
}

/// `STOPPING=1`: drover has begun to stop.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

/// `STATUS=...`, what `systemctl status` shows.
pub fn status(text: &str) {
    notify(NotifyState::Status(text));
}

/// Asks systemd for `budget` more time in the current phase (start or stop), so that a
/// config with longer timeouts than the unit's defaults is not killed half-way. systemd only
/// ever extends, never shortens, the unit's own timeout.
pub fn extend_timeout(budget: Duration) {
    let usec = u32::try_from(budget.as_micros()).unwrap_or(u32::MAX);
    notify(NotifyState::ExtendTimeoutUsec(usec));
}
