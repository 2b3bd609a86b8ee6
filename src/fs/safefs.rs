//! The one place that touches the filesystem on behalf of a peer.
//!
//! Every write or read that a peer causes resolves its logical path component by component
//! from the group's configured path with `openat(O_NOFOLLOW)`, so a directory that was replaced
//! by a symlink (to `/etc`, or anywhere outside the group) is never followed, even in a race:
//! once a directory is open, operations are relative to that open descriptor.
//!
//! Invariants: only the configured group path itself may be reached through a symlink (it is
//! the administrator's choice); nothing below it ever is. New content is written to a temporary
//! file (`.clustersync.tmp.*`) in the target's own directory, fsynced, given its owner, mode and
//! mtime, and renamed into place, so readers see the old or the new file, never a partial one.

use crate::item::name::{self, show};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of temporary files; such names are never scanned nor synced.
pub const TEMP_PREFIX: &str = ".clustersync.tmp.";

/// A filesystem operation that failed, with the path it was about (escaped, see
/// [`crate::item::name::show`]).
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    /// The OS error behind it.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

fn fe(op: &'static str, path: &[u8], e: impl Into<std::io::Error>) -> FsError {
    FsError {
        op,
        path: show(path).into_owned(),
        source: e.into(),
    }
}

/// Metadata to put on an entry.
#[derive(Debug, Clone)]
pub struct SetMeta {
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// `None`: leave ownership alone.
    pub owner: Option<(u32, u32)>,
}

/// A resolved location: an open parent directory and the final name in it.
pub struct Place {
    /// The parent directory, shared with the batch's [`DirCache`] and the temp files made in it
    /// (no `dup` and `close` per file).
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    /// Logical path.
    pub path: Vec<u8>,
}

/// What [`Place::install_new_synced`] did.
pub enum NewInstall {
    /// Renamed into place; the installed file's stat.
    Done(Stat),
    /// Something is at the target now: nothing was changed.
    Occupied,
    /// The filesystem cannot refuse to replace: the caller installs the usual way.
    Unsupported(Temp),
}

/// A temporary file being filled before it is installed.
pub struct Temp {
    pub file: File,
    name: String,
    dir: Arc<OwnedFd>,
    done: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
        }
    }
}

fn random_name() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("{TEMP_PREFIX}{}", crate::item::hex(&b))
}

fn open_dir_nofollow(dir: impl AsFd, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn open_trusted_dir(p: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Resolve logical path `p` of group path `gp` on a node whose root prefix is `root`.
///
/// With `create`, missing intermediate directories are created (mode 0755; their own records
/// set the real metadata). A non-directory in the way is an error, never followed.
pub fn resolve(root: &Path, gp: &str, p: &[u8], create: bool) -> Result<Place, FsError> {
    let real_gp = name::real(root, gp.as_bytes());
    if p == gp.as_bytes() {
        let parent = real_gp.parent().unwrap_or(Path::new("/"));
        if create {
            std::fs::create_dir_all(parent).map_err(|e| fe("create", p, e))?;
        }
        let dir = open_trusted_dir(parent).map_err(|e| fe("open", p, e))?;
        let last = real_gp
            .file_name()
            .ok_or_else(|| fe("resolve", p, std::io::Error::other("no file name")))?
            .as_bytes()
            .to_vec();
        return Ok(Place {
            dir: Arc::new(dir),
            name: last,
            path: p.into(),
        });
    }
    let rel = name::relative(p, gp);
    if rel.is_empty() {
        return Err(fe(
            "resolve",
            p,
            std::io::Error::other("path is not below its group path"),
        ));
    }
    // the group path itself is made only by its own item (parents come first in a batch),
    // never as a side effect of a path below it: a group path that went away (an unmounted
    // disk) is not made again where the disk is not
    let mut cur = open_trusted_dir(&real_gp).map_err(|e| fe("open", gp.as_bytes(), e))?;
    let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    let (last, mids) = comps
        .split_last()
        .ok_or_else(|| fe("resolve", p, std::io::Error::other("empty path")))?;
    for c in mids {
        let next = match open_dir_nofollow(&cur, c) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fe("mkdir", p, e)),
                }
                open_dir_nofollow(&cur, c).map_err(|e| fe("open", p, e))?
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(fe(
                    "resolve",
                    p,
                    std::io::Error::other(format!(
                        "component {} is not a directory (symlinks are never followed)",
                        show(c)
                    )),
                ));
            }
            Err(e) => return Err(fe("open", p, e)),
        };
        cur = next;
    }
    Ok(Place {
        dir: Arc::new(cur),
        name: last.to_vec(),
        path: p.into(),
    })
}

/// Directories already resolved for one batch, by logical path. The files of a batch mostly
/// share a few parents, and [`resolve`] walks every component again with an `openat` each;
/// this hands out a duplicate of the parent's descriptor instead.
///
/// A cache lives for one batch (callers make a new one each time), so a directory renamed or
/// replaced meanwhile is met again by the next batch's walk, with the same window a single
/// [`resolve`] has between its walk and its use. At most [`DirCache::MAX`] directories.
#[derive(Default)]
pub struct DirCache {
    dirs: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Arc<OwnedFd>>>,
}

impl DirCache {
    pub const MAX: usize = 256;

    /// [`resolve`], from a cached parent when there is one.
    pub fn resolve(&self, root: &Path, gp: &str, p: &[u8], create: bool) -> Result<Place, FsError> {
        if p == gp.as_bytes() {
            return resolve(root, gp, p, create);
        }
        let parent = name::parent(p);
        let dirs = match self.dirs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(dir) = dirs.get(parent) {
            return Ok(Place {
                dir: dir.clone(),
                name: name::file_name(p).to_vec(),
                path: p.into(),
            });
        }
        drop(dirs);
        let place = resolve(root, gp, p, create)?;
        let mut dirs = match self.dirs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if dirs.len() >= Self::MAX {
            dirs.clear();
        }
        dirs.insert(parent.to_vec(), place.dir.clone());
        Ok(place)
    }
}

/// Open the configured group path itself (following a symlink there, the admin's choice).
pub fn open_group_dir(root: &Path, gp: &str) -> Result<OwnedFd, FsError> {
    open_trusted_dir(&name::real(root, gp.as_bytes())).map_err(|e| fe("open", gp.as_bytes(), e))
}

fn ts(s: i64, ns: u32) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: s,
            tv_nsec: ns as _,
        },
    }
}

/// The owner part of [`set_meta_fd`], for callers that set extended attributes between it and
/// [`set_mode_mtime_fd`] (a chown drops `security.capability` and the setuid bits).
pub fn chown_fd(fd: impl AsFd, owner: Option<(u32, u32)>) -> Result<(), Errno> {
    if let Some((u, g)) = owner {
        match rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw_unchecked(u)),
            Some(rustix::fs::Gid::from_raw_unchecked(g)),
        ) {
            // Not root: keep our own ownership rather than fail the whole apply.
            Ok(()) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Apply owner, mode and mtime to an open descriptor (in that order: chown clears setuid).
pub fn set_meta_fd(fd: impl AsFd, m: &SetMeta) -> Result<(), Errno> {
    chown_fd(&fd, m.owner)?;
    set_mode_mtime_fd(fd, m)
}

/// The rest of [`set_meta_fd`]: mode (which also sets an access ACL's mask to the group bits,
/// as on the source), then the mtime, last.
pub fn set_mode_mtime_fd(fd: impl AsFd, m: &SetMeta) -> Result<(), Errno> {
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(m.mode & 0o7777))?;
    rustix::fs::futimens(&fd, &ts(m.mtime_s, m.mtime_ns))
}

impl Place {
    /// lstat of the final component; `None` when absent.
    pub fn stat(&self) -> Result<Option<Stat>, FsError> {
        match rustix::fs::statat(&self.dir, self.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(fe("stat", &self.path, e)),
        }
    }

    /// Start a temporary file next to the target.
    pub fn create_temp(&self) -> Result<Temp, FsError> {
        let name = random_name();
        let fd = rustix::fs::openat(
            &self.dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| fe("create temp for", &self.path, e))?;
        Ok(Temp {
            file: File::from(fd),
            name,
            dir: self.dir.clone(),
            done: false,
        })
    }

    /// Remove whatever is at the target if it is in the way of an entry of kind `want_dir`.
    fn clear_for(&self, want_dir: bool) -> Result<(), FsError> {
        self.clear_for_stat(self.stat()?.as_ref(), want_dir)
    }

    /// [`Self::clear_for`] with the target's lstat just taken by the caller.
    fn clear_for_stat(&self, st: Option<&Stat>, want_dir: bool) -> Result<(), FsError> {
        if let Some(st) = st {
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if is_dir && !want_dir {
                rustix::fs::unlinkat(&self.dir, self.name.as_slice(), AtFlags::REMOVEDIR)
                    .map_err(|e| fe("rmdir", &self.path, e))?;
            } else if !is_dir && want_dir {
                rustix::fs::unlinkat(&self.dir, self.name.as_slice(), AtFlags::empty())
                    .map_err(|e| fe("unlink", &self.path, e))?;
            }
        }
        Ok(())
    }

    /// Give a filled temp file its metadata, make it durable and rename it into place.
    pub fn install(&self, mut tmp: Temp, m: &SetMeta) -> Result<(), FsError> {
        set_meta_fd(&tmp.file, m).map_err(|e| fe("set metadata of", &self.path, e))?;
        tmp.file
            .sync_all()
            .map_err(|e| fe("fsync", &self.path, e))?;
        self.clear_for(false)?;
        rustix::fs::renameat(&tmp.dir, tmp.name.as_str(), &self.dir, self.name.as_slice())
            .map_err(|e| fe("rename", &self.path, e))?;
        tmp.done = true;
        let _ = rustix::fs::fsync(&self.dir);
        Ok(())
    }

    /// Rename a filled temp file into place without syncing: for batches, where the caller
    /// gave the temp files their metadata and flushed them with [`sync_filesystem`] first,
    /// and syncs the renames the same way afterwards.
    /// `st`: the target's lstat, just taken by the caller.
    /// Returns the installed file's stat, taken from its descriptor after the rename.
    pub fn install_synced(&self, mut tmp: Temp, st: Option<&Stat>) -> Result<Stat, FsError> {
        self.clear_for_stat(st, false)?;
        rustix::fs::renameat(&tmp.dir, tmp.name.as_str(), &self.dir, self.name.as_slice())
            .map_err(|e| fe("rename", &self.path, e))?;
        tmp.done = true;
        rustix::fs::fstat(&tmp.file).map_err(|e| fe("stat", &self.path, e))
    }

    /// [`Self::install_synced`] for a target that must not exist: the rename itself refuses
    /// to replace anything (`RENAME_NOREPLACE`), so no lstat is needed before it and nothing
    /// that appeared meanwhile is overwritten.
    pub fn install_new_synced(&self, mut tmp: Temp) -> Result<NewInstall, FsError> {
        match rustix::fs::renameat_with(
            &tmp.dir,
            tmp.name.as_str(),
            &self.dir,
            self.name.as_slice(),
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                tmp.done = true;
                let st = rustix::fs::fstat(&tmp.file).map_err(|e| fe("stat", &self.path, e))?;
                Ok(NewInstall::Done(st))
            }
            Err(Errno::EXIST) => Ok(NewInstall::Occupied),
            // a filesystem without the flag
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => Ok(NewInstall::Unsupported(tmp)),
            Err(e) => Err(fe("rename", &self.path, e)),
        }
    }

    /// The open parent directory, e.g. for [`sync_filesystem`].
    pub fn dir_fd(&self) -> &OwnedFd {
        &self.dir
    }

    /// Make the target a directory with this metadata (mtime is set again later by the caller
    /// once its children are in place).
    pub fn make_dir(&self, m: &SetMeta) -> Result<(), FsError> {
        self.clear_for(true)?;
        match rustix::fs::mkdirat(&self.dir, self.name.as_slice(), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(fe("mkdir", &self.path, e)),
        }
        self.set_meta(crate::item::Kind::Dir, m)
    }

    /// Make the target a symlink with this link text.
    pub fn make_symlink(&self, target: &[u8], m: &SetMeta) -> Result<(), FsError> {
        let tmp = random_name();
        rustix::fs::symlinkat(target, &self.dir, tmp.as_str())
            .map_err(|e| fe("symlink", &self.path, e))?;
        let r = (|| {
            if let Some((u, g)) = m.owner {
                match rustix::fs::chownat(
                    &self.dir,
                    tmp.as_str(),
                    Some(rustix::fs::Uid::from_raw_unchecked(u)),
                    Some(rustix::fs::Gid::from_raw_unchecked(g)),
                    AtFlags::SYMLINK_NOFOLLOW,
                ) {
                    Ok(()) | Err(Errno::PERM) => {}
                    Err(e) => return Err(fe("chown", &self.path, e)),
                }
            }
            rustix::fs::utimensat(
                &self.dir,
                tmp.as_str(),
                &ts(m.mtime_s, m.mtime_ns),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| fe("set mtime of", &self.path, e))?;
            self.clear_for(false)?;
            rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, self.name.as_slice())
                .map_err(|e| fe("rename", &self.path, e))
        })();
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
        }
        r
    }

    /// Set owner, mode and mtime of the existing target, which must be of `kind`.
    pub fn set_meta(&self, kind: crate::item::Kind, m: &SetMeta) -> Result<(), FsError> {
        use crate::item::Kind;
        match kind {
            Kind::Symlink => {
                if let Some((u, g)) = m.owner {
                    match rustix::fs::chownat(
                        &self.dir,
                        self.name.as_slice(),
                        Some(rustix::fs::Uid::from_raw_unchecked(u)),
                        Some(rustix::fs::Gid::from_raw_unchecked(g)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    ) {
                        Ok(()) | Err(Errno::PERM) => {}
                        Err(e) => return Err(fe("chown", &self.path, e)),
                    }
                }
                rustix::fs::utimensat(
                    &self.dir,
                    self.name.as_slice(),
                    &ts(m.mtime_s, m.mtime_ns),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fe("set mtime of", &self.path, e))
            }
            Kind::Dir | Kind::File => {
                let flags = if kind == Kind::Dir {
                    OFlags::RDONLY | OFlags::DIRECTORY
                } else {
                    OFlags::RDONLY | OFlags::NONBLOCK
                };
                let fd = rustix::fs::openat(
                    &self.dir,
                    self.name.as_slice(),
                    flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fe("open", &self.path, e))?;
                let st = rustix::fs::fstat(&fd).map_err(|e| fe("stat", &self.path, e))?;
                let want = if kind == Kind::Dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                if FileType::from_raw_mode(st.st_mode) != want {
                    return Err(fe(
                        "set metadata of",
                        &self.path,
                        std::io::Error::other("entry changed kind"),
                    ));
                }
                set_meta_fd(&fd, m).map_err(|e| fe("set metadata of", &self.path, e))
            }
        }
    }

    /// Set only the mtime of a directory (after its children changed).
    pub fn set_dir_mtime(&self, s: i64, ns: u32) -> Result<(), FsError> {
        let fd = open_dir_nofollow(&self.dir, &self.name).map_err(|e| fe("open", &self.path, e))?;
        rustix::fs::futimens(&fd, &ts(s, ns)).map_err(|e| fe("set mtime of", &self.path, e))
    }

    /// Remove the target (a directory only when empty). Absent is success.
    pub fn remove(&self) -> Result<(), FsError> {
        let Some(st) = self.stat()? else {
            return Ok(());
        };
        let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&self.dir, self.name.as_slice(), flags) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(fe("remove", &self.path, e)),
        }
    }

    /// The final component's name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Open the existing target (a directory when `dir`, else a regular file), never following
    /// a symlink, and check its kind.
    pub fn open_nofollow(&self, dir: bool) -> Result<OwnedFd, FsError> {
        let flags = if dir {
            OFlags::RDONLY | OFlags::DIRECTORY
        } else {
            OFlags::RDONLY | OFlags::NONBLOCK
        };
        let fd = rustix::fs::openat(
            &self.dir,
            self.name.as_slice(),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fe("open", &self.path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fe("stat", &self.path, e))?;
        let want = if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        if FileType::from_raw_mode(st.st_mode) != want {
            return Err(fe(
                "open",
                &self.path,
                std::io::Error::other("entry changed kind"),
            ));
        }
        Ok(fd)
    }

    /// Hard-link the target (a regular file, never followed) as `dst` (an absolute path in the
    /// state dir): the zero-copy backup of a file about to be replaced or deleted. Fails with
    /// `EXDEV` when `dst` is on another filesystem (the caller copies instead).
    pub fn link_to(&self, dst: &Path) -> Result<(), FsError> {
        rustix::fs::linkat(
            &self.dir,
            self.name.as_slice(),
            rustix::fs::CWD,
            dst,
            AtFlags::empty(),
        )
        .map_err(|e| fe("link", &self.path, e))
    }

    /// Open the target for reading; it must be a regular file.
    pub fn open_read(&self) -> Result<File, FsError> {
        let fd = rustix::fs::openat(
            &self.dir,
            self.name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fe("open", &self.path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fe("stat", &self.path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(fe(
                "open",
                &self.path,
                std::io::Error::other("not a regular file"),
            ));
        }
        Ok(File::from(fd))
    }
}

/// Make everything written to the filesystem holding `fd` durable (one `syncfs` for a whole
/// batch instead of one `fsync` per file).
pub fn sync_filesystem(fd: impl AsFd) -> std::io::Result<()> {
    rustix::fs::syncfs(fd).map_err(std::io::Error::from)
}

/// Read `len` bytes at `offset` of logical path `p`, safely resolved.
pub fn read_at(
    root: &Path,
    gp: &str,
    p: &[u8],
    offset: u64,
    len: usize,
    dirs: Option<&DirCache>,
) -> Result<Vec<u8>, FsError> {
    use std::os::unix::fs::FileExt;
    let place = match dirs {
        Some(c) => c.resolve(root, gp, p, false)?,
        None => resolve(root, gp, p, false)?,
    };
    let f = place.open_read()?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| fe("read", p, e))?;
    Ok(buf)
}

/// Path of a group path on this node, for messages.
pub fn display_real(root: &Path, gp: &str) -> PathBuf {
    name::real(root, gp.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta() -> SetMeta {
        SetMeta {
            mode: 0o640,
            mtime_s: 1_600_000_000,
            mtime_ns: 123_456_789,
            owner: None,
        }
    }

    #[test]
    fn install_and_never_follow_symlinked_dirs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(root.join("g/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let place = resolve(&root, "/g", b"/g/sub/new dir/f", true).unwrap();
        let mut t = place.create_temp().unwrap();
        t.file.write_all(b"hello").unwrap();
        place.install(t, &meta()).unwrap();
        let p = root.join("g/sub/new dir/f");
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(md.mtime_nsec(), 123_456_789);
        // plant a symlink to outside in place of a directory: never written through
        std::fs::remove_dir_all(root.join("g/sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("g/sub")).unwrap();
        assert!(resolve(&root, "/g", b"/g/sub/x", true).is_err());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        // a symlink as the final component is replaced, not followed
        std::os::unix::fs::symlink(outside.join("victim"), root.join("g/link")).unwrap();
        let place = resolve(&root, "/g", b"/g/link", true).unwrap();
        let mut t = place.create_temp().unwrap();
        t.file.write_all(b"x").unwrap();
        place.install(t, &meta()).unwrap();
        assert!(!outside.join("victim").exists());
        assert!(place.open_read().is_ok());
        // no temp files left
        let names: Vec<_> = std::fs::read_dir(root.join("g"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_new_file_never_replaces_what_appeared_meanwhile() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("g")).unwrap();
        let temps = || {
            std::fs::read_dir(root.join("g"))
                .unwrap()
                .filter(|e| {
                    let n = e.as_ref().unwrap().file_name();
                    n.to_string_lossy().starts_with(TEMP_PREFIX)
                })
                .count()
        };
        // nothing there: installed, and the stat is the installed file's
        let place = resolve(&root, "/g", b"/g/f", true).unwrap();
        let mut t = place.create_temp().unwrap();
        t.file.write_all(b"ours").unwrap();
        let NewInstall::Done(st) = place.install_new_synced(t).unwrap() else {
            panic!("not installed");
        };
        let md = std::fs::symlink_metadata(root.join("g/f")).unwrap();
        assert_eq!(std::fs::read(root.join("g/f")).unwrap(), b"ours");
        assert_eq!((st.st_ino, st.st_ctime), (md.ino(), md.ctime()));
        assert_eq!(st.st_ctime_nsec as i64, md.ctime_nsec());
        assert_eq!(temps(), 0);
        // a file someone wrote there meanwhile: left alone, and the temp file goes away
        let place = resolve(&root, "/g", b"/g/theirs", true).unwrap();
        let mut t = place.create_temp().unwrap();
        t.file.write_all(b"ours").unwrap();
        std::fs::write(root.join("g/theirs"), b"theirs").unwrap();
        assert!(matches!(
            place.install_new_synced(t).unwrap(),
            NewInstall::Occupied
        ));
        assert_eq!(std::fs::read(root.join("g/theirs")).unwrap(), b"theirs");
        assert_eq!(temps(), 0);
        // a directory or a symlink that appeared: left alone too
        std::fs::create_dir(root.join("g/dir")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("g/link")).unwrap();
        for n in ["dir", "link"] {
            let key = format!("/g/{n}");
            let place = resolve(&root, "/g", key.as_bytes(), true).unwrap();
            let t = place.create_temp().unwrap();
            assert!(matches!(
                place.install_new_synced(t).unwrap(),
                NewInstall::Occupied
            ));
        }
        assert!(root.join("g/dir").is_dir());
        assert!(root.join("g/link").is_symlink());
        assert_eq!(temps(), 0);
    }
}
