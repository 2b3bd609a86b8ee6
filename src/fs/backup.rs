//! Kept previous versions: before clustersync overwrites or deletes a file, the file's inode is
//! hard-linked into `<state-dir>/backups/<group>/objects/<blake3>` (zero copy: the replaced
//! inode is never written again, because clustersync always renames new content into place;
//! where the state dir is on another filesystem the content is copied instead), and a line
//! describing it goes to the path's generation list `<state-dir>/backups/<group>/lists/
//! <blake3 of the path>.json`, newest first, at most `backup_generations` entries.
//!
//! Invariants:
//! - the store is private: directories 0700, copied objects and lists 0600 (a hard-linked
//!   object keeps its inode's mode, but it is only reachable through the 0700 directories);
//!   [`Backups::open`] fixes the modes of a store made by an older version and moves its
//!   layout over;
//! - content is stored once per group, named by its BLAKE3 (identical versions share it);
//! - an object is complete under its final name (a copy is written to a temporary name,
//!   fsynced and renamed; a link is atomic);
//! - generation 1 is the newest kept version; a restore in place keeps what it replaced as the
//!   *last* generation, so the numbers `backups` showed stay valid and running the same restore
//!   twice changes nothing the second time;
//! - with `backup_max_bytes`, the group's objects stay under the bound: the oldest generations
//!   (across the group's paths) are dropped first, and each drop is logged.

use crate::fs::safefs::Place;
use crate::item::{Entry, hex, name};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One kept version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    /// The logical path, escaped ([`crate::item::name::show`]).
    pub path: String,
    pub time: i64,
    pub hash: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub uid: u32,
    pub gid: u32,
    pub origin: String,
    pub version: String,
    /// Kept by a restore in place (what the restore replaced).
    #[serde(default)]
    pub by_restore: bool,
}

/// Errors keeping or reading a backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error(transparent)]
    Fs(#[from] crate::fs::safefs::FsError),
    #[error("backup store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`Backups::keep`] did.
#[derive(Debug, Default)]
#[must_use = "a linked object must be sealed once its file is replaced or removed"]
pub struct Kept {
    /// Bytes newly stored.
    pub stored: u64,
    /// The object, when it is a hard link to the live file (it has that file's mode until
    /// [`Backups::seal`]).
    pub linked: Option<PathBuf>,
}

/// The backup store of a node.
pub struct Backups {
    dir: PathBuf,
}

fn private_dir(p: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)?;
    let md = std::fs::symlink_metadata(p)?;
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Backups {
    /// The store at `dir` (not touched until something is kept).
    pub fn new(dir: &Path) -> Backups {
        Backups { dir: dir.into() }
    }

    /// The store at `dir`, made private and moved to the current layout (start-up).
    pub fn open(dir: &Path) -> Result<Backups, BackupError> {
        let b = Backups::new(dir);
        if dir.exists() {
            b.upgrade_layout()?;
            fix_modes(dir).map_err(Self::io(dir))?;
        }
        Ok(b)
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io {
            path: path.into(),
            source,
        }
    }

    fn group_dir(&self, group: &str) -> PathBuf {
        self.dir.join(group)
    }

    fn list_path(&self, group: &str, path: &[u8]) -> PathBuf {
        self.group_dir(group)
            .join("lists")
            .join(format!("{}.json", hex(&crate::fs::chunk::hash(path))))
    }

    /// Path of a stored object of `group` (in a store of the 0.1 layout that its daemon has
    /// not moved over yet: where that layout keeps it).
    pub fn object(&self, group: &str, hash: &str) -> PathBuf {
        let p = self.group_dir(group).join("objects").join(hash);
        let old = self.dir.join("objects").join(hash);
        if !p.exists() && old.is_file() { old } else { p }
    }

    /// The kept versions of `path`, newest first. A store of the 0.1 layout is read where it
    /// is: a command line of this release works before the daemon of 0.1 is restarted (which
    /// moves the store over, [`Backups::open`]).
    pub fn list(&self, group: &str, path: &[u8]) -> Vec<BackupInfo> {
        let list = read_list(&self.list_path(group, path));
        if !list.is_empty() {
            return list;
        }
        let old = self
            .group_dir(group)
            .join(format!("{}.json", hex(&crate::fs::chunk::hash(path))));
        read_list(&old)
    }

    fn write_list(&self, group: &str, path: &[u8], list: &[BackupInfo]) -> Result<(), BackupError> {
        let lp = self.list_path(group, path);
        if list.is_empty() {
            let _ = std::fs::remove_file(&lp);
            return Ok(());
        }
        if let Some(dir) = lp.parent() {
            private_dir(dir).map_err(Self::io(dir))?;
        }
        let text = serde_json::to_vec_pretty(list).map_err(|e| BackupError::Io {
            path: lp.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmpl = lp.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmpl)
            .map_err(Self::io(&tmpl))?;
        f.write_all(&text).map_err(Self::io(&tmpl))?;
        std::fs::rename(&tmpl, &lp).map_err(Self::io(&lp))?;
        Ok(())
    }

    /// Keep the current content of the file at `place`, described by the index entry `e`
    /// (the caller checked that the disk still matches `e`), by a hard link to it: the caller
    /// is about to replace or remove that file, and then [`Backups::seal`]s what this returns.
    pub fn keep(
        &self,
        group: &str,
        place: &Place,
        e: &Entry,
        generations: u32,
    ) -> Result<Kept, BackupError> {
        self.keep_as(group, place, e, generations, true)
    }

    /// [`Backups::keep`] by a copy, for a file that stays in place (drift kept on a replica):
    /// a link would share its mode and every later edit made in place.
    pub fn keep_copy(
        &self,
        group: &str,
        place: &Place,
        e: &Entry,
        generations: u32,
    ) -> Result<Kept, BackupError> {
        self.keep_as(group, place, e, generations, false)
    }

    /// Make a kept object private (0600) once the file it was linked from is no longer in
    /// place (a hard link shares the mode of the live file, 0644 for most; `fix_modes` at the
    /// next start would be too late, SPEC §6).
    pub fn seal(&self, kept: &Kept) {
        let Some(obj) = &kept.linked else { return };
        if let Ok(md) = std::fs::symlink_metadata(obj)
            && md.is_file()
            && md.mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(obj, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!("making the kept version {} private: {e}", obj.display());
        }
    }

    fn keep_as(
        &self,
        group: &str,
        place: &Place,
        e: &Entry,
        generations: u32,
        by_link: bool,
    ) -> Result<Kept, BackupError> {
        let Some(m) = e.item.meta() else {
            return Ok(Kept::default());
        };
        let hash = hex(&m.hash);
        let objects = self.group_dir(group).join("objects");
        private_dir(&objects).map_err(Self::io(&objects))?;
        let obj = objects.join(&hash);
        let mut kept = Kept::default();
        if !obj.exists() {
            match by_link.then(|| place.link_to(&obj)) {
                Some(Ok(())) => {
                    kept.stored = m.size;
                    kept.linked = Some(obj.clone());
                }
                Some(Err(err)) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                _ => kept.stored = self.copy_in(place, &objects, &obj)?,
            }
        }
        let info = BackupInfo {
            path: name::show(&e.item.key).into_owned(),
            time: unix_now(),
            hash,
            size: m.size,
            mode: m.mode,
            mtime_s: m.mtime_s,
            mtime_ns: m.mtime_ns,
            uid: m.owner.uid,
            gid: m.owner.gid,
            origin: e.item.origin.clone(),
            version: e.item.version.display(),
            by_restore: false,
        };
        let mut list = self.list(group, &e.item.key);
        if list.first().is_some_and(|b| b.hash == info.hash) {
            return Ok(kept);
        }
        list.insert(0, info);
        list.truncate(generations as usize);
        self.write_list(group, &e.item.key, &list)?;
        Ok(kept)
    }

    /// Keep `info` (what a restore in place replaced, already stored as an object) as the
    /// last generation of `path`.
    pub fn keep_replaced_by_restore(
        &self,
        group: &str,
        path: &[u8],
        mut info: BackupInfo,
    ) -> Result<(), BackupError> {
        let mut list = self.list(group, path);
        if list.iter().any(|b| b.hash == info.hash) {
            return Ok(());
        }
        info.by_restore = true;
        list.push(info);
        self.write_list(group, path, &list)
    }

    /// Store the content of the regular file `src` (not through a peer's path: a restore's
    /// own read of the live file) as an object; returns its hash.
    pub fn store_file(&self, group: &str, src: &std::fs::File) -> Result<String, BackupError> {
        let objects = self.group_dir(group).join("objects");
        private_dir(&objects).map_err(Self::io(&objects))?;
        let (tmp, hash) = copy_to_temp(src, &objects)?;
        let obj = objects.join(&hash);
        if obj.exists() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &obj).map_err(Self::io(&obj))?;
        }
        Ok(hash)
    }

    fn copy_in(&self, place: &Place, objects: &Path, obj: &Path) -> Result<u64, BackupError> {
        let f = place.open_read()?;
        let (tmp, _) = copy_to_temp(&f, objects)?;
        let size = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
        std::fs::rename(&tmp, obj).map_err(Self::io(obj))?;
        Ok(size)
    }

    /// Bytes used by the objects of `group` (for `status`).
    pub fn usage(&self, group: &str) -> u64 {
        let Ok(rd) = std::fs::read_dir(self.group_dir(group).join("objects")) else {
            return 0;
        };
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Every generation list of `group`: (list file, entries).
    fn all_lists(&self, group: &str) -> Vec<(PathBuf, Vec<BackupInfo>)> {
        let Ok(rd) = std::fs::read_dir(self.group_dir(group).join("lists")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| (e.path(), read_list(&e.path())))
            .collect()
    }

    /// Drop the oldest generations of `group` until its objects use at most `max` bytes, and
    /// remove objects no generation refers to. Returns the generations dropped (path, time).
    pub fn enforce_limit(&self, group: &str, max: Option<u64>) -> Vec<(String, i64)> {
        let mut dropped = Vec::new();
        let mut lists = self.all_lists(group);
        if let Some(max) = max {
            let mut used = self.usage(group);
            if used > max {
                // (time, list index, hash) oldest first
                let mut gens: Vec<(i64, usize, String, u64)> = Vec::new();
                for (i, (_, l)) in lists.iter().enumerate() {
                    for b in l {
                        gens.push((b.time, i, b.hash.clone(), b.size));
                    }
                }
                gens.sort();
                for (time, i, hash, size) in gens {
                    if used <= max {
                        break;
                    }
                    let l = &mut lists[i].1;
                    if let Some(pos) = l.iter().position(|b| b.hash == hash && b.time == time) {
                        let b = l.remove(pos);
                        dropped.push((b.path, b.time));
                        // the object goes when no other generation shares it
                        used = used.saturating_sub(size);
                    }
                }
                for (lp, l) in &lists {
                    let res = if l.is_empty() {
                        std::fs::remove_file(lp)
                    } else {
                        serde_json::to_vec_pretty(l)
                            .map_err(std::io::Error::other)
                            .and_then(|t| std::fs::write(lp, t))
                    };
                    if let Err(e) = res {
                        tracing::warn!(group, "backup list {}: {e}", lp.display());
                    }
                }
            }
        }
        let used: std::collections::HashSet<String> = lists
            .iter()
            .flat_map(|(_, l)| l.iter().map(|b| b.hash.clone()))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.group_dir(group).join("objects")) {
            for o in rd.flatten() {
                let n = o.file_name().to_string_lossy().to_string();
                if !used.contains(&n) {
                    let _ = std::fs::remove_file(o.path());
                }
            }
        }
        dropped
    }

    /// Move a store of the previous layout (`backups/objects/`, `backups/<group>/<h>.json`)
    /// to this one.
    fn upgrade_layout(&self) -> Result<(), BackupError> {
        let old_objects = self.dir.join("objects");
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for g in rd.flatten() {
            if g.file_name() == "objects" || !g.path().is_dir() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(g.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_none_or(|x| x != "json") || !p.is_file() {
                    continue;
                }
                let lists = g.path().join("lists");
                private_dir(&lists).map_err(Self::io(&lists))?;
                let objects = g.path().join("objects");
                private_dir(&objects).map_err(Self::io(&objects))?;
                for b in read_list(&p) {
                    let src = old_objects.join(&b.hash);
                    let dst = objects.join(&b.hash);
                    if src.exists() && !dst.exists() {
                        std::fs::hard_link(&src, &dst)
                            .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
                            .map_err(Self::io(&dst))?;
                    }
                }
                let name = p.file_name().map(PathBuf::from).unwrap_or_default();
                std::fs::rename(&p, lists.join(name)).map_err(Self::io(&p))?;
            }
        }
        if old_objects.is_dir() {
            std::fs::remove_dir_all(&old_objects).map_err(Self::io(&old_objects))?;
        }
        Ok(())
    }
}

fn read_list(p: &Path) -> Vec<BackupInfo> {
    std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Copy `src` to a private temp file in `dir`, fsynced; returns it and the content's hash.
fn copy_to_temp(mut src: &std::fs::File, dir: &Path) -> Result<(PathBuf, String), BackupError> {
    let mut rnd = [0u8; 8];
    let _ = getrandom::fill(&mut rnd);
    let tmp = dir.join(format!(".tmp.{}", hex(&rnd)));
    let io = |source| BackupError::Io {
        path: tmp.clone(),
        source,
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    Ok((tmp, hex(hasher.finalize().as_bytes())))
}

/// Make everything below `dir` private: directories 0700, files 0600 (hard-linked objects,
/// which share an inode with a file that may be in use elsewhere, are left as they are: the
/// 0700 directories already keep other users out).
pub fn fix_modes(dir: &Path) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(dir)?;
    if md.is_dir() {
        if md.mode() & 0o7777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        for e in std::fs::read_dir(dir)?.flatten() {
            fix_modes(&e.path())?;
        }
    } else if md.is_file() && md.nlink() == 1 && md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Body, Item, Kind, Meta, Owner};

    fn entry(path: &[u8], content: &[u8]) -> Entry {
        Entry::new(Item {
            key: path.into(),
            version: Default::default(),
            origin: "a".into(),
            body: Some(Body::Fs(Meta {
                kind: Kind::File,
                mode: 0o600,
                mtime_s: 0,
                mtime_ns: 0,
                size: content.len() as u64,
                owner: Owner::default(),
                hash: crate::fs::chunk::hash(content),
                target: None,
                chunks: vec![],
                xattrs: vec![],
            })),
            beat: vec![],
        })
    }

    #[test]
    fn keeps_newest_generations_once_by_link_and_bounds_size() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("g")).unwrap();
        let b = Backups::open(&d.path().join("backups")).unwrap();
        let place = crate::fs::safefs::resolve(&root, "/g", b"/g/f\xe9", false).unwrap();
        for v in ["one", "two", "two", "three", "four"] {
            // a new inode each time, as clustersync's own installs make
            let real = name::real(&root, b"/g/f\xe9");
            let _ = std::fs::remove_file(&real);
            std::fs::write(&real, v).unwrap();
            let real = name::real(&root, b"/g/f\xe9");
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o644)).unwrap();
            let kept = b
                .keep("grp", &place, &entry(b"/g/f\xe9", v.as_bytes()), 3)
                .unwrap();
            if let Some(obj) = &kept.linked {
                // the object shares the live file's mode until it is sealed (after the caller
                // replaced the file)
                assert_eq!(std::fs::metadata(obj).unwrap().mode() & 0o777, 0o644);
                b.seal(&kept);
                assert_eq!(std::fs::metadata(obj).unwrap().mode() & 0o777, 0o600);
            }
        }
        let list = b.list("grp", b"/g/f\xe9");
        assert_eq!(list.len(), 3, "{list:?}");
        let contents: Vec<String> = list
            .iter()
            .map(|e| std::fs::read_to_string(b.object("grp", &e.hash)).unwrap())
            .collect();
        assert_eq!(contents, ["four", "three", "two"]);
        assert_eq!(list[0].path, "/g/f\\xe9");
        // the object is the file's own inode (no copy)
        let real = name::real(&root, b"/g/f\xe9");
        assert_eq!(
            std::fs::metadata(&real).unwrap().ino(),
            std::fs::metadata(b.object("grp", &list[0].hash))
                .unwrap()
                .ino()
        );
        // private directories
        let md = std::fs::metadata(d.path().join("backups/grp/objects")).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        // "one" fell out of the list: collected
        b.enforce_limit("grp", None);
        assert_eq!(
            std::fs::read_dir(d.path().join("backups/grp/objects"))
                .unwrap()
                .count(),
            3
        );
        // a bound of 8 bytes keeps only the newest generations that fit
        let dropped = b.enforce_limit("grp", Some(8));
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(b.usage("grp") <= 8);
        assert_eq!(b.list("grp", b"/g/f\xe9").len(), 2);
    }

    #[test]
    fn old_layout_is_moved_and_made_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("backups");
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("objects/abc"), "old").unwrap();
        let info = BackupInfo {
            path: "/srv/www/x".into(),
            time: 1,
            hash: "abc".into(),
            size: 3,
            mode: 0o600,
            mtime_s: 0,
            mtime_ns: 0,
            uid: 0,
            gid: 0,
            origin: "a".into(),
            version: "a:1".into(),
            by_restore: false,
        };
        let lname = format!("{}.json", hex(&crate::fs::chunk::hash(b"/srv/www/x")));
        std::fs::write(
            dir.join("www").join(&lname),
            serde_json::to_vec(&[info]).unwrap(),
        )
        .unwrap();
        // a command line of this release reads it before the old daemon is restarted
        let before = Backups::new(&dir);
        assert_eq!(before.list("www", b"/srv/www/x").len(), 1);
        assert_eq!(
            std::fs::read_to_string(before.object("www", "abc")).unwrap(),
            "old"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = Backups::open(&dir).unwrap();
        assert_eq!(b.list("www", b"/srv/www/x").len(), 1);
        assert_eq!(
            std::fs::read_to_string(b.object("www", "abc")).unwrap(),
            "old"
        );
        assert!(!dir.join("objects").exists());
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700);
        let md = std::fs::metadata(dir.join("www/lists").join(&lname)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
    }
}
