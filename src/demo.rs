//! `clustersync demo`: a real three-node cluster on this machine, under a temporary directory.
//!
//! It creates three node keys and one config (each node with its own `root` prefix and port on
//! 127.0.0.1), starts three daemons of this very binary, and narrates a create, an edit, a
//! rename, a delete and a concurrent edit (a conflict) travelling between the nodes, with the
//! time each took. Every wait is bounded; the daemons are stopped and the directory removed at
//! the end, also when a step fails.

use crate::identity::Identity;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["web1", "web2", "web3"];
const WAIT: Duration = Duration::from_secs(15);

struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Cluster {
    fn root(&self, n: &str) -> PathBuf {
        self.dir.path().join(n).join("root")
    }
    fn www(&self, n: &str) -> PathBuf {
        self.root(n).join("srv/www")
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Poll `cond` until it holds or [`WAIT`] passes; returns the time it took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < WAIT {
        if cond() {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("timed out after {WAIT:?} waiting for {what}")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

/// Run the demo.
pub async fn run() -> Result<()> {
    tokio::task::spawn_blocking(run_blocking).await?
}

fn run_blocking() -> Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = tempfile::Builder::new()
        .prefix("clustersync-demo.")
        .tempdir()?;
    println!(
        "== clustersync demo: 3 nodes on 127.0.0.1 under {}",
        dir.path().display()
    );
    let mut cfg = String::from("# written by `clustersync demo`\n");
    for n in NAMES {
        let state = dir.path().join(n).join("state");
        let ident = Identity::create(&state.join("node.key"))?;
        let root = dir.path().join(n).join("root");
        std::fs::create_dir_all(root.join("srv/www"))?;
        cfg.push_str(&format!(
            "\n[nodes.{n}]\naddress = \"127.0.0.1:{}\"\nroot = \"{}\"\nid = \"{}\"\n",
            free_port()?,
            root.display(),
            ident.id()
        ));
    }
    cfg.push_str("\n[groups.www]\nnodes = [\"web1\", \"web2\", \"web3\"]\npaths = [\"/srv/www\"]\nexclude = [\"*.tmp\", \"cache/\"]\n");
    let cfg_path = dir.path().join("clustersync.toml");
    std::fs::write(&cfg_path, &cfg)?;
    println!("   config: {}", cfg_path.display());
    let mut cl = Cluster {
        dir,
        children: Vec::new(),
    };
    let r = steps(&mut cl, &exe, &cfg_path);
    if r.is_err() && std::env::var_os("CLUSTERSYNC_DEMO_KEEP").is_some() {
        cl.stop();
        let d = std::mem::replace(&mut cl.dir, tempfile::tempdir()?);
        eprintln!("kept {} for inspection", d.keep().display());
        return r;
    }
    r?;
    println!(
        "\nstopping the daemons and removing {}",
        cl.dir.path().display()
    );
    drop(cl);
    println!("demo finished");
    Ok(())
}

/// Start node `n`'s daemon (its log appended to `<dir>/<n>.log`).
fn spawn(cl: &Cluster, exe: &Path, cfg_path: &Path, n: &str) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cl.dir.path().join(format!("{n}.log")))?;
    Command::new(exe)
        .arg("-c")
        .arg(cfg_path)
        .args(["--node", n, "--state-dir"])
        .arg(cl.dir.path().join(n).join("state"))
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting a daemon")
}

/// Wait until node `n` answers on its control socket and sees every peer connected.
fn wait_connected(cl: &Cluster, rt: &tokio::runtime::Runtime, n: &str) -> Result<Duration> {
    let state = cl.dir.path().join(n).join("state");
    wait_for(&format!("{n} to connect to its peers"), || {
        match rt.block_on(crate::ops::control::call(
            &state,
            &crate::ops::control::Request::Status,
        )) {
            Ok(crate::ops::control::Response::Status(st)) => st.peers.iter().all(|p| p.connected),
            _ => false,
        }
    })
}

/// Stop node `i`'s daemon (SIGTERM) and wait for it to exit.
fn stop_node(cl: &mut Cluster, i: usize) -> Result<()> {
    let c = &mut cl.children[i];
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    wait_for(&format!("{} to stop", NAMES[i]), || {
        matches!(c.try_wait(), Ok(Some(_)))
    })?;
    Ok(())
}

fn steps(cl: &mut Cluster, exe: &Path, cfg_path: &Path) -> Result<()> {
    for n in NAMES {
        let child = spawn(cl, exe, cfg_path, n)?;
        cl.children.push(child);
    }
    // wait until every node has its control socket up and sees both peers
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for n in NAMES {
        wait_connected(cl, &rt, n)?;
    }
    println!(
        "   3 daemons running and connected (logs: {}/web*.log)\n",
        cl.dir.path().display()
    );

    std::fs::write(
        cl.www("web1").join("style.css"),
        "body { font-family: sans-serif }\n",
    )?;
    // 1. create
    let content = "<h1>hello from web1</h1>\n";
    std::fs::write(cl.www("web1").join("index.html"), content)?;
    let t2 = wait_for("index.html on web2", || {
        read(&cl.www("web2").join("index.html")).as_deref() == Some(content)
    })?;
    let t3 = wait_for("index.html on web3", || {
        read(&cl.www("web3").join("index.html")).as_deref() == Some(content)
    })?;
    println!(
        "1. create  index.html on web1      -> web2 {}, web3 {}",
        ms(t2),
        ms(t3.max(t2))
    );

    // 2. edit
    let content = "<h1>edited on web2</h1>\n";
    std::fs::write(cl.www("web2").join("index.html"), content)?;
    let t1 = wait_for("edit on web1", || {
        read(&cl.www("web1").join("index.html")).as_deref() == Some(content)
    })?;
    let t3 = wait_for("edit on web3", || {
        read(&cl.www("web3").join("index.html")).as_deref() == Some(content)
    })?;
    println!(
        "2. edit    index.html on web2      -> web1 {}, web3 {}",
        ms(t1),
        ms(t3.max(t1))
    );

    // 3. rename
    std::fs::rename(
        cl.www("web3").join("index.html"),
        cl.www("web3").join("home.html"),
    )?;
    let gone = |n: &str, f: &str| !cl.www(n).join(f).exists();
    let t1 = wait_for("rename on web1", || {
        gone("web1", "index.html")
            && read(&cl.www("web1").join("home.html")).as_deref() == Some(content)
    })?;
    let t2 = wait_for("rename on web2", || {
        gone("web2", "index.html")
            && read(&cl.www("web2").join("home.html")).as_deref() == Some(content)
    })?;
    println!(
        "3. rename  index.html -> home.html on web3 -> web1 {}, web2 {} (a delete + create; content a receiver already holds is copied from its own disk, not re-sent)",
        ms(t1),
        ms(t2.max(t1))
    );

    // 4. delete
    std::fs::remove_file(cl.www("web1").join("home.html"))?;
    let t2 = wait_for("delete on web2", || gone("web2", "home.html"))?;
    let t3 = wait_for("delete on web3", || gone("web3", "home.html"))?;
    println!(
        "4. delete  home.html on web1       -> web2 {}, web3 {}",
        ms(t2),
        ms(t3.max(t2))
    );

    // 5. concurrent edit: both nodes write before either has seen the other. On one machine
    // two writes "at the same time" are usually ordered (the first one arrives within a
    // millisecond), so web2 is cut off for the moment: its daemon is stopped, each node
    // writes, and web2 starts again with its own version, which no one had seen
    let p1 = cl.www("web1").join("motd.txt");
    let p2 = cl.www("web2").join("motd.txt");
    stop_node(cl, 1)?;
    std::fs::write(&p1, "motd written on web1\n")?;
    wait_for("motd.txt on web3", || {
        read(&cl.www("web3").join("motd.txt")).is_some()
    })?;
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(
        &p2,
        "motd written on web2 while it was cut off, a little later\n",
    )?;
    let t0 = Instant::now();
    cl.children[1] = spawn(cl, exe, cfg_path, NAMES[1])?;
    wait_connected(cl, &rt, "web2")?;
    wait_for("the conflict to converge", || {
        let a = read(&p1);
        a.is_some() && a == read(&p2) && a == read(&cl.www("web3").join("motd.txt"))
    })?;
    let t = t0.elapsed();
    let winner = read(&p1).unwrap_or_default();
    println!(
        "5. conflict motd.txt written on web1, and on web2 while its daemon was stopped -> web2 back, all nodes agree in {}",
        ms(t)
    );
    println!(
        "   winner (policy newest: latest mtime, ties by node name): {}",
        winner.trim()
    );
    let conflicts = |n: &str| {
        read(&cl.dir.path().join(n).join("state/audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"conflict\""))
            .count()
    };
    wait_for("the conflict in the audit logs", || {
        NAMES.iter().map(|n| conflicts(n)).sum::<usize>() > 0
    })?;
    println!(
        "   the conflict is in the audit logs and `clustersync conflicts`; the losing version is kept as a backup (`clustersync backups PATH`)"
    );
    Ok(())
}
