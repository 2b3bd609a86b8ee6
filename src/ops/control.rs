//! The local control socket: how the command line talks to a running daemon.
//!
//! `<state-dir>/control.sock`, mode 0600 (root only by default), one JSON [`Request`] per
//! connection and one JSON [`Response`]; both sides use these types, so a field renamed on one
//! side is a compile error, not a silent `null`. Requests are small and bounded; the socket is
//! never exposed to the network.
//!
//! **Versions.** After a package upgrade and before the restart, the command line of one
//! release talks to the daemon of another (SPEC §4). Both sides add `"control"`
//! ([`CONTROL_VERSION`]) and `"release"` to their JSON object; releases before 0.3 did not
//! (0.2 sent typed messages tagged `cmd`/`answer`, 0.1 answered with untagged objects).
//! Messages only gain fields (each side ignores what it does not know), so the answers of 0.2
//! and 0.3 daemons read both ways; the recorded messages of the previous release in
//! `tests/fixtures/control/` keep it so. What cannot be read (a request the daemon does not
//! know, an answer the command line cannot decode) is never shown as a decoding error: it is
//! [`ControlError::OtherRelease`], which names the daemon's release and says to restart it.

use crate::engine::node::{Ctx, Engine};
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

/// The control protocol of this release: 2 (0.3). 1 is 0.2's typed messages without a
/// version field, 0 is 0.1's untagged answers.
pub const CONTROL_VERSION: u64 = 2;

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
    /// The daemon runs another release than this command line and the two cannot understand
    /// each other on this command.
    #[error(
        "the running daemon is {daemon}, this command line is clustersync {}: {what}. Restart the daemon so that it runs the installed release (`systemctl restart clustersync`), then run the command again",
        crate::release::VERSION
    )]
    OtherRelease { daemon: String, what: String },
}

/// Which release a daemon runs, from the version fields of its answer (`None` when absent).
fn describe_daemon(control: Option<u64>, release: Option<&str>, tagged: bool) -> String {
    match (control, release) {
        (Some(c), Some(r)) => format!("clustersync {r} (control protocol {c})"),
        (Some(c), None) => format!("a release of control protocol {c}"),
        (None, _) if tagged => "an older release (0.2, whose answers carry no version)".into(),
        (None, _) => "an older release (0.1, whose answers carry no version)".into(),
    }
}

/// `value` as a JSON object with this release's version fields added.
fn with_version(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(mut m) => {
            m.insert("control".into(), CONTROL_VERSION.into());
            m.insert("release".into(), crate::release::VERSION.into());
            serde_json::Value::Object(m)
        }
        v => v,
    }
}

/// Read the daemon's answer to `req`, whatever release the daemon runs: this release's and
/// 0.2's answers decode as they are; 0.1's untagged ones are read where their shape is known;
/// anything else is [`ControlError::OtherRelease`] naming the daemon's release.
pub fn decode_answer(req: &Request, v: serde_json::Value) -> Result<Response, ControlError> {
    let control = v.get("control").and_then(|c| c.as_u64());
    let release = v.get("release").and_then(|r| r.as_str()).map(str::to_owned);
    let tagged = v.get("answer").is_some();
    let daemon = || describe_daemon(control, release.as_deref(), tagged);
    if !tagged && control.is_none() {
        if let Some(e) = v.get("error").and_then(|e| e.as_str())
            && e.starts_with("bad request")
        {
            return Err(ControlError::OtherRelease {
                daemon: daemon(),
                what: format!("it does not understand this command's request ({e})"),
            });
        }
        return from_release_0_1(req, v).ok_or_else(|| ControlError::OtherRelease {
            daemon: daemon(),
            what: "its answer to this command cannot be read by this command line".into(),
        });
    }
    match serde_json::from_value::<Response>(v) {
        // a daemon that does not know the request (an older release, or a newer command
        // line's request) answers "bad request"
        Ok(Response::Error { message })
            if message.starts_with("bad request") && control != Some(CONTROL_VERSION) =>
        {
            Err(ControlError::OtherRelease {
                daemon: daemon(),
                what: format!("it does not understand this command's request ({message})"),
            })
        }
        Ok(r) => Ok(r),
        Err(e) if control == Some(CONTROL_VERSION) => Err(ControlError::BadAnswer(e.to_string())),
        Err(e) => Err(ControlError::OtherRelease {
            daemon: daemon(),
            what: format!("its answer cannot be read by this command line ({e})"),
        }),
    }
}

/// An answer of a 0.1 daemon (untagged JSON), where its shape is known.
fn from_release_0_1(req: &Request, v: serde_json::Value) -> Option<Response> {
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Some(Response::Error {
            message: e.to_string(),
        });
    }
    match req {
        Request::Status => serde_json::from_value::<Box<Status>>(v).ok().map(|mut st| {
            // 0.1's status has no `daemon` field; it came from one
            st.daemon = true;
            Response::Status(st)
        }),
        Request::Conflicts => serde_json::from_value(v).ok().map(Response::Conflicts),
        Request::Sync { dry_run: false, .. } => serde_json::from_value(v).ok().map(Response::Sync),
        Request::Resolve { .. } => {
            v.get("ok")
                .and_then(|m| m.as_str())
                .map(|m| Response::Resolved {
                    message: m.to_string(),
                })
        }
        _ => None,
    }
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
    let v = serde_json::to_value(req).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    let mut line = with_version(v).to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s)
        .take(MAX_ANSWER)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    let v: serde_json::Value =
        serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    decode_answer(req, v)
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
pub type Current = Arc<std::sync::RwLock<Option<Engine>>>;

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

/// The answer as it goes on the socket: the JSON of `answer` with this release's version.
fn answer_line(answer: &Response) -> String {
    let mut text = serde_json::to_value(answer)
        .map(with_version)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

async fn reloading(s: UnixStream) -> std::io::Result<()> {
    let (_, mut w) = s.into_split();
    let text = answer_line(&Response::Error {
        message: "the daemon is reloading its config; try again in a moment".into(),
    });
    w.write_all(text.as_bytes()).await
}

/// Read one request of any release: this one's, or 0.2's (no version fields, the same
/// messages). A request this daemon does not know is answered with an error that names this
/// daemon's release and says to restart it when the command line is of another release.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    let control = v.get("control").and_then(|c| c.as_u64());
    let release = v.get("release").and_then(|r| r.as_str()).map(str::to_owned);
    serde_json::from_value::<Request>(v).map_err(|e| {
        let theirs = match (&release, control) {
            (Some(r), _) if r != crate::release::VERSION => format!("clustersync {r}"),
            (None, None) => "an older release (0.2 or 0.1)".to_string(),
            _ => return format!("bad request: {e}"),
        };
        format!(
            "bad request: this daemon runs clustersync {} (control protocol {CONTROL_VERSION}) and does not understand this request of the command line of {theirs} ({e}); restart the daemon so that it runs the installed release (`systemctl restart clustersync`)",
            crate::release::VERSION
        )
    })
}

async fn handle(ctx: Engine, s: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    BufReader::new(r)
        .take(MAX_REQUEST)
        .read_line(&mut line)
        .await?;
    let answer = match decode_request(&line) {
        Err(message) => Response::Error { message },
        Ok(req) => answer(&ctx, req).await,
    };
    w.write_all(answer_line(&answer).as_bytes()).await?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> Response {
    Response::Error {
        message: e.to_string(),
    }
}

async fn answer(e: &Engine, req: Request) -> Response {
    let ctx = &e.ctx;
    match req {
        Request::Status => match crate::engine::status::live(ctx, &e.lanes) {
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
                let report = crate::engine::sync::dry_report(e, &groups);
                Response::DryRun { lines, report }
            } else {
                Response::Sync(crate::engine::sync::sync(e, &groups, timeout, false).await)
            }
        }
        Request::Conflicts => match ctx.store.conflicts() {
            Ok(list) => Response::Conflicts(ConflictList::from_store(&list)),
            Err(e) => err(e),
        },
        Request::Resolve { path, keep } => match ctx
            .group(crate::engine::group::ACCOUNTS)
            .filter(|_| crate::accounts::AccountId::from_key(&path).is_some())
            .map(|g| (g.name().to_string(), path.clone()))
            .or_else(|| ctx.group_of_path(&path))
        {
            None => err(format!(
                "{} is not in any group of this node",
                name::show(&path)
            )),
            Some((g, key)) => match e.lane(&g) {
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
            Response::Verified(crate::engine::verify::run(e, &groups, deep, repair, wait).await)
        }
        Request::Mark { paths } => {
            let mut unknown = Vec::new();
            for p in paths {
                match ctx.group_of_path(&p) {
                    Some((g, key)) => {
                        if let Some(l) = e.lane(&g) {
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
/// not confirmed (`send`, to those peers), peers' items not applied yet (`receive`/`delete`,
/// from the peer that sent them), unresolved conflicts (with the nodes involved); each path
/// once.
fn pending_lines(ctx: &Ctx, groups: &[String]) -> Vec<(String, String)> {
    use crate::engine::ctx::{DryRun, dry_lines, dry_note};
    let mut d = DryRun::new();
    for g in ctx.groups.values() {
        if !groups.is_empty() && !groups.iter().any(|n| n == g.name()) {
            continue;
        }
        if !g.replica {
            // what a scan would find that the index does not know yet (unwatched groups, or
            // changes still in the quiet window)
            for (what, key) in crate::engine::lane::dry_scan(ctx, g) {
                for p in &g.peers {
                    dry_note(&mut d, what, &key, p);
                }
            }
            for p in &g.peers {
                let acked = ctx.acked_by(p, g.name());
                for e in ctx.store.since(g.name(), acked, 10_000).unwrap_or_default() {
                    dry_note(&mut d, "send", &e.item.key, p);
                }
            }
        }
        for a in ctx.store.aside(g.name()).unwrap_or_default() {
            let what = if a.item.is_deleted() {
                "delete"
            } else {
                "receive"
            };
            dry_note(&mut d, what, &a.item.key, &a.peer);
        }
    }
    for (g, p, c) in ctx.store.conflicts().unwrap_or_default() {
        if !c.resolved && (groups.is_empty() || groups.contains(&g)) {
            for n in c.nodes.iter().filter(|n| **n != ctx.name) {
                dry_note(&mut d, "conflict", &p, n);
            }
        }
    }
    dry_lines(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_this_and_the_previous_release_are_read_and_a_newer_one_is_named() {
        // 0.2's requests carry no version fields
        assert!(matches!(
            decode_request(r#"{"cmd":"status"}"#),
            Ok(Request::Status)
        ));
        assert!(matches!(
            decode_request(r#"{"cmd":"conflicts","control":2,"release":"0.3.0"}"#),
            Ok(Request::Conflicts)
        ));
        let e =
            decode_request(r#"{"cmd":"frobnicate","control":3,"release":"0.4.0"}"#).unwrap_err();
        assert!(
            e.contains("clustersync 0.4.0") && e.contains("restart the daemon"),
            "{e}"
        );
        let e = decode_request("not json").unwrap_err();
        assert!(e.starts_with("bad request"), "{e}");
    }

    #[test]
    fn answers_carry_this_release_and_are_read_back() {
        let line = answer_line(&Response::Marked { unknown: vec![] });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["control"], CONTROL_VERSION);
        assert_eq!(v["release"], crate::release::VERSION);
        let req = Request::Mark { paths: vec![] };
        assert!(matches!(
            decode_answer(&req, v),
            Ok(Response::Marked { .. })
        ));
        // an answer of this release that does not decode is a bug, not another release
        let bad = serde_json::json!({"answer": "marked", "control": CONTROL_VERSION});
        assert!(matches!(
            decode_answer(&req, bad),
            Err(ControlError::BadAnswer(_))
        ));
    }
}
