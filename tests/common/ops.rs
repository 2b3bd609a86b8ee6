//! Helpers of the operator-facing tests (tests/ops.rs, tests/operator.rs, tests/links.rs,
//! tests/service.rs): config additions on top of what `Cluster::new` writes, per-node configs
//! (configs that disagree), daemons started without the harness's log settings, HTTP GETs of
//! `/metrics` and `/health`, a proxy that stalls without closing, file modes.
//!
//! Declared from each test file with `#[path = "common/ops.rs"] mod ops;` next to
//! `mod common;` (it builds on the harness in `common/mod.rs`).
#![allow(dead_code)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// config text

/// Append `text` to the cluster's shared config (new tables: `[metrics]`, `[groups.x]`,
/// `[[groups.www.actions]]`).
pub fn append_cfg(c: &Cluster, text: &str) {
    let mut cfg = std::fs::read_to_string(&c.cfg).unwrap();
    cfg.push('\n');
    cfg.push_str(text);
    cfg.push('\n');
    std::fs::write(&c.cfg, cfg).unwrap();
}

/// Add `line` (`key = value`) to `[nodes.NODE]` of the config text `cfg`.
pub fn with_node_line(cfg: &str, node: &str, line: &str) -> String {
    let head = format!("[nodes.{node}]\n");
    assert!(cfg.contains(&head), "no {head:?} in the config");
    cfg.replacen(&head, &format!("{head}{line}\n"), 1)
}

/// Add `line` to `[nodes.NODE]` of the shared config.
pub fn add_node_line(c: &Cluster, node: &str, line: &str) {
    let cfg = std::fs::read_to_string(&c.cfg).unwrap();
    std::fs::write(&c.cfg, with_node_line(&cfg, node, line)).unwrap();
}

/// Give `node` a metrics listener of its own (`[nodes.NODE] metrics`); returns its port.
pub fn metrics_on(c: &Cluster, node: &str) -> u16 {
    let port = free_port();
    add_node_line(c, node, &format!("metrics = \"127.0.0.1:{port}\""));
    port
}

/// The address line the harness wrote for `node`, and the port in it.
fn address_port(cfg: &str, node: &str) -> u16 {
    let head = format!("[nodes.{node}]\n");
    let sect = &cfg[cfg.find(&head).unwrap()..];
    let line = sect.lines().find(|l| l.starts_with("address = ")).unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Put a [`StallProxy`] in front of `node`: peers reach it through the proxy (its `address`),
/// it still listens on its own port. Call before starting the nodes.
pub fn interpose(c: &Cluster, node: &str) -> StallProxy {
    let cfg = std::fs::read_to_string(&c.cfg).unwrap();
    let old = address_port(&cfg, node);
    let real = c.node(node).port;
    let proxy = StallProxy::start(real);
    let line = format!("address = \"127.0.0.1:{old}\"\n");
    assert_eq!(
        cfg.matches(&line).count(),
        1,
        "unexpected config layout:\n{cfg}"
    );
    let cfg = cfg.replacen(
        &line,
        &format!("address = \"127.0.0.1:{}\"\n", proxy.port),
        1,
    );
    std::fs::write(&c.cfg, cfg).unwrap();
    proxy
}

/// A second group `name` with path `/srv/NAME` on `nodes` (directories created on each node of
/// the cluster); returns the config text of the group.
pub fn group_text(c: &Cluster, name: &str, nodes: &[&str], extra: &str) -> String {
    for n in &c.nodes {
        std::fs::create_dir_all(group_dir(c, &n.name, name)).unwrap();
    }
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[groups.{name}]\nnodes = [{}]\npaths = [\"/srv/{name}\"]\n{extra}\n",
        list.join(", ")
    )
}

/// Real path of group path `/srv/GROUP` on `node`.
pub fn group_dir(c: &Cluster, node: &str, group: &str) -> PathBuf {
    c.node(node).root.join("srv").join(group)
}

/// Write a config of `node`'s own (a copy of the shared one, changed by `edit`); returns its
/// path. Start the node with [`start_with`] and query it with [`cli_with`].
pub fn own_cfg(c: &Cluster, node: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let cfg = std::fs::read_to_string(&c.cfg).unwrap();
    let p = c.dir.path().join(format!("{node}.toml"));
    std::fs::write(&p, edit(cfg)).unwrap();
    p
}

/// How a daemon is started by [`start_with`].
pub struct Start<'a> {
    pub cfg: &'a Path,
    /// Keep the harness's `NO_COLOR=1` and debug log filter (false: the daemon's defaults).
    pub harness_log: bool,
    pub env: Vec<(String, String)>,
}

/// Start `node` like `Cluster::start`, with its own config and environment.
pub fn start_with(c: &mut Cluster, node: &str, how: Start<'_>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.path().join(format!("{node}.log")))
        .unwrap();
    let n = c.nodes.iter_mut().find(|n| n.name == node).unwrap();
    assert!(n.child.is_none(), "{node} already running");
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(how.cfg)
        .args(["--node", node, "--state-dir"])
        .arg(&n.state)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if how.harness_log {
        cmd.env("CLUSTERSYNC_LOG", "clustersync=debug,info")
            .env("NO_COLOR", "1");
    } else {
        cmd.env_remove("CLUSTERSYNC_LOG").env_remove("NO_COLOR");
    }
    for (k, v) in n.env.iter().chain(how.env.iter()) {
        cmd.env(k, v);
    }
    n.child = Some(cmd.spawn().unwrap());
    let state = n.state.clone();
    wait_until(&format!("{node} control socket"), WAIT, || {
        std::os::unix::net::UnixStream::connect(state.join("control.sock")).is_ok()
    });
}

/// Run the CLI as `node` with config `cfg`.
pub fn cli_with(c: &Cluster, node: &str, cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(cfg)
        .args(["--node", node, "--state-dir"])
        .arg(&c.node(node).state)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// `status --json` of `node` run with config `cfg`.
pub fn status_with(c: &Cluster, node: &str, cfg: &Path) -> Option<serde_json::Value> {
    let out = cli_with(c, node, cfg, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).ok()
}

/// The `peers[]` entry for `peer` in a status.
pub fn peer_of(st: &serde_json::Value, peer: &str) -> serde_json::Value {
    st["peers"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == peer))
        .cloned()
        .unwrap_or_else(|| panic!("no peer {peer} in {st}"))
}

/// Text of an `Output`'s stdout and stderr.
pub fn texts(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The pid of a running node.
pub fn pid(c: &Cluster, node: &str) -> u32 {
    c.node(node).child.as_ref().expect("running").id()
}

/// Whether a node's process is still alive (not exited).
pub fn alive(c: &mut Cluster, node: &str) -> bool {
    let n = c.nodes.iter_mut().find(|n| n.name == node).unwrap();
    n.child
        .as_mut()
        .is_some_and(|ch| ch.try_wait().unwrap().is_none())
}

/// Lines of `node`'s daemon log containing every one of `needles`.
pub fn log_lines(c: &Cluster, node: &str, needles: &[&str]) -> Vec<String> {
    c.log(node)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// The audit log of `node`, parsed (one JSON object per line).
pub fn audit(c: &Cluster, node: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(c.node(node).state.join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// `GET path` on 127.0.0.1:port by hand (HTTP/1.1, `Connection: close`): status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// `/health` of the listener on `port`: status and the one-line body.
pub fn health(port: u16) -> (u16, String) {
    http_get(port, "/health").unwrap_or((0, "no answer".into()))
}

/// Wait until `/health` answers `code`; returns the body.
pub fn wait_health(port: u16, code: u16, what: &str, limit: Duration) -> String {
    let mut last = (0, String::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, limit, || {
            last = health(port);
            last.0 == code
        })
    }));
    if r.is_err() {
        panic!("{what}: /health still answers {} {:?}", last.0, last.1);
    }
    last.1
}

/// `/metrics` on `port`, parsed with `prometheus-parse`; also the raw text.
pub fn scrape(port: u16) -> (prometheus_parse::Scrape, String) {
    let (code, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let s = prometheus_parse::Scrape::parse(lines).expect("Prometheus text parses");
    (s, body)
}

/// The value of the sample `name` whose labels include `labels` (histograms: the count).
pub fn sample(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|h| h.count).fold(0.0, f64::max),
            Value::Summary(q) => q.len() as f64,
        })
}

// ---------------------------------------------------------------------------------------------
// a proxy that stalls

/// A TCP proxy that can stop forwarding without closing anything: packets "dropped" on the
/// way (`hold`), one direction stalled (`hold_from_target`), or a black hole that accepts and
/// never forwards (`blackhole`: new connections are parked, not even connected upstream).
/// A hold has taken effect when its call returns: a pipe in the middle of a read when the flag
/// was set would otherwise still forward what that read brings.
pub struct StallProxy {
    pub port: u16,
    to_target: Arc<Valve>,
    from_target: Arc<Valve>,
    blackhole: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

/// One direction of every connection of a [`StallProxy`]: whether it is held, how many pipes
/// carry it, and how many of those have seen the hold and stopped reading.
#[derive(Default)]
struct Valve {
    hold: AtomicBool,
    pipes: std::sync::atomic::AtomicUsize,
    stopped: std::sync::atomic::AtomicUsize,
}

impl Valve {
    /// Hold, and wait (bounded) until every pipe has stopped reading.
    fn close(&self, what: &str) {
        self.hold.store(true, Ordering::SeqCst);
        wait_until(what, Duration::from_secs(5), || {
            self.stopped.load(Ordering::SeqCst) >= self.pipes.load(Ordering::SeqCst)
        });
    }
}

impl StallProxy {
    pub fn start(target: u16) -> StallProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let p = StallProxy {
            port,
            to_target: Arc::default(),
            from_target: Arc::default(),
            blackhole: Arc::default(),
            stop: Arc::default(),
            conns: Arc::default(),
        };
        let (up_valve, down_valve, bh, stop, conns) = (
            p.to_target.clone(),
            p.from_target.clone(),
            p.blackhole.clone(),
            p.stop.clone(),
            p.conns.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                conns.lock().unwrap().push(down.try_clone().unwrap());
                if bh.load(Ordering::Relaxed) {
                    continue; // parked: open, never read, never forwarded
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = down.shutdown(std::net::Shutdown::Both);
                    continue;
                };
                conns.lock().unwrap().push(up.try_clone().unwrap());
                stall_pipe(
                    down.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    up_valve.clone(),
                    stop.clone(),
                );
                stall_pipe(up, down, down_valve.clone(), stop.clone());
            }
        });
        p
    }

    /// Stop forwarding both ways, on open connections and new ones (parked), closing nothing.
    pub fn hold(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
        self.to_target
            .close("the proxy to stop forwarding to its target");
        self.from_target
            .close("the proxy to stop forwarding from its target");
    }

    /// Stop forwarding what the proxied node sends back (its requests, acks, pings).
    pub fn hold_from_target(&self) {
        self.from_target
            .close("the proxy to stop forwarding from its target");
    }

    /// Forward again (parked connections stay parked).
    pub fn release(&self) {
        self.to_target.hold.store(false, Ordering::SeqCst);
        self.from_target.hold.store(false, Ordering::SeqCst);
        self.blackhole.store(false, Ordering::SeqCst);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn stall_pipe(mut from: TcpStream, mut to: TcpStream, valve: Arc<Valve>, stop: Arc<AtomicBool>) {
    valve.pipes.fetch_add(1, Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        from.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut stopped = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if valve.hold.load(Ordering::SeqCst) {
                // not read: the bytes stay in the kernel's buffers, the sender sees silence
                if !stopped {
                    stopped = true;
                    valve.stopped.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if stopped {
                stopped = false;
                valve.stopped.fetch_sub(1, Ordering::SeqCst);
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        if stopped {
            valve.stopped.fetch_sub(1, Ordering::SeqCst);
        }
        valve.pipes.fetch_sub(1, Ordering::SeqCst);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

// ---------------------------------------------------------------------------------------------
// files

/// Permission bits of `p` (not following a symlink).
pub fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Every entry below `dir` (itself included) whose mode gives group or others any access:
/// `(path, mode)`.
pub fn not_private(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.mode() & 0o077 != 0 && !md.file_type().is_symlink() {
            out.push((p.clone(), md.mode() & 0o7777));
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Time a closure.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed())
}
