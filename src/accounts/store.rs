//! The account files of one root on disk: read them, write new contents.
//!
//! A read ([`AccountDb::read`], [`AccountDb::read_since`]) holds the passwd locks
//! ([`lock`](super::lock)) while it reads the four files (so it never sees half of a tool's
//! change) and first finishes an apply that a crash interrupted. Given the previous read, it
//! reads again only the files whose stat (device, inode, size, mtime, ctime) changed: every
//! tool replaces a file by rename (new inode) or writes it (new mtime and ctime), so a file
//! nobody wrote is not read, parsed or compared again. A write ([`AccountDb::write`]) does
//! everything slow before it takes the locks and holds them only for a check and the renames:
//!
//! 1. without the locks: for each changed file, a temp file in `<root>/etc`
//!    (`.clustersync.tmp.*`) with the new content, the original's mode and owner, its
//!    `security.selinux` label copied when it has one (best effort), fsynced;
//! 2. under the locks: each of the four files is compared (device, inode, size, mtime, ctime)
//!    with what was read; if a tool changed one since, nothing is replaced
//!    ([`Written::Stale`]: read again and decide again);
//! 3. the `-` backup of each changed file is a second name (hard link) of the file being
//!    replaced: the very content, mode, owner and times read, with no copy (a copy, like the
//!    temp of step 1, where the filesystem has no hard links);
//! 4. a journal (`.clustersync.tmp.accounts-journal`) naming the temps, their targets and each
//!    target's inode, size and mtime, written by temp + fsync + rename + directory fsync;
//!    renames: backup then file, for passwd, shadow, group, gshadow; a directory fsync; the
//!    stat of the new files (the next read's reference); the journal removed.
//!
//! A crash after step 4 began leaves a journal: the next read or write renames the remaining
//! temps into place, unless a target changed meanwhile (a tool wrote it after the crash: a new
//! inode, size or mtime), in which case that file's temps are dropped and the read says so.
//! Either way the four files are never left with some of a write's changes and not the others,
//! unless a tool changed one of them between the crash and the recovery. (A journal of the
//! previous release names a content hash instead; it is recovered the same way.)

use super::db::{AccountFiles, DbFile, Table};
use super::error::AccountsError;
use super::lock::{LOCK_TIMEOUT, PwdLock};
use super::report::Recovery;
use crate::fs::safefs::TEMP_PREFIX;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Largest account file read (a million users is about 60 MB).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

const JOURNAL: &str = ".clustersync.tmp.accounts-journal";
const SELINUX: &str = "security.selinux";

/// The account files of one node root (`<root>/etc/passwd`…).
#[derive(Debug, Clone)]
pub struct AccountDb {
    root: PathBuf,
    lock_timeout: Duration,
}

/// A file as read: what its replacement must keep.
#[derive(Clone)]
struct Original {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Timespec,
    mtime: Timespec,
    selinux: Option<Vec<u8>>,
    /// What must not have changed for a write to replace it.
    stamp: Stamp,
}

/// Identity and last change of a file: a tool that rewrites it changes one of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The four files as read by [`AccountDb::read`]: parsed, and what a write needs to replace
/// them safely.
#[derive(Clone)]
pub struct FileSet {
    pub files: AccountFiles,
    originals: BTreeMap<DbFile, Original>,
    /// An interrupted write finished (or given up) before reading.
    pub recovery: Option<Recovery>,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileSet({:?})", self.files)
    }
}

impl FileSet {
    /// The latest modification time of the four files, in milliseconds since the epoch: when
    /// the changes found in them were made, at the latest.
    pub fn mtime_ms(&self) -> i64 {
        self.originals
            .values()
            .map(|o| ms(&o.mtime))
            .max()
            .unwrap_or(0)
    }

    /// Whether `other` was read from the very same files (nothing rewrote them between).
    pub fn same_files(&self, other: &FileSet) -> bool {
        self.originals.len() == other.originals.len()
            && self
                .originals
                .iter()
                .all(|(f, o)| other.originals.get(f).is_some_and(|p| p.stamp == o.stamp))
    }

    /// The files that are not the same as in `prev` (read again, or missing in one of them).
    pub fn changed_since(&self, prev: &FileSet) -> Vec<DbFile> {
        DbFile::ALL
            .into_iter()
            .filter(|&f| match (self.files.shared(f), prev.files.shared(f)) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            })
            .collect()
    }
}

/// Milliseconds of a timestamp.
#[allow(
    clippy::unnecessary_cast,
    reason = "the field types of timespec differ between architectures"
)]
fn ms(t: &Timespec) -> i64 {
    t.tv_sec as i64 * 1000 + t.tv_nsec as i64 / 1_000_000
}

/// What [`AccountDb::write`] did.
#[derive(Debug, Clone)]
pub enum Written {
    /// The files were replaced (each changed one with its `-` backup).
    Done {
        files: Vec<DbFile>,
        /// How long the passwd locks were held.
        locked: Duration,
        /// The files as this write left them, for [`AccountDb::read_since`].
        set: FileSet,
    },
    /// Nothing to write: the new contents are the ones on disk.
    Unchanged,
    /// A tool changed the files after they were read: nothing was replaced.
    Stale,
}

fn io(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> AccountsError {
    AccountsError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl AccountDb {
    /// The accounts under `root` (`/` for the real system).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AccountDb {
            root: root.into(),
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    /// How long to wait for the passwd locks (default 15 s, as shadow-utils).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/etc`.
    pub fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// What to watch for changes made by the tools: `<root>/etc` itself (the tools rename new
    /// files into place, so watch the directory for moves and writes) and the four files.
    /// Events for other names in `<root>/etc` (the `*.lock` and `*.<pid>` files every read
    /// and apply makes, the `-` backups, our temp files) are to be ignored.
    pub fn watch_paths(&self) -> Vec<PathBuf> {
        let etc = self.etc();
        let mut v = vec![etc.clone()];
        v.extend(DbFile::ALL.iter().map(|f| etc.join(f.name())));
        v
    }

    /// Whether a file name in `<root>/etc` is one of the four account files.
    pub fn is_account_file(name: &str) -> bool {
        DbFile::ALL.iter().any(|f| f.name() == name)
    }

    /// Read the four files under the locks (finishing an interrupted write first).
    pub fn read(&self) -> Result<FileSet, AccountsError> {
        let etc = self.etc();
        let _lock = PwdLock::acquire(&etc, self.lock_timeout)?;
        let dir = open_etc(&etc)?;
        let recovery = recover(&dir, &etc)?;
        let mut set = load(&dir, &etc)?;
        set.recovery = recovery;
        Ok(set)
    }

    /// Read the four files under the locks, reusing from `prev` (the previous read, or the
    /// files a write left) every file whose stat did not change since.
    pub fn read_since(&self, prev: Option<&FileSet>) -> Result<FileSet, AccountsError> {
        let Some(prev) = prev else {
            return self.read();
        };
        let etc = self.etc();
        let _lock = PwdLock::acquire(&etc, self.lock_timeout)?;
        let dir = open_etc(&etc)?;
        if let Some(recovery) = recover(&dir, &etc)? {
            let mut set = load(&dir, &etc)?;
            set.recovery = Some(recovery);
            return Ok(set);
        }
        let mut originals = BTreeMap::new();
        let mut tables: BTreeMap<DbFile, Arc<Table>> = BTreeMap::new();
        for f in DbFile::ALL {
            let path = etc.join(f.name());
            let now = stamp_of(&dir, f)?;
            if let (Some(now), Some(o), Some(t)) =
                (now, prev.originals.get(&f), prev.files.shared(f))
                && now == o.stamp
            {
                originals.insert(f, o.clone());
                tables.insert(f, t.clone());
                continue;
            }
            if let Some((o, bytes)) = read_original(&dir, &path, f)? {
                originals.insert(f, o);
                tables.insert(f, Arc::new(Table::parse_owned(bytes)));
            }
        }
        let empty = || Arc::new(Table::parse(b""));
        let files = AccountFiles {
            passwd: tables.remove(&DbFile::Passwd).unwrap_or_else(empty),
            group: tables.remove(&DbFile::Group).unwrap_or_else(empty),
            shadow: tables.remove(&DbFile::Shadow),
            gshadow: tables.remove(&DbFile::Gshadow),
        };
        Ok(FileSet {
            files,
            originals,
            recovery: None,
        })
    }

    /// Replace the files read as `read` with `new` (only those whose tables differ), holding
    /// the locks only to check that nothing changed them since, link the backups and rename
    /// (see the module documentation).
    pub fn write(&self, read: &FileSet, new: &AccountFiles) -> Result<Written, AccountsError> {
        let changed: Vec<DbFile> = DbFile::ALL
            .into_iter()
            .filter(|&f| read.files.shared(f) != new.shared(f) && read.originals.contains_key(&f))
            .collect();
        if changed.is_empty() {
            return Ok(Written::Unchanged);
        }
        let etc = self.etc();
        let dir = open_etc(&etc)?;
        let mut entries = Vec::new();
        let staged = stage(&dir, &etc, read, new, &changed, &mut entries);
        let drop_temps = |entries: &[Entry]| {
            for e in entries {
                let _ = rustix::fs::unlinkat(&dir, e.new.as_str(), AtFlags::empty());
                let _ = rustix::fs::unlinkat(&dir, e.backup.as_str(), AtFlags::empty());
            }
        };
        if let Err(e) = staged {
            drop_temps(&entries);
            return Err(e);
        }
        let lock = match PwdLock::acquire(&etc, self.lock_timeout) {
            Ok(l) => l,
            Err(e) => {
                drop_temps(&entries);
                return Err(e);
            }
        };
        let t0 = Instant::now();
        let r = (|| {
            if recover(&dir, &etc)?.is_some() {
                return Ok(None);
            }
            for (f, o) in &read.originals {
                if stamp_of(&dir, *f)? != Some(o.stamp) {
                    return Ok(None);
                }
            }
            for e in entries.iter_mut() {
                backup(&dir, &etc, read, e)?;
            }
            write_journal(&dir, &etc, &entries)?;
            for e in &entries {
                install(&dir, &etc, e)?;
            }
            sync_dir(&dir, &etc)?;
            // what the next read compares with: the files as this write left them
            let mut originals = read.originals.clone();
            for e in &entries {
                let Some(stamp) = stamp_of(&dir, e.file)? else {
                    continue;
                };
                if let Some(o) = originals.get_mut(&e.file) {
                    o.stamp = stamp;
                    o.mtime = Timespec {
                        tv_sec: stamp.mtime.0 as _,
                        tv_nsec: stamp.mtime.1 as _,
                    };
                }
            }
            rustix::fs::unlinkat(&dir, JOURNAL, AtFlags::empty())
                .map_err(|e| io("remove", &etc.join(JOURNAL), e))?;
            sync_dir(&dir, &etc)?;
            Ok(Some(originals))
        })();
        let locked = t0.elapsed();
        drop(lock);
        match r {
            Ok(Some(originals)) => Ok(Written::Done {
                files: changed,
                locked,
                set: FileSet {
                    files: new.clone(),
                    originals,
                    recovery: None,
                },
            }),
            Ok(None) => {
                drop_temps(&entries);
                Ok(Written::Stale)
            }
            Err(e) => {
                drop_temps(&entries);
                Err(e)
            }
        }
    }
}

/// Days since 1970-01-01 (for the last-change field of new users).
pub fn today() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 86_400) as i64)
}

fn open_etc(etc: &Path) -> Result<OwnedFd, AccountsError> {
    rustix::fs::open(
        etc,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open", etc, e))
}

fn load(dir: &OwnedFd, etc: &Path) -> Result<FileSet, AccountsError> {
    let mut originals = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for f in DbFile::ALL {
        if let Some((o, bytes)) = read_original(dir, &etc.join(f.name()), f)? {
            originals.insert(f, o);
            contents.insert(f, bytes);
        }
    }
    let mut table = |f| contents.remove(&f).map(|b| Arc::new(Table::parse_owned(b)));
    let files = AccountFiles {
        passwd: table(DbFile::Passwd).unwrap_or_else(|| Arc::new(Table::parse(b""))),
        group: table(DbFile::Group).unwrap_or_else(|| Arc::new(Table::parse(b""))),
        shadow: table(DbFile::Shadow),
        gshadow: table(DbFile::Gshadow),
    };
    Ok(FileSet {
        files,
        originals,
        recovery: None,
    })
}

fn read_original(
    dir: &OwnedFd,
    path: &Path,
    f: DbFile,
) -> Result<Option<(Original, Vec<u8>)>, AccountsError> {
    let fd = match rustix::fs::openat(
        dir,
        f.name(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if !f.required() => return Ok(None),
        Err(Errno::NOENT) => return Err(AccountsError::Missing { path: path.into() }),
        Err(Errno::LOOP) => return Err(AccountsError::NotAFile { path: path.into() }),
        Err(e) => return Err(io("open", path, e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io("stat", path, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(AccountsError::NotAFile { path: path.into() });
    }
    if st.st_size as u64 > MAX_FILE_BYTES {
        return Err(AccountsError::TooLarge {
            path: path.into(),
            max: MAX_FILE_BYTES,
        });
    }
    let selinux = get_label(&fd);
    // the size is known (checked above): one allocation, no doubling
    let mut bytes = Vec::with_capacity(usize::try_from(st.st_size).unwrap_or(0) + 1);
    File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", path, e))?;
    let stamp = stamp(&st);
    let o = Original {
        stamp,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        atime: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        mtime: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
        selinux,
    };
    Ok(Some((o, bytes)))
}

fn get_label(fd: impl AsFd) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    match rustix::fs::fgetxattr(fd, SELINUX, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn temp_name() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    format!("{TEMP_PREFIX}{}", crate::item::hex(&b))
}

/// A temp file in `dir` holding `bytes`, with the original's owner, mode and label (and its
/// times, for a backup), fsynced. Removed again if anything fails.
fn write_temp(
    dir: &OwnedFd,
    etc: &Path,
    content: &Table,
    like: &Original,
    keep_times: bool,
) -> Result<String, AccountsError> {
    let name = temp_name();
    let path = etc.join(&name);
    let fd = rustix::fs::openat(
        dir,
        name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io("create", &path, e))?;
    let r = fill_temp(fd, content, like, keep_times).map_err(|e| io("write", &path, e));
    if r.is_err() {
        let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
    }
    r.map(|()| name)
}

fn fill_temp(
    fd: OwnedFd,
    content: &Table,
    like: &Original,
    keep_times: bool,
) -> std::io::Result<()> {
    match rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw_unchecked(like.uid)),
        Some(rustix::fs::Gid::from_raw_unchecked(like.gid)),
    ) {
        // Not root (tests): the file stays ours, as it was.
        Ok(()) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(like.mode))?;
    if let Some(label) = &like.selinux {
        let _ = rustix::fs::fsetxattr(&fd, SELINUX, label, rustix::fs::XattrFlags::empty());
    }
    let mut file = File::from(fd);
    content.write_to(&mut file)?;
    if keep_times {
        let t = Timestamps {
            last_access: like.atime,
            last_modification: like.mtime,
        };
        rustix::fs::futimens(&file, &t)?;
    }
    file.sync_all()
}

/// One file of an apply in the journal.
struct Entry {
    file: DbFile,
    new: String,
    backup: String,
    /// What the new file replaces: `stamp:INODE:SIZE:MTIME_S:MTIME_NS` of the target (or, in
    /// a journal of the previous release, the blake3 of its content).
    replaces: String,
}

/// The `replaces` field of a target with this stamp (its ctime changes with the backup's
/// link, its device number may change across a reboot: neither is part of it).
fn replaces_of(s: &Stamp) -> String {
    format!("stamp:{}:{}:{}:{}", s.ino, s.size, s.mtime.0, s.mtime.1)
}

/// The [`Stamp`] of a stat.
#[allow(
    clippy::unnecessary_cast,
    reason = "the field types of struct stat differ between architectures"
)]
fn stamp(st: &rustix::fs::Stat) -> Stamp {
    Stamp {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

/// The [`Stamp`] of one of the four files now (`None`: it does not exist).
fn stamp_of(dir: &OwnedFd, f: DbFile) -> Result<Option<Stamp>, AccountsError> {
    match rustix::fs::statat(dir, f.name(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(stamp(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io("stat", Path::new(f.name()), e)),
    }
}

/// Step 1: the temp files with the new contents (the backups are made under the locks).
fn stage(
    dir: &OwnedFd,
    etc: &Path,
    loaded: &FileSet,
    files: &AccountFiles,
    changed: &[DbFile],
    entries: &mut Vec<Entry>,
) -> Result<(), AccountsError> {
    for &f in changed {
        let (Some(orig), Some(new)) = (loaded.originals.get(&f), files.table(f)) else {
            continue;
        };
        let new = write_temp(dir, etc, new, orig, false)?;
        entries.push(Entry {
            file: f,
            new,
            backup: temp_name(),
            replaces: replaces_of(&orig.stamp),
        });
    }
    Ok(())
}

/// Step 3 (under the locks, the target checked unchanged): the backup temp as a second name
/// of the target, or a copy of what was read where hard links are refused.
fn backup(dir: &OwnedFd, etc: &Path, read: &FileSet, e: &mut Entry) -> Result<(), AccountsError> {
    match rustix::fs::linkat(dir, e.file.name(), dir, e.backup.as_str(), AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::PERM | Errno::XDEV | Errno::NOTSUP | Errno::MLINK) => {
            let (Some(orig), Some(table)) = (read.originals.get(&e.file), read.files.table(e.file))
            else {
                return Ok(());
            };
            e.backup = write_temp(dir, etc, table, orig, true)?;
            Ok(())
        }
        Err(err) => Err(io("link", &etc.join(&e.backup), err)),
    }
}

fn write_journal(dir: &OwnedFd, etc: &Path, entries: &[Entry]) -> Result<(), AccountsError> {
    let text: String = entries
        .iter()
        .map(|e| {
            format!(
                "{}\t{}\t{}\t{}\n",
                e.file.name(),
                e.new,
                e.backup,
                e.replaces
            )
        })
        .collect();
    let tmp = temp_name();
    let path = etc.join(&tmp);
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io("create", &path, e))?;
    let mut file = File::from(fd);
    let r = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &path, e))
        .and_then(|()| {
            rustix::fs::renameat(dir, tmp.as_str(), dir, JOURNAL)
                .map_err(|e| io("rename", &path, e))
        });
    if r.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    r?;
    sync_dir(dir, etc)
}

fn install(dir: &OwnedFd, etc: &Path, e: &Entry) -> Result<(), AccountsError> {
    rustix::fs::renameat(dir, e.backup.as_str(), dir, e.file.backup_name())
        .map_err(|err| io("rename", &etc.join(e.file.backup_name()), err))?;
    rustix::fs::renameat(dir, e.new.as_str(), dir, e.file.name())
        .map_err(|err| io("rename", &etc.join(e.file.name()), err))
}

fn sync_dir(dir: &OwnedFd, etc: &Path) -> Result<(), AccountsError> {
    rustix::fs::fsync(dir).map_err(|e| io("fsync", etc, e))
}

fn exists(dir: &OwnedFd, name: &str) -> Result<bool, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn parse_journal(text: &str, path: &Path) -> Result<Vec<Entry>, AccountsError> {
    let bad = |why: &str| AccountsError::Journal {
        path: path.into(),
        why: why.into(),
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        let [file, new, backup, replaces] = parts[..] else {
            return Err(bad("a line without its four fields"));
        };
        let file = DbFile::ALL
            .into_iter()
            .find(|f| f.name() == file)
            .ok_or_else(|| bad("an unknown file"))?;
        let temp_ok = |n: &str| n.starts_with(TEMP_PREFIX) && !n.contains('/') && n != JOURNAL;
        if !temp_ok(new) || !temp_ok(backup) {
            return Err(bad("a temp file name that is not ours"));
        }
        let hash = replaces.len() == 64 && replaces.bytes().all(|c| c.is_ascii_hexdigit());
        if !hash && parse_replaces(replaces).is_none() {
            return Err(bad("a bad hash"));
        }
        out.push(Entry {
            file,
            new: new.into(),
            backup: backup.into(),
            replaces: replaces.into(),
        });
    }
    Ok(out)
}

/// Inode, size and mtime of a `stamp:` journal field.
fn parse_replaces(s: &str) -> Option<(u64, u64, (i64, i64))> {
    let mut it = s.strip_prefix("stamp:")?.split(':');
    let ino = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    let sec = it.next()?.parse().ok()?;
    let nsec = it.next()?.parse().ok()?;
    it.next().is_none().then_some((ino, size, (sec, nsec)))
}

/// Finish (or give up) an apply that a crash interrupted; `None` when there was none.
fn recover(dir: &OwnedFd, etc: &Path) -> Result<Option<Recovery>, AccountsError> {
    let path = etc.join(JOURNAL);
    let text = match rustix::fs::openat(
        dir,
        JOURNAL,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut s = String::new();
            File::from(fd)
                .take(64 * 1024)
                .read_to_string(&mut s)
                .map_err(|e| io("read", &path, e))?;
            s
        }
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io("open", &path, e)),
    };
    let entries = parse_journal(&text, &path)?;
    let mut rec = Recovery::default();
    for e in &entries {
        let target = etc.join(e.file.name());
        if !exists(dir, &e.new).map_err(|err| io("stat", &etc.join(&e.new), err))? {
            rec.completed.push(e.file);
            continue;
        }
        let unchanged = match parse_replaces(&e.replaces) {
            Some(want) => stamp_of(dir, e.file)?.is_some_and(|s| (s.ino, s.size, s.mtime) == want),
            None => {
                let current = std::fs::read(&target).map_err(|err| io("read", &target, err))?;
                blake3::hash(&current).to_hex().as_str() == e.replaces
            }
        };
        if unchanged {
            if exists(dir, &e.backup).map_err(|err| io("stat", &etc.join(&e.backup), err))? {
                install(dir, etc, e)?;
            } else {
                rustix::fs::renameat(dir, e.new.as_str(), dir, e.file.name())
                    .map_err(|err| io("rename", &target, err))?;
            }
            rec.completed.push(e.file);
        } else {
            let _ = rustix::fs::unlinkat(dir, e.new.as_str(), AtFlags::empty());
            let _ = rustix::fs::unlinkat(dir, e.backup.as_str(), AtFlags::empty());
            rec.abandoned.push(e.file);
        }
    }
    sync_dir(dir, etc)?;
    rustix::fs::unlinkat(dir, JOURNAL, AtFlags::empty()).map_err(|e| io("remove", &path, e))?;
    sync_dir(dir, etc)?;
    Ok(Some(rec))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Hooks for the crash tests: stage a write and stop before its renames.
    use super::*;

    /// Files as if read from disk (no originals: a write of them does nothing).
    pub fn file_set(files: AccountFiles) -> FileSet {
        FileSet {
            files,
            originals: BTreeMap::new(),
            recovery: None,
        }
    }

    /// Do steps 1 and 3 of a write up to the journal (temps and journal) and stop, as a
    /// crash would.
    pub fn write_until_journal(
        db: &AccountDb,
        read: &FileSet,
        new: &AccountFiles,
    ) -> Result<(), AccountsError> {
        let etc = db.etc();
        let _lock = PwdLock::acquire(&etc, db.lock_timeout)?;
        let dir = open_etc(&etc)?;
        let changed: Vec<DbFile> = DbFile::ALL
            .into_iter()
            .filter(|&f| read.files.table(f) != new.table(f))
            .collect();
        let mut entries = Vec::new();
        stage(&dir, &etc, read, new, &changed, &mut entries)?;
        for e in entries.iter_mut() {
            backup(&dir, &etc, read, e)?;
        }
        write_journal(&dir, &etc, &entries)
    }
}
