//! Local change detection: compare what is on disk with the index and produce new versions.
//!
//! A scan is a **streaming merge** of two sorted sequences: a depth-first walk of the disk that
//! lists each directory's entries sorted by name (never following symlinks), and the range of
//! the index below the same path, which the store keeps in exactly that order (see
//! `store::enc`). Neither side is held in memory: a scan of 1,000,000 files needs the
//! memory of one directory listing per level and hands its changes over in batches
//! ([`Scanner::scan`]'s `flush` callback), so the first index of a large tree is committed as it
//! goes.
//!
//! Each entry is quick-checked against its index entry (kind, size, mtime, mode, owner, inode,
//! ctime); only what differs is read: a file whose inode, size and mtime are unchanged keeps its
//! content hash (a chmod, chown or attribute change reads no content), anything else is hashed
//! (FastCDC chunks and BLAKE3). Real differences become new versions: the node bumps its own
//! counter. Index entries with nothing on disk become tombstones, which are returned (not
//! flushed) so the caller can apply the mass-deletion guard to the whole scan and number them
//! deepest first.
//!
//! Invariants: a directory group path that is missing, or empty while the index knows live
//! entries below it, is never taken as "delete everything" ([`Scanner::guard`]); a file that
//! changes while it is being hashed is not recorded (it is reported as unstable and looked at
//! again later); an unreadable directory never turns into deletions of what is below it; an
//! index entry that the group's filter now excludes is forgotten, never deleted everywhere;
//! temporary files of an interrupted apply are removed when found.

use crate::config::{GroupConfig, Owners};
use crate::fs::chunk;
use crate::fs::safefs::TEMP_PREFIX;
use crate::fs::xattr::{self, XattrFilter};
use crate::item::{Body, Entry, Item, Kind, Meta, QuickStat, name};
use crate::local::filter::{Filter, Want};
use crate::local::owners::OwnerMap;
use crate::store::{Change, Store, StoreError};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Changes handed to the caller per batch during a scan.
pub const FLUSH_EVERY: usize = 10_000;
/// A smaller batch is handed over once this much time passed since the last one, so a long
/// first scan streams to peers while it goes on (each flush is one index commit).
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(100);
/// The first batch of a scan goes sooner, and each wait doubles up to [`FLUSH_AFTER`]: peers
/// start receiving at once and are never left idle while a long first scan goes on.
pub const FLUSH_FIRST: std::time::Duration = std::time::Duration::from_millis(10);
/// ... but never fewer changes than this at a time.
pub const FLUSH_MIN: usize = 256;

/// How long the scan waits after its `flushes`-th batch before handing over a smaller one.
fn flush_wait(flushes: u32) -> std::time::Duration {
    FLUSH_FIRST
        .saturating_mul(1u32 << flushes.min(16))
        .min(FLUSH_AFTER)
}

/// Entries that differ from the index are recorded this many at a time; the files among them
/// are read and hashed together, on several threads.
const HASH_BATCH: usize = 128;
/// ... or once this many bytes wait.
const HASH_BATCH_BYTES: u64 = 64 << 20;

/// An entry the walk met that differs from the index: a file whose content must be read is
/// observed later, with others, in parallel; the rest is observed at once (`seen`). All are
/// recorded in walk order.
struct Deferred {
    key: Vec<u8>,
    md: Metadata,
    old: Option<Entry>,
    seen: Option<Result<Option<Observed>, ObserveError>>,
}

/// Entries waiting to be recorded, in walk order.
#[derive(Default)]
struct Pending {
    entries: Vec<Deferred>,
    bytes: u64,
}

impl Pending {
    fn full(&self) -> bool {
        self.entries.len() >= HASH_BATCH || self.bytes >= HASH_BATCH_BYTES
    }
}

/// Everything a scan needs to know about its group and node.
pub struct Scanner<'a> {
    /// This node's name: the origin of the versions it makes and its key in vectors.
    pub node: &'a str,
    /// The clock floor of new version counters (see `item::version`).
    pub clock: u64,
    pub root: &'a Path,
    pub group: &'a GroupConfig,
    pub filter: &'a Filter,
    pub store: &'a Store,
    pub owners: &'a OwnerMap,
    /// Which extended attributes to read (`xattrs = true`), or none.
    pub xattrs: Option<&'a XattrFilter>,
}

/// What a scan found besides the changes it flushed.
#[derive(Default, Debug)]
pub struct ScanOut {
    /// Changes not flushed yet (new versions and local refreshes).
    pub changes: Vec<Change>,
    /// Index keys with nothing on disk any more, in walk order (parents before children).
    pub gone: Vec<Vec<u8>>,
    /// Index keys the filter now excludes: to be forgotten, not deleted.
    pub forget: Vec<Vec<u8>>,
    /// Paths that changed while being read: look again later.
    pub unstable: Vec<Vec<u8>>,
    /// Entries that could not be read, with the reason.
    pub errors: Vec<String>,
    /// Special files (sockets, FIFOs, devices) that were skipped.
    pub skipped: Vec<Vec<u8>>,
    /// Live index entries below the scanned path (for the mass-deletion guard).
    pub live_known: usize,
    /// Set when the group must stop on this node (missing or emptied group path).
    pub stopped: Option<String>,
    /// New versions made (flushed or not).
    pub announced: usize,
}

/// Local state of an entry as a full read sees it.
pub struct Observed {
    pub meta: Meta,
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
}

pub fn kind_of(md: &Metadata) -> Option<Kind> {
    let ft = md.file_type();
    if ft.is_file() {
        Some(Kind::File)
    } else if ft.is_dir() {
        Some(Kind::Dir)
    } else if ft.is_symlink() {
        Some(Kind::Symlink)
    } else {
        None
    }
}

/// Does the quick-check view still describe what `md` shows, without reading content?
pub fn quick_match(q: &QuickStat, md: &Metadata) -> bool {
    quick_same(
        q,
        &QuickStat {
            live: true,
            kind: kind_of(md),
            size: md.len(),
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            ino: md.ino(),
            ctime_s: md.ctime(),
            ctime_ns: md.ctime_nsec() as u32,
        },
    )
}

/// [`quick_match`] for a `statat` of a resolved place (no walk of the path again).
pub fn quick_match_stat(q: &QuickStat, st: &rustix::fs::Stat) -> bool {
    quick_same(q, &quick_of_stat(st))
}

/// The quick-check view of a `stat` result (`mode` with its file type bits).
// `time_t` is `i64` here but not on every target
#[allow(clippy::unnecessary_cast)]
pub fn quick_of_stat(st: &rustix::fs::Stat) -> QuickStat {
    use rustix::fs::FileType;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Some(Kind::File),
        FileType::Directory => Some(Kind::Dir),
        FileType::Symlink => Some(Kind::Symlink),
        _ => None,
    };
    QuickStat {
        live: true,
        kind,
        size: st.st_size as u64,
        mtime_s: st.st_mtime as i64,
        mtime_ns: st.st_mtime_nsec as u32,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        ino: st.st_ino,
        ctime_s: st.st_ctime as i64,
        ctime_ns: st.st_ctime_nsec as u32,
    }
}

/// The index's view `q` against what is on disk now (`now.mode` with its file type bits).
fn quick_same(q: &QuickStat, now: &QuickStat) -> bool {
    q.live
        && q.kind == now.kind
        && q.ino == now.ino
        && q.ctime_s == now.ctime_s
        && q.ctime_ns == now.ctime_ns
        && q.mtime_s == now.mtime_s
        && q.mtime_ns == now.mtime_ns
        && (q.kind != Some(Kind::File) || q.size == now.size)
        && (q.kind == Some(Kind::Symlink) || q.mode == now.mode & 0o7777)
        && q.uid == now.uid
        && q.gid == now.gid
}

/// Why an entry could not be observed.
pub enum ObserveError {
    /// It changed while being read.
    Unstable,
    Io(std::io::Error),
}

fn xerr(e: xattr::XattrError) -> ObserveError {
    ObserveError::Io(std::io::Error::other(e.to_string()))
}

/// Observe the entry at real path `real` with lstat metadata `md`. `Ok(None)`: an unsupported
/// type (socket, FIFO, device). `reuse`: the previous metadata, whose content identity is kept
/// when inode, size and mtime did not change, and whose chunking scheme a changed file keeps
/// (`chunk::params_like`).
pub fn observe(
    real: &Path,
    md: &Metadata,
    owners: &OwnerMap,
    xattrs: Option<&XattrFilter>,
    reuse: Option<(&Meta, u64)>,
) -> Result<Option<Observed>, ObserveError> {
    let Some(kind) = kind_of(md) else {
        return Ok(None);
    };
    let mut hash = [0u8; 32];
    let mut target = None;
    let mut chunks = Vec::new();
    let mut size = 0;
    let mut attrs = Vec::new();
    let mut md = md.clone();
    match kind {
        Kind::File => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(real)
                .map_err(ObserveError::Io)?;
            let before = f.metadata().map_err(ObserveError::Io)?;
            if before.ino() != md.ino() || !before.is_file() {
                return Err(ObserveError::Unstable);
            }
            if let Some(filter) = xattrs {
                attrs = xattr::read_fd(&f, filter, owners).map_err(xerr)?;
            }
            let same_content = reuse.filter(|(m, ino)| {
                m.kind == Kind::File
                    && *ino == before.ino()
                    && m.size == before.len()
                    && m.mtime_s == before.mtime()
                    && m.mtime_ns == before.mtime_nsec() as u32
            });
            if let Some((m, _)) = same_content {
                hash = m.hash;
                size = m.size;
                chunks = m.chunks.clone();
                md = before;
            } else {
                // no buffer of our own: small files are read whole, FastCDC buffers the rest;
                // cut like the previous version, so an edit shares the chunks around it
                let previous = reuse
                    .filter(|(m, _)| m.kind == Kind::File)
                    .map_or(&[][..], |(m, _)| &m.chunks[..]);
                let params = chunk::params_like(before.len(), previous);
                let c = chunk::identify_with(&f, before.len(), params).map_err(ObserveError::Io)?;
                let after = f.metadata().map_err(ObserveError::Io)?;
                if after.len() != before.len()
                    || after.mtime() != before.mtime()
                    || after.mtime_nsec() != before.mtime_nsec()
                    || c.size != after.len()
                {
                    return Err(ObserveError::Unstable);
                }
                md = after;
                hash = c.hash;
                size = c.size;
                chunks = c.chunks;
            }
        }
        Kind::Symlink => {
            let t = std::fs::read_link(real).map_err(ObserveError::Io)?;
            let t = t.into_os_string().as_bytes().to_vec();
            hash = chunk::hash(&t);
            size = t.len() as u64;
            target = Some(t);
            if let Some(filter) = xattrs {
                attrs = xattr::read_path_nofollow(real, filter, owners).map_err(xerr)?;
            }
        }
        Kind::Dir => {
            if let Some(filter) = xattrs {
                let d = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                    .open(real)
                    .map_err(ObserveError::Io)?;
                attrs = xattr::read_fd(&d, filter, owners).map_err(xerr)?;
            }
        }
    }
    Ok(Some(Observed {
        meta: Meta {
            kind,
            mode: if kind == Kind::Symlink {
                0
            } else {
                md.mode() & 0o7777
            },
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            size,
            owner: owners.describe(md.uid(), md.gid()),
            hash,
            target,
            chunks,
            xattrs: attrs,
        },
        ino: md.ino(),
        ctime_s: md.ctime(),
        ctime_ns: md.ctime_nsec() as u32,
    }))
}

/// The disk side of the merge: the next directory entry in walk order.
struct Frame {
    /// Logical path of the directory.
    dir: Vec<u8>,
    /// Its entries sorted by name (each with its directory entry, which stats it relative to
    /// the open directory instead of walking the whole path again), and the position of the
    /// next one.
    names: Vec<(Vec<u8>, Option<std::fs::DirEntry>)>,
    next: usize,
}

impl<'a> Scanner<'a> {
    fn compare_owner(&self) -> bool {
        self.group.owners != Owners::Ignore
    }

    /// Turn an observation into a change against the index entry `old`, if anything differs.
    pub fn change_for(&self, key: &[u8], old: Option<&Entry>, obs: Observed) -> Option<Change> {
        let same = old
            .and_then(|o| o.item.meta())
            .is_some_and(|m| m.same_synced(&obs.meta, self.compare_owner()));
        if same {
            let old = old?;
            if old.ino == obs.ino && old.ctime_s == obs.ctime_s && old.ctime_ns == obs.ctime_ns {
                return None;
            }
            let mut e = old.clone();
            e.ino = obs.ino;
            e.ctime_s = obs.ctime_s;
            e.ctime_ns = obs.ctime_ns;
            // keep the exact synced metadata, refresh only what the quick check uses
            if let Some(m) = e.item.meta_mut() {
                m.owner.uid = obs.meta.owner.uid;
                m.owner.gid = obs.meta.owner.gid;
            }
            return Some(Change {
                entry: e,
                announce: false,
            });
        }
        let fresh = !old
            .and_then(|o| o.item.meta())
            .is_some_and(|m| m.same_data(&obs.meta));
        let mut version = old.map(|o| o.item.version.clone()).unwrap_or_default();
        version.bump(self.node, self.clock);
        Some(Change {
            entry: Entry {
                item: Item {
                    key: key.to_vec(),
                    version,
                    origin: self.node.to_string(),
                    body: Some(Body::Fs(obs.meta)),
                    beat: vec![],
                },
                seq: 0,
                ino: obs.ino,
                ctime_s: obs.ctime_s,
                ctime_ns: obs.ctime_ns,
                from: None,
                fresh,
            },
            announce: true,
        })
    }

    /// A tombstone for a live entry that is gone from disk.
    pub fn tombstone(&self, old: &Entry) -> Change {
        let mut version = old.item.version.clone();
        version.bump(self.node, self.clock);
        Change {
            entry: Entry::new(Item {
                key: old.item.key.clone(),
                version,
                origin: self.node.to_string(),
                body: None,
                beat: vec![],
            }),
            announce: true,
        }
    }

    /// Is the group path `gp` in a state that must stop the group? Returns the reason.
    pub fn guard(&self, gp: &str) -> Result<Option<String>, StoreError> {
        let real = name::real(self.root, gp.as_bytes());
        let Some(root_entry) = self.store.get_quick(&self.group.name, gp.as_bytes())? else {
            return Ok(None);
        };
        if root_entry.kind != Some(Kind::Dir) || !root_entry.live {
            return Ok(None);
        }
        match std::fs::metadata(&real) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(format!(
                "group path {gp} ({}) is missing; refusing to treat that as deleting everything (mount or restore it and the group resumes by itself; if it is gone for good, stop the daemon and run `clustersync reset {}`)",
                real.display(),
                self.group.name
            ))),
            Err(e) => Ok(Some(format!("group path {gp} ({}): {e}", real.display()))),
            Ok(md) if !md.is_dir() => Ok(Some(format!(
                "group path {gp} ({}) is no longer a directory (put the directory back; to start the group over on this node, stop the daemon and run `clustersync reset {}`)",
                real.display(),
                self.group.name
            ))),
            Ok(_) => {
                let empty = std::fs::read_dir(&real)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty && self.store.any_live_below(&self.group.name, gp.as_bytes())? {
                    Ok(Some(format!(
                        "group path {gp} ({}) is empty but the index knows files there (unmounted disk? wiped directory?); refusing to delete them everywhere (mount or restore it and the group resumes by itself; if it was emptied on purpose, stop the daemon and run `clustersync reset {}`)",
                        real.display(),
                        self.group.name
                    )))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// After the group was stopped: is the group path back as it was (a remount), rather than
    /// refilled after a wipe? Returns the reason to stay stopped.
    pub fn resume_check(&self, gp: &str) -> Result<Option<String>, StoreError> {
        let (mut live, mut present) = (0usize, 0usize);
        for r in self.store.quick_below(&self.group.name, gp.as_bytes())? {
            let (k, q) = r?;
            if !q.live {
                continue;
            }
            live += 1;
            if std::fs::symlink_metadata(name::real(self.root, &k)).is_ok() {
                present += 1;
            }
            if live >= 10_000 {
                break;
            }
        }
        if live >= 2 && present * 2 < live {
            return Ok(Some(format!(
                "group path {gp} is back but holds only {present} of {live} known entries; if it was wiped on purpose, start this group over on this node: stop the daemon, run `clustersync reset {}`, start it (it then receives everything and deletes nothing)",
                self.group.name
            )));
        }
        Ok(None)
    }

    /// Scan logical path `target` (inside group path `gp`); `recursive` walks below it.
    /// `flush` receives batches of new versions and refreshes as the walk goes (each batch is
    /// in walk order); what is left, and every deletion, is in the returned [`ScanOut`].
    pub fn scan(
        &self,
        gp: &str,
        target: &[u8],
        recursive: bool,
        flush: &mut dyn FnMut(Vec<Change>) -> Result<(), StoreError>,
    ) -> Result<ScanOut, StoreError> {
        let mut out = ScanOut::default();
        let mut pending = Pending::default();
        let real = name::real(self.root, target);
        let md = std::fs::symlink_metadata(&real);
        // the guard matters where a scan can find entries gone: a walk, or a missing target
        // (a single path that exists cannot be inside a missing or empty group path); the
        // watcher's scans of single files skip its directory read and index lookups
        if (recursive || md.is_err())
            && let Some(reason) = self.guard(gp)?
        {
            out.stopped = Some(reason);
            return Ok(out);
        }
        let group = self.group.name.as_str();
        let is_dir = md.as_ref().map(|m| m.is_dir()).unwrap_or(false);
        let want = if target == gp.as_bytes() || self.filter.accepts(gp, target, is_dir) {
            Want::Sync
        } else if is_dir && self.group.include.is_empty() {
            Want::Skip
        } else {
            self.filter.want(gp, target, is_dir)
        };
        // the target itself
        let known = self.store.get_quick(group, target)?;
        match (&md, want) {
            (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
                if known.is_some_and(|q| q.live) {
                    out.gone.push(target.to_vec());
                }
            }
            (Err(e), _) => {
                out.errors.push(format!("{}: {e}", name::show(target)));
                return Ok(out);
            }
            (Ok(_), Want::Skip) => {
                if known.is_some() {
                    out.forget.push(target.to_vec());
                }
            }
            (Ok(md), Want::Sync) => {
                self.visit(target, md, known.as_ref(), &mut pending)?;
                self.drain(&mut pending, &mut out);
            }
            (Ok(_), Want::Traverse) => {}
        }
        if !recursive {
            return Ok(out);
        }
        let mut last_flush = std::time::Instant::now();
        let mut flushes = 0u32;
        let mut index = self.store.quick_below(group, target)?.peekable();
        let mut pending_gone: Vec<Vec<u8>> = Vec::new();
        let descend = md.as_ref().is_ok_and(|m| m.is_dir()) && want != Want::Skip;
        let mut stack: Vec<Frame> = Vec::new();
        if descend {
            match self.list(target) {
                Ok(names) => stack.push(Frame {
                    dir: target.to_vec(),
                    names,
                    next: 0,
                }),
                Err(e) => {
                    out.errors.push(format!("{}: {e}", name::show(target)));
                    return Ok(out);
                }
            }
        } else if md.is_ok() && want == Want::Skip {
            // excluded now: forget what the index knew below it
            for r in index {
                out.forget.push(r?.0);
            }
            return Ok(out);
        }
        while let Some(top) = stack.last_mut() {
            let Some((n, de)) = top
                .names
                .get_mut(top.next)
                .map(|(n, de)| (std::mem::take(n), de.take()))
            else {
                stack.pop();
                continue;
            };
            top.next += 1;
            let child = name::join(&top.dir, &n);
            let ck = crate::store::enc(&child);
            // index keys before this child that the walk did not meet: gone from disk
            while let Some(r) = index.peek() {
                let (k, q) = match r {
                    Ok(x) => x,
                    Err(_) => {
                        if let Some(Err(e)) = index.next() {
                            return Err(e);
                        }
                        continue;
                    }
                };
                if crate::store::enc(k) >= ck {
                    break;
                }
                if q.live {
                    out.live_known += 1;
                    pending_gone.push(k.clone());
                }
                index.next();
            }
            let known = match index.peek() {
                Some(Ok((k, q))) if *k == child => {
                    let q = *q;
                    index.next();
                    if q.live {
                        out.live_known += 1;
                    }
                    Some(q)
                }
                _ => None,
            };
            let stat = match de {
                // fstatat(dir, name, AT_SYMLINK_NOFOLLOW)
                Some(de) => de.metadata(),
                None => std::fs::symlink_metadata(name::real(self.root, &child)),
            };
            let cmd = match stat {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // vanished between the listing and now
                    if known.is_some_and(|q| q.live) {
                        pending_gone.push(child);
                    }
                    continue;
                }
                Err(e) => {
                    out.errors.push(format!("{}: {e}", name::show(&child)));
                    self.skip_below(&child, &mut index, &mut out)?;
                    continue;
                }
            };
            let w = self.filter.want(gp, &child, cmd.is_dir());
            match w {
                Want::Skip => {
                    if known.is_some() {
                        out.forget.push(child.clone());
                    }
                    // what the index knew below an excluded directory is forgotten too
                    let (_, hi) = crate::store::subtree_range(&child);
                    while let Some(Ok((k, _))) = index.peek() {
                        if crate::store::enc(k) >= hi {
                            break;
                        }
                        out.forget.push(k.clone());
                        index.next();
                    }
                    continue;
                }
                Want::Sync => self.visit(&child, &cmd, known.as_ref(), &mut pending)?,
                Want::Traverse => {}
            }
            if pending.full() {
                self.drain(&mut pending, &mut out);
            }
            if cmd.is_dir() {
                match self.list(&child) {
                    Ok(names) => stack.push(Frame {
                        dir: child,
                        names,
                        next: 0,
                    }),
                    Err(e) => {
                        out.errors.push(format!("{}: {e}", name::show(&child)));
                        self.skip_below(&child, &mut index, &mut out)?;
                    }
                }
            }
            if out.changes.len() + pending.entries.len() >= FLUSH_MIN
                && (out.changes.len() + pending.entries.len() >= FLUSH_EVERY
                    || last_flush.elapsed() >= flush_wait(flushes))
            {
                self.drain(&mut pending, &mut out);
                flush(std::mem::take(&mut out.changes))?;
                last_flush = std::time::Instant::now();
                flushes += 1;
            }
        }
        self.drain(&mut pending, &mut out);
        for r in index {
            let (k, q) = r?;
            if q.live {
                out.live_known += 1;
                pending_gone.push(k);
            }
        }
        out.gone.extend(pending_gone);
        Ok(out)
    }

    /// Advance the index past everything below `dir` without taking it as gone (an unreadable
    /// directory keeps what we knew).
    fn skip_below(
        &self,
        dir: &[u8],
        index: &mut std::iter::Peekable<crate::store::QuickRange>,
        out: &mut ScanOut,
    ) -> Result<(), StoreError> {
        let (_, hi) = crate::store::subtree_range(dir);
        while let Some(r) = index.peek() {
            match r {
                Ok((k, q)) => {
                    if crate::store::enc(k) >= hi {
                        break;
                    }
                    if q.live {
                        out.live_known += 1;
                    }
                    index.next();
                }
                Err(_) => {
                    if let Some(Err(e)) = index.next() {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The names in directory `dir`, sorted (temporary files of an interrupted apply are
    /// removed on the way).
    fn list(&self, dir: &[u8]) -> std::io::Result<Vec<(Vec<u8>, Option<std::fs::DirEntry>)>> {
        let real = name::real(self.root, dir);
        let mut names = Vec::new();
        for de in std::fs::read_dir(&real)? {
            let de = de?;
            let n = de.file_name();
            let n = n.as_bytes();
            if n.starts_with(TEMP_PREFIX.as_bytes()) {
                let _ = std::fs::remove_file(de.path());
                continue;
            }
            names.push((n.to_vec(), Some(de)));
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(names)
    }

    /// Compare one existing entry with what the index knew; one that differs is queued in
    /// `pending` to be recorded in walk order ([`Scanner::drain`]): a file whose content must
    /// be read is observed there, the rest at once.
    fn visit(
        &self,
        key: &[u8],
        md: &Metadata,
        known: Option<&QuickStat>,
        pending: &mut Pending,
    ) -> Result<(), StoreError> {
        if known.is_some_and(|q| quick_match(q, md)) {
            return Ok(());
        }
        let old = if known.is_some() {
            self.store.get(&self.group.name, key)?
        } else {
            None
        };
        let seen = if md.is_file() {
            pending.bytes += md.len();
            None
        } else {
            Some(self.observe_one(key, md, old.as_ref()))
        };
        pending.entries.push(Deferred {
            key: key.to_vec(),
            md: md.clone(),
            old,
            seen,
        });
        Ok(())
    }

    fn observe_one(
        &self,
        key: &[u8],
        md: &Metadata,
        old: Option<&Entry>,
    ) -> Result<Option<Observed>, ObserveError> {
        let reuse = old.and_then(|o| o.item.meta().map(|m| (m, o.ino)));
        observe(
            &name::real(self.root, key),
            md,
            self.owners,
            self.xattrs,
            reuse,
        )
    }

    /// Observe the queued entries (the files' content read and hashed on several threads when
    /// there are enough, see [`crate::fs::par::threads`]) and record them in walk order.
    fn drain(&self, pending: &mut Pending, out: &mut ScanOut) {
        let entries = std::mem::take(&mut pending.entries);
        let bytes = std::mem::take(&mut pending.bytes);
        if entries.is_empty() {
            return;
        }
        let reads: Vec<&Deferred> = entries.iter().filter(|d| d.seen.is_none()).collect();
        // a thread costs more than reading a few small files
        let threads = if reads.len() >= 8 || bytes >= 4 << 20 {
            crate::fs::par::threads()
        } else {
            1
        };
        let mut read = crate::fs::par::map(reads, threads, |d: &Deferred| {
            self.observe_one(&d.key, &d.md, d.old.as_ref())
        })
        .into_iter();
        for d in entries {
            let r = match d.seen {
                Some(r) => r,
                // a worker that panicked: looked at again later
                None => read.next().flatten().unwrap_or(Err(ObserveError::Unstable)),
            };
            self.record(&d.key, d.old.as_ref(), r, out);
        }
    }

    /// What an observation means for the scan's output.
    fn record(
        &self,
        key: &[u8],
        old: Option<&Entry>,
        r: Result<Option<Observed>, ObserveError>,
        out: &mut ScanOut,
    ) {
        match r {
            Ok(Some(obs)) => {
                if let Some(c) = self.change_for(key, old, obs) {
                    if c.announce {
                        out.announced += 1;
                    }
                    out.changes.push(c);
                }
            }
            Ok(None) => {
                out.skipped.push(key.to_vec());
                if old.is_some_and(|o| !o.item.is_deleted()) {
                    out.gone.push(key.to_vec());
                }
            }
            Err(ObserveError::Unstable) => out.unstable.push(key.to_vec()),
            Err(ObserveError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                out.unstable.push(key.to_vec())
            }
            Err(ObserveError::Io(e)) => out.errors.push(format!("{}: {e}", name::show(key))),
        }
    }

    /// Tombstones for keys found gone, deepest first (so their sequence numbers put children
    /// before parents and a receiver never meets a directory's deletion before its content's).
    pub fn tombstones(&self, gone: &[Vec<u8>]) -> Result<Vec<Change>, StoreError> {
        let mut keys: Vec<&Vec<u8>> = gone.iter().collect();
        keys.sort_unstable_by_key(|k| std::cmp::Reverse(crate::store::enc(k)));
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(e) = self.store.get(&self.group.name, k)?
                && !e.item.is_deleted()
            {
                out.push(self.tombstone(&e));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Extras;

    #[test]
    fn the_first_batches_of_a_scan_go_sooner() {
        use std::time::Duration;
        let waits: Vec<Duration> = (0..6).map(flush_wait).collect();
        assert_eq!(waits[0], FLUSH_FIRST);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[5], FLUSH_AFTER);
        assert_eq!(flush_wait(u32::MAX), FLUSH_AFTER);
    }

    fn setup() -> (tempfile::TempDir, crate::config::Config) {
        let d = tempfile::tempdir().unwrap();
        let text = "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv\"]\nexclude = [\"*.tmp\"]\n";
        let c = crate::config::Config::parse(text, Path::new("t.toml")).unwrap();
        std::fs::create_dir_all(d.path().join("root/srv")).unwrap();
        (d, c)
    }

    fn run(s: &Scanner, target: &[u8]) -> (Vec<Change>, ScanOut) {
        let mut all = Vec::new();
        let mut out = s
            .scan("/srv", target, true, &mut |b| {
                all.extend(b);
                Ok(())
            })
            .unwrap();
        all.append(&mut out.changes);
        (all, out)
    }

    #[test]
    fn merge_scan_finds_creates_changes_and_deletes_in_walk_order() {
        let (d, cfg) = setup();
        let root = d.path().join("root");
        let g = &cfg.groups["g"];
        let filter = Filter::new(g).unwrap();
        let store = Store::open(&d.path().join("i.redb")).unwrap();
        let owners = OwnerMap::default();
        let s = Scanner {
            node: "a",
            clock: 1,
            root: &root,
            group: g,
            filter: &filter,
            store: &store,
            owners: &owners,
            xattrs: None,
        };
        for p in ["srv/a/b", "srv/a-c", "srv/b"] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        std::fs::write(root.join("srv/a/b/f"), "x").unwrap();
        std::fs::write(root.join("srv/a/x.tmp"), "x").unwrap();
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"srv/caf\xe9")), "y").unwrap();
        let (changes, out) = run(&s, b"/srv");
        let keys: Vec<String> = changes
            .iter()
            .map(|c| name::show(&c.entry.item.key).into_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "/srv",
                "/srv/a",
                "/srv/a/b",
                "/srv/a/b/f",
                "/srv/a-c",
                "/srv/b",
                "/srv/caf\\xe9"
            ]
        );
        assert!(out.gone.is_empty());
        store.commit("g", changes, Extras::default()).unwrap();
        // nothing changed: nothing found
        let (changes, out) = run(&s, b"/srv");
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(out.live_known, 6);
        // a tree removed: every entry of it is gone, tombstones deepest first
        std::fs::remove_dir_all(root.join("srv/a")).unwrap();
        let (_, out) = run(&s, b"/srv");
        let t = s.tombstones(&out.gone).unwrap();
        let keys: Vec<&[u8]> = t.iter().map(|c| c.entry.item.key.as_slice()).collect();
        assert_eq!(keys, [&b"/srv/a/b/f"[..], b"/srv/a/b", b"/srv/a"]);
        assert!(t.iter().all(|c| c.entry.item.is_deleted()));
        // a chmod reads no content and makes a new version
        let mut p = std::fs::metadata(root.join("srv/b")).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        p.set_mode(0o700);
        std::fs::set_permissions(root.join("srv/b"), p).unwrap();
        let (changes, _) = run(&s, b"/srv");
        assert_eq!(
            changes.len(),
            2,
            "the dir and its parent's mtime? {changes:?}"
        );
    }
}
