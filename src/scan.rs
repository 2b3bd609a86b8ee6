//! Local change detection: compare what is on disk with the index and produce new versions.
//!
//! A scan walks a path (a whole group path at start-up and on rescans, or just the paths the
//! watcher reported) without following symlinks, quick-checks each entry against its index
//! entry (kind, size, mtime, mode, owner, inode, ctime), hashes only what differs, and turns
//! real differences into new versions: the node bumps its own counter in the version vector.
//! Entries known to the index but gone from disk become tombstones.
//!
//! Invariants: a directory group path that is missing, or empty while the index knows live
//! entries below it, is never taken as "delete everything": the scan reports the group as
//! stopped instead. A file that changes while it is being hashed is not recorded (it is
//! reported as unstable and looked at again later). Temporary files of an interrupted apply
//! are removed when found.

use crate::chunk;
use crate::config::{GroupConfig, Owners};
use crate::filter::{Filter, Want};
use crate::index::{Change, Index, IndexError};
use crate::owners::OwnerMap;
use crate::record::{Entry, Kind, Meta, QuickStat, Record};
use crate::safefs::TEMP_PREFIX;
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Everything a scan needs to know about its group and node.
pub struct ScanCtx<'a> {
    /// This node's name (the origin of the versions it makes).
    pub node: &'a str,
    /// This node's key in version vectors: its name plus the id of its index, so a node that
    /// starts over with a new index never reuses counters it gave out before.
    pub vv_key: &'a str,
    pub root: &'a Path,
    pub group: &'a GroupConfig,
    pub filter: &'a Filter,
    pub index: &'a Index,
    pub owners: &'a OwnerMap,
}

/// What a scan found.
#[derive(Default, Debug)]
pub struct ScanResult {
    pub changes: Vec<Change>,
    /// Paths that changed while being read: look again later.
    pub unstable: Vec<String>,
    /// Entries that could not be read, with the reason.
    pub errors: Vec<String>,
    /// Special files (sockets, FIFOs, devices) and unsupported names that were skipped.
    pub skipped: Vec<String>,
    /// Set when the group must stop on this node (missing or emptied group path).
    pub stopped: Option<String>,
}

impl ScanResult {
    /// Number of changes that are new versions.
    pub fn announced(&self) -> usize {
        self.changes.iter().filter(|c| c.announce).count()
    }
}

/// Local state of an entry as the quick check sees it.
pub struct Observed {
    pub meta: Meta,
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
}

fn kind_of(md: &Metadata) -> Option<Kind> {
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

/// What a scan knows of an indexed path: its quick-check view and whether it was seen.
pub struct Known {
    q: QuickStat,
    seen: bool,
}

/// Does the quick-check view still describe what `md` shows, without reading content?
pub fn quick_match_stat(q: &QuickStat, md: &Metadata) -> bool {
    q.live
        && q.kind == kind_of(md)
        && q.ino == md.ino()
        && q.ctime_s == md.ctime()
        && q.ctime_ns == md.ctime_nsec() as u32
        && q.mtime_s == md.mtime()
        && q.mtime_ns == md.mtime_nsec() as u32
        && (q.kind != Some(Kind::File) || q.size == md.len())
        && (q.kind == Some(Kind::Symlink) || q.mode == md.mode() & 0o7777)
        && q.uid == md.uid()
        && q.gid == md.gid()
}

/// Does the index entry still describe what `md` shows, without reading content?
pub fn quick_match(e: &Entry, md: &Metadata) -> bool {
    let Some(m) = &e.rec.meta else {
        return false;
    };
    Some(m.kind) == kind_of(md)
        && e.ino == md.ino()
        && e.ctime_s == md.ctime()
        && e.ctime_ns == md.ctime_nsec() as u32
        && m.mtime_s == md.mtime()
        && m.mtime_ns == md.mtime_nsec() as u32
        && (m.kind != Kind::File || m.size == md.len())
        && (m.kind == Kind::Symlink || m.mode == md.mode() & 0o7777)
        && m.owner.uid == md.uid()
        && m.owner.gid == md.gid()
}

/// Read an entry's full state (hashing a file's content). `Ok(None)`: unsupported type.
/// `Err(None)`-like instability is reported as `Unstable`.
pub enum ObserveError {
    Unstable,
    Io(std::io::Error),
}

/// Observe the entry at real path `real` with lstat metadata `md`.
pub fn observe(
    real: &Path,
    md: &Metadata,
    owners: &OwnerMap,
) -> Result<Option<Observed>, ObserveError> {
    let Some(kind) = kind_of(md) else {
        return Ok(None);
    };
    let mut hash = [0u8; 32];
    let mut target = None;
    let mut chunks = Vec::new();
    let mut size = 0;
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
            let c = chunk::identify(
                std::io::BufReader::with_capacity(256 * 1024, &f),
                before.len(),
            )
            .map_err(ObserveError::Io)?;
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
        Kind::Symlink => {
            let t = std::fs::read_link(real).map_err(ObserveError::Io)?;
            let t = t
                .into_os_string()
                .into_string()
                .map_err(|_| ObserveError::Io(std::io::Error::other("link text is not UTF-8")))?;
            hash = chunk::hash(t.as_bytes());
            size = t.len() as u64;
            target = Some(t);
        }
        Kind::Dir => {}
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
        },
        ino: md.ino(),
        ctime_s: md.ctime(),
        ctime_ns: md.ctime_nsec() as u32,
    }))
}

impl<'a> ScanCtx<'a> {
    fn compare_owner(&self) -> bool {
        self.group.owners != Owners::Ignore
    }

    /// Turn an observation into a change against the index entry `old`, if anything differs.
    pub fn change_for(&self, path: &str, old: Option<&Entry>, obs: Observed) -> Option<Change> {
        let same = old
            .and_then(|o| o.rec.meta.as_ref())
            .is_some_and(|m| m.same_all(&obs.meta, self.compare_owner()));
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
            if let Some(m) = e.rec.meta.as_mut() {
                m.owner.uid = obs.meta.owner.uid;
                m.owner.gid = obs.meta.owner.gid;
                m.mtime_s = obs.meta.mtime_s;
                m.mtime_ns = obs.meta.mtime_ns;
            }
            return Some(Change {
                entry: e,
                announce: false,
            });
        }
        let mut version = old.map(|o| o.rec.version.clone()).unwrap_or_default();
        version.bump(self.vv_key);
        Some(Change {
            entry: Entry {
                rec: Record {
                    path: path.to_string(),
                    version,
                    origin: self.node.to_string(),
                    meta: Some(obs.meta),
                    beat: vec![],
                },
                seq: 0,
                ino: obs.ino,
                ctime_s: obs.ctime_s,
                ctime_ns: obs.ctime_ns,

                from: None,
            },
            announce: true,
        })
    }

    /// A tombstone for a live entry that is gone from disk.
    pub fn tombstone(&self, old: &Entry) -> Change {
        let mut version = old.rec.version.clone();
        version.bump(self.vv_key);
        Change {
            entry: Entry {
                rec: Record {
                    path: old.rec.path.clone(),
                    version,
                    origin: self.node.to_string(),
                    meta: None,
                    beat: vec![],
                },
                seq: 0,
                ino: 0,
                ctime_s: 0,
                ctime_ns: 0,

                from: None,
            },
            announce: true,
        }
    }

    /// Is the group path `gp` in a state that must stop the group? Returns the reason.
    pub fn guard(&self, gp: &str) -> Result<Option<String>, IndexError> {
        let real = crate::paths::real(self.root, gp);
        let Some(root_entry) = self.index.get(&self.group.name, gp)? else {
            return Ok(None);
        };
        if root_entry.rec.kind() != Some(Kind::Dir) {
            return Ok(None);
        }
        let live_below = self.index.any_live_below(&self.group.name, gp)?;
        match std::fs::metadata(&real) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(format!(
                "group path {gp} ({}) is missing; refusing to treat that as deleting everything",
                real.display()
            ))),
            Err(e) => Ok(Some(format!("group path {gp} ({}): {e}", real.display()))),
            Ok(md) if !md.is_dir() => Ok(Some(format!(
                "group path {gp} ({}) is no longer a directory",
                real.display()
            ))),
            Ok(_) => {
                if !live_below {
                    return Ok(None);
                }
                let empty = std::fs::read_dir(&real)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty {
                    Ok(Some(format!(
                        "group path {gp} ({}) is empty but the index knows files there (unmounted disk? wiped directory?); refusing to delete them everywhere",
                        real.display()
                    )))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// After the group was stopped: is the group path back as it was (a remount), rather than
    /// refilled after a wipe? Returns the reason to stay stopped.
    pub fn resume_check(&self, gp: &str) -> Result<Option<String>, IndexError> {
        let (lo, _) = crate::paths::subtree_bounds(gp);
        let (mut live, mut present) = (0usize, 0usize);
        for e in self.index.subtree(&self.group.name, gp)? {
            if !e.rec.path.starts_with(&lo) || e.rec.is_deleted() {
                continue;
            }
            live += 1;
            if std::fs::symlink_metadata(crate::paths::real(self.root, &e.rec.path)).is_ok() {
                present += 1;
            }
            if live >= 10_000 {
                break;
            }
        }
        if live >= 2 && present * 2 < live {
            return Ok(Some(format!(
                "group path {gp} is back but holds only {present} of {live} known entries; if it was wiped on purpose, start this node over (stop it, remove its index.redb, start it: it joins as new and receives everything)"
            )));
        }
        Ok(None)
    }

    /// Scan logical path `target` (inside group path `gp`); `recursive` walks below it.
    pub fn scan(&self, gp: &str, target: &str, recursive: bool) -> Result<ScanResult, IndexError> {
        let mut res = ScanResult::default();
        if let Some(reason) = self.guard(gp)? {
            res.stopped = Some(reason);
            return Ok(res);
        }
        let group = self.group.name.as_str();
        // only the quick-check view of what the index knows: full entries are read for the
        // few paths that differ
        let mut known: HashMap<String, Known> = if recursive {
            self.index.subtree_quick(group, target)?
        } else {
            self.index
                .get_quick(group, target)?
                .map(|q| (target.to_string(), q))
                .into_iter()
                .collect()
        }
        .into_iter()
        .map(|(p, q)| (p, Known { q, seen: false }))
        .collect();
        let want = if target == gp {
            Want::Sync
        } else {
            let is_dir = std::fs::symlink_metadata(crate::paths::real(self.root, target))
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if self.filter.accepts(gp, target, is_dir) {
                Want::Sync
            } else if is_dir && self.group.include.is_empty() {
                Want::Skip
            } else {
                self.filter.want(gp, target, is_dir)
            }
        };
        if want != Want::Skip {
            self.visit(gp, target, recursive, want, &mut known, &mut res)?;
        }
        let mut live_before = 0usize;
        let mut tomb = 0usize;
        for (p, k) in &known {
            if !k.q.live {
                continue;
            }
            if p != gp {
                live_before += 1;
            }
            if !k.seen
                && let Some(e) = self.index.get(group, p)?
            {
                res.changes.push(self.tombstone(&e));
                if p != gp {
                    tomb += 1;
                }
            }
        }
        // a whole-path scan that would delete every live entry below the group path is the
        // emptied (or wiped and refilled) case; the group path's own entry stays meanwhile
        if target == gp && recursive && live_before > 1 && tomb >= live_before {
            res.changes.clear();
            res.stopped = Some(format!(
                "every entry of group path {gp} vanished; refusing to delete them everywhere"
            ));
        }
        Ok(res)
    }

    fn visit(
        &self,
        gp: &str,
        p: &str,
        recursive: bool,
        want: Want,
        known: &mut HashMap<String, Known>,
        res: &mut ScanResult,
    ) -> Result<(), IndexError> {
        let real = crate::paths::real(self.root, p);
        let md = match std::fs::symlink_metadata(&real) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                // unreadable: keep what we knew rather than announcing a delete
                if let Some(k) = known.get_mut(p) {
                    k.seen = true;
                }
                res.errors.push(format!("{p}: {e}"));
                return Ok(());
            }
        };
        if want == Want::Sync {
            let unchanged = match known.get_mut(p) {
                Some(k) => {
                    k.seen = true;
                    quick_match_stat(&k.q, &md)
                }
                None => false,
            };
            if !unchanged {
                let old = if known.contains_key(p) {
                    self.index.get(&self.group.name, p)?
                } else {
                    None
                };
                let mut not_here = false;
                match observe(&real, &md, self.owners) {
                    Ok(Some(obs)) => {
                        if let Some(c) = self.change_for(p, old.as_ref(), obs) {
                            res.changes.push(c);
                        }
                    }
                    Ok(None) => {
                        not_here = true;
                        res.skipped.push(p.to_string());
                    }
                    Err(ObserveError::Unstable) => res.unstable.push(p.to_string()),
                    Err(ObserveError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                        not_here = true;
                        res.unstable.push(p.to_string());
                    }
                    Err(ObserveError::Io(e)) => res.errors.push(format!("{p}: {e}")),
                }
                if not_here && let Some(k) = known.get_mut(p) {
                    k.seen = false;
                }
            }
        }
        if !(recursive && md.is_dir()) {
            return Ok(());
        }
        let rd = match std::fs::read_dir(&real) {
            Ok(rd) => rd,
            Err(e) => {
                res.errors.push(format!("{p}: {e}"));
                // do not turn an unreadable directory into deletions of its children
                let (lo, hi) = crate::paths::subtree_bounds(p);
                for (k, v) in known.iter_mut() {
                    if k.as_str() >= lo.as_str() && k.as_str() < hi.as_str() {
                        v.seen = true;
                    }
                }
                return Ok(());
            }
        };
        for de in rd.flatten() {
            let name = de.file_name();
            let Some(name) = name.to_str() else {
                res.skipped.push(format!(
                    "{p}/{} (name is not UTF-8)",
                    name.to_string_lossy()
                ));
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                // leftover of an interrupted apply
                let _ = std::fs::remove_file(de.path());
                continue;
            }
            let child = crate::paths::join(p, name);
            let is_dir = de.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let w = self.filter.want(gp, &child, is_dir);
            if w != Want::Skip {
                self.visit(gp, &child, true, w, known, res)?;
            }
        }
        Ok(())
    }
}
