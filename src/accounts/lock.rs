//! The locks every passwd/shadow writer takes, so clustersync and the real tools never write
//! the files at the same time.
//!
//! Two kinds, both taken, in this order (the order shadow-utils uses on `/`):
//! 1. `lckpwdf(3)`: an `fcntl` write lock on `<root>/etc/.pwd.lock` (created 0600 if absent),
//!    waited for at most the timeout (glibc's `lckpwdf` waits 15 s). `passwd`, `chpasswd` and
//!    the shadow-utils tools working on `/` take it.
//! 2. shadow-utils' per-file locks `<root>/etc/{passwd,shadow,group,gshadow}.lock`, made by
//!    writing our pid to `<file>.<pid>` and hard-linking it to `<file>.lock` (the link count
//!    proves we own it); a lock whose pid no longer runs is stale and is taken over, as
//!    shadow-utils does. `useradd -P`/`--prefix` and `vipw` take only these. Retried until the
//!    timeout (shadow-utils tries 15 times, 1 s apart).
//!
//! Both are released on drop (per-file locks removed, then the fcntl lock). A process-wide
//! mutex also serialises this process's own holders, since fcntl locks do not exclude threads
//! of one process.

use super::db::DbFile;
use super::error::AccountsError;
use rustix::fd::OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// glibc's and shadow-utils' wait for the lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

/// A busy lock is tried again after 1 ms, then twice as long each time up to this: a tool
/// holds the locks for a few milliseconds, and a read that waits for it (the watcher saw the
/// tool's first file) should not wait much longer than the tool: with 10,000 users a
/// `useradd` holds them for tens of milliseconds, and a 50 ms step cost a change up to 50 ms
/// of its way to the peers. A try is a few syscalls, so trying every 5 ms costs nothing.
const MAX_PAUSE: Duration = Duration::from_millis(5);

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Held locks on one root's account files.
pub struct PwdLock {
    files: Vec<PathBuf>,
    _pwd: OwnedFd,
    _guard: MutexGuard<'static, ()>,
}

impl Drop for PwdLock {
    fn drop(&mut self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
        // `_pwd` closes after this, which releases the fcntl lock.
    }
}

fn io(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> AccountsError {
    AccountsError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl PwdLock {
    /// Take both locks on `<etc>`, waiting at most `timeout` in all.
    pub fn acquire(etc: &Path, timeout: Duration) -> Result<PwdLock, AccountsError> {
        let deadline = Instant::now() + timeout;
        let guard = match IN_PROCESS.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let pwd = lckpwdf(etc, deadline, timeout)?;
        let mut held = PwdLock {
            files: Vec::new(),
            _pwd: pwd,
            _guard: guard,
        };
        for f in DbFile::ALL {
            let lock = etc.join(format!("{}.lock", f.name()));
            file_lock(etc, f.name(), &lock, deadline, timeout)?;
            held.files.push(lock);
        }
        Ok(held)
    }
}

fn lckpwdf(etc: &Path, deadline: Instant, timeout: Duration) -> Result<OwnedFd, AccountsError> {
    let path = etc.join(".pwd.lock");
    let fd = rustix::fs::open(
        &path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io("open", &path, e))?;
    let mut pause = Duration::from_millis(1);
    loop {
        match rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(fd),
            Err(Errno::AGAIN | Errno::ACCESS | Errno::INTR) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(Errno::AGAIN | Errno::ACCESS) => {
                return Err(AccountsError::Locked {
                    path,
                    waited: timeout,
                    holder: None,
                });
            }
            Err(e) => return Err(io("lock", &path, e)),
        }
    }
}

/// Why a per-file lock was not taken on one try.
enum Busy {
    /// Held by this live process.
    By(u32),
    /// The lock file has no valid pid; shadow-utils refuses it too, so do we.
    Unreadable,
}

fn file_lock(
    etc: &Path,
    name: &str,
    lock: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), AccountsError> {
    let mut pause = Duration::from_millis(1);
    let mut busy = Busy::By(0);
    let mut tries = 0u32;
    loop {
        // While the lock file is there, a try (a file written, linked, read and removed) is
        // only made every 8th time, for a stale lock to be taken over; one stat otherwise.
        tries = tries.wrapping_add(1);
        if tries == 1 || tries.is_multiple_of(8) || !lock.exists() {
            match try_file_lock(etc, name, lock)? {
                None => return Ok(()),
                Some(b) => busy = b,
            }
        }
        if Instant::now() >= deadline {
            return Err(AccountsError::Locked {
                path: lock.to_path_buf(),
                waited: timeout,
                holder: match busy {
                    Busy::By(pid) => Some(pid),
                    Busy::Unreadable => None,
                },
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One attempt at shadow-utils' link lock; `Ok(None)` when taken.
fn try_file_lock(etc: &Path, name: &str, lock: &Path) -> Result<Option<Busy>, AccountsError> {
    let pid = std::process::id();
    let mine = etc.join(format!("{name}.{pid}"));
    std::fs::write(&mine, format!("{pid}\0")).map_err(|e| io("write", &mine, e))?;
    let r = link_lock(&mine, lock);
    let _ = std::fs::remove_file(&mine);
    r
}

fn link_lock(mine: &Path, lock: &Path) -> Result<Option<Busy>, AccountsError> {
    match std::fs::hard_link(mine, lock) {
        Ok(()) => return Ok(owned(mine)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("link", lock, e)),
    }
    let holder = match std::fs::read(lock) {
        Ok(b) => parse_pid(&b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Busy::By(0))),
        Err(e) => return Err(io("read", lock, e)),
    };
    let Some(pid) = holder else {
        return Ok(Some(Busy::Unreadable));
    };
    if alive(pid) {
        return Ok(Some(Busy::By(pid)));
    }
    // Stale: its process is gone. Take it over as shadow-utils does.
    match std::fs::remove_file(lock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale lock", lock, e)),
    }
    match std::fs::hard_link(mine, lock) {
        Ok(()) => Ok(owned(mine)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Some(Busy::By(0))),
        Err(e) => Err(io("link", lock, e)),
    }
}

/// After linking: we own the lock when our file has exactly two names.
fn owned(mine: &Path) -> Option<Busy> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(mine) {
        Ok(m) if m.nlink() == 2 => None,
        _ => Some(Busy::By(0)),
    }
}

fn parse_pid(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b).ok()?;
    let s = s.trim_end_matches('\0').trim();
    s.parse::<u32>().ok().filter(|&p| p > 0)
}

fn alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_taken_released_and_exclusive() {
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path();
        let l = PwdLock::acquire(etc, Duration::from_secs(1)).expect("lock");
        for f in DbFile::ALL {
            assert!(etc.join(format!("{}.lock", f.name())).exists());
        }
        let meta = std::fs::metadata(etc.join(".pwd.lock")).expect(".pwd.lock");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Another holder in this process waits (the mutex); another process would wait on
        // the link locks: simulate one with a live pid (ours, as a foreign holder's file).
        drop(l);
        assert!(!etc.join("passwd.lock").exists());
        std::fs::write(etc.join("group.lock"), b"1\0").expect("write");
        let t0 = Instant::now();
        let e = PwdLock::acquire(etc, Duration::from_millis(300))
            .err()
            .expect("pid 1 holds it");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(
            matches!(
                e,
                AccountsError::Locked {
                    holder: Some(1),
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            !etc.join("passwd.lock").exists(),
            "the locks taken before are released"
        );
    }

    #[test]
    fn a_stale_lock_is_taken_over() {
        let d = tempfile::tempdir().expect("tempdir");
        let etc = d.path();
        // A pid that does not run: above the kernel's pid_max limit.
        std::fs::write(etc.join("shadow.lock"), b"4194305\0").expect("write");
        let l = PwdLock::acquire(etc, Duration::from_secs(1)).expect("stale lock taken over");
        let held = std::fs::read(etc.join("shadow.lock")).expect("read");
        assert_eq!(parse_pid(&held), Some(std::process::id()));
        drop(l);
        std::fs::write(etc.join("shadow.lock"), b"garbage").expect("write");
        let e = PwdLock::acquire(etc, Duration::from_millis(200))
            .err()
            .expect("unreadable");
        assert!(
            matches!(e, AccountsError::Locked { holder: None, .. }),
            "{e}"
        );
    }
}
