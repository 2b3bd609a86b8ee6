//! Home directories of applied users: created when missing, never moved or deleted.
//!
//! With `create_home`, a user whose home does not exist gets one under the node's root,
//! filled from `<root>/etc/skel` (files, directories and symlinks; a symlink is copied as a
//! link and never followed, nor is `skel` itself when it is a symlink; other file types are
//! skipped; setuid/setgid bits are dropped), everything owned by the user's uid and primary
//! gid, the home itself with mode [`home_mode`]. Anything already at the home path (a
//! directory, a file, a symlink) is left alone.
//!
//! The home path comes from a peer, so creating it is careful: its parent must already exist,
//! be owned by root and not be writable by group or others (no parent is created), and it
//! must not be in a system directory (`/etc`, `/root`, `/proc`, `/sys`, `/dev`, `/boot`,
//! `/run`, `/usr`, `/bin`, `/sbin`, `/lib*`). The parent path may go through symlinks (the
//! administrator's layout, e.g. `/home -> /srv/home`); the home itself is created with
//! `mkdirat` in the opened parent and opened with `O_NOFOLLOW`.

use super::report::{HomeOutcome, HomeRequest};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use std::fs::File;
use std::path::Path;

/// The default mode of a new home (SPEC: 0700 unless `HOME_MODE` says otherwise).
pub const DEFAULT_HOME_MODE: u32 = 0o700;

/// Directories under which no home is ever created.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/root", "/proc", "/sys", "/dev", "/boot", "/run", "/usr", "/bin", "/sbin", "/lib",
    "/lib32", "/lib64", "/libx32",
];

/// Most entries copied from skel, and deepest directory level.
const MAX_SKEL_ENTRIES: usize = 10_000;
const MAX_SKEL_DEPTH: usize = 32;

/// The mode of a new home from `login.defs`: `HOME_MODE` if set (read as shadow-utils reads
/// numbers: `0…` octal, `0x…` hex, else decimal), else 0700.
///
/// shadow-utils' `useradd` falls back to `0777 & ~UMASK` (0755 with Debian's `UMASK 022`)
/// when `HOME_MODE` is unset; clustersync deliberately keeps the private 0700 then, as the
/// SPEC promises: a home made by a daemon from a peer's record should not become readable by
/// every local user because of a umask meant for files. `UMASK` is therefore not used.
pub fn home_mode(login_defs: &str) -> u32 {
    login_defs
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some("HOME_MODE"), Some(v)) => c_number(v),
                _ => None,
            }
        })
        .next_back()
        .map_or(DEFAULT_HOME_MODE, |m| m & 0o777)
}

/// A number as C's `strtol(s, NULL, 0)` reads a whole word.
fn c_number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

fn in_system_dir(home: &str) -> bool {
    home == "/"
        || SYSTEM_DIRS
            .iter()
            .any(|d| home == *d || home.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

/// Create the home of `req` under `root` if it is missing. `None` when it already exists.
pub fn ensure_home(root: &Path, req: &HomeRequest, mode: u32) -> Option<HomeOutcome> {
    let skipped = |why: String| {
        Some(HomeOutcome::Skipped {
            user: req.user.clone(),
            home: req.home.clone(),
            why,
        })
    };
    let failed = |what: &str, e: std::io::Error| {
        Some(HomeOutcome::Failed {
            user: req.user.clone(),
            home: req.home.clone(),
            error: format!("{what}: {e}"),
        })
    };
    if in_system_dir(&req.home) {
        return skipped("it is in a system directory".into());
    }
    let Some((parent, name)) = req.home.rsplit_once('/') else {
        return skipped("not an absolute path".into());
    };
    let parent_path = root.join(parent.trim_start_matches('/'));
    let dir = match rustix::fs::open(
        &parent_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return skipped(format!("its parent {parent:?} does not exist")),
        Err(e) => return failed("open parent", e.into()),
    };
    match rustix::fs::fstat(&dir) {
        Ok(st) if st.st_uid == 0 && st.st_mode & 0o022 == 0 => {}
        Ok(_) => {
            return skipped(format!(
                "its parent {parent:?} is not root's or is writable by others"
            ));
        }
        Err(e) => return failed("stat parent", e.into()),
    }
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return None,
        Err(Errno::NOENT) => {}
        Err(e) => return failed("stat", e.into()),
    }
    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => {}
        Err(Errno::EXIST) => return None,
        Err(e) => return failed("mkdir", e.into()),
    }
    let r = fill_home(root, &dir, name, (req.uid, req.gid), mode);
    let _ = rustix::fs::fsync(&dir);
    match r {
        Ok(()) => Some(HomeOutcome::Created {
            user: req.user.clone(),
            home: req.home.clone(),
            mode,
        }),
        Err(e) => failed("fill from skel", e),
    }
}

fn fill_home(
    root: &Path,
    parent: &OwnedFd,
    name: &str,
    owner: (u32, u32),
    mode: u32,
) -> std::io::Result<()> {
    let home = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?;
    let skel = rustix::fs::open(root.join("etc/skel"), dir_flags(), Mode::empty());
    let copied = match skel {
        Ok(skel) => {
            let mut budget = MAX_SKEL_ENTRIES;
            copy_tree(&skel, &home, owner, 0, &mut budget)
        }
        // No skel, or skel is a symlink (not followed) or not a directory: an empty home.
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => Ok(()),
        Err(e) => Err(e.into()),
    };
    chown(&home, owner)?;
    rustix::fs::fchmod(&home, Mode::from_raw_mode(mode))?;
    rustix::fs::fsync(&home)?;
    copied
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn chown(fd: impl AsFd, (uid, gid): (u32, u32)) -> Result<(), Errno> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw_unchecked(uid)),
        Some(rustix::fs::Gid::from_raw_unchecked(gid)),
    )
}

/// Owner, mode (without setuid/setgid) and times of a copied entry, from its source.
fn finish(fd: impl AsFd, st: &Stat, owner: (u32, u32)) -> std::io::Result<()> {
    chown(&fd, owner)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(st.st_mode & 0o1777))?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(&fd, &times)?;
    Ok(())
}

fn copy_tree(
    src: &OwnedFd,
    dst: &OwnedFd,
    owner: (u32, u32),
    depth: usize,
    budget: &mut usize,
) -> std::io::Result<()> {
    if depth > MAX_SKEL_DEPTH {
        return Ok(());
    }
    for entry in rustix::fs::Dir::read_from(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        if *budget == 0 {
            return Ok(());
        }
        *budget -= 1;
        let st = rustix::fs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
                let s = rustix::fs::openat(src, name, dir_flags(), Mode::empty())?;
                let d = rustix::fs::openat(dst, name, dir_flags(), Mode::empty())?;
                copy_tree(&s, &d, owner, depth + 1, budget)?;
                finish(&d, &st, owner)?;
            }
            FileType::RegularFile => {
                let s = rustix::fs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let d = rustix::fs::openat(
                    dst,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let (mut s, mut d) = (File::from(s), File::from(d));
                std::io::copy(&mut s, &mut d)?;
                finish(&d, &st, owner)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), dst, name)?;
                rustix::fs::chownat(
                    dst,
                    name,
                    Some(rustix::fs::Uid::from_raw_unchecked(owner.0)),
                    Some(rustix::fs::Gid::from_raw_unchecked(owner.1)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}
