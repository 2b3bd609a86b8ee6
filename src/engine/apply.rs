//! Carrying out decisions on disk, for one group: validating a peer's items, assembling a
//! file's new content in a temporary file (from inline data, the old file, any local file that
//! has the chunk, or peers), installing it, deleting, making directories and symlinks, and
//! keeping backups of what is replaced. Every filesystem access on behalf of a peer goes
//! through [`crate::fs::safefs`].
//!
//! Invariants:
//! - nothing from a peer is used before [`validate`] accepted the whole batch;
//! - content is checked chunk by chunk (length and BLAKE3) before it is written;
//! - **just before a rename or a removal, the target is checked again** against what the
//!   index says it is ([`Fs::unchanged`]); if someone changed it meanwhile (a hand edit), it
//!   is not replaced: the apply fails with [`ApplyError::Changed`], the lane scans the path (a
//!   local version) and decides again, so a hand edit is never overwritten without a decision
//!   and a backup;
//! - the backup of a replaced or deleted file is taken after that check, by hard link;
//! - a deletion that cannot be done (a directory that is not empty) fails: it is never
//!   recorded as done;
//! - new files get owner, mode, attributes and mtime on the temporary file's descriptor before
//!   the rename (chown first, because chown clears setuid), so a file never appears without
//!   its ACL; every touched entry is re-read into the index with its new inode and ctime, so
//!   the watcher does not take our own writes for local changes.

use crate::config::Owners;
use crate::engine::group::GroupRt;
use crate::engine::node::Ctx;
use crate::fs::backup::Kept;
use crate::fs::chunk::MAX_CHUNK;
use crate::fs::safefs::{FsError, NewInstall, Place, SetMeta, Temp};
use crate::fs::xattr;
use crate::item::{Body, ChunkRef, Entry, Hash, Item, Kind, Meta, name};
use crate::local::scan::{kind_of, quick_match_stat, quick_of_stat};
use crate::net::protocol::{INLINE_MAX, WireItem};
use crate::store::Change;
use rustix::fs::Stat;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;

/// Largest file a peer may announce (1 TiB).
pub const MAX_FILE: u64 = 1 << 40;

/// Errors applying one item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: content not available from any connected peer")]
    Unavailable { path: String },
    #[error("{path}: changed on this node while being applied; taken as a local change")]
    Changed { path: String },
    #[error("{path}: directory not removed, it still holds {what}")]
    NotEmpty { path: String, what: String },
    #[error("{path}: extended attributes: {source}")]
    Xattr {
        path: String,
        #[source]
        source: xattr::XattrError,
    },
    #[error("{path}: {msg}")]
    Other { path: String, msg: String },
}

impl ApplyError {
    /// The filesystem cannot store the group's extended attributes (a per-group error).
    pub fn unsupported_xattrs(&self) -> bool {
        matches!(
            self,
            ApplyError::Xattr {
                source: xattr::XattrError::Unsupported { .. },
                ..
            }
        )
    }
}

fn other(path: &[u8], msg: impl std::fmt::Display) -> ApplyError {
    ApplyError::Other {
        path: name::show(path).into_owned(),
        msg: msg.to_string(),
    }
}

/// An item the peer should not have sent.
#[derive(Debug, thiserror::Error)]
#[error("refused item {path}: {reason}")]
pub struct Refused {
    pub path: String,
    pub reason: String,
}

/// Check a peer's item before anything looks at it.
pub fn validate(
    g: &GroupRt,
    w: &WireItem,
    known_node: &dyn Fn(&str) -> bool,
) -> Result<(), Refused> {
    let r = &w.item;
    let refuse = |reason: String| Refused {
        path: name::show(&r.key[..r.key.len().min(200)]).into_owned(),
        reason,
    };
    let gp = name::validate(&r.key, &g.cfg.paths).map_err(|e| refuse(e.to_string()))?;
    if !g.filter.accepts(gp, &r.key, r.kind() == Some(Kind::Dir)) {
        return Err(refuse("path is excluded in this group".into()));
    }
    check_history(g, r, known_node).map_err(refuse)?;
    let Some(m) = r.meta() else {
        if w.inline.is_some() {
            return Err(refuse("content attached to a deletion".into()));
        }
        return Ok(());
    };
    check_meta(g, m).map_err(refuse)?;
    check_kind(m, w.inline.as_deref()).map_err(refuse)
}

/// Who made the item and its version vector.
fn check_history(g: &GroupRt, r: &Item, known_node: &dyn Fn(&str) -> bool) -> Result<(), String> {
    if !known_node(&r.origin) {
        return Err(format!("unknown origin node {:?}", r.origin));
    }
    if g.is_replica(&r.origin) {
        return Err(format!(
            "origin {:?} is a replica: it cannot make versions",
            r.origin
        ));
    }
    if r.version.len() > 1024 || r.version.0.keys().any(|k| k.len() > 255) {
        return Err("oversized version vector".into());
    }
    if r.version.is_empty()
        && !(r.kind() == Some(Kind::Dir) && g.cfg.paths.iter().any(|p| p.as_bytes() == r.key))
    {
        // only a group path directory nobody has changed travels without a version
        return Err("empty version vector".into());
    }
    if r.version.0.values().any(|c| *c > max_counter()) {
        return Err(
            "a version counter from the future (more than a year ahead of this node's clock)"
                .into(),
        );
    }
    if r.beat.len() > 1024 || r.beat.iter().any(|b| b.len() > 255) {
        return Err("oversized list of beaten nodes".into());
    }
    Ok(())
}

/// Mode, mtime, owner names, attributes.
fn check_meta(g: &GroupRt, m: &Meta) -> Result<(), String> {
    if m.mode > 0o7777 {
        return Err("bad mode".into());
    }
    if m.mtime_ns >= 1_000_000_000 {
        return Err("bad mtime".into());
    }
    let bad_name = |n: &Option<String>| {
        n.as_ref()
            .is_some_and(|u| u.len() > 256 || u.contains('\0'))
    };
    if bad_name(&m.owner.user) || bad_name(&m.owner.group) {
        return Err("bad owner name".into());
    }
    if !m.xattrs.is_empty() {
        if g.xattrs.is_none() {
            return Err("extended attributes in a group without xattrs = true".into());
        }
        xattr::validate(&m.xattrs).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What each kind may carry: a file's chunk list against its size and its inline content
/// against its hash, a symlink's text, a directory nothing.
fn check_kind(m: &Meta, inline: Option<&[u8]>) -> Result<(), String> {
    match m.kind {
        Kind::File => {
            if m.target.is_some() || m.size > MAX_FILE {
                return Err("bad file metadata".into());
            }
            let sum: u64 = m.chunks.iter().map(|c| c.len as u64).sum();
            if sum != m.size
                || m.chunks
                    .iter()
                    .any(|c| c.len == 0 || c.len as usize > MAX_CHUNK)
                || (m.size == 0) != m.chunks.is_empty()
            {
                return Err("chunk list does not match the size".into());
            }
            if let Some(data) = inline
                && (m.size > INLINE_MAX
                    || data.len() as u64 != m.size
                    || crate::fs::chunk::hash(data) != m.hash)
            {
                return Err("inline content does not match its hash".into());
            }
        }
        Kind::Symlink => {
            let ok = m
                .target
                .as_ref()
                .is_some_and(|t| !t.is_empty() && t.len() <= 4096 && !t.contains(&0));
            if !ok || !m.chunks.is_empty() || inline.is_some() {
                return Err("bad symlink".into());
            }
        }
        Kind::Dir => {
            if m.target.is_some() || !m.chunks.is_empty() || inline.is_some() {
                return Err("bad directory".into());
            }
        }
    }
    Ok(())
}

/// The largest version counter a peer may send: counters are milliseconds of a node's clock
/// (`item::version`), so one more than a year ahead of ours is forged or broken (it could make
/// our own later changes saturate and collide with it).
pub fn max_counter() -> u64 {
    crate::item::version::clock_ms() + 365 * 24 * 3600 * 1000
}

/// Where each chunk of a new file comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The same chunk in the old version of this file, at this offset.
    Old(u64),
    /// Another local file the chunk index points at.
    Local,
    /// A peer (in the order requested).
    Remote,
}

/// The group's filesystem, as the apply of one lane sees it.
pub struct Fs<'a> {
    pub ctx: &'a Ctx,
    pub g: &'a GroupRt,
}

impl<'a> Fs<'a> {
    pub fn set_meta(&self, m: &Meta) -> SetMeta {
        SetMeta {
            mode: m.mode,
            mtime_s: m.mtime_s,
            mtime_ns: m.mtime_ns,
            owner: self.ctx.owners.local_ids(&m.owner, self.g.cfg.owners),
        }
    }

    fn gp(&self, key: &[u8]) -> Result<&'a str, ApplyError> {
        name::validate(key, &self.g.cfg.paths).map_err(|e| other(key, e))
    }

    /// Resolve a key of this group on disk (no symlink followed below the group path).
    pub fn place(&self, key: &[u8], create: bool) -> Result<Place, ApplyError> {
        let gp = self.gp(key)?;
        Ok(crate::fs::safefs::resolve(&self.ctx.root, gp, key, create)?)
    }

    /// [`Fs::place`] through a batch's cache of resolved directories.
    pub fn place_in(
        &self,
        dirs: &crate::fs::safefs::DirCache,
        key: &[u8],
        create: bool,
    ) -> Result<Place, ApplyError> {
        let gp = self.gp(key)?;
        Ok(dirs.resolve(&self.ctx.root, gp, key, create)?)
    }

    fn apply_xattrs_fd(
        &self,
        fd: impl rustix::fd::AsFd,
        m: &Meta,
        key: &[u8],
    ) -> Result<(), ApplyError> {
        let Some(filter) = &self.g.xattrs else {
            return Ok(());
        };
        let res = match self.g.cfg.owners {
            Owners::Numeric | Owners::Ignore => {
                xattr::apply_fd(fd, &m.xattrs, filter, xattr::map_numeric)
            }
            Owners::ByName => {
                xattr::apply_fd(fd, &m.xattrs, filter, xattr::map_by_name(&self.ctx.owners))
            }
        };
        res.map_err(|source| ApplyError::Xattr {
            path: name::show(key).into_owned(),
            source,
        })
    }

    /// Is the disk at `place` still what `local` describes (absent when `local` is none or a
    /// tombstone)? The check made just before a rename or a removal. A directory is compared by
    /// kind, inode, mode and owner only: its mtime and ctime move with its children, which this
    /// same apply may be changing. With `dir_ok`, a directory we did not know about is fine (a
    /// directory is about to be made there).
    pub fn unchanged(
        &self,
        place: &Place,
        local: Option<&Entry>,
        dir_ok: bool,
    ) -> Result<bool, ApplyError> {
        // relative to the directory the install will rename into, not by walking the path
        Ok(self.unchanged_stat(place.stat()?.as_ref(), local, dir_ok))
    }

    /// [`Self::unchanged`] with the target's lstat (`None`: absent) just taken.
    fn unchanged_stat(&self, st: Option<&Stat>, local: Option<&Entry>, dir_ok: bool) -> bool {
        let Some(st) = st else {
            return true;
        };
        let now = quick_of_stat(st);
        let live = local.filter(|l| !l.item.is_deleted());
        match live {
            None => dir_ok && now.kind == Some(Kind::Dir),
            Some(l) => {
                let q = l.quick();
                if q.kind == Some(Kind::Dir) {
                    now.kind == Some(Kind::Dir)
                        && q.ino == now.ino
                        && q.mode == now.mode & 0o7777
                        && q.uid == now.uid
                        && q.gid == now.gid
                } else {
                    quick_match_stat(&q, st)
                }
            }
        }
    }

    /// Keep the current content of the file at `place` (described by `local`) as a backup,
    /// by a hard link: the caller replaces or removes the file, then [`Fs::seal`]s the result.
    pub fn backup(&self, place: &Place, local: &Entry) -> Kept {
        self.backup_as(place, local, true)
    }

    /// [`Fs::backup`] of a file that stays in place: a private copy.
    pub fn backup_copy(&self, place: &Place, local: &Entry) {
        let _ = self.backup_as(place, local, false);
    }

    /// Make a kept version private (0600) now that its file was replaced or removed.
    pub fn seal(&self, kept: &Kept) {
        self.ctx.backups.seal(kept);
    }

    fn backup_as(&self, place: &Place, local: &Entry, by_link: bool) -> Kept {
        if self.g.cfg.backup_generations == 0 || local.item.kind() != Some(Kind::File) {
            return Kept::default();
        }
        let group = self.g.name();
        let b = &self.ctx.backups;
        let n = self.g.cfg.backup_generations;
        let r = if by_link {
            b.keep(group, place, local, n)
        } else {
            b.keep_copy(group, place, local, n)
        };
        match r {
            Err(e) => {
                tracing::warn!(group, "backup of {}: {e}", local.item.show());
                Kept::default()
            }
            Ok(kept) => {
                self.ctx.audit_item(group, "backup", &local.item, None);
                kept
            }
        }
    }

    /// The chunks of `m` that must come from peers, and where every chunk comes from.
    pub fn plan(&self, m: &Meta, local: Option<&Entry>) -> (Vec<Source>, Vec<ChunkRef>) {
        let mut old: HashMap<Hash, u64> = HashMap::new();
        if let Some(lm) = local.and_then(|l| l.item.meta())
            && lm.kind == Kind::File
        {
            let mut off = 0;
            for c in &lm.chunks {
                old.entry(c.hash).or_insert(off);
                off += c.len as u64;
            }
        }
        let mut sources = Vec::with_capacity(m.chunks.len());
        let mut remote = Vec::new();
        for c in &m.chunks {
            if let Some(off) = old.get(&c.hash) {
                sources.push(Source::Old(*off));
            } else if self
                .ctx
                .store
                .chunk_location(&c.hash)
                .ok()
                .flatten()
                .is_some()
            {
                sources.push(Source::Local);
            } else {
                sources.push(Source::Remote);
                remote.push(*c);
            }
        }
        (sources, remote)
    }

    /// Fill a temporary file next to `place` with the content of `m` (blocking). Remote chunks
    /// arrive in order on `remote`.
    pub fn assemble(
        &self,
        place: &Place,
        m: &Meta,
        inline: Option<&[u8]>,
        local: Option<&Entry>,
        sources: &[Source],
        mut remote: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    ) -> Result<Temp, ApplyError> {
        let mut tmp = place.create_temp()?;
        let werr = |e: std::io::Error| other(&place.path, format!("write: {e}"));
        let counters = &self.ctx.counters;
        if let Some(data) = inline {
            tmp.file.write_all(data).map_err(werr)?;
            counters
                .inline_bytes_in
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok(tmp);
        }
        let old_file = match local.and_then(|l| l.item.meta()) {
            Some(lm) if lm.kind == Kind::File => place.open_read().ok(),
            _ => None,
        };
        let mut buf = Vec::new();
        for (c, src) in m.chunks.iter().zip(sources) {
            let data: Option<Vec<u8>> = match src {
                Source::Old(off) => old_file.as_ref().and_then(|f| {
                    buf.resize(c.len as usize, 0);
                    f.read_exact_at(&mut buf, *off).ok()?;
                    (crate::fs::chunk::hash(&buf) == c.hash).then(|| buf.clone())
                }),
                Source::Local => self.ctx.read_local_chunk(self.g.name(), &c.hash),
                Source::Remote => remote.as_mut().and_then(|r| r.blocking_recv()),
            };
            let data = match data {
                Some(d) => {
                    if !matches!(src, Source::Remote) {
                        counters
                            .reused_bytes
                            .fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    d
                }
                // a local source that moved on: ask the peers for that chunk
                None if !matches!(src, Source::Remote) => {
                    crate::engine::fetch::one_blocking(self.ctx, self.g.name(), c).ok_or_else(
                        || ApplyError::Unavailable {
                            path: name::show(&place.path).into_owned(),
                        },
                    )?
                }
                None => {
                    return Err(ApplyError::Unavailable {
                        path: name::show(&place.path).into_owned(),
                    });
                }
            };
            tmp.file.write_all(&data).map_err(werr)?;
        }
        Ok(tmp)
    }

    /// Install a filled temporary file as `item` (blocking): metadata and attributes on the
    /// descriptor, the check that the target is still what the index says, a backup of it,
    /// the rename. The caller made the temporary file durable (one `syncfs` for a batch).
    pub fn install_file(
        &self,
        place: &Place,
        item: &Item,
        local: Option<&Entry>,
        tmp: Temp,
    ) -> Result<Entry, ApplyError> {
        let tmp = if local.is_none_or(|l| l.item.is_deleted()) {
            // nothing may be there: the rename checks that itself
            match place.install_new_synced(tmp)? {
                NewInstall::Done(st) => return Ok(self.finish_with(item, Some(st))),
                NewInstall::Occupied => {
                    return Err(ApplyError::Changed {
                        path: item.show().into_owned(),
                    });
                }
                NewInstall::Unsupported(tmp) => tmp,
            }
        } else {
            tmp
        };
        // one lstat for the re-check and for what is in the way
        let st = place.stat()?;
        if !self.unchanged_stat(st.as_ref(), local, false) {
            return Err(ApplyError::Changed {
                path: item.show().into_owned(),
            });
        }
        let kept = match local {
            Some(l) if l.item.kind() == Some(Kind::File) => self.backup(place, l),
            _ => Kept::default(),
        };
        let st = self.clear_dir_for_stat(place, st)?;
        let st = place.install_synced(tmp, st.as_ref())?;
        self.seal(&kept);
        Ok(self.finish_with(item, Some(st)))
    }

    /// Give the temporary file its metadata and attributes (before it is made durable).
    pub fn prepare_meta(&self, tmp: &Temp, item: &Item) -> Result<(), ApplyError> {
        let m = item.meta().ok_or_else(|| other(&item.key, "not a file"))?;
        let sm = self.set_meta(m);
        let err = |e| other(&item.key, format!("set metadata: {e}"));
        // owner first (a chown drops capabilities and setuid bits), then the attributes, then
        // the mode (which sets an ACL's mask to the group bits, as on the source) and the
        // mtime, last: each call once
        crate::fs::safefs::chown_fd(&tmp.file, sm.owner).map_err(err)?;
        self.apply_xattrs_fd(&tmp.file, m, &item.key)?;
        crate::fs::safefs::set_mode_mtime_fd(&tmp.file, &sm).map_err(err)?;
        Ok(())
    }

    /// A directory in the way of an entry of another kind: what the index knows below it is
    /// deleted in this same batch, so remove what is left of it if that is only empty
    /// directories; otherwise fail.
    fn clear_dir_for(&self, place: &Place) -> Result<(), ApplyError> {
        self.clear_dir_for_stat(place, place.stat()?).map(drop)
    }

    /// [`Self::clear_dir_for`] with the target's lstat just taken; returns what is there now
    /// (`None` once the directory is removed).
    fn clear_dir_for_stat(
        &self,
        place: &Place,
        st: Option<Stat>,
    ) -> Result<Option<Stat>, ApplyError> {
        let Some(st) = st else {
            return Ok(None);
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Ok(Some(st));
        }
        let real = name::real(&self.ctx.root, &place.path);
        let mut dirs = Vec::new();
        let mut stack = vec![real.clone()];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).map_err(|e| other(&place.path, e))?;
            for e in rd.flatten() {
                let ft = e.file_type().map_err(|e| other(&place.path, e))?;
                if ft.is_dir() && !ft.is_symlink() {
                    stack.push(e.path());
                } else {
                    return Err(ApplyError::NotEmpty {
                        path: name::show(&place.path).into_owned(),
                        what: format!("{}", e.path().display()),
                    });
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            std::fs::remove_dir(d).map_err(|e| other(&place.path, e))?;
        }
        Ok(None)
    }

    /// Carry out a deletion (blocking). The configured group path itself is never removed.
    pub fn delete(&self, item: &Item, local: Option<&Entry>) -> Result<Entry, ApplyError> {
        let gp = self.gp(&item.key)?;
        if item.key == gp.as_bytes() {
            return Ok(Entry::new(item.clone()));
        }
        let place = match self.place(&item.key, false) {
            Ok(p) => p,
            Err(ApplyError::Fs(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Entry::new(item.clone()));
            }
            Err(e) => return Err(e),
        };
        if !self.unchanged(&place, local, false)? {
            return Err(ApplyError::Changed {
                path: item.show().into_owned(),
            });
        }
        let kept = match local {
            Some(l) if l.item.kind() == Some(Kind::File) => self.backup(&place, l),
            _ => Kept::default(),
        };
        match place.remove() {
            Ok(()) => {
                self.seal(&kept);
                Ok(Entry::new(item.clone()))
            }
            Err(e) if e.source.raw_os_error() == Some(libc::ENOTEMPTY) => {
                let real = name::real(&self.ctx.root, &item.key);
                let left: Vec<String> = std::fs::read_dir(&real)
                    .map(|rd| {
                        rd.flatten()
                            .take(3)
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                Err(ApplyError::NotEmpty {
                    path: item.show().into_owned(),
                    what: left.join(", "),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Make a directory or symlink, or set the metadata of a file whose content is already
    /// right (blocking).
    pub fn make(&self, item: &Item, local: Option<&Entry>) -> Result<Entry, ApplyError> {
        let m = item.meta().ok_or_else(|| other(&item.key, "deletion"))?;
        let gp = self.gp(&item.key)?;
        let sm = self.set_meta(m);
        if item.key == gp.as_bytes() && m.kind == Kind::Dir {
            let real = name::real(&self.ctx.root, gp.as_bytes());
            let known = local.is_some_and(|l| l.item.kind() == Some(Kind::Dir));
            if known && !real.is_dir() {
                // a group path this node had is gone (an unmounted disk): never made again
                // here, where the disk is not; the group stops on its next look
                return Err(other(&item.key, "the group path is missing on this node"));
            }
            std::fs::create_dir_all(&real).map_err(|e| other(&item.key, e))?;
            let fd = crate::fs::safefs::open_group_dir(&self.ctx.root, gp)?;
            crate::fs::safefs::set_meta_fd(&fd, &sm).map_err(|e| other(&item.key, e))?;
            self.apply_xattrs_fd(&fd, m, &item.key)?;
            return self.finish(item);
        }
        let place = self.place(&item.key, true)?;
        let same_kind = local.and_then(|l| l.item.kind()) == Some(m.kind);
        let content_same = local
            .and_then(|l| l.item.meta())
            .is_some_and(|lm| lm.kind == m.kind && lm.hash == m.hash && lm.target == m.target);
        if !self.unchanged(&place, local, m.kind == Kind::Dir)? {
            return Err(ApplyError::Changed {
                path: item.show().into_owned(),
            });
        }
        match m.kind {
            Kind::Dir => {
                let kept = match local {
                    Some(l) if l.item.kind() == Some(Kind::File) => self.backup(&place, l),
                    _ => Kept::default(),
                };
                place.make_dir(&sm)?;
                self.seal(&kept);
                let fd = place.open_nofollow(true)?;
                self.apply_xattrs_fd(&fd, m, &item.key)?;
            }
            Kind::Symlink => {
                if same_kind && content_same {
                    place.set_meta(Kind::Symlink, &sm)?;
                } else {
                    let kept = match local {
                        Some(l) if l.item.kind() == Some(Kind::File) => self.backup(&place, l),
                        _ => Kept::default(),
                    };
                    self.clear_dir_for(&place)?;
                    let t = m.target.as_deref().unwrap_or_default();
                    place.make_symlink(t, &sm)?;
                    self.seal(&kept);
                }
                if let Some(filter) = &self.g.xattrs
                    && !m.xattrs.is_empty()
                {
                    let map = xattr::map_by_name(&self.ctx.owners);
                    let refused = xattr::apply_link_nofollow(
                        place.dir_fd(),
                        name::os(place.name()).as_os_str(),
                        &m.xattrs,
                        filter,
                        map,
                    )
                    .map_err(|source| ApplyError::Xattr {
                        path: item.show().into_owned(),
                        source,
                    })?;
                    if !refused.is_empty() {
                        tracing::debug!("{}: symlink attributes not supported here", item.show());
                    }
                }
            }
            Kind::File => {
                // same content: metadata only
                place.set_meta(Kind::File, &sm)?;
                let fd = place.open_nofollow(false)?;
                self.apply_xattrs_fd(&fd, m, &item.key)?;
                crate::fs::safefs::set_meta_fd(&fd, &sm).map_err(|e| other(&item.key, e))?;
            }
        }
        self.finish(item)
    }

    /// Re-read the applied entry so the index matches the disk exactly (inode, ctime, local
    /// ids).
    pub fn finish(&self, item: &Item) -> Result<Entry, ApplyError> {
        let real = name::real(&self.ctx.root, &item.key);
        let st = match rustix::fs::lstat(&real) {
            Ok(st) => Some(st),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(other(&item.key, std::io::Error::from(e))),
        };
        Ok(self.finish_with(item, st))
    }

    /// The index entry of `item` as it is on disk now, from a stat of it taken without walking
    /// the path again (`None`: it is gone already).
    fn finish_with(&self, item: &Item, st: Option<rustix::fs::Stat>) -> Entry {
        // removed locally the instant after we installed it: record what we installed; the
        // watcher's scan of the deletion then makes a tombstone
        let Some(st) = st else {
            return Entry::new(item.clone());
        };
        let md = quick_of_stat(&st);
        let mut item = item.clone();
        if let Some(m) = item.meta_mut() {
            // local ids may differ from the sender's (by-name mapping); names stay the sender's
            m.owner.uid = md.uid;
            m.owner.gid = md.gid;
            if m.owner.user.is_none() || m.owner.group.is_none() {
                let local = self.ctx.owners.describe(md.uid, md.gid);
                m.owner.user = m.owner.user.take().or(local.user);
                m.owner.group = m.owner.group.take().or(local.group);
            }
        }
        let mut e = Entry::new(item);
        e.ino = md.ino;
        e.ctime_s = md.ctime_s;
        e.ctime_ns = md.ctime_ns;
        e
    }

    /// Put back the mtime of directories whose children changed (deepest first) and refresh
    /// their index entries, so our own writes are not taken for local changes.
    pub fn restore_dir_mtimes(&self, dirs: &BTreeSet<Vec<u8>>, changes: &mut Vec<Change>) {
        let group = self.g.name();
        let mut in_batch: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            in_batch.insert(c.entry.item.key.clone(), i);
        }
        for d in dirs.iter().rev() {
            let Ok(gp) = name::validate(d, &self.g.cfg.paths) else {
                continue;
            };
            let entry = match in_batch.get(d) {
                Some(i) => Some(changes[*i].entry.clone()),
                None => self.ctx.store.get(group, d).ok().flatten(),
            };
            let Some(mut entry) = entry else { continue };
            let Some(m) = entry.item.meta().cloned() else {
                continue;
            };
            if m.kind != Kind::Dir {
                continue;
            }
            let real = name::real(&self.ctx.root, d);
            // only when the directory is still what the index says (apart from its mtime)
            let Ok(md) = std::fs::symlink_metadata(&real) else {
                continue;
            };
            if kind_of(&md) != Some(Kind::Dir) || md.ino() != entry.ino && entry.ino != 0 {
                continue;
            }
            let r = if d.as_slice() == gp.as_bytes() {
                crate::fs::safefs::open_group_dir(&self.ctx.root, gp).and_then(|fd| {
                    crate::fs::safefs::set_meta_fd(&fd, &self.set_meta(&m)).map_err(|e| FsError {
                        op: "set metadata of",
                        path: name::show(d).into_owned(),
                        source: e.into(),
                    })
                })
            } else {
                crate::fs::safefs::resolve(&self.ctx.root, gp, d, false)
                    .and_then(|p| p.set_dir_mtime(m.mtime_s, m.mtime_ns))
            };
            if let Err(e) = r {
                tracing::debug!("restoring mtime of {}: {e}", name::show(d));
                continue;
            }
            if let Ok(md) = std::fs::symlink_metadata(&real) {
                entry.ino = md.ino();
                entry.ctime_s = md.ctime();
                entry.ctime_ns = md.ctime_nsec() as u32;
                match in_batch.get(d) {
                    Some(i) => changes[*i].entry = entry,
                    None => changes.push(Change {
                        entry,
                        announce: false,
                    }),
                }
            }
        }
    }
}

/// Does installing `item` over `local` need new file content (not just metadata)?
pub fn needs_content(item: &Item, local: Option<&Entry>) -> bool {
    let Some(m) = item.meta() else { return false };
    if m.kind != Kind::File {
        return false;
    }
    !local
        .and_then(|l| l.item.meta())
        .is_some_and(|lm| lm.kind == Kind::File && lm.hash == m.hash && lm.size == m.size)
}

/// The body of a fresh tombstone-free entry, for tests and resolve.
pub fn body_of(item: &Item) -> Option<&Body> {
    item.body.as_ref()
}
