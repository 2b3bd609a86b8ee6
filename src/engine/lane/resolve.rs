//! Ending an unresolved conflict (`clustersync resolve PATH --keep NODE`) and putting the
//! group's version back over drift on a replica.
//!
//! A resolution is a new version: the vector merges every competing version's and adds one
//! change of this node, so it descends from all of them and every node takes it; what it
//! replaces on disk is kept as a backup.

use super::files::FilesDomain;
use crate::engine::apply::{ApplyError, Fs};
use crate::engine::peer::lock;
use crate::item::{Entry, Item, name};
use crate::store::{Change, Extras};
use std::collections::BTreeSet;

impl FilesDomain {
    pub(super) async fn resolve_key(&self, key: Vec<u8>, keep: String) -> Result<String, String> {
        let group = self.g.name().to_string();
        let shown = name::show(&key).into_owned();
        if self.g.replica && lock(&self.state.drift).contains_key(&key) {
            if keep == self.ctx.name {
                return Err(format!(
                    "{} is a replica of group {group}: its version cannot become the group's (copy it to a full member instead)",
                    self.ctx.name
                ));
            }
            self.revert_keys(vec![key.clone()]).await;
            return if lock(&self.state.drift).contains_key(&key) {
                Err(format!(
                    "{shown}: could not put the group's version back yet (see the log)"
                ))
            } else {
                Ok(format!(
                    "{shown}: drift resolved, the group's version is back"
                ))
            };
        }
        let mut info = self
            .ctx
            .store
            .conflict(&group, &key)
            .map_err(|e| e.to_string())?
            .filter(|c| !c.resolved)
            .ok_or_else(|| format!("no unresolved conflict on {shown} in group {group}"))?;
        let local = self
            .ctx
            .store
            .get(&group, &key)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{shown} is not in the index"))?;
        let mut vv = local.item.version.clone();
        for v in &info.versions {
            vv.merge(&v.version);
        }
        vv.bump(&self.ctx.name, crate::item::version::clock_ms());
        let chosen: Item = if keep == self.ctx.name || keep == local.item.origin {
            let mut i = local.item.clone();
            i.version = vv;
            i
        } else {
            let v = info
                .versions
                .iter()
                .find(|v| v.origin == keep)
                .ok_or_else(|| {
                    let mut have: Vec<&str> =
                        info.versions.iter().map(|v| v.origin.as_str()).collect();
                    have.push(&local.item.origin);
                    format!(
                        "no version from {keep} in this conflict (versions from: {})",
                        have.join(", ")
                    )
                })?;
            let mut i = v.clone();
            i.version = vv;
            i
        };
        let entry = self
            .put(&chosen, Some(&local), Some(keep.clone()))
            .await
            .map_err(|e| e.to_string())?;
        self.ctx.audit_item(&group, "resolve", &entry.item, None);
        info.resolved = true;
        info.winner = keep.clone();
        info.versions.clear();
        let touched = BTreeSet::from([name::parent(&key).to_vec()]);
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let head = tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            let mut changes = vec![Change {
                entry,
                announce: true,
            }];
            fs.restore_dir_mtimes(&touched, &mut changes);
            ctx.store.commit(
                g.name(),
                changes,
                Extras {
                    conflicts: vec![(key, Some(info))],
                    ..Default::default()
                },
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        super::publish_head(&self.head, head);
        Ok(format!(
            "{shown}: kept the version of {keep}; it now travels to every node"
        ))
    }

    /// Put `item` on disk over `local` (content from local chunks or peers), outside a batch.
    async fn put(
        &self,
        item: &Item,
        local: Option<&Entry>,
        prefer: Option<String>,
    ) -> Result<Entry, ApplyError> {
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let (item, local) = (item.clone(), local.cloned());
        if item.is_deleted() {
            return tokio::task::spawn_blocking(move || {
                Fs { ctx: &ctx, g: &g }.delete(&item, local.as_ref())
            })
            .await
            .map_err(|e| ApplyError::Other {
                path: String::new(),
                msg: e.to_string(),
            })?;
        }
        if !crate::engine::apply::needs_content(&item, local.as_ref()) {
            return tokio::task::spawn_blocking(move || {
                Fs { ctx: &ctx, g: &g }.make(&item, local.as_ref())
            })
            .await
            .map_err(|e| ApplyError::Other {
                path: String::new(),
                msg: e.to_string(),
            })?;
        }
        let (place, tmp) =
            super::files::prepare(ctx.clone(), g.clone(), item.clone(), local.clone(), prefer)
                .await?;
        tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            let _ = crate::fs::safefs::sync_filesystem(&tmp.file);
            let e = fs.install_file(&place, &item, local.as_ref(), tmp);
            let _ = crate::fs::safefs::sync_filesystem(place.dir_fd());
            e
        })
        .await
        .map_err(|e| ApplyError::Other {
            path: String::new(),
            msg: e.to_string(),
        })?
    }

    /// Put the group's version back over drift on a replica (`on_drift = "revert"`, or a
    /// `resolve` of drift).
    pub(super) async fn revert_keys(&self, keys: Vec<Vec<u8>>) {
        let group = self.g.name().to_string();
        let mut items: Vec<(Vec<u8>, Option<Entry>)> = keys
            .into_iter()
            .map(|k| {
                let e = self
                    .ctx
                    .store
                    .get(&group, &k)
                    .ok()
                    .flatten()
                    .filter(|e| !e.item.is_deleted());
                (k, e)
            })
            .collect();
        // restorations parents first, removals deepest first after them
        items.sort_by(|a, b| match (&a.1, &b.1) {
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), Some(_)) => crate::store::enc(&a.0).cmp(&crate::store::enc(&b.0)),
            (None, None) => crate::store::enc(&b.0).cmp(&crate::store::enc(&a.0)),
        });
        let mut changes = Vec::new();
        let mut touched = BTreeSet::new();
        for (key, entry) in items {
            let r = match &entry {
                Some(e) => {
                    // the disk is not what the index says: compare against nothing, as a
                    // fresh install over whatever is there (its content was kept as a backup)
                    let disk = self.disk_entry(&key).await;
                    self.put(&e.item, disk.as_ref(), None)
                        .await
                        .map(|mut fresh| {
                            fresh.item = e.item.clone();
                            fresh.seq = e.seq;
                            fresh.from = e.from.clone();
                            changes.push(Change {
                                entry: fresh,
                                announce: false,
                            });
                        })
                }
                None => {
                    let (ctx, g, k) = (self.ctx.clone(), self.g.clone(), key.clone());
                    tokio::task::spawn_blocking(move || {
                        let fs = Fs { ctx: &ctx, g: &g };
                        match fs.place(&k, false) {
                            Ok(place) => place.remove().map_err(ApplyError::from),
                            Err(ApplyError::Fs(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(ApplyError::Other {
                            path: String::new(),
                            msg: e.to_string(),
                        })
                    })
                }
            };
            touched.insert(name::parent(&key).to_vec());
            match r {
                Ok(()) => {
                    lock(&self.state.drift).remove(&key);
                    self.ctx.audit.log(crate::ops::audit::Rec {
                        group: &group,
                        path: &key,
                        kind: "revert",
                        origin: &self.ctx.name,
                        ..Default::default()
                    });
                    tracing::info!(group = %group, "reverted drift on {}", name::show(&key));
                }
                Err(e) => {
                    tracing::warn!(group = %group, "cannot revert drift on {} yet: {e}", name::show(&key))
                }
            }
        }
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let r = tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            fs.restore_dir_mtimes(&touched, &mut changes);
            if changes.is_empty() {
                return Ok(0);
            }
            ctx.store.commit(g.name(), changes, Extras::default())
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::error!(group = %group, "index commit: {e}");
        }
    }

    /// What is on disk at `key` now, as an entry (for an install over drift).
    async fn disk_entry(&self, key: &[u8]) -> Option<Entry> {
        let (ctx, g, k) = (self.ctx.clone(), self.g.clone(), key.to_vec());
        tokio::task::spawn_blocking(move || {
            let real = name::real(&ctx.root, &k);
            let md = std::fs::symlink_metadata(&real).ok()?;
            let obs = crate::local::scan::observe(&real, &md, &ctx.owners, g.xattrs.as_ref(), None)
                .ok()??;
            let mut e = Entry::new(Item {
                key: k,
                version: Default::default(),
                origin: ctx.name.clone(),
                body: Some(crate::item::Body::Fs(obs.meta)),
                beat: vec![],
            });
            e.ino = obs.ino;
            e.ctime_s = obs.ctime_s;
            e.ctime_ns = obs.ctime_ns;
            Some(e)
        })
        .await
        .ok()
        .flatten()
    }
}
