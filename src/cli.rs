//! The command line: parse arguments (clap), turn them into settings the rest trusts, and
//! dispatch to the library. Thin on purpose: every behaviour lives in a domain module.
//!
//! Exit codes (SPEC §4): 0 success; 1 runtime error; 2 usage or configuration error; 3 `sync`
//! finished with unresolved conflicts; 4 `sync` could not reach every peer.

use crate::config::Config;
use crate::control::{self, Request};
use crate::identity::Identity;
use crate::node::{Node, NodeOptions};
use anyhow::{Context, Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Raw command line.
#[derive(Parser, Debug)]
#[command(
    name = "clustersync",
    version,
    about = "Keep directory trees, files and accounts identical across the servers of a cluster"
)]
pub struct Args {
    /// Config file
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "CLUSTERSYNC_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// This node's name (default: the hostname)
    #[arg(long = "node", global = true, env = "CLUSTERSYNC_NODE")]
    pub node: Option<String>,
    /// State directory (index, key, backups, logs, control socket)
    #[arg(long = "state-dir", global = true, env = "CLUSTERSYNC_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace)
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create this node's key in the state dir (never overwrites one); print the id and a
    /// [nodes.NAME] snippet
    Init,
    /// Print this node's id, alone on one line
    Id,
    /// Validate the config; print a summary of groups, paths and peers
    CheckConfig,
    /// Run this node: listen, watch, sync continuously (foreground)
    Daemon,
    /// Rescan now and reconcile with every reachable peer
    Sync {
        /// Groups to sync (default: all of this node's)
        groups: Vec<String>,
        /// Print what would change, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Give up after this long (e.g. 30s, 5m)
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Groups, files, pending work, conflicts, peers, lag
    Status {
        /// Print one JSON object (node, groups, peers) for scripts instead of the table
        #[arg(long)]
        json: bool,
    },
    /// List unresolved and recently auto-resolved conflicts
    Conflicts {
        /// Print {"conflicts": [...]} as JSON for scripts instead of one line per conflict
        #[arg(long)]
        json: bool,
    },
    /// Resolve a conflict by choosing one node's version
    Resolve {
        /// The conflicting path, as in the config (or with this node's root prefix)
        #[arg(value_name = "PATH")]
        path: String,
        /// The node whose version every node keeps; the other versions are kept as backups
        #[arg(long, value_name = "NODE")]
        keep: String,
    },
    /// Tell the daemon these paths changed
    Mark {
        /// Changed files or directories inside this node's groups
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// List kept previous versions of PATH
    Backups {
        /// A path inside one of this node's groups (it may be deleted)
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// Put back a kept version (default: the newest)
    Restore {
        /// A path inside one of this node's groups (it may be deleted)
        #[arg(value_name = "PATH")]
        path: String,
        /// Which kept version: 1 is the newest, as numbered by `clustersync backups PATH`
        #[arg(long, value_name = "N")]
        generation: Option<usize>,
        /// Write the version to DEST instead, a local copy that is not synced
        #[arg(long, value_name = "DEST")]
        to: Option<PathBuf>,
    },
    /// Translate a csync2.cfg into clustersync TOML on stdout
    #[command(name = "import-csync2")]
    ImportCsync2 { file: PathBuf },
    /// Start a 3-node cluster on this machine under a temp dir and show changes travelling
    Demo,
    /// Print a shell completion script
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), for packaging
    #[command(hide = true)]
    Man,
}

/// The manual page clustersync(1), generated from these definitions.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Args::command()).render(&mut out)?;
    Ok(out)
}

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "clustersync", &mut out);
    out
}

/// Write `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> Result<u8> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(exit(1, format!("writing to stdout: {e}"))),
    }
}

/// Settings every command can rely on.
pub struct Settings {
    pub config_path: PathBuf,
    pub node: String,
    pub state_dir: PathBuf,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Settings {
    fn from_args(a: &Args) -> Settings {
        Settings {
            config_path: a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH)),
            node: a.node.clone().unwrap_or_else(hostname),
            state_dir: a
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/clustersync")),
        }
    }
}

/// An error that maps to a specific exit status.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Exit {
    pub code: u8,
    pub msg: String,
}

fn exit(code: u8, msg: impl Into<String>) -> anyhow::Error {
    Exit {
        code,
        msg: msg.into(),
    }
    .into()
}

fn load_config(s: &Settings) -> Result<Config> {
    let cfg = Config::load(&s.config_path).map_err(|e| exit(2, e.to_string()))?;
    cfg.refuse_unsupported()
        .map_err(|e| exit(2, e.to_string()))?;
    if cfg.node(&s.node).is_none() {
        return Err(exit(
            2,
            format!(
                "{}: this node {:?} has no [nodes.{}] section (use --node NAME)",
                s.config_path.display(),
                s.node,
                s.node
            ),
        ));
    }
    Ok(cfg)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "clustersync=debug,info",
        _ => "clustersync=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLUSTERSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clustersync: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map(|x| x.code).unwrap_or(1);
            eprintln!("clustersync: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> Result<u8> {
    let s = Settings::from_args(&args);
    match args.cmd {
        Cmd::Init => init(&s),
        Cmd::Id => {
            let ident = Identity::load(&key_path(&s)).map_err(|e| exit(1, e.to_string()))?;
            println!("{}", ident.id());
            Ok(0)
        }
        Cmd::CheckConfig => {
            let cfg = Config::load(&s.config_path).map_err(|e| exit(2, e.to_string()))?;
            cfg.refuse_unsupported()
                .map_err(|e| exit(2, e.to_string()))?;
            print!(
                "{}",
                cfg.summary(cfg.node(&s.node).map(|_| s.node.as_str()))
            );
            println!("config OK: {}", s.config_path.display());
            Ok(0)
        }
        Cmd::Daemon => daemon(&s).await,
        Cmd::Sync {
            groups,
            dry_run,
            timeout,
        } => sync(&s, groups, dry_run, timeout).await,
        Cmd::Status { json } => status(&s, json).await,
        Cmd::Conflicts { json } => conflicts(&s, json).await,
        Cmd::Resolve { path, keep } => resolve(&s, &path, &keep).await,
        Cmd::Mark { paths } => {
            let _ = load_config(&s)?;
            let ans = control::call(&s.state_dir, &Request::Mark { paths })
                .await
                .map_err(|e| {
                    exit(
                        1,
                        format!("{e}; `clustersync sync` rescans without a daemon"),
                    )
                })?;
            let unknown = ans["unknown"].as_array().cloned().unwrap_or_default();
            if !unknown.is_empty() {
                return Err(exit(
                    1,
                    format!("not in any group of this node: {unknown:?}"),
                ));
            }
            Ok(0)
        }
        Cmd::Backups { path } => backups(&s, &path),
        Cmd::Restore {
            path,
            generation,
            to,
        } => restore(&s, &path, generation, to.as_deref()).await,
        Cmd::ImportCsync2 { file } => Err(exit(
            1,
            format!("import-csync2 {}: not supported yet", file.display()),
        )),
        Cmd::Demo => crate::demo::run().await.map(|_| 0),
        Cmd::Completions { shell } => print_bytes(&completion_script(shell)),
        Cmd::Man => print_bytes(&man_page().map_err(|e| exit(1, format!("man page: {e}")))?),
    }
}

fn key_path(s: &Settings) -> PathBuf {
    // a config is optional here; use its key path when it names one for this node
    Config::load(&s.config_path)
        .ok()
        .and_then(|c| c.node(&s.node).and_then(|n| n.key.clone()))
        .unwrap_or_else(|| s.state_dir.join("node.key"))
}

fn init(s: &Settings) -> Result<u8> {
    let path = key_path(s);
    let ident = Identity::create(&path).map_err(|e| exit(1, e.to_string()))?;
    println!("created node key {} (mode 0600)", path.display());
    println!("node id: {}", ident.id());
    println!();
    println!("Add this node to the config file on every node:");
    println!();
    println!("[nodes.{}]", s.node);
    println!("address = \"{}:7373\"", s.node);
    println!("id = \"{}\"", ident.id());
    Ok(0)
}

async fn daemon(s: &Settings) -> Result<u8> {
    let cfg = load_config(s)?;
    if control::daemon_running(&s.state_dir).await {
        return Err(exit(
            1,
            format!(
                "a daemon is already running with state dir {}",
                s.state_dir.display()
            ),
        ));
    }
    let node = Node::start(NodeOptions {
        config: cfg,
        name: s.node.clone(),
        state_dir: s.state_dir.clone(),
        listen: true,
        watch: true,
        dial_all: false,
        dry_run: false,
    })
    .await
    .context("cannot start the node")?;
    let shared = node.shared.clone();
    let ctl = tokio::spawn(control::serve(shared.clone()));
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("signal handler")?;
    let mut int = signal(SignalKind::interrupt()).context("signal handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        r = ctl => {
            if let Ok(Err(e)) = r {
                node.stop().await;
                return Err(exit(1, format!("control socket: {e}")));
            }
        }
    }
    node.stop().await;
    tracing::info!("stopped");
    Ok(0)
}

fn print_report(rep: &crate::node::SyncReport) -> u8 {
    for st in &rep.stopped {
        eprintln!("stopped: {st}");
    }
    if !rep.unreachable.is_empty() {
        eprintln!("could not reach: {}", rep.unreachable.join(", "));
    }
    for p in &rep.unresolved {
        eprintln!("unresolved conflict: {p} (clustersync resolve {p} --keep NODE)");
    }
    if rep.pending > 0 {
        eprintln!("{} changes could not be applied yet", rep.pending);
    }
    if !rep.unreachable.is_empty() {
        4
    } else if rep.conflicts > 0 {
        3
    } else if !rep.stopped.is_empty() || rep.pending > 0 {
        1
    } else {
        println!("in sync");
        0
    }
}

/// Run this node in-process for one command (no daemon here): no listener, no watcher, and
/// it dials every peer.
async fn start_in_process(s: &Settings, cfg: Config, dry_run: bool) -> Result<Node> {
    Node::start(NodeOptions {
        config: cfg,
        name: s.node.clone(),
        state_dir: s.state_dir.clone(),
        listen: false,
        watch: false,
        dial_all: true,
        dry_run,
    })
    .await
    .context("cannot start")
}

async fn sync(s: &Settings, groups: Vec<String>, dry_run: bool, timeout: Duration) -> Result<u8> {
    let cfg = load_config(s)?;
    for g in &groups {
        if !cfg.groups.get(g).is_some_and(|gc| gc.has_node(&s.node)) {
            return Err(exit(
                2,
                format!("group {g:?} is not a group of node {}", s.node),
            ));
        }
    }
    if control::daemon_running(&s.state_dir).await {
        let ans = control::call(
            &s.state_dir,
            &Request::Sync {
                groups,
                dry_run,
                timeout_ms: timeout.as_millis() as u64,
            },
        )
        .await?;
        if let Some(e) = ans.get("error").and_then(|e| e.as_str()) {
            return Err(exit(1, e.to_string()));
        }
        if dry_run {
            println!("a daemon is running and applies changes continuously; pending work:");
            println!("{}", serde_json::to_string_pretty(&ans["status"])?);
            return Ok(0);
        }
        let rep: crate::node::SyncReport = serde_json::from_value(ans)?;
        return Ok(print_report(&rep));
    }
    let node = start_in_process(s, cfg, dry_run).await?;
    // the node scanned everything as it started: no second scan
    let rep = node.shared.sync_opts(&groups, timeout, false).await;
    node.stop().await;
    Ok(print_report(&rep))
}

async fn status(s: &Settings, json: bool) -> Result<u8> {
    let cfg = load_config(s)?;
    let st: crate::node::Status = match control::call(&s.state_dir, &Request::Status).await {
        Ok(v) => {
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                return Err(exit(1, e.to_string()));
            }
            serde_json::from_value(v)?
        }
        Err(control::ControlError::NoDaemon(_)) => {
            let ix = crate::index::Index::open(&s.state_dir.join("index.redb"))?;
            crate::node::status_of(&s.node, &cfg, &ix, None)?
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(0);
    }
    println!("node {}", st.node);
    for g in &st.groups {
        println!(
            "group {:<12} {:>8} files {:>12} bytes  pending {:<5} conflicts {:<3} {}{}",
            g.name,
            g.files,
            g.bytes,
            g.pending,
            g.conflicts,
            if g.in_sync { "in sync" } else { "NOT in sync" },
            g.error
                .as_ref()
                .map(|e| format!("  STOPPED: {e}"))
                .unwrap_or_default()
        );
    }
    for p in &st.peers {
        println!(
            "peer  {:<12} {:<13} behind {:<6} last seen {}",
            p.name,
            if p.connected {
                "connected"
            } else {
                "not connected"
            },
            p.behind,
            p.last_seen.as_deref().unwrap_or("never")
        );
    }
    Ok(0)
}

async fn conflicts(s: &Settings, json: bool) -> Result<u8> {
    let _cfg = load_config(s)?;
    let doc = match control::call(&s.state_dir, &Request::Conflicts).await {
        Ok(v) => v,
        Err(control::ControlError::NoDaemon(_)) => {
            let ix = crate::index::Index::open(&s.state_dir.join("index.redb"))?;
            control::conflicts_json(&ix.conflicts()?)
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(e) = doc.get("error").and_then(|e| e.as_str()) {
        return Err(exit(1, e.to_string()));
    }
    if json {
        println!("{doc}");
        return Ok(0);
    }
    let list = doc["conflicts"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no conflicts");
    }
    for c in list {
        let nodes: Vec<String> = c["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if c["resolved"] == true {
            println!(
                "{} {}: {} -> kept {}{}",
                c["group"].as_str().unwrap_or_default(),
                c["path"].as_str().unwrap_or_default(),
                nodes.join(" vs "),
                c["winner"].as_str().unwrap_or_default(),
                c["kept_as"]
                    .as_str()
                    .map(|k| format!("; loser: {k}"))
                    .unwrap_or_default()
            );
        } else {
            println!(
                "{} {}: {} UNRESOLVED (clustersync resolve {} --keep NODE)",
                c["group"].as_str().unwrap_or_default(),
                c["path"].as_str().unwrap_or_default(),
                nodes.join(" vs "),
                c["path"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(0)
}

async fn resolve(s: &Settings, path: &str, keep: &str) -> Result<u8> {
    let cfg = load_config(s)?;
    if cfg.node(keep).is_none() {
        return Err(exit(
            2,
            format!("--keep {keep}: no such node in the config"),
        ));
    }
    let (_, logical) = find_group(&cfg, s, path)?;
    let req = Request::Resolve {
        path: logical.clone(),
        keep: keep.to_string(),
    };
    let ans = match control::call(&s.state_dir, &req).await {
        Ok(v) => v,
        Err(control::ControlError::NoDaemon(_)) => {
            // no daemon: do it in-process, connected to the peers, then push the result
            let node = start_in_process(s, cfg, false).await?;
            let _ = node.shared.sync(&[], Duration::from_secs(30)).await;
            let (tx, rx) = tokio::sync::oneshot::channel();
            node.shared.submit(crate::node::Work::Resolve {
                path: logical,
                keep: keep.to_string(),
                reply: tx,
            });
            let r = rx.await.unwrap_or_else(|_| Err("stopped".into()));
            let _ = node.shared.sync(&[], Duration::from_secs(30)).await;
            node.stop().await;
            match r {
                Ok(m) => serde_json::json!({ "ok": m }),
                Err(e) => serde_json::json!({ "error": e }),
            }
        }
        Err(e) => return Err(e.into()),
    };
    match ans.get("error").and_then(|e| e.as_str()) {
        Some(e) => Err(exit(1, e.to_string())),
        None => {
            println!("{}", ans["ok"].as_str().unwrap_or("resolved"));
            Ok(0)
        }
    }
}

fn find_group(cfg: &Config, s: &Settings, path: &str) -> Result<(String, String)> {
    let root = cfg
        .node(&s.node)
        .map(|n| n.root.clone())
        .unwrap_or_else(|| "/".into());
    let root_s = root.to_string_lossy().trim_end_matches('/').to_string();
    let mut cands = vec![path.to_string()];
    if !root_s.is_empty()
        && let Some(r) = path.strip_prefix(&root_s)
    {
        cands.push(r.to_string());
    }
    for c in cands {
        for g in cfg.groups_of(&s.node) {
            if crate::paths::validate(&c, &g.paths).is_ok() {
                return Ok((g.name.clone(), c));
            }
        }
    }
    Err(exit(
        1,
        format!("{path} is not in any group of node {}", s.node),
    ))
}

fn backups(s: &Settings, path: &str) -> Result<u8> {
    let cfg = load_config(s)?;
    let (group, logical) = find_group(&cfg, s, path)?;
    let b = crate::backup::Backups::new(&s.state_dir.join("backups"));
    let list = b.list(&group, &logical);
    if list.is_empty() {
        println!("no kept versions of {logical}");
        return Ok(0);
    }
    println!(
        "{:<4} {:<25} {:>12}  {:<10} hash",
        "gen", "time", "size", "origin"
    );
    for (i, e) in list.iter().enumerate() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(e.time.max(0) as u64);
        println!(
            "{:<4} {:<25} {:>12}  {:<10} {}",
            i + 1,
            humantime::format_rfc3339_seconds(t),
            e.size,
            e.origin,
            &e.hash[..16]
        );
    }
    Ok(0)
}

async fn restore(
    s: &Settings,
    path: &str,
    generation: Option<usize>,
    to: Option<&Path>,
) -> Result<u8> {
    let cfg = load_config(s)?;
    let (group, logical) = find_group(&cfg, s, path)?;
    let b = crate::backup::Backups::new(&s.state_dir.join("backups"));
    let list = b.list(&group, &logical);
    let n = generation.unwrap_or(1);
    let e = list.get(n.saturating_sub(1)).ok_or_else(|| {
        exit(
            1,
            format!("{logical} has no kept generation {n} (see `clustersync backups`)"),
        )
    })?;
    let data =
        std::fs::read(b.object(&e.hash)).with_context(|| format!("reading backup {}", e.hash))?;
    let sm = crate::safefs::SetMeta {
        mode: e.mode,
        mtime_s: e.mtime_s,
        mtime_ns: e.mtime_ns,
        owner: Some((e.uid, e.gid)),
    };
    match to {
        Some(dest) => {
            std::fs::write(dest, &data).with_context(|| format!("writing {}", dest.display()))?;
            let f = std::fs::File::open(dest)?;
            crate::safefs::set_meta_fd(&f, &sm).map_err(|e| anyhow!("{}: {e}", dest.display()))?;
            println!("restored generation {n} of {logical} to {}", dest.display());
        }
        None => {
            let g = &cfg.groups[&group];
            let gp = crate::paths::validate(&logical, &g.paths).map_err(|e| anyhow!("{e}"))?;
            let root = cfg
                .node(&s.node)
                .map(|n| n.root.clone())
                .unwrap_or_else(|| "/".into());
            let place = crate::safefs::resolve(&root, gp, &logical, true)?;
            // what the restore replaces is kept too
            let real = crate::paths::real(&root, &logical);
            if let Ok(md) = std::fs::symlink_metadata(&real)
                && md.is_file()
                && g.backup_generations > 0
                && let Ok(Some(obs)) =
                    crate::scan::observe(&real, &md, &crate::owners::OwnerMap::default())
            {
                let cur = crate::record::Entry {
                    rec: crate::record::Record {
                        path: logical.clone(),
                        version: Default::default(),
                        origin: s.node.clone(),
                        meta: Some(obs.meta),
                        beat: vec![],
                    },
                    seq: 0,
                    ino: obs.ino,
                    ctime_s: obs.ctime_s,
                    ctime_ns: obs.ctime_ns,

                    from: None,
                };
                b.keep(&group, &place, &cur, g.backup_generations)?;
            }
            let mut tmp = place.create_temp()?;
            use std::io::Write;
            tmp.file.write_all(&data)?;
            place.install(tmp, &sm)?;
            println!("restored generation {n} of {logical}");
            // let a running daemon notice at once (the watcher would too)
            let _ = control::call(
                &s.state_dir,
                &Request::Mark {
                    paths: vec![logical],
                },
            )
            .await;
        }
    }
    Ok(0)
}
