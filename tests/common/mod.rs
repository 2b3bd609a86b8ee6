//! Shared harness of the integration tests: real `clustersync` daemons on 127.0.0.1 (free ports,
//! temp dirs), an optional TCP proxy in front of each node to cut links, and bounded polling.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_clustersync");

/// The binary the harness runs: `CS_TEST_BIN` when set (e.g. the previous release, to see a
/// test fail on it), otherwise the one cargo built.
pub fn bin() -> &'static str {
    static B: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    B.get_or_init(|| std::env::var("CS_TEST_BIN").unwrap_or_else(|_| BIN.to_string()))
}
/// Default bound of every wait.
pub const WAIT: Duration = Duration::from_secs(30);
/// The group path every test cluster syncs.
pub const GP: &str = "/srv/www";

/// A port for a daemon to listen on, below the kernel's ephemeral range. A port taken from that
/// range (bind port 0, release it, let the daemon bind it later) can meanwhile become the local
/// end of some outgoing connection — another test's link, or a proxy's connection to that very
/// port, which then connects to itself — and the daemon fails to listen ("Address already in
/// use"); seen in CI. Ports below the range are never handed out for outgoing connections, and
/// a per-process counter from a random start keeps the tests of one binary apart.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, ephemeral_low.min(65_536));
    if hi > lo + 1000 {
        let span = hi - lo;
        let start = *START.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::process::id().wrapping_mul(2_654_435_761) ^ t
        });
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = lo + start.wrapping_add(n) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    // no room below the ephemeral range on this machine: any free port
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run the tests of one file one at a time (for tests that measure delays, which a neighbour's
/// daemons on the same 2 cores would distort): hold the guard for the whole test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Poll `cond` every few ms until it holds; panic with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if cond() {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP proxy that can cut every connection and refuse new ones, and throttle what it
/// forwards ([`Proxy::throttle`]).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    /// Bytes per second forwarded in each direction of each connection; 0: no limit.
    rate: Arc<AtomicU64>,
    /// Bytes forwarded so far, both directions, every connection.
    forwarded: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, s2, k2, r2) = (cut.clone(), stop.clone(), conns.clone(), rate.clone());
        let f2 = forwarded.clone();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((down, _)) => {
                        if c2.load(Ordering::Relaxed) {
                            drop(down);
                            continue;
                        }
                        down.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        k2.lock().unwrap().push(down.try_clone().unwrap());
                        k2.lock().unwrap().push(up.try_clone().unwrap());
                        pipe(
                            down.try_clone().unwrap(),
                            up.try_clone().unwrap(),
                            r2.clone(),
                            f2.clone(),
                        );
                        pipe(up, down, r2.clone(), f2.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            cut,
            rate,
            forwarded,
            conns,
            stop,
        }
    }

    /// Bytes forwarded so far (both directions, every connection): what went over the wire.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Forward at most `bytes_per_sec` in each direction of each connection (0: no limit).
    /// Applies at once to connections already open. The kernel's socket buffers on both sides
    /// still hold a few MiB, so a message queued behind bulk data waits for those too.
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Pass nothing from now on, on connections open or new, until [`Proxy::throttle`] sets
    /// a rate again: the links stay open and fall silent (a stall, not a cut).
    pub fn hold(&self) {
        self.rate.store(HOLD, Ordering::Relaxed);
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

/// A rate that passes nothing at all ([`Proxy::hold`]).
const HOLD: u64 = u64::MAX;

fn pipe(mut from: TcpStream, mut to: TcpStream, rate: Arc<AtomicU64>, count: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let r = rate.load(Ordering::Relaxed);
            // throttled: small reads (about 20 a second), each followed by its share of time
            let want = if r == 0 || r == HOLD {
                buf.len()
            } else {
                ((r / 20) as usize).clamp(512, buf.len())
            };
            match from.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !forward(&mut to, &buf[..n], &rate, &count) {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Write `data` at the rate in force, a twentieth of a second's worth at a time, reading the
/// rate again before each piece: bytes read before a throttle or a hold are held back by it,
/// and lifting it lets the rest go within a second. False when `to` is gone.
fn forward(to: &mut TcpStream, data: &[u8], rate: &AtomicU64, count: &AtomicU64) -> bool {
    let mut rest = data;
    while !rest.is_empty() {
        let r = rate.load(Ordering::Relaxed);
        if r == HOLD {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = if r == 0 {
            rest.len()
        } else {
            ((r / 20) as usize).clamp(1, rest.len())
        };
        if to.write_all(&rest[..n]).is_err() {
            return false;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        if r > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
        }
        rest = &rest[n..];
    }
    true
}

pub struct Node {
    pub name: String,
    pub state: PathBuf,
    pub root: PathBuf,
    pub port: u16,
    pub child: Option<Child>,
    pub proxy: Option<Proxy>,
    pub env: Vec<(String, String)>,
    /// The binary this node's daemon and commands run ([`Cluster::set_bin`]; default [`bin`]).
    pub bin: Option<String>,
}

/// A cluster of test nodes sharing one config file.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub cfg: PathBuf,
    pub skip: Vec<&'static str>,
}

/// Options of a test cluster.
#[derive(Default, Clone)]
pub struct Opts {
    /// Extra lines for `[groups.www]`.
    pub group_extra: String,
    /// Put a cuttable proxy in front of every node.
    pub proxies: bool,
    /// Names left out of tree comparisons (excluded on purpose): `*.ext` or an exact name.
    pub tree_skip: Vec<&'static str>,
    /// Nodes that are receive-only members (`replicas`) instead of full members.
    pub replicas: Vec<&'static str>,
    /// Groups besides `www` (each with a group path of its own).
    pub groups: Vec<ExtraGroup>,
    /// The members of `www` (full members and replicas); empty: every node.
    pub www_nodes: Vec<&'static str>,
}

/// A group besides `www`.
#[derive(Default, Clone)]
pub struct ExtraGroup {
    pub name: &'static str,
    /// Its one group path (absolute, as in the config).
    pub path: &'static str,
    /// Its members; empty: every node of the cluster.
    pub nodes: Vec<&'static str>,
    /// Extra lines for its section.
    pub extra: String,
}

impl Cluster {
    pub fn new(names: &[&str], opts: Opts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cs-test.")
            .tempdir()
            .unwrap();
        let mut nodes = Vec::new();
        for n in names {
            let state = dir.path().join(n).join("state");
            let root = dir.path().join(n).join("root");
            std::fs::create_dir_all(root.join(GP.trim_start_matches('/'))).unwrap();
            let out = Command::new(bin())
                .args(["--node", n, "--state-dir"])
                .arg(&state)
                .arg("init")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let port = free_port();
            let proxy = opts.proxies.then(|| Proxy::start(port));
            nodes.push(Node {
                name: n.to_string(),
                state,
                root,
                port,
                child: None,
                proxy,
                env: vec![],
                bin: None,
            });
        }
        let mut cfg = String::new();
        for n in &nodes {
            let id = Command::new(bin())
                .args(["--node", &n.name, "--state-dir"])
                .arg(&n.state)
                .arg("id")
                .output()
                .unwrap();
            let id = String::from_utf8(id.stdout).unwrap();
            let addr_port = n.proxy.as_ref().map(|p| p.port).unwrap_or(n.port);
            cfg.push_str(&format!(
                "[nodes.{}]\naddress = \"127.0.0.1:{addr_port}\"\nlisten = \"127.0.0.1:{}\"\nroot = \"{}\"\nid = \"{}\"\n\n",
                n.name,
                n.port,
                n.root.display(),
                id.trim()
            ));
        }
        let members: Vec<String> = names
            .iter()
            .filter(|n| !opts.replicas.contains(n))
            .filter(|n| opts.www_nodes.is_empty() || opts.www_nodes.contains(n))
            .map(|n| format!("\"{n}\""))
            .collect();
        let replicas: Vec<String> = opts.replicas.iter().map(|n| format!("\"{n}\"")).collect();
        cfg.push_str(&format!(
            "[groups.www]\nnodes = [{}]\nreplicas = [{}]\npaths = [\"{GP}\"]\n{}\n",
            members.join(", "),
            replicas.join(", "),
            opts.group_extra
        ));
        for g in &opts.groups {
            let members: Vec<&str> = if g.nodes.is_empty() {
                names.to_vec()
            } else {
                g.nodes.clone()
            };
            for n in &nodes {
                if members.contains(&n.name.as_str()) {
                    std::fs::create_dir_all(n.root.join(g.path.trim_start_matches('/'))).unwrap();
                }
            }
            let list: Vec<String> = members.iter().map(|n| format!("\"{n}\"")).collect();
            cfg.push_str(&format!(
                "[groups.{}]\nnodes = [{}]\npaths = [\"{}\"]\n{}\n",
                g.name,
                list.join(", "),
                g.path,
                g.extra
            ));
        }
        let path = dir.path().join("clustersync.toml");
        std::fs::write(&path, cfg).unwrap();
        Cluster {
            dir,
            nodes,
            cfg: path,
            skip: opts.tree_skip.clone(),
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Real path of `rel` (relative to the group path) on node `name`.
    pub fn path(&self, name: &str, rel: &str) -> PathBuf {
        let base = self.node(name).root.join(GP.trim_start_matches('/'));
        if rel.is_empty() { base } else { base.join(rel) }
    }

    /// Real path of `rel` below group path `gp` (absolute, as in the config) on node `name`.
    pub fn gpath(&self, name: &str, gp: &str, rel: &str) -> PathBuf {
        let base = self.node(name).root.join(gp.trim_start_matches('/'));
        if rel.is_empty() { base } else { base.join(rel) }
    }

    /// Like [`Cluster::tree`], for group path `gp`.
    pub fn tree_at(&self, name: &str, gp: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let base = self.gpath(name, gp, "");
        walk(&base, &base, &self.skip, &mut out);
        out
    }

    /// Like [`Cluster::wait_converged`], for group path `gp` on the running nodes of `among`.
    pub fn wait_converged_at(
        &self,
        gp: &str,
        among: &[&str],
        what: &str,
    ) -> BTreeMap<String, String> {
        let running: Vec<&str> = among
            .iter()
            .copied()
            .filter(|n| self.node(n).child.is_some())
            .collect();
        let mut last = BTreeMap::new();
        let mut diff = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(what, WAIT, || {
                let first = self.tree_at(running[0], gp);
                for n in &running[1..] {
                    let t = self.tree_at(n, gp);
                    if t != first {
                        diff = describe_diff(running[0], &first, n, &t);
                        return false;
                    }
                }
                last = first;
                true
            })
        }));
        if r.is_err() {
            panic!("{what}: nodes did not converge in {gp}:\n{diff}");
        }
        last
    }

    /// The lines of node `name`'s audit log (`<state>/audit.log`, JSON lines), oldest first.
    pub fn audit(&self, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.node(name).state.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `transfer` counters of a running node's `status --json`.
    pub fn transfer(&self, name: &str) -> serde_json::Value {
        self.status(name)
            .map(|s| s["transfer"].clone())
            .unwrap_or_default()
    }

    /// Every running node is in sync in every group (by its `status --json`).
    pub fn all_in_sync(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            self.status(&n.name).is_some_and(|s| {
                s["groups"]
                    .as_array()
                    .is_some_and(|g| g.iter().all(|g| g["in_sync"] == true))
            })
        })
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Run node `name` (daemon and commands) with another binary from its next start, e.g. a
    /// previous release for a mixed-release cluster; `None`: the harness's [`bin`].
    pub fn set_bin(&mut self, name: &str, path: Option<&str>) {
        self.node_mut(name).bin = path.map(str::to_owned);
    }

    pub fn set_env(&mut self, name: &str, k: &str, v: &str) {
        self.node_mut(name).env.push((k.into(), v.into()));
    }

    /// Set an environment variable of every node's daemon (from its next start).
    pub fn set_env_all(&mut self, k: &str, v: &str) {
        for n in &mut self.nodes {
            n.env.push((k.into(), v.into()));
        }
    }

    pub fn start(&mut self, name: &str) {
        let cfg = self.cfg.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let n = self.node_mut(name);
        assert!(n.child.is_none(), "{name} already running");
        let mut cmd = Command::new(n.bin.as_deref().unwrap_or(bin()));
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--node", name, "--state-dir"])
            .arg(&n.state)
            .arg("daemon")
            .env("CLUSTERSYNC_LOG", "clustersync=debug,info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &n.env {
            cmd.env(k, v);
        }
        n.child = Some(cmd.spawn().unwrap());
        let state = n.state.clone();
        wait_until(&format!("{name} control socket"), WAIT, || {
            state.join("control.sock").exists()
                && std::os::unix::net::UnixStream::connect(state.join("control.sock")).is_ok()
        });
    }

    pub fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            self.start(n);
        }
        self.wait_connected();
    }

    /// Wait until every running node sees every running peer connected.
    pub fn wait_connected(&self) {
        let running: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.name.as_str())
            .collect();
        for n in &running {
            wait_until(&format!("{n} connected to its peers"), WAIT, || {
                let Some(st) = self.status(n) else {
                    return false;
                };
                st["peers"].as_array().unwrap().iter().all(|p| {
                    !running.contains(&p["name"].as_str().unwrap()) || p["connected"] == true
                })
            });
        }
    }

    /// Cut every link to `name` at its proxy and wait until `seen_by` notices.
    pub fn cut_off(&self, name: &str, seen_by: &str) {
        self.node(name)
            .proxy
            .as_ref()
            .expect("cluster made with proxies")
            .cut();
        wait_until(&format!("{seen_by} to see {name} cut off"), WAIT, || {
            self.status(seen_by).is_some_and(|s| {
                s["peers"].as_array().is_some_and(|l| {
                    l.iter()
                        .any(|p| p["name"] == name && p["connected"] == false)
                })
            })
        });
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self, name: &str) -> std::process::ExitStatus {
        let n = self.node_mut(name);
        let mut c = n.child.take().expect("not running");
        unsafe_free_kill(c.id(), "TERM");
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > WAIT {
                let _ = c.kill();
                panic!("{name} did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, name: &str) {
        let n = self.node_mut(name);
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run a CLI command as node `name`.
    pub fn cli(&self, name: &str, args: &[&str]) -> Output {
        let n = self.node(name);
        Command::new(n.bin.as_deref().unwrap_or(bin()))
            .arg("-c")
            .arg(&self.cfg)
            .args(["--node", name, "--state-dir"])
            .arg(&n.state)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// `status --json` of a node (whatever its exit status, which says in sync or not).
    pub fn status(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.cli(name, &["status", "--json"]);
        if !matches!(out.status.code(), Some(0 | 1 | 3)) {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Snapshot of node `name`'s group tree: path → description of everything synced.
    pub fn tree(&self, name: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let base = self.path(name, "");
        walk(&base, &base, &self.skip, &mut out);
        out
    }

    /// Wait until all running nodes hold identical trees; returns that tree.
    pub fn wait_converged(&self, what: &str) -> BTreeMap<String, String> {
        let running: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.name.as_str())
            .collect();
        let mut last = BTreeMap::new();
        let mut diff = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(what, WAIT, || {
                let first = self.tree(running[0]);
                for n in &running[1..] {
                    let t = self.tree(n);
                    if t != first {
                        diff = describe_diff(running[0], &first, n, &t);
                        return false;
                    }
                }
                last = first;
                true
            })
        }));
        if r.is_err() {
            panic!("{what}: nodes did not converge:\n{diff}");
        }
        last
    }
}

fn describe_diff(
    a: &str,
    ta: &BTreeMap<String, String>,
    b: &str,
    tb: &BTreeMap<String, String>,
) -> String {
    let mut s = String::new();
    for (k, v) in ta {
        if tb.get(k) != Some(v) {
            s.push_str(&format!("  {k}: {a}={v} {b}={:?}\n", tb.get(k)));
        }
    }
    for (k, v) in tb {
        if !ta.contains_key(k) {
            s.push_str(&format!("  {k}: {a}=None {b}={v}\n"));
        }
    }
    s
}

fn walk(base: &Path, p: &Path, skip: &[&str], out: &mut BTreeMap<String, String>) {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if p != base
        && skip.iter().any(|s| match s.strip_prefix('*') {
            Some(suffix) => name.ends_with(suffix),
            None => name == *s,
        })
    {
        return;
    }
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return;
    };
    let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
    let desc = if md.is_dir() {
        format!(
            "dir {:o} {}.{}",
            md.mode() & 0o7777,
            md.mtime(),
            md.mtime_nsec()
        )
    } else if md.file_type().is_symlink() {
        format!("link {}", std::fs::read_link(p).unwrap().display())
    } else {
        let data = std::fs::read(p).unwrap_or_default();
        format!(
            "file {:o} {}.{} {}:{} {} {}",
            md.mode() & 0o7777,
            md.mtime(),
            md.mtime_nsec(),
            md.uid(),
            md.gid(),
            data.len(),
            blake3::hash(&data).to_hex()
        )
    };
    out.insert(format!("/{rel}"), desc);
    if md.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            walk(base, &e.path(), skip, out);
        }
    }
}

/// Send a signal with the `kill` command (no unsafe code in tests).
pub fn unsafe_free_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() && std::env::var_os("CS_TEST_KEEP").is_some() {
            let d = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept test directory {}", d.keep().display());
        } else if std::thread::panicking() {
            // keep logs visible in the test output
            for n in &self.nodes {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- log of {} (last lines) ----", n.name);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The entry of group `name` in a `status --json` answer (`Null` when absent).
pub fn group_of<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Write a file in one go.
pub fn write(p: &Path, data: impl AsRef<[u8]>) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, data).unwrap();
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}
