//! `clustersync verify` (SPEC §4) through the running daemon: `--deep` (this node's disk against
//! its index) and a comparison of each selected group with each of its peers.

use super::{Outcome, VerifyError, compare, state};
use crate::engine::group::GroupRt;
use crate::engine::node::{Ctx, Engine};
use crate::item::{Kind, name};
use crate::net::protocol::Msg;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// One path that differs, as `verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub group: String,
    /// Escaped path (`item::name::show`).
    pub path: String,
    /// The peer compared with; `None`: this node's disk against its index (`--deep`).
    pub peer: Option<String>,
    /// What this node holds (on disk, for `--deep`).
    pub here: String,
    /// What the peer holds (the index, for `--deep`).
    pub there: String,
}

impl Difference {
    /// `PATH: here <state>, PEER <state>` (`index` for `--deep`).
    pub fn line(&self) -> String {
        match &self.peer {
            Some(p) => format!("{}: here {}, {p} {}", self.path, self.here, self.there),
            None => format!(
                "{}: here on disk {}, index {}",
                self.path, self.here, self.there
            ),
        }
    }
}

/// A peer `verify` could not compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub group: String,
    pub peer: String,
    pub why: String,
}

/// A comparison `verify` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    pub group: String,
    pub peer: String,
    pub matched: bool,
}

/// What `clustersync verify` found (`--json` prints it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub node: String,
    pub differences: Vec<Difference>,
    pub compared: Vec<Compared>,
    pub unreachable: Vec<Unreachable>,
    /// Files and bytes read again from disk (`--deep`).
    pub deep_files: u64,
    pub deep_bytes: u64,
    /// Some comparison found more than [`MAX_DIFFS`] keys: the rest are found by the next.
    pub truncated: bool,
    /// `--repair`: every difference listed was handed to the usual rules.
    pub repaired: bool,
}

impl VerifyReport {
    /// SPEC §4: 4 a peer could not be compared with, 1 differences, 0 the same everywhere.
    pub fn exit_code(&self) -> u8 {
        if !self.unreachable.is_empty() {
            4
        } else if !self.differences.is_empty() {
            1
        } else {
            0
        }
    }
}

/// What `--deep` found in one group.
#[derive(Debug, Default)]
pub struct Deep {
    /// (key, what is on disk, what the index says).
    pub found: Vec<(Vec<u8>, String, String)>,
    pub files: u64,
    pub bytes: u64,
}

/// Read every regular file and symlink of `g` that the index knows from disk and compare it
/// with its entry (blocking; files on several threads).
pub fn deep_check(ctx: &Ctx, g: &GroupRt) -> Result<Deep, StoreError> {
    let mut todo = Vec::new();
    ctx.store.for_each(g.name(), |e| {
        if matches!(e.item.kind(), Some(Kind::File | Kind::Symlink)) {
            todo.push(e.clone());
        }
        true
    })?;
    let threads = crate::fs::par::threads();
    let root = ctx.root.clone();
    let results = crate::fs::par::map(todo, threads, |e| deep_one(&root, &e));
    let mut out = Deep::default();
    for r in results.into_iter().flatten() {
        let (bytes, finding) = r;
        out.files += 1;
        out.bytes += bytes;
        if let Some(f) = finding {
            out.found.push(f);
        }
    }
    out.found.sort();
    Ok(out)
}

/// One entry against the disk: bytes read, and what differs.
type DeepOne = (u64, Option<(Vec<u8>, String, String)>);

fn deep_one(root: &std::path::Path, e: &crate::item::Entry) -> DeepOne {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Some(m) = e.item.meta() else {
        return (0, None);
    };
    let key = e.item.key.clone();
    let real = name::real(root, &key);
    let index = |m: &crate::item::Meta| match m.kind {
        Kind::File => format!("file {} bytes #{}", m.size, crate::item::hex(&m.hash[..6])),
        _ => format!(
            "symlink to {}",
            name::show(m.target.as_deref().unwrap_or_default())
        ),
    };
    let md = match std::fs::symlink_metadata(&real) {
        Ok(md) => md,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return (0, Some((key, "missing".into(), index(m))));
        }
        Err(_) => return (0, None),
    };
    // a file whose stat changed since the index saw it is a local change on its way
    if !crate::local::scan::quick_match(&e.quick(), &md) {
        return (0, None);
    }
    if m.kind == Kind::Symlink {
        let Ok(t) = std::fs::read_link(&real) else {
            return (0, None);
        };
        use std::os::unix::ffi::OsStrExt;
        let t = t.as_os_str().as_bytes();
        if Some(t) != m.target.as_deref() {
            return (
                0,
                Some((key, format!("symlink to {}", name::show(t)), index(m))),
            );
        }
        return (0, None);
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
    else {
        return (0, None);
    };
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (n, None),
        }
    }
    // changed while it was read: the scanner reports it
    match f.metadata() {
        Ok(after)
            if after.ino() == md.ino()
                && after.ctime() == md.ctime()
                && after.ctime_nsec() == md.ctime_nsec()
                && after.len() == md.len() => {}
        _ => return (n, None),
    }
    let hash = *h.finalize().as_bytes();
    if hash != m.hash || n != m.size {
        let disk = format!("file {n} bytes #{}", crate::item::hex(&hash[..6]));
        return (n, Some((key, disk, index(m))));
    }
    (n, None)
}

/// Which of this node's groups `verify` looks at: the named ones, or all.
fn selected(ctx: &Ctx, groups: &[String]) -> Vec<Arc<GroupRt>> {
    ctx.groups
        .values()
        .filter(|g| groups.is_empty() || groups.iter().any(|n| n == g.name()))
        .cloned()
        .collect()
}

/// `clustersync verify` through the running daemon: `--deep` first (this node's disk against
/// its index), then each selected group with each of its peers, waiting up to `wait` for
/// changes on their way to settle.
pub async fn run(
    e: &Engine,
    groups: &[String],
    deep: bool,
    repair: bool,
    wait: Duration,
) -> VerifyReport {
    let ctx = &e.ctx;
    let mut report = VerifyReport {
        node: ctx.name.clone(),
        repaired: repair,
        ..Default::default()
    };
    let chosen = selected(ctx, groups);
    if deep {
        deep_all(e, &chosen, repair, &mut report).await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut tasks = Vec::new();
    for g in &chosen {
        for p in &g.peers {
            let (e, g, p) = (e.clone(), g.clone(), p.clone());
            tasks.push(tokio::spawn(async move {
                let r = with_peer(&e, &g, &p, repair, deadline).await;
                (g, p, r)
            }));
        }
    }
    for t in tasks {
        let Ok((g, p, r)) = t.await else { continue };
        match r {
            Ok(o) => {
                report.truncated |= o.truncated;
                report.compared.push(Compared {
                    group: g.name().to_string(),
                    peer: p.clone(),
                    matched: o.matched,
                });
                for f in o.found {
                    report.differences.push(Difference {
                        group: g.name().to_string(),
                        path: name::show(&f.key).into_owned(),
                        peer: Some(p.clone()),
                        here: state(f.here.as_ref()),
                        there: state(f.there.as_ref()),
                    });
                }
            }
            Err(why) => report.unreachable.push(Unreachable {
                group: g.name().to_string(),
                peer: p,
                why,
            }),
        }
    }
    report
        .differences
        .sort_by(|a, b| (&a.group, &a.path, &a.peer).cmp(&(&b.group, &b.path, &b.peer)));
    report
}

/// `--deep` over the chosen groups: each file group's disk against its index, every
/// finding audited and reported; with `repair`, the lane reads those files again.
async fn deep_all(e: &Engine, chosen: &[Arc<GroupRt>], repair: bool, report: &mut VerifyReport) {
    let ctx = &e.ctx;
    for g in chosen.iter().filter(|g| !g.is_accounts()) {
        let (c2, g2) = (ctx.clone(), g.clone());
        let d = match tokio::task::spawn_blocking(move || deep_check(&c2, &g2)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(group = %g.name(), "verify --deep: {e}");
                continue;
            }
            Err(_) => continue,
        };
        report.deep_files += d.files;
        report.deep_bytes += d.bytes;
        let keys: Vec<Vec<u8>> = d.found.iter().map(|(k, _, _)| k.clone()).collect();
        for (k, disk, index) in d.found {
            ctx.audit.log(crate::ops::audit::Rec {
                group: g.name(),
                path: &k,
                kind: "diverged",
                origin: &ctx.name,
                detail: Some(&format!(
                    "found by verify --deep: on disk {disk}, in the index {index}"
                )),
                ..Default::default()
            });
            report.differences.push(Difference {
                group: g.name().to_string(),
                path: name::show(&k).into_owned(),
                peer: None,
                here: disk,
                there: index,
            });
        }
        if !keys.is_empty() {
            ctx.metrics.diverged(g.name(), keys.len() as u64);
        }
        if repair
            && !keys.is_empty()
            && let Some(lane) = e.lane(g.name())
        {
            lane.found((ctx.name.clone(), 0), Vec::new(), keys).await;
        }
    }
}

/// Compare `g` with `peer`, waiting (until `deadline`) for the link and for quiet.
async fn with_peer(
    e: &Engine,
    g: &GroupRt,
    peer: &str,
    repair: bool,
    deadline: tokio::time::Instant,
) -> Result<Outcome, String> {
    let ctx = &e.ctx;
    let mut busy_since: Option<tokio::time::Instant> = None;
    loop {
        let Some(link) = ctx.links.get(peer) else {
            let st = ctx.links.state(peer);
            return Err(st.error.unwrap_or_else(|| "not connected".into()));
        };
        if link.version < 5 {
            return Err(format!(
                "{peer} runs an older release (protocol {}), which cannot compare index summaries",
                link.version
            ));
        }
        if let Some(why) = link.groups.get(g.name()).and_then(|lg| lg.paused.clone()) {
            return Err(why);
        }
        if !link.groups.contains_key(g.name()) {
            return Err(format!("{peer} does not share group {}", g.name()));
        }
        match compare(e, &link, g.name(), repair, false).await {
            Ok(o) => return Ok(o),
            Err(VerifyError::Busy) => {
                let now = tokio::time::Instant::now();
                busy_since.get_or_insert(now);
                if now >= deadline {
                    return Err(format!(
                        "changes of group {} kept flowing between this node and {peer}; run verify again when they settle",
                        g.name()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(VerifyError::BadAnswer { msg, .. }) => {
                let why = format!("comparing index summaries of group {}: {msg}", g.name());
                ctx.audit_refused(peer, &why);
                let _ = link
                    .send(Msg::Bye {
                        reason: why.clone(),
                    })
                    .await;
                link.close();
                return Err(why);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
