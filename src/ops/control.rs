//! The local control socket: how the command line talks to a running daemon.
//!
//! `<state-dir>/control.sock`, mode 0600 (root only by default), one JSON [`Request`] per
//! connection and one JSON [`Response`]; both sides use these types, so a field renamed on one
//! side is a compile error, not a silent `null`. Requests are small and bounded; the socket is
//! never exposed to the network.

use crate::engine::node::Ctx;
use crate::engine::status::Status;
use crate::engine::sync::SyncReport;
use crate::item::name;
use crate::store::ConflictInfo;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest accepted request.
const MAX_REQUEST: u64 = 1024 * 1024;
/// Largest accepted answer.
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Sync {
        groups: Vec<String>,
        dry_run: bool,
        timeout_ms: u64,
    },
    /// Paths as bytes (logical, or real with this node's root).
    Mark {
        paths: Vec<Vec<u8>>,
    },
    Conflicts,
    Resolve {
        path: Vec<u8>,
        keep: String,
    },
    /// `clustersync verify` (SPEC §4).
    Verify {
        groups: Vec<String>,
        deep: bool,
        repair: bool,
        /// How long to wait for changes on their way to settle before comparing.
        wait_ms: u64,
    },
}

/// One conflict as `conflicts --json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConflictEntry {
    pub group: String,
    /// Escaped path (see `item::name::show`).
    pub path: String,
    pub nodes: Vec<String>,
    pub resolved: bool,
    pub kept_as: Option<String>,
    pub winner: Option<String>,
    pub time: i64,
}

/// `conflicts --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConflictList {
    pub conflicts: Vec<ConflictEntry>,
}

impl ConflictList {
    pub fn from_store(list: &[(String, Vec<u8>, ConflictInfo)]) -> ConflictList {
        ConflictList {
            conflicts: list
                .iter()
                .map(|(g, p, c)| ConflictEntry {
                    group: g.clone(),
                    path: name::show(p).into_owned(),
                    nodes: c.nodes.clone(),
                    resolved: c.resolved,
                    kept_as: c.kept_as.clone(),
                    winner: c.resolved.then(|| c.winner.clone()),
                    time: c.time,
                })
                .collect(),
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Sync(SyncReport),
    /// What `sync --dry-run` would do: (action, escaped path) lines.
    DryRun {
        lines: Vec<(String, String)>,
        report: SyncReport,
    },
    Marked {
        /// Paths that are in no group of this node (escaped).
        unknown: Vec<String>,
    },
    Conflicts(ConflictList),
    Resolved {
        message: String,
    },
    Verified(crate::engine::verify::VerifyReport),
    Error {
        message: String,
    },
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("no daemon is running (no control socket at {0})")]
    NoDaemon(PathBuf),
    #[error("cannot talk to the daemon: {0} is root's (run clustersync as root)")]
    Denied(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from the daemon: {0}")]
    BadAnswer(String),
}

/// Path of the control socket in a state dir.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.sock")
}

/// Send one request to the daemon and read its answer.
pub async fn call(state_dir: &Path, req: &Request) -> Result<Response, ControlError> {
    let path = socket_path(state_dir);
    let mut s = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoDaemon(path));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ControlError::Denied(path));
        }
        Err(source) => return Err(ControlError::Io { path, source }),
    };
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let mut line =
        serde_json::to_string(req).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s)
        .take(MAX_ANSWER)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// Is a daemon answering on this state dir?
pub async fn daemon_running(state_dir: &Path) -> bool {
    UnixStream::connect(socket_path(state_dir)).await.is_ok()
}

/// Bind the control socket (0600), refusing when another daemon answers on it.
pub async fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(state_dir);
    if daemon_running(state_dir).await {
        return Err(std::io::Error::other(format!(
            "another daemon is already running with state dir {}",
            state_dir.display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The node the control socket serves: `None` while a reload swaps it.
pub type Current = Arc<std::sync::RwLock<Option<Arc<Ctx>>>>;

/// Serve the control socket until shutdown; the node is read for each request, so a reloaded
/// node is served as soon as it is in place.
pub async fn serve(
    listener: UnixListener,
    state_dir: PathBuf,
    current: Current,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let path = socket_path(&state_dir);
    loop {
        let (s, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = crate::engine::node::until_set(&mut shutdown) => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
        };
        let ctx = match current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        tokio::spawn(async move {
            let r = match ctx {
                Some(ctx) => handle(ctx, s).await,
                None => reloading(s).await,
            };
            if let Err(e) = r {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn reloading(s: UnixStream) -> std::io::Result<()> {
    let (_, mut w) = s.into_split();
    let mut text = serde_json::to_string(&Response::Error {
        message: "the daemon is reloading its config; try again in a moment".into(),
    })
    .unwrap_or_default();
    text.push('\n');
    w.write_all(text.as_bytes()).await
}

async fn handle(ctx: Arc<Ctx>, s: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    BufReader::new(r)
        .take(MAX_REQUEST)
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
        Ok(req) => answer(&ctx, req).await,
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    w.write_all(text.as_bytes()).await?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> Response {
    Response::Error {
        message: e.to_string(),
    }
}

async fn answer(ctx: &Arc<Ctx>, req: Request) -> Response {
    match req {
        Request::Status => match crate::engine::status::live(ctx) {
            Ok(st) => Response::Status(Box::new(st)),
            Err(e) => err(e),
        },
        Request::Sync {
            groups,
            dry_run,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms.max(1));
            if dry_run {
                // nothing is exchanged: what is still on its way, and who cannot be reached
                let c = ctx.clone();
                let gs = groups.clone();
                let lines = tokio::task::spawn_blocking(move || pending_lines(&c, &gs))
                    .await
                    .unwrap_or_default();
                let report = crate::engine::sync::dry_report(ctx, &groups);
                Response::DryRun { lines, report }
            } else {
                Response::Sync(crate::engine::sync::sync(ctx, &groups, timeout, false).await)
            }
        }
        Request::Conflicts => match ctx.store.conflicts() {
            Ok(list) => Response::Conflicts(ConflictList::from_store(&list)),
            Err(e) => err(e),
        },
        Request::Resolve { path, keep } => match ctx.group_of_path(&path) {
            None => err(format!(
                "{} is not in any group of this node",
                name::show(&path)
            )),
            Some((g, key)) => match ctx.lane(&g) {
                Some(l) => match l.resolve(key, keep).await {
                    Ok(message) => Response::Resolved { message },
                    Err(e) => err(e),
                },
                None => err(format!("unknown group {g}")),
            },
        },
        Request::Verify {
            groups,
            deep,
            repair,
            wait_ms,
        } => {
            let wait = Duration::from_millis(wait_ms.max(1));
            Response::Verified(crate::engine::verify::run(ctx, &groups, deep, repair, wait).await)
        }
        Request::Mark { paths } => {
            let mut unknown = Vec::new();
            for p in paths {
                match ctx.group_of_path(&p) {
                    Some((g, key)) => {
                        if let Some(l) = ctx.lane(&g) {
                            l.local(vec![(key, true)], false);
                        }
                    }
                    None => unknown.push(name::show(&p).into_owned()),
                }
            }
            Response::Marked { unknown }
        }
    }
}

/// With a daemon, `sync --dry-run` lists what is still on its way: our changes some peer has
/// not confirmed (`send`), peers' items not applied yet (`receive`), unresolved conflicts.
fn pending_lines(ctx: &Ctx, groups: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in ctx.groups.values() {
        if !groups.is_empty() && !groups.iter().any(|n| n == g.name()) {
            continue;
        }
        // what a scan would find that the index does not know yet (unwatched groups, or
        // changes still in the quiet window)
        if !g.replica {
            for (what, key) in crate::engine::lane::dry_scan(ctx, g) {
                out.push((what.to_string(), name::show(&key).into_owned()));
            }
        }
        if !g.replica {
            let mut from = u64::MAX;
            for p in &g.peers {
                from = from.min(ctx.store.acked(p, g.name()).unwrap_or(0));
            }
            if from != u64::MAX
                && let Ok(items) = ctx.store.since(g.name(), from, 10_000)
            {
                for e in items {
                    out.push(("send".to_string(), e.item.show().into_owned()));
                }
            }
        }
        if let Ok(aside) = ctx.store.aside(g.name()) {
            for a in aside {
                let what = if a.item.is_deleted() {
                    "delete"
                } else {
                    "receive"
                };
                out.push((what.to_string(), a.item.show().into_owned()));
            }
        }
    }
    if let Ok(list) = ctx.store.conflicts() {
        for (g, p, c) in list {
            if !c.resolved && (groups.is_empty() || groups.contains(&g)) {
                out.push(("conflict".to_string(), name::show(&p).into_owned()));
            }
        }
    }
    // each path once: the first reason found (a fresh scan before what the index holds)
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, p)| seen.insert(p.clone()));
    out
}
