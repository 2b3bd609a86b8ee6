//! The local control socket: how the command line talks to a running daemon.
//!
//! `<state-dir>/control.sock`, mode 0600 (root only by default), one JSON request per
//! connection and one JSON answer. Requests are small and bounded; the socket is never exposed
//! to the network.

use crate::node::{Shared, Work};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest accepted request.
const MAX_REQUEST: u64 = 1024 * 1024;

/// A request to the daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Sync {
        groups: Vec<String>,
        dry_run: bool,
        timeout_ms: u64,
    },
    Mark {
        paths: Vec<String>,
    },
    Conflicts,
    Resolve {
        path: String,
        keep: String,
    },
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is running (no control socket at {0})")]
    NoDaemon(PathBuf),
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
pub async fn call(state_dir: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
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
        .take(64 * 1024 * 1024)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// Is a daemon answering on this state dir?
pub async fn daemon_running(state_dir: &Path) -> bool {
    UnixStream::connect(socket_path(state_dir)).await.is_ok()
}

/// Serve the control socket until shutdown.
pub async fn serve(shared: Arc<Shared>) -> std::io::Result<()> {
    let path = socket_path(&shared.state_dir);
    if daemon_running(&shared.state_dir).await {
        return Err(std::io::Error::other(format!(
            "another daemon is already running with state dir {}",
            shared.state_dir.display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let mut shutdown = shared.shutdown_rx();
    loop {
        let (s, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = crate::node::until_set(&mut shutdown) => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
        };
        let sh = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sh, s).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, s: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    BufReader::new(r)
        .take(MAX_REQUEST)
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => serde_json::json!({"error": format!("bad request: {e}")}),
        Ok(Request::Status) => {
            match crate::node::status_of(&shared.name, &shared.cfg, &shared.index, Some(&shared)) {
                Ok(st) => serde_json::to_value(st).unwrap_or_default(),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            }
        }
        Ok(Request::Sync {
            groups,
            dry_run,
            timeout_ms,
        }) => {
            if dry_run {
                // the daemon applies continuously; what is left is what is pending
                match crate::node::status_of(
                    &shared.name,
                    &shared.cfg,
                    &shared.index,
                    Some(&shared),
                ) {
                    Ok(st) => serde_json::json!({"dry_run": true, "status": st}),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                }
            } else {
                let rep = shared
                    .sync(&groups, Duration::from_millis(timeout_ms.max(1)))
                    .await;
                serde_json::to_value(rep).unwrap_or_default()
            }
        }
        Ok(Request::Conflicts) => match shared.index.conflicts() {
            Ok(list) => conflicts_json(&list),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        },
        Ok(Request::Resolve { path, keep }) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            shared.submit(Work::Resolve {
                path,
                keep,
                reply: tx,
            });
            match rx.await {
                Ok(Ok(msg)) => serde_json::json!({ "ok": msg }),
                Ok(Err(e)) => serde_json::json!({ "error": e }),
                Err(_) => serde_json::json!({"error": "the daemon is stopping"}),
            }
        }
        Ok(Request::Mark { paths }) => {
            let mut unknown = Vec::new();
            for p in paths {
                match shared.group_of_path(&p) {
                    Some((g, logical)) => shared.submit(Work::Dirty {
                        group: g,
                        paths: vec![(logical, true)],
                        settled: false,
                    }),
                    None => unknown.push(p),
                }
            }
            serde_json::json!({"unknown": unknown})
        }
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    w.write_all(text.as_bytes()).await?;
    Ok(())
}

/// The `conflicts --json` document.
pub fn conflicts_json(list: &[(String, String, crate::index::ConflictInfo)]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = list
        .iter()
        .map(|(g, p, c)| {
            serde_json::json!({"group": g, "path": p, "nodes": c.nodes, "resolved": c.resolved,
                "kept_as": c.kept_as, "winner": if c.resolved { Some(&c.winner) } else { None },
                "time": c.time})
        })
        .collect();
    serde_json::json!({ "conflicts": items })
}

impl Shared {
    /// Which group a path (logical, or real with this node's root prefix) belongs to.
    pub fn group_of_path(&self, p: &str) -> Option<(String, String)> {
        let root = self.root.to_string_lossy();
        let candidates = [
            Some(p.to_string()),
            (root != "/")
                .then(|| p.strip_prefix(root.trim_end_matches('/')).map(String::from))
                .flatten(),
        ];
        for c in candidates.into_iter().flatten() {
            let c = if c.len() > 1 {
                c.trim_end_matches('/').to_string()
            } else {
                c
            };
            for g in &self.groups {
                if crate::paths::validate(&c, &g.cfg.paths).is_ok() {
                    return Some((g.cfg.name.clone(), c));
                }
            }
        }
        None
    }
}
