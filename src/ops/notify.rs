//! Telling systemd how the daemon is doing (`Type=notify`, SPEC §5.12), through the `sd-notify`
//! crate.
//!
//! The protocol: `READY=1` once the listener is up and the start-up scan is done, `STATUS=…`
//! lines that `systemctl status` shows, `RELOADING=1` … `READY=1` around a SIGHUP reload,
//! `STOPPING=1` at shutdown, `EXTEND_TIMEOUT_USEC=…` while a long start-up scan runs, and
//! `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=`).
//!
//! Invariants: without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op that
//! returns `Ok`; a failure to notify is never fatal (the caller logs it). The variables are read
//! on each call and never changed here (changing the environment is `unsafe` in this edition);
//! the actions runner removes them from its children's environment instead.

use sd_notify::NotifyState;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A notification could not be delivered to the service manager.
#[derive(Debug, thiserror::Error)]
#[error("cannot notify the service manager ({what}): {source}")]
pub struct NotifyError {
    what: &'static str,
    #[source]
    source: std::io::Error,
}

fn send(what: &'static str, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
    sd_notify::notify(states).map_err(|source| NotifyError { what, source })
}

/// Whether the daemon runs under a service manager that listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Start-up is complete (listener up, start-up scan done); also the end of a reload.
pub fn ready() -> Result<(), NotifyError> {
    send("READY", &[NotifyState::Ready])
}

/// A one-line status for `systemctl status` (line breaks become spaces).
pub fn status(text: &str) -> Result<(), NotifyError> {
    let line = text.replace(['\r', '\n'], " ");
    send("STATUS", &[NotifyState::Status(&line)])
}

/// A reload (SIGHUP) began; call [`ready`] when it is done, whether it was applied or refused.
pub fn reloading() -> Result<(), NotifyError> {
    // systemd wants the monotonic time with RELOADING=1 (Type=notify-reload requires it)
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING", &[NotifyState::Reloading]),
    }
}

/// Shutdown began.
pub fn stopping() -> Result<(), NotifyError> {
    send("STOPPING", &[NotifyState::Stopping])
}

/// Ask for `more` time before systemd gives up on start-up (or shutdown); for a first scan of
/// a large tree. Call it again before it runs out.
pub fn extend_timeout(more: Duration) -> Result<(), NotifyError> {
    let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
    send("EXTEND_TIMEOUT", &[NotifyState::ExtendTimeoutUsec(usec)])
}

/// The interval systemd expects `WATCHDOG=1` in (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// When the watchdog is enabled, a task that sends `WATCHDOG=1` at half the interval until
/// `shutdown` turns true (or its sender is dropped). `None` when systemd asked for no watchdog.
/// Start it as the daemon starts (systemd counts from then on, not from READY).
pub fn watchdog_task(shutdown: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    watchdog_task_with(shutdown, || true)
}

/// Like [`watchdog_task`], but a ping is only sent while `alive()` says the engine makes
/// progress, so that systemd restarts a daemon whose engine is stuck while its runtime still
/// runs. `alive` is called once per ping and must be cheap.
pub fn watchdog_task_with(
    mut shutdown: watch::Receiver<bool>,
    alive: impl Fn() -> bool + Send + 'static,
) -> Option<JoinHandle<()>> {
    let every = watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = shutdown.wait_for(|s| *s) => {
                    let _ = r;
                    return;
                }
            }
            if !alive() {
                tracing::warn!("watchdog: the engine makes no progress; not pinging systemd");
                continue;
            }
            match send("WATCHDOG", &[NotifyState::Watchdog]) {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    tracing::warn!("{e}");
                    warned = true;
                }
                Err(_) => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::process::Command;

    /// Set in the environment of the re-run test binary: the environment is process-global
    /// and setting it is `unsafe`, so the code under test runs in a child process that gets
    /// `NOTIFY_SOCKET` from its parent.
    const CHILD: &str = "CLUSTERSYNC_NOTIFY_TEST_CHILD";

    /// Run one `#[ignore]`d test of this binary in a child with `env`; assert it passed.
    fn run_child(test: &str, env: &[(&str, &str)]) {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "the child test ran: {text}");
    }

    fn socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a datagram in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_ready_status_reloading_and_stopping_to_notify_socket() {
        let (_dir, path, sock) = socket();
        run_child(
            "ops::notify::tests::child_notifies",
            &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        );
        assert_eq!(recv(&sock), "STATUS=scanning www (1 of 2 groups)\n");
        assert_eq!(recv(&sock), "READY=1\n");
        let reload = recv(&sock);
        assert!(
            reload.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reload}"
        );
        assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=30000000\n");
        assert_eq!(recv(&sock), "STOPPING=1\n");
    }

    #[test]
    #[ignore = "run by sends_ready_status_reloading_and_stopping_to_notify_socket"]
    fn child_notifies() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert!(enabled());
        status("scanning www\n(1 of 2 groups)").unwrap();
        ready().unwrap();
        reloading().unwrap();
        extend_timeout(Duration::from_secs(30)).unwrap();
        stopping().unwrap();
    }

    #[test]
    fn watchdog_pings_at_half_the_interval() {
        let (_dir, path, sock) = socket();
        run_child(
            "ops::notify::tests::child_watchdog",
            &[
                ("NOTIFY_SOCKET", path.to_str().unwrap()),
                ("WATCHDOG_USEC", "200000"),
            ],
        );
        let mut pings = 0;
        sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = sock.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1\n");
            pings += 1;
        }
        // the child ran the task for 500 ms at a 100 ms period
        assert!((2..=8).contains(&pings), "{pings} pings");
    }

    #[test]
    #[ignore = "run by watchdog_pings_at_half_the_interval"]
    fn child_watchdog() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(200)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (stop, rx) = watch::channel(false);
            let task = watchdog_task(rx).expect("watchdog enabled");
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
        });
    }

    #[test]
    fn without_notify_socket_everything_is_a_no_op() {
        if enabled() {
            return; // the tests themselves run under systemd: nothing to check here
        }
        ready().unwrap();
        status("x").unwrap();
        stopping().unwrap();
    }
}
