//! Kept previous versions: before clustersync overwrites or deletes a file, its content goes
//! to `<state-dir>/backups/objects/<blake3>` (stored once however many paths or generations
//! share it) and a line describing it to the path's generation list
//! `<state-dir>/backups/<group>/<blake3 of the path>.json`, newest first, at most
//! `backup_generations` entries.
//!
//! Invariants: a backup object is written to a temporary name, fsynced and renamed, so a crash
//! never leaves a partial object under its final name; the content is read through the same
//! no-follow resolution as every other access on behalf of a peer.

use crate::record::{Entry, hex};
use crate::safefs::Place;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One kept version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
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
}

/// Errors keeping a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Fs(#[from] crate::safefs::FsError),
    #[error("backup store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The backup store of a node.
pub struct Backups {
    dir: PathBuf,
}

impl Backups {
    pub fn new(dir: &Path) -> Backups {
        Backups { dir: dir.into() }
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
        move |source| BackupError::Io {
            path: path.into(),
            source,
        }
    }

    fn list_path(&self, group: &str, path: &str) -> PathBuf {
        self.dir.join(group).join(format!(
            "{}.json",
            hex(&crate::chunk::hash(path.as_bytes()))
        ))
    }

    /// Path of a stored object.
    pub fn object(&self, hash: &str) -> PathBuf {
        self.dir.join("objects").join(hash)
    }

    /// The kept versions of `path`, newest first.
    pub fn list(&self, group: &str, path: &str) -> Vec<BackupInfo> {
        std::fs::read(self.list_path(group, path))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Remove stored objects that no generation list refers to any more (run at start-up).
    pub fn gc(&self) -> Result<usize, BackupError> {
        let objects = self.dir.join("objects");
        let Ok(rd) = std::fs::read_dir(&objects) else {
            return Ok(0);
        };
        let mut used = std::collections::HashSet::new();
        for g in std::fs::read_dir(&self.dir)
            .map_err(Self::io(&self.dir))?
            .flatten()
        {
            if g.file_name() == "objects" || !g.path().is_dir() {
                continue;
            }
            for l in std::fs::read_dir(g.path())
                .map_err(Self::io(&self.dir))?
                .flatten()
            {
                let list: Vec<BackupInfo> = std::fs::read(l.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                used.extend(list.into_iter().map(|b| b.hash));
            }
        }
        let mut removed = 0;
        for o in rd.flatten() {
            let name = o.file_name().to_string_lossy().to_string();
            if !used.contains(&name) && std::fs::remove_file(o.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Keep the current content of the file at `place` (described by `e`).
    pub fn keep(
        &self,
        group: &str,
        place: &Place,
        e: &Entry,
        generations: u32,
    ) -> Result<(), BackupError> {
        let Some(m) = &e.rec.meta else { return Ok(()) };
        let mut f = place.open_read()?;
        let objects = self.dir.join("objects");
        std::fs::create_dir_all(&objects).map_err(Self::io(&objects))?;
        let tmp = objects.join(format!(".tmp.{}", std::process::id()));
        let mut out = std::fs::File::create(&tmp).map_err(Self::io(&tmp))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(Self::io(&tmp))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Self::io(&tmp))?;
            size += n as u64;
        }
        out.sync_all().map_err(Self::io(&tmp))?;
        let hash = hex(hasher.finalize().as_bytes());
        let obj = objects.join(&hash);
        if obj.exists() {
            let _ = std::fs::remove_file(&tmp);
        } else {
            std::fs::rename(&tmp, &obj).map_err(Self::io(&obj))?;
        }
        let md = f.metadata().map_err(Self::io(&obj))?;
        use std::os::unix::fs::MetadataExt;
        let info = BackupInfo {
            path: e.rec.path.clone(),
            time: crate::node::unix_now(),
            hash,
            size,
            mode: m.mode,
            mtime_s: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            origin: e.rec.origin.clone(),
            version: e.rec.version.display(),
        };
        let lp = self.list_path(group, &e.rec.path);
        let mut list = self.list(group, &e.rec.path);
        if list.first().is_some_and(|b| b.hash == info.hash) {
            return Ok(());
        }
        list.insert(0, info);
        list.truncate(generations as usize);
        if let Some(dir) = lp.parent() {
            std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        let text = serde_json::to_vec_pretty(&list).map_err(|e| BackupError::Io {
            path: lp.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmpl = lp.with_extension("json.tmp");
        std::fs::write(&tmpl, text).map_err(Self::io(&tmpl))?;
        std::fs::rename(&tmpl, &lp).map_err(Self::io(&lp))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, Meta, Owner, Record};

    fn entry(path: &str) -> Entry {
        Entry {
            rec: Record {
                path: path.into(),
                version: Default::default(),
                origin: "a".into(),
                meta: Some(Meta {
                    kind: Kind::File,
                    mode: 0o644,
                    mtime_s: 0,
                    mtime_ns: 0,
                    size: 0,
                    owner: Owner::default(),
                    hash: [0; 32],
                    target: None,
                    chunks: vec![],
                }),
                beat: vec![],
            },
            seq: 0,
            ino: 0,
            ctime_s: 0,
            ctime_ns: 0,

            from: None,
        }
    }

    #[test]
    fn keeps_newest_generations_once_and_collects_garbage() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("g")).unwrap();
        let b = Backups::new(&d.path().join("backups"));
        let place = crate::safefs::resolve(&root, "/g", "/g/f", false).unwrap();
        for v in ["one", "two", "two", "three", "four"] {
            std::fs::write(root.join("g/f"), v).unwrap();
            b.keep("grp", &place, &entry("/g/f"), 3).unwrap();
        }
        let list = b.list("grp", "/g/f");
        assert_eq!(list.len(), 3, "{list:?}");
        let contents: Vec<String> = list
            .iter()
            .map(|e| std::fs::read_to_string(b.object(&e.hash)).unwrap())
            .collect();
        assert_eq!(contents, ["four", "three", "two"]);
        // "one" fell out of the list: its object goes at the next collection
        assert_eq!(b.gc().unwrap(), 1);
        assert_eq!(b.gc().unwrap(), 0);
        for e in &list {
            assert!(b.object(&e.hash).exists());
        }
    }
}
