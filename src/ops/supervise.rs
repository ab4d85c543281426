//! BAK-7: running under a supervisor that restarts the server when it
//! dies or hangs, and saying at start what an unclean stop left behind.
//!
//! * **sd_notify.** Under systemd (`Type=notify`, see
//!   `deploy/strongroom.service`) `serve` tells the service manager through
//!   `$NOTIFY_SOCKET` when it is ready (`READY=1`, once it listens), that it
//!   is alive (`WATCHDOG=1` every half `$WATCHDOG_USEC`, only while the
//!   database answers, so a hung store is restarted like a crashed one),
//!   and when it stops (`STOPPING=1`). Without the variable nothing is sent.
//! * **Unclean stops.** A marker file in the data dir (`serving`) holds the
//!   running server's pid and start time and is removed by a clean stop. A
//!   start that finds it says so, and what it picked up: SQLite replays its
//!   write-ahead log on open (every acknowledged write was committed with
//!   `synchronous=FULL`), queued mail is still queued, unfinished key
//!   rotations resume.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the service manager listens, if it does.
#[derive(Clone, Debug)]
pub struct Notifier {
    socket: String,
    /// Half the watchdog interval the manager asked for, if it did.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honoured only when
    /// `$WATCHDOG_PID` is unset or this process).
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())?;
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec / 2));
        Some(Notifier { socket, watchdog })
    }

    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`READY=1`, …). A manager that went away is no
    /// reason to stop serving: failures are logged and forgotten.
    pub fn send(&self, message: &str) {
        let sent = UnixDatagram::unbound().and_then(|socket| {
            match self.socket.strip_prefix('@') {
                // An abstract socket (Linux): a name, not a path.
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    socket.send_to_addr(message.as_bytes(), &address)
                }
                None => socket.send_to(message.as_bytes(), &self.socket),
            }
        });
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not notify the service manager");
        }
    }
}

/// The marker of a running server in `data_dir`.
fn marker(data_dir: &Path) -> PathBuf {
    data_dir.join("serving")
}

/// What the marker of an earlier run said, if that run did not stop
/// cleanly; writes this run's marker.
pub fn mark_running(data_dir: &Path) -> std::io::Result<Option<String>> {
    let path = marker(data_dir);
    let earlier = std::fs::read_to_string(&path).ok();
    std::fs::write(
        &path,
        format!(
            "pid {} started {}\n",
            std::process::id(),
            crate::clock::now()
        ),
    )?;
    Ok(earlier.map(|e| e.trim().to_owned()))
}

/// What the marker of a running server (or of one that did not stop
/// cleanly) says, if there is one.
pub fn running(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(marker(data_dir))
        .ok()
        .map(|m| m.trim().to_owned())
}

/// A clean stop: the marker goes.
pub fn mark_stopped(data_dir: &Path) {
    if let Err(e) = std::fs::remove_file(marker(data_dir)) {
        tracing::warn!(error = %e, "could not remove the running marker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("sr-notify-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: path.to_string_lossy().into_owned(),
            watchdog: None,
        };
        notifier.send("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_marker_left_behind_is_an_unclean_stop() {
        let dir = std::env::temp_dir().join(format!("sr-marker-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(mark_running(&dir).unwrap(), None);
        let left = mark_running(&dir).unwrap().unwrap();
        assert!(left.starts_with("pid "), "{left}");
        mark_stopped(&dir);
        assert_eq!(mark_running(&dir).unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
