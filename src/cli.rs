//! The command line: parse arguments (clap), turn them into settings the rest trusts, call the
//! library, print, and choose the exit status. Thin on purpose: every behaviour lives in a
//! domain module; this is the only place that talks to the terminal or exits.
//!
//! Exit codes (SPEC §4): 0 success; 1 runtime error; 2 usage or configuration error; 3 `sync`
//! finished with unresolved conflicts (and `status` with conflicts); 4 `sync` could not reach
//! every peer. `status`: 0 in sync and every peer connected, 1 behind, stopped, unreachable or
//! no daemon, 3 unresolved conflicts. `verify`: 0 the same everywhere, 1 differences (or no
//! daemon), 4 a peer could not be compared with, 2 usage or configuration error.

use crate::config::Config;
use crate::engine::node::{Node, Opts};
use crate::engine::status::Status;
use crate::engine::sync::SyncReport;
use crate::identity::Identity;
use crate::item::name;
use crate::ops::control::{self, ConflictList, Request, Response};
use anyhow::{Context, Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Raw command line.
#[derive(Parser, Debug)]
#[command(
    name = "clustersync",
    version = crate::release::line(),
    about = "Keep directory trees, files and accounts identical across the servers of a cluster"
)]
pub struct Args {
    /// Config file [default: /etc/clustersync/clustersync.toml]
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "CLUSTERSYNC_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// This node's name [default: the hostname]
    #[arg(long = "node", global = true, env = "CLUSTERSYNC_NODE")]
    pub node: Option<String>,
    /// State directory: index, key, backups, audit log, control socket [default: /var/lib/clustersync]
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
    /// Create this node's key in the state dir (an existing key is kept); print the id and a
    /// [nodes.NAME] snippet
    Init,
    /// Print this node's id, alone on one line
    Id,
    /// Check the config as the daemon would; print a summary of groups, paths and peers
    CheckConfig,
    /// Run this node: listen, watch, sync continuously (foreground; SIGHUP reloads the config)
    Daemon,
    /// Rescan now and reconcile with every reachable peer; return when in sync
    Sync {
        /// Groups to sync [default: all of this node's]
        groups: Vec<String>,
        /// Print what would change (one line per path: send, receive, delete, conflict), change nothing
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
    /// Resolve a conflict (or drift on a replica) by choosing one node's version
    Resolve {
        /// The conflicting path, as in the config (or with this node's root prefix); bytes
        /// that are not UTF-8 may be written escaped, like caf\xe9.jpg
        #[arg(value_name = "PATH")]
        path: OsString,
        /// The node whose version every node keeps; the other versions are kept as backups
        #[arg(long, value_name = "NODE")]
        keep: String,
    },
    /// Tell the daemon these paths changed (for filesystems without inotify)
    Mark {
        /// Changed files or directories inside this node's groups (absolute, or relative to
        /// the current directory)
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<OsString>,
    },
    /// Compare this node with every reachable peer of each group (index summaries, then the
    /// paths that differ) and print one line per path that differs: `PATH: here <state>, PEER
    /// <state>`. Exit 0: the same everywhere; 1: differences (listed); 4: a peer could not be
    /// compared with; 2: usage or config error. Needs the running daemon.
    Verify {
        /// Groups to verify [default: all of this node's]
        groups: Vec<String>,
        /// Also read every file on this node's disk again and compare it with the index (finds
        /// edits made while the daemon was down that kept size and mtime, and bit rot)
        #[arg(long)]
        deep: bool,
        /// Make every difference found converge by the group's usual rules, keeping what is
        /// replaced as a backup
        #[arg(long)]
        repair: bool,
        /// Print one JSON object (differences, compared, unreachable) instead of lines
        #[arg(long)]
        json: bool,
        /// How long to wait for changes on their way to settle before comparing (e.g. 30s)
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// List kept previous versions of PATH (root only)
    Backups {
        /// A path inside one of this node's groups (it may be deleted)
        #[arg(value_name = "PATH")]
        path: OsString,
    },
    /// Put back a kept version (default: the newest; root only); without --to it is a normal
    /// change that reaches every node
    Restore {
        /// A path inside one of this node's groups (it may be deleted)
        #[arg(value_name = "PATH")]
        path: OsString,
        /// Which kept version: 1 is the newest, as numbered by `clustersync backups PATH`
        #[arg(long, value_name = "N")]
        generation: Option<usize>,
        /// Write the version to DEST instead, a local copy that is not synced
        #[arg(long, value_name = "DEST")]
        to: Option<PathBuf>,
    },
    /// Forget this node's index of GROUP (daemon stopped): the node then joins the group as
    /// new, receives everything and deletes nothing
    Reset {
        /// The group to start over on this node
        group: String,
    },
    /// Translate a csync2.cfg into clustersync TOML on stdout
    #[command(
        name = "import-csync2",
        long_about = "Translate a csync2 configuration (csync2.cfg, with the files its `config` \
                      statements include) into a clustersync configuration, printed on stdout.\n\n\
                      Every csync2 host becomes a [nodes.NAME] section with address HOST:7373 and \
                      the id placeholder \"FILL-IN-NAME\": run `clustersync --node NAME init` on \
                      each node and put the id it prints there. Groups keep their hosts (hosts in \
                      parentheses become replicas), include/exclude patterns, auto conflict \
                      method, backup generations and actions. What has no equivalent (group keys, \
                      nossl, backup-directory, compare, ...) is kept as a comment saying why, and \
                      listed on stderr. Nothing is written to disk.\n\n\
                      Exit status 2, with FILE:LINE: message, when the file cannot be read or \
                      parsed."
    )]
    ImportCsync2 {
        /// The csync2 configuration to translate, e.g. /etc/csync2.cfg
        file: PathBuf,
    },
    /// Start a 3-node cluster on this machine under a temp dir and show changes travelling
    Demo,
    /// Print a shell completion script
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for packaging
    #[command(hide = true)]
    Man,
}

/// The manual page clustersync(1): `dist/clustersync.1`, written by hand (every command,
/// every configuration key with its default, exit status, signals, files, examples; checked
/// against these definitions and the configuration's keys by `tests/service.rs`), with this
/// release filled in.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    Ok(include_str!("../dist/clustersync.1")
        .replace("@VERSION@", crate::release::VERSION)
        .into_bytes())
}

/// The names of the commands, as `clustersync --help` lists them (hidden ones left out).
pub fn command_names() -> Vec<String> {
    Args::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect()
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

/// Logging to stderr: the daemon logs at INFO; one-shot commands only warn unless `-v`, so
/// their output is what the operator asked for.
fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        0 if daemon => "info",
        0 => "warn",
        1 => "clustersync=debug,info",
        _ => "clustersync=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLUSTERSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose, matches!(args.cmd, Cmd::Daemon));
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
        Cmd::CheckConfig => check_config(&s),
        Cmd::Daemon => daemon(&s).await,
        Cmd::Sync {
            groups,
            dry_run,
            timeout,
        } => sync(&s, groups, dry_run, timeout).await,
        Cmd::Status { json } => status(&s, json).await,
        Cmd::Conflicts { json } => conflicts(&s, json).await,
        Cmd::Resolve { path, keep } => resolve(&s, &path, &keep).await,
        Cmd::Mark { paths } => mark(&s, paths).await,
        Cmd::Verify {
            groups,
            deep,
            repair,
            json,
            timeout,
        } => verify(&s, groups, deep, repair, json, timeout).await,
        Cmd::Backups { path } => backups(&s, &path),
        Cmd::Restore {
            path,
            generation,
            to,
        } => restore(&s, &path, generation, to.as_deref()).await,
        Cmd::Reset { group } => reset(&s, &group).await,
        Cmd::ImportCsync2 { file } => {
            let imported =
                crate::import::import_csync2(&file).map_err(|e| exit(2, e.to_string()))?;
            print!("{}", imported.to_toml());
            eprint!("{}", imported.report());
            Ok(0)
        }
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
    let ident = match Identity::load(&path) {
        Ok(ident) => {
            println!("node key {} exists already (kept)", path.display());
            ident
        }
        Err(crate::identity::IdentityError::Missing { .. }) => {
            let ident = Identity::create(&path).map_err(|e| exit(1, e.to_string()))?;
            println!("created node key {} (mode 0600)", path.display());
            ident
        }
        Err(e) => return Err(exit(1, e.to_string())),
    };
    println!("node id: {}", ident.id());
    println!();
    println!("Add this node to the config file on every node:");
    println!();
    println!("[nodes.{}]", s.node);
    println!("address = \"{}:7373\"", s.node);
    println!("id = \"{}\"", ident.id());
    Ok(0)
}

/// What `daemon` checks before it starts, for `check-config` (exit 2 on a problem).
fn check_config(s: &Settings) -> Result<u8> {
    let cfg = load_config(s)?;
    let warnings = preflight(s, &cfg)?;
    print!("{}", cfg.summary(Some(s.node.as_str())));
    for w in warnings {
        println!("warning: {w}");
    }
    println!("config OK: {}", s.config_path.display());
    Ok(0)
}

/// The daemon's own checks (node section, key against `id`, group paths), as exit 2 errors
/// naming the config file.
fn preflight(s: &Settings, cfg: &Config) -> Result<Vec<String>> {
    use crate::engine::node::NodeError;
    crate::engine::node::preflight(cfg, &s.node, &s.state_dir).map_err(|e| match e {
        NodeError::IdMismatch { .. } | NodeError::UnknownNode(_) | NodeError::Group { .. } => {
            exit(2, format!("{}: {e}", s.config_path.display()))
        }
        e => exit(2, e.to_string()),
    })
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
    for w in preflight(s, &cfg)? {
        tracing::warn!("{w}");
    }
    let opts = Opts {
        listen: true,
        watch: true,
        dial_all: false,
        dry_run: false,
    };
    // signals are handled from the start: a SIGTERM during the start-up scan stops cleanly
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("signal handler")?;
    let mut int = signal(SignalKind::interrupt()).context("signal handler")?;
    let mut hup = signal(SignalKind::hangup()).context("signal handler")?;
    // a first scan of a large tree can outlast TimeoutStartSec: while it runs, ask systemd
    // for more time every 20 s (it times out only if these stop coming)
    let start = Node::start(cfg, &s.node, s.state_dir.clone(), opts);
    tokio::pin!(start);
    let mut extend = tokio::time::interval(Duration::from_secs(20));
    extend.tick().await;
    let started = loop {
        tokio::select! {
            r = &mut start => break r,
            _ = extend.tick() => {
                let _ = crate::ops::notify::extend_timeout(Duration::from_secs(60));
            }
            _ = term.recv() => { tracing::info!("SIGTERM while starting: stopping"); return Ok(0) }
            _ = int.recv() => { tracing::info!("SIGINT while starting: stopping"); return Ok(0) }
        }
    };
    let mut node = started.map_err(|e| match e {
        crate::engine::node::NodeError::IdMismatch { .. }
        | crate::engine::node::NodeError::UnknownNode(_) => exit(2, e.to_string()),
        e => anyhow!(e).context("cannot start the node"),
    })?;
    use crate::ops::notify;
    let listener = match control::bind(&s.state_dir).await {
        Ok(l) => l,
        Err(e) => {
            node.stop().await;
            return Err(exit(1, format!("control socket: {e}")));
        }
    };
    let current: control::Current = Arc::new(std::sync::RwLock::new(Some(node.engine())));
    let (stop_ctl, stop_rx) = tokio::sync::watch::channel(false);
    let mut ctl = tokio::spawn(control::serve(
        listener,
        s.state_dir.clone(),
        current.clone(),
        stop_rx,
    ));
    // READY only once commands can reach the daemon
    let _ = notify::ready();
    let _ = notify::status(&daemon_status(&node.engine()));
    let (stop_wd, wd_rx) = tokio::sync::watch::channel(false);
    let _watchdog = notify::watchdog_task(wd_rx);
    let mut status_tick = tokio::time::interval(Duration::from_secs(10));
    let code = loop {
        tokio::select! {
            _ = status_tick.tick() => {
                let _ = notify::status(&daemon_status(&node.engine()));
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break 0 }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break 0 }
            _ = hup.recv() => {
                let loaded = Config::load(&s.config_path)
                    .and_then(|c| c.refuse_unsupported().map(|_| c))
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        crate::engine::node::preflight(&c, &s.node, &s.state_dir)
                            .map(|_| c)
                            .map_err(|e| e.to_string())
                    });
                match loaded {
                    Err(e) => tracing::error!("SIGHUP: the new config is refused, the running one is kept: {e}"),
                    Ok(c) => {
                        tracing::info!("SIGHUP: reloading {}", s.config_path.display());
                        let _ = notify::reloading();
                        set_current(&current, None);
                        // the metrics live on: counters never go back, uptime is the daemon's
                        let metrics = node.ctx.metrics.clone();
                        node.stop().await;
                        match Node::start_keeping(c, &s.node, s.state_dir.clone(), opts, Some(metrics)).await {
                            Ok(n) => {
                                node = n;
                                set_current(&current, Some(node.engine()));
                                tracing::info!("config reloaded");
                                let _ = notify::ready();
                            }
                            Err(e) => {
                                tracing::error!("cannot start with the new config: {e}; exiting");
                                let _ = stop_ctl.send(true);
                                let _ = tokio::time::timeout(Duration::from_secs(2), ctl).await;
                                return Err(exit(1, e.to_string()));
                            }
                        }
                    }
                }
            }
            r = &mut ctl => {
                if let Ok(Err(e)) = r {
                    set_current(&current, None);
                    node.stop().await;
                    return Err(exit(1, format!("control socket: {e}")));
                }
                break 0;
            }
        }
    };
    let _ = notify::stopping();
    let _ = stop_ctl.send(true);
    let _ = stop_wd.send(true);
    set_current(&current, None);
    node.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ctl).await;
    tracing::info!("stopped");
    Ok(code)
}

fn set_current(current: &control::Current, ctx: Option<crate::engine::node::Engine>) {
    match current.write() {
        Ok(mut w) => *w = ctx,
        Err(poisoned) => *poisoned.into_inner() = ctx,
    }
}

/// The one-line STATUS systemd shows.
fn daemon_status(e: &crate::engine::node::Engine) -> String {
    let ctx = &e.ctx;
    let peers = ctx.all_peers();
    let connected = peers.iter().filter(|p| ctx.links.get(p).is_some()).count();
    let stopped = e.lanes.iter().filter(|l| l.state.is_stopped()).count();
    let mut s = format!(
        "{} groups, {connected} of {} peers connected",
        ctx.groups.len(),
        peers.len()
    );
    if stopped > 0 {
        s.push_str(&format!(", {stopped} STOPPED (clustersync status)"));
    }
    s
}

fn print_report(rep: &SyncReport, dry_run: bool) -> u8 {
    for st in &rep.stopped {
        eprintln!("stopped: {st}");
    }
    for (p, why) in &rep.unreachable {
        eprintln!("could not reach {p}: {why}");
    }
    for p in &rep.unresolved {
        eprintln!("unresolved conflict: {p} (clustersync resolve {p} --keep NODE)");
    }
    if rep.pending > 0 {
        eprintln!("{} changes could not be applied yet:", rep.pending);
        for w in &rep.pending_what {
            eprintln!("  {w}");
        }
    }
    let code = rep.exit_code();
    if code == 0 && !dry_run {
        println!("in sync");
    }
    code
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
    let req = Request::Sync {
        groups: groups.clone(),
        dry_run,
        timeout_ms: timeout.as_millis() as u64,
    };
    let dir = s.state_dir.clone();
    let answer = with_progress(control::call(&s.state_dir, &req), !dry_run, move || {
        let dir = dir.clone();
        async move {
            match control::call(&dir, &Request::Status).await {
                Ok(Response::Status(st)) => Some(*st),
                _ => None,
            }
        }
    })
    .await;
    match answer {
        Ok(Response::Sync(rep)) => return Ok(print_report(&rep, false)),
        Ok(Response::DryRun { lines, report }) => {
            for (what, path) in lines {
                println!("{what:<9} {path}");
            }
            return Ok(print_report(&report, true));
        }
        Ok(Response::Error { message }) => return Err(exit(1, message)),
        Ok(other) => return Err(exit(1, format!("unexpected answer: {other:?}"))),
        Err(control::ControlError::NoDaemon(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let node = start_in_process(s, cfg, dry_run).await?;
    // the node scanned everything as it started: no second scan
    let (ctx, lanes) = (node.ctx.clone(), node.lanes.clone());
    let rep = with_progress(
        crate::engine::sync::sync(&node.engine(), &groups, timeout, false),
        !dry_run,
        move || {
            let st = crate::engine::status::live(&ctx, &lanes).ok();
            async move { st }
        },
    )
    .await;
    if dry_run {
        for (what, path) in node.ctx.dry_run_lines() {
            println!("{what:<9} {path}");
        }
    }
    node.stop().await;
    Ok(print_report(&rep, dry_run))
}

/// Run `work` while an in-place progress line on stderr says what is being received: files and
/// bytes done of the total, and the rate, summed over peers and groups (from `status`, polled
/// every 200 ms). Only when stderr is a terminal and `show`; a cron job or a pipe sees nothing.
async fn with_progress<T, F, S, SF>(work: F, show: bool, mut status: S) -> T
where
    F: std::future::Future<Output = T>,
    S: FnMut() -> SF,
    SF: std::future::Future<Output = Option<Status>>,
{
    use std::io::IsTerminal;
    if !show || !std::io::stderr().is_terminal() {
        return work.await;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template("{spinner} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message("syncing");
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                if let Some(st) = status().await {
                    bar.set_message(progress_line(&st));
                }
                bar.tick();
            }
        }
    };
    bar.finish_and_clear();
    out
}

/// One line of what `sync` is doing: `receiving 1,204/50,000 files, 1.0 GiB/3.2 GiB at
/// 85.3 MiB/s; 12 pending`.
fn progress_line(st: &Status) -> String {
    let (mut fd, mut ft, mut bd, mut bt, mut rate) = (0u64, 0u64, 0u64, 0u64, 0f64);
    for p in &st.peers {
        for r in &p.receiving {
            fd += r.files_done;
            ft += r.files_total;
            bd += r.bytes_done;
            bt += r.bytes_total;
            rate += r.bytes_per_s;
        }
    }
    let pending: u64 = st.groups.iter().map(|g| g.pending).sum();
    let mut line = if ft > 0 {
        format!(
            "receiving {fd}/{ft} files, {}/{} at {}/s",
            human_bytes(bd),
            human_bytes(bt),
            human_bytes(rate as u64)
        )
    } else {
        "exchanging with peers".to_string()
    };
    if pending > 0 {
        line.push_str(&format!(
            "; {}",
            plural(pending, "change pending", "changes pending")
        ));
    }
    line
}

/// Run this node in-process for one command (no daemon here): no listener, no watcher, and
/// it dials every peer.
async fn start_in_process(s: &Settings, cfg: Config, dry_run: bool) -> Result<Node> {
    Node::start(
        cfg,
        &s.node,
        s.state_dir.clone(),
        Opts {
            listen: false,
            watch: false,
            dial_all: true,
            dry_run,
        },
    )
    .await
    .map_err(|e| match e {
        crate::engine::node::NodeError::IdMismatch { .. }
        | crate::engine::node::NodeError::UnknownNode(_) => exit(2, e.to_string()),
        e => anyhow!(e).context("cannot start"),
    })
}

pub use crate::engine::status::human_bytes;

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

async fn status(s: &Settings, json: bool) -> Result<u8> {
    let cfg = load_config(s)?;
    let st: Status = match control::call(&s.state_dir, &Request::Status).await {
        Ok(Response::Status(st)) => *st,
        Ok(Response::Error { message }) => return Err(exit(1, message)),
        Ok(other) => return Err(exit(1, format!("unexpected answer: {other:?}"))),
        Err(control::ControlError::NoDaemon(_)) => {
            let path = s.state_dir.join("index.redb");
            if !path.exists() {
                return Err(exit(
                    1,
                    format!(
                        "no daemon running, and no index at {} (this node never ran)",
                        path.display()
                    ),
                ));
            }
            // the index's own time: when it last recorded a change (the file's time, taken
            // before opening it, for an index of an older release)
            let file_time = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let ix = crate::store::Store::open(&path)?;
            let mut st = crate::engine::status::offline(&s.node, &cfg, &ix)?;
            let written = ix
                .written()?
                .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .or(file_time);
            st.as_of = written.map(|t| humantime::format_rfc3339_seconds(t).to_string());
            st
        }
        Err(e) => return Err(e.into()),
    };
    let code = st.exit_code();
    if json {
        println!("{}", serde_json::to_string(&st)?);
        return Ok(code);
    }
    if st.daemon {
        println!("node {}", st.node);
    } else {
        println!(
            "node {}: the daemon is not running (no daemon answers on {}); its index as last written at {}:",
            st.node,
            control::socket_path(&s.state_dir).display(),
            st.as_of.as_deref().unwrap_or("an unknown time")
        );
    }
    for g in &st.groups {
        let state = if g.error.is_some() {
            "STOPPED"
        } else if g.in_sync {
            "in sync"
        } else {
            "NOT in sync"
        };
        println!(
            "group {:<12} {}, {}, {}  pending {}  conflicts {}  {}",
            g.name,
            plural(g.files, "file", "files"),
            plural(g.directories, "directory", "directories"),
            human_bytes(g.bytes),
            g.pending,
            g.conflicts,
            state
        );
        if let Some(e) = &g.error {
            println!("      {e}");
        }
        if let Some(w) = &g.warning {
            println!("      warning: {w}");
        }
        if g.backup_bytes > 0 {
            println!("      backups: {}", human_bytes(g.backup_bytes));
        }
        for d in &g.drift {
            println!("      drift: {d}");
        }
        for a in &g.set_aside {
            println!("      not applied yet: {a}");
        }
        for w in &g.withheld {
            println!("      withheld: {w}");
        }
    }
    if let Some(a) = &st.accounts {
        println!(
            "accounts     {} users, {} groups  pending {}  {}",
            a.users,
            a.groups,
            a.pending,
            if a.in_sync { "in sync" } else { "NOT in sync" }
        );
        for n in &a.not_applied {
            println!("      not applied: {n}");
        }
        for n in &a.problems {
            println!("      not synced: {n}");
        }
        for n in &a.older_peers {
            println!("      {n}");
        }
        if a.conflicts > 0 {
            println!(
                "      {} unresolved account conflicts (clustersync conflicts)",
                a.conflicts
            );
        }
    }
    for a in &st.actions {
        if a.last_ok == Some(false) {
            println!(
                "action {}[{}] `{}`: last run FAILED: {} ({} failures in {} runs)",
                a.group,
                a.index,
                a.run,
                a.last.as_deref().unwrap_or("?"),
                a.failures,
                a.runs
            );
        }
    }
    for p in &st.peers {
        println!(
            "peer  {:<12} {:<13} behind {:<6} last seen {}{}",
            p.name,
            if p.connected {
                "connected"
            } else {
                "not connected"
            },
            p.behind,
            p.last_seen.as_deref().unwrap_or("never"),
            p.error
                .as_ref()
                .map(|e| format!("\n      {e}"))
                .unwrap_or_default()
        );
        for r in &p.receiving {
            println!(
                "      receiving {}: {}/{} files, {}/{}, {:.0} files/s, {}/s",
                r.group,
                r.files_done,
                r.files_total,
                human_bytes(r.bytes_done),
                human_bytes(r.bytes_total),
                r.files_per_s,
                human_bytes(r.bytes_per_s as u64)
            );
        }
    }
    Ok(code)
}

async fn conflicts(s: &Settings, json: bool) -> Result<u8> {
    let _cfg = load_config(s)?;
    let list = match control::call(&s.state_dir, &Request::Conflicts).await {
        Ok(Response::Conflicts(l)) => l,
        Ok(Response::Error { message }) => return Err(exit(1, message)),
        Ok(other) => return Err(exit(1, format!("unexpected answer: {other:?}"))),
        Err(control::ControlError::NoDaemon(_)) => {
            let ix = crate::store::Store::open(&s.state_dir.join("index.redb"))?;
            ConflictList::from_store(&ix.conflicts()?)
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(0);
    }
    if list.conflicts.is_empty() {
        println!("no conflicts");
    }
    for c in list.conflicts {
        if c.resolved {
            println!(
                "{} {}: {} -> kept {}{}",
                c.group,
                c.path,
                c.nodes.join(" vs "),
                c.winner.as_deref().unwrap_or_default(),
                c.kept_as
                    .map(|k| format!("; loser: {k}"))
                    .unwrap_or_default()
            );
        } else if let Some(k) = c
            .kept_as
            .as_deref()
            .filter(|k| k.starts_with("collision: "))
        {
            println!("{} {}: NOT APPLIED here: {}", c.group, c.path, &k[11..]);
        } else {
            println!(
                "{} {}: {} UNRESOLVED (clustersync resolve {} --keep NODE)",
                c.group,
                c.path,
                c.nodes.join(" vs "),
                c.path
            );
        }
    }
    Ok(0)
}

/// A path argument as bytes: raw or escaped, absolute or relative to the working directory.
fn path_arg(p: &std::ffi::OsStr) -> Vec<u8> {
    let b = name::from_arg(p);
    if b.starts_with(b"/") {
        return b;
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    use std::os::unix::ffi::OsStrExt;
    let mut full = cwd.as_os_str().as_bytes().to_vec();
    // normalise `.` and `..` lexically
    let mut parts: Vec<&[u8]> = full
        .split(|c| *c == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for c in b.split(|c| *c == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::new();
    for c in parts {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    full.clear();
    out
}

fn find_group(cfg: &Config, s: &Settings, path: &[u8]) -> Result<(String, Vec<u8>)> {
    let root = cfg
        .node(&s.node)
        .map(|n| n.root.clone())
        .unwrap_or_else(|| "/".into());
    crate::engine::node::group_of_path(cfg, &s.node, &root, path).ok_or_else(|| {
        exit(
            1,
            format!(
                "{} is not in any group of node {}",
                name::show(path),
                s.node
            ),
        )
    })
}

async fn resolve(s: &Settings, path: &std::ffi::OsStr, keep: &str) -> Result<u8> {
    let cfg = load_config(s)?;
    if cfg.node(keep).is_none() {
        return Err(exit(
            2,
            format!("--keep {keep}: no such node in the config"),
        ));
    }
    // an account: user/NAME, group/NAME (the @accounts pseudo-group)
    let account = path
        .to_str()
        .filter(|p| {
            cfg.accounts.is_some() && crate::accounts::AccountId::from_key(p.as_bytes()).is_some()
        })
        .map(|p| {
            (
                crate::engine::group::ACCOUNTS.to_string(),
                p.as_bytes().to_vec(),
            )
        });
    let (group, logical) = match account {
        Some(a) => a,
        None => find_group(&cfg, s, &path_arg(path))?,
    };
    let req = Request::Resolve {
        path: logical.clone(),
        keep: keep.to_string(),
    };
    let r = match control::call(&s.state_dir, &req).await {
        Ok(Response::Resolved { message }) => Ok(message),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer: {other:?}")),
        Err(control::ControlError::NoDaemon(_)) => {
            // no daemon: do it in-process, connected to the peers, then push the result
            let node = start_in_process(s, cfg, false).await?;
            let _ = crate::engine::sync::sync(&node.engine(), &[], Duration::from_secs(30), false)
                .await;
            let r = match node.lanes.get(&group) {
                Some(l) => l.resolve(logical, keep.to_string()).await,
                None => Err(format!("unknown group {group}")),
            };
            let _ = crate::engine::sync::sync(&node.engine(), &[], Duration::from_secs(30), false)
                .await;
            node.stop().await;
            r
        }
        Err(e) => return Err(e.into()),
    };
    match r {
        Ok(m) => {
            println!("{m}");
            Ok(0)
        }
        Err(e) => Err(exit(1, e)),
    }
}

async fn mark(s: &Settings, paths: Vec<OsString>) -> Result<u8> {
    let _ = load_config(s)?;
    let paths: Vec<Vec<u8>> = paths.iter().map(|p| path_arg(p)).collect();
    match control::call(&s.state_dir, &Request::Mark { paths }).await {
        Ok(Response::Marked { unknown }) if unknown.is_empty() => Ok(0),
        Ok(Response::Marked { unknown }) => Err(exit(
            1,
            format!("not in any group of this node: {}", unknown.join(", ")),
        )),
        Ok(Response::Error { message }) => Err(exit(1, message)),
        Ok(other) => Err(exit(1, format!("unexpected answer: {other:?}"))),
        Err(e @ control::ControlError::NoDaemon(_)) => Err(exit(
            1,
            format!("{e}; `clustersync sync` rescans without a daemon"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `clustersync verify`: through the running daemon only (what matters is what the daemon
/// holds; without one there is nothing running to compare, and an in-process node would first
/// exchange everything with its peers, which is `sync`).
async fn verify(
    s: &Settings,
    groups: Vec<String>,
    deep: bool,
    repair: bool,
    json: bool,
    timeout: Duration,
) -> Result<u8> {
    let cfg = load_config(s)?;
    for g in &groups {
        let accounts = g == crate::engine::group::ACCOUNTS && cfg.accounts.is_some();
        if !accounts && !cfg.groups.get(g).is_some_and(|gc| gc.has_node(&s.node)) {
            return Err(exit(
                2,
                format!("group {g:?} is not a group of node {}", s.node),
            ));
        }
    }
    let req = Request::Verify {
        groups,
        deep,
        repair,
        wait_ms: timeout.as_millis() as u64,
    };
    let rep = match control::call(&s.state_dir, &req).await {
        Ok(Response::Verified(rep)) => rep,
        Ok(Response::Error { message }) => return Err(exit(1, message)),
        Ok(other) => return Err(exit(1, format!("unexpected answer: {other:?}"))),
        Err(e @ control::ControlError::NoDaemon(_)) => {
            return Err(exit(
                1,
                format!(
                    "{e}: verify compares what the running daemon holds with its peers; start it (clustersync daemon, or systemctl start clustersync) and run verify again"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let code = rep.exit_code();
    if json {
        println!("{}", serde_json::to_string(&rep)?);
        return Ok(code);
    }
    {
        let mut out = std::io::stdout().lock();
        for d in &rep.differences {
            if writeln!(out, "{}", d.line()).is_err() {
                break;
            }
        }
    }
    for u in &rep.unreachable {
        eprintln!(
            "could not compare group {} with {}: {}",
            u.group, u.peer, u.why
        );
    }
    if rep.truncated {
        eprintln!(
            "more paths differ than one comparison lists ({} per group and peer); run verify again",
            crate::engine::verify::MAX_DIFFS
        );
    }
    let peers: std::collections::BTreeSet<&str> =
        rep.compared.iter().map(|c| c.peer.as_str()).collect();
    let mut summary = format!(
        "verify: {} compared with {}",
        plural(
            rep.compared
                .iter()
                .map(|c| c.group.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64,
            "group",
            "groups"
        ),
        plural(peers.len() as u64, "peer", "peers")
    );
    if deep {
        summary.push_str(&format!(
            ", {} ({}) read again from disk",
            plural(rep.deep_files, "file", "files"),
            human_bytes(rep.deep_bytes)
        ));
    }
    match rep.differences.len() {
        0 if rep.unreachable.is_empty() => summary.push_str(": the same everywhere"),
        0 => {}
        n => summary.push_str(&format!(
            ": {}{}",
            plural(n as u64, "difference", "differences"),
            if repair {
                " (each settled by the group's usual rules; what was replaced is kept as a backup)"
            } else {
                " (clustersync verify --repair settles them)"
            }
        )),
    }
    eprintln!("{summary}");
    Ok(code)
}

fn require_root(what: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(exit(
            1,
            format!("only root may {what}: kept versions can hold private files (run it as root)"),
        ));
    }
    Ok(())
}

fn backups(s: &Settings, path: &std::ffi::OsStr) -> Result<u8> {
    require_root("list backups")?;
    let cfg = load_config(s)?;
    let path = path_arg(path);
    let (group, logical) = find_group(&cfg, s, &path)?;
    let b = crate::fs::backup::Backups::new(&s.state_dir.join("backups"));
    let list = b.list(&group, &logical);
    if list.is_empty() {
        println!(
            "no kept versions of {} on this node (a version is kept by the node that overwrites or deletes it: if the change came from here, look on the other nodes with `clustersync backups` there)",
            name::show(&logical)
        );
        return Ok(0);
    }
    println!(
        "{:<4} {:<25} {:>10}  {:<10} hash",
        "gen", "time", "size", "origin"
    );
    for (i, e) in list.iter().enumerate() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(e.time.max(0) as u64);
        println!(
            "{:<4} {:<25} {:>10}  {:<10} {}{}",
            i + 1,
            humantime::format_rfc3339_seconds(t),
            human_bytes(e.size),
            e.origin,
            &e.hash[..16.min(e.hash.len())],
            if e.by_restore {
                "  (replaced by a restore)"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

async fn restore(
    s: &Settings,
    path: &std::ffi::OsStr,
    generation: Option<usize>,
    to: Option<&Path>,
) -> Result<u8> {
    require_root("restore backups")?;
    let cfg = load_config(s)?;
    let path = path_arg(path);
    let (group, logical) = find_group(&cfg, s, &path)?;
    let b = crate::fs::backup::Backups::new(&s.state_dir.join("backups"));
    let list = b.list(&group, &logical);
    let n = generation.unwrap_or(1);
    if n == 0 {
        return Err(exit(
            2,
            "--generation counts from 1 (the newest kept version); see `clustersync backups`",
        ));
    }
    let e = list.get(n - 1).ok_or_else(|| {
        exit(
            1,
            format!(
                "{} has no kept generation {n} (it has {}; see `clustersync backups`)",
                name::show(&logical),
                list.len()
            ),
        )
    })?;
    let data = std::fs::read(b.object(&group, &e.hash))
        .with_context(|| format!("reading kept version {}", e.hash))?;
    let sm = crate::fs::safefs::SetMeta {
        mode: e.mode,
        mtime_s: e.mtime_s,
        mtime_ns: e.mtime_ns,
        owner: Some((e.uid, e.gid)),
    };
    let shown = name::show(&logical).into_owned();
    match to {
        Some(dest) => {
            std::fs::write(dest, &data).with_context(|| format!("writing {}", dest.display()))?;
            let f = std::fs::File::open(dest)?;
            crate::fs::safefs::set_meta_fd(&f, &sm)
                .map_err(|e| anyhow!("{}: {e}", dest.display()))?;
            println!("restored generation {n} of {shown} to {}", dest.display());
        }
        None => {
            let g = &cfg.groups[&group];
            let gp = name::validate(&logical, &g.paths).map_err(|e| anyhow!("{e}"))?;
            let root = cfg
                .node(&s.node)
                .map(|n| n.root.clone())
                .unwrap_or_else(|| "/".into());
            let place = crate::fs::safefs::resolve(&root, gp, &logical, true)?;
            // what the restore replaces is kept too, as the last generation
            if let Ok(cur) = place.open_read() {
                let hash = b.store_file(&group, &cur)?;
                if hash == e.hash {
                    println!("{shown} already holds generation {n}; nothing to do");
                    return Ok(0);
                }
                use std::os::unix::fs::MetadataExt;
                let md = cur.metadata()?;
                let info = crate::fs::backup::BackupInfo {
                    path: shown.clone(),
                    time: crate::engine::node::unix_now(),
                    hash,
                    size: md.len(),
                    mode: md.mode() & 0o7777,
                    mtime_s: md.mtime(),
                    mtime_ns: md.mtime_nsec() as u32,
                    uid: md.uid(),
                    gid: md.gid(),
                    origin: s.node.clone(),
                    version: String::new(),
                    by_restore: true,
                };
                b.keep_replaced_by_restore(&group, &logical, info)?;
            }
            let mut tmp = place.create_temp()?;
            tmp.file.write_all(&data)?;
            place.install(tmp, &sm)?;
            println!("restored generation {n} of {shown}");
            // tell a running daemon: the file and its directory, whose mtime the rename
            // changed (its watcher takes a rename from a temporary file for one of its own
            // installs, already indexed)
            let parent = name::parent(&logical).to_vec();
            let _ = control::call(
                &s.state_dir,
                &Request::Mark {
                    paths: vec![logical, parent],
                },
            )
            .await;
        }
    }
    Ok(0)
}

async fn reset(s: &Settings, group: &str) -> Result<u8> {
    let cfg = load_config(s)?;
    let accounts = group == crate::engine::group::ACCOUNTS
        && cfg
            .accounts
            .as_ref()
            .is_some_and(|a| crate::engine::group::GroupRt::accounts(a, &cfg, &s.node).is_some());
    if !accounts && !cfg.groups.get(group).is_some_and(|g| g.has_node(&s.node)) {
        return Err(exit(
            2,
            format!(
                "group {group:?} is not a group of node {} (account sync is reset with `reset {}`)",
                s.node,
                crate::engine::group::ACCOUNTS
            ),
        ));
    }
    if control::daemon_running(&s.state_dir).await {
        return Err(exit(
            1,
            "the daemon is running: stop it first (systemctl stop clustersync), then run reset, then start it",
        ));
    }
    let ix = crate::store::Store::open(&s.state_dir.join("index.redb"))?;
    let n = ix.reset_group(group)?;
    if accounts {
        println!(
            "forgot {} of account sync on node {}; the account files were not touched. Start the daemon: this node then joins account sync as new (what its files have is kept unversioned: every change made on another node wins over it, and accounts only this node has are sent to the others).",
            plural(n, "index entry", "index entries"),
            s.node
        );
        return Ok(0);
    }
    println!(
        "forgot {} of group {group} on node {}; no file was touched. Start the daemon: this node then joins {group} as new (it receives everything and deletes nothing; files it has that the others lack are sent to them).",
        plural(n, "index entry", "index entries"),
        s.node
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(receiving: serde_json::Value, pending: u64) -> Status {
        serde_json::from_value(serde_json::json!({
            "node": "a",
            "groups": [{"name": "www", "files": 1, "bytes": 1, "pending": pending, "conflicts": 0,
                        "in_sync": false, "directories": 0, "symlinks": 0, "error": null,
                        "replica": false, "drift": []}],
            "peers": [
                {"name": "b", "connected": true, "behind": 0, "last_seen": null, "error": null,
                 "address": "x", "receiving": receiving},
                {"name": "c", "connected": true, "behind": 0, "last_seen": null, "error": null,
                 "address": "y", "receiving": [{"group": "www", "files_done": 1, "files_total": 4,
                    "bytes_done": 1024, "bytes_total": 4096, "files_per_s": 1.0, "bytes_per_s": 1024.0}]}
            ],
        }))
        .unwrap()
    }

    #[test]
    fn the_progress_line_sums_what_every_peer_sends_and_counts_pending_changes() {
        let st = status(
            serde_json::json!([{"group": "www", "files_done": 2, "files_total": 6,
                "bytes_done": 1024 * 1024, "bytes_total": 3 * 1024 * 1024, "files_per_s": 2.0,
                "bytes_per_s": 1048576.0}]),
            1,
        );
        assert_eq!(
            progress_line(&st),
            "receiving 3/10 files, 1.0 MiB/3.0 MiB at 1.0 MiB/s; 1 change pending"
        );
        let idle = status(serde_json::json!([]), 0);
        let mut idle = idle;
        idle.peers.truncate(1);
        assert_eq!(progress_line(&idle), "exchanging with peers");
    }
}
