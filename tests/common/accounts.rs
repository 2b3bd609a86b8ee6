//! Helpers of the account-sync tests (`tests/accounts_sync.rs`): a Debian-like base of the four
//! account files in each node's root prefix, the real shadow-utils tools run against that
//! prefix, `pwck`/`grpck`, and comparisons of what is managed and what must stay untouched.
//!
//! Nothing here touches the real `/etc`: every path is under a node's `root`.
#![allow(dead_code)]

use super::common::{Cluster, Opts, WAIT, wait_until};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
pub const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
man:x:12:
sudo:x:27:
www-data:x:33:
shadow:x:42:
staff:x:50:
users:x:100:
nogroup:x:65534:
";

/// The four account files, in the order shadow-utils writes them.
pub const FILES: [&str; 4] = ["passwd", "shadow", "group", "gshadow"];

/// Can this machine run these tests (root and shadow-utils)? Says why not.
pub fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = [
        "useradd", "usermod", "userdel", "groupadd", "groupdel", "chpasswd", "gpasswd", "pwck",
        "grpck",
    ]
    .iter()
    .all(|t| {
        Command::new(t)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !(root && tools) {
        eprintln!("skipped: needs root and shadow-utils (root: {root}, tools: {tools})");
    }
    root && tools
}

/// Write a node's base: the four files (shadow and gshadow 0640 root:shadow, the others 0644),
/// login.defs (with `extra_defs`), a skel, `<root>/home`. `extra_*` are local accounts of this
/// node only.
pub fn base(root: &Path, extra_passwd: &str, extra_group: &str, extra_defs: &str) {
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("skel/.config")).unwrap();
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::fs::set_permissions(root.join("home"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(etc.join("skel/.bashrc"), "# ~/.bashrc from skel\n").unwrap();
    std::fs::write(etc.join("skel/.config/app.conf"), "x=1\n").unwrap();
    std::fs::write(
        etc.join("login.defs"),
        format!(
            "MAIL_DIR /var/mail\nUMASK 022\nUSERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\n{extra_defs}"
        ),
    )
    .unwrap();
    let passwd = format!("{PASSWD}{extra_passwd}");
    let group = format!("{GROUP}{extra_group}");
    let shadow: String = passwd
        .lines()
        .map(|l| format!("{}:*:19700:0:99999:7:::\n", name_of(l)))
        .collect();
    let gshadow: String = group
        .lines()
        .map(|l| format!("{}:*::\n", name_of(l)))
        .collect();
    for (name, text, mode) in [
        ("passwd", passwd, 0o644),
        ("group", group, 0o644),
        ("shadow", shadow, 0o640),
        ("gshadow", gshadow, 0o640),
    ] {
        let p = etc.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if mode == 0o640 {
            std::os::unix::fs::chown(&p, Some(0), Some(42)).unwrap();
        }
    }
}

/// The name of an account line.
pub fn name_of(line: &str) -> &str {
    line.split(':').next().unwrap_or("")
}

/// Run a shadow-utils tool with `flag root` (`-P`, `-R`, `-Q`); panics with its output when it
/// fails. shadow-utils takes `passwd.lock`/`group.lock` without waiting ("cannot lock ...; try
/// again later"), and the daemon holds them for the few milliseconds of a read or write of the
/// files: a tool that meets that window is run again, as a script would, for at most 30 s.
pub fn tool(root: &Path, prog: &str, flag: &str, args: &[&str], stdin: Option<&str>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = run_tool(root, prog, flag, args, stdin);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success()
            && err.contains("try again later")
            && std::time::Instant::now() < deadline
        {
            eprintln!("{prog}: the files were locked, running it again: {err}");
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        }
        assert!(
            out.status.success(),
            "{prog} {flag} {} {args:?} failed: {}{err}",
            root.display(),
            String::from_utf8_lossy(&out.stdout),
        );
        return;
    }
}

fn run_tool(
    root: &Path,
    prog: &str,
    flag: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut c = Command::new(prog);
    c.arg(flag).arg(root).args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{prog}: {e}"));
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `pwck -r -q -R root` and `grpck -r -q -R root`: empty output and status 0, or the problems.
pub fn tools_check(root: &Path) -> Result<(), String> {
    let mut problems = String::new();
    for prog in ["pwck", "grpck"] {
        let out = Command::new(prog)
            .args(["-r", "-q", "-R"])
            .arg(root)
            .output()
            .unwrap();
        if !out.status.success() || !out.stdout.is_empty() || !out.stderr.is_empty() {
            problems.push_str(&format!(
                "{prog} -r -q -R {} (status {:?}): {}{}",
                root.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The bytes of `<root>/etc/<file>` as text ("" when missing).
pub fn read(root: &Path, file: &str) -> String {
    String::from_utf8_lossy(&std::fs::read(root.join("etc").join(file)).unwrap_or_default())
        .into_owned()
}

/// The line of `name` in `<root>/etc/<file>`.
pub fn line(root: &Path, file: &str, name: &str) -> Option<String> {
    read(root, file)
        .lines()
        .find(|l| name_of(l) == name)
        .map(String::from)
}

/// The four files' contents.
pub fn files(root: &Path) -> Vec<String> {
    FILES.iter().map(|f| read(root, f)).collect()
}

/// Mode, owner and group of the four files.
pub fn meta(root: &Path) -> Vec<(u32, u32, u32)> {
    FILES
        .iter()
        .map(|f| {
            let m = std::fs::metadata(root.join("etc").join(f)).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        })
        .collect()
}

/// Groups whose member list in `group` names `user`, sorted.
pub fn member_of(root: &Path, user: &str) -> Vec<String> {
    let mut v: Vec<String> = read(root, "group")
        .lines()
        .filter(|l| {
            l.rsplit(':')
                .next()
                .is_some_and(|m| m.split(',').any(|x| x == user))
        })
        .map(|l| name_of(l).to_string())
        .collect();
    v.sort();
    v
}

/// What node `root` has of the managed accounts `users` and `groups`: their lines in the four
/// files (shadow: with `hash` the whole line, else without the hash and last-change day) and the
/// users' memberships. Equal on two nodes = the same accounts.
pub fn accounts_view(root: &Path, users: &[&str], groups: &[&str], hash: bool) -> String {
    let mut s = String::new();
    for u in users {
        s.push_str(&format!("passwd {:?}\n", line(root, "passwd", u)));
        let sp = line(root, "shadow", u).map(|l| {
            if hash {
                l
            } else {
                let f: Vec<&str> = l.split(':').collect();
                format!("{}:<hash>:<day>:{}", f[0], f[3..].join(":"))
            }
        });
        s.push_str(&format!("shadow {sp:?}\n"));
        s.push_str(&format!("member of {:?}\n", member_of(root, u)));
    }
    for g in groups {
        s.push_str(&format!("group {:?}\n", line(root, "group", g)));
        let sg = line(root, "gshadow", g).map(|l| {
            if hash {
                l
            } else {
                let f: Vec<&str> = l.split(':').collect();
                format!("{}:<hash>:{}", f[0], f[2..].join(":"))
            }
        });
        s.push_str(&format!("gshadow {sg:?}\n"));
    }
    s
}

/// Wait until every node in `nodes` shows the same [`accounts_view`] and `ok` holds for it;
/// returns it.
pub fn wait_accounts(
    c: &Cluster,
    nodes: &[&str],
    what: &str,
    users: &[&str],
    groups: &[&str],
    ok: impl Fn(&str) -> bool,
) -> String {
    let mut last = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, WAIT, || {
            last = nodes
                .iter()
                .map(|n| accounts_view(&c.node(n).root, users, groups, true))
                .collect();
            last.iter().all(|v| *v == last[0]) && ok(&last[0])
        })
    }));
    if r.is_err() {
        let shown: Vec<String> = nodes
            .iter()
            .zip(&last)
            .map(|(n, v)| format!("-- {n}:\n{v}"))
            .collect();
        panic!("{what}: nodes did not agree:\n{}", shown.join(""));
    }
    last[0].clone()
}

/// Every line of `before` not named in `touched` is in `after`, byte for byte and in the same
/// order.
pub fn kept_lines(file: &str, before: &str, after: &str, touched: &[&str]) -> Result<(), String> {
    let after: Vec<&str> = after.lines().collect();
    let mut pos = 0;
    for l in before.lines() {
        if touched.contains(&name_of(l)) {
            continue;
        }
        match after[pos..].iter().position(|a| *a == l) {
            Some(off) => pos += off + 1,
            None => return Err(format!("{file}: line {l:?} lost, changed or moved")),
        }
    }
    Ok(())
}

/// Everything a node must keep across account sync, checked after each step: lines not in
/// `touched` as they were, the files' modes and owners, `pwck`/`grpck` clean.
pub struct Keeper {
    /// Per node: its name, the four files, their modes and owners.
    pub before: Vec<NodeFiles>,
}

/// A node's name, its four files, and their modes and owners.
pub type NodeFiles = (String, Vec<String>, Vec<(u32, u32, u32)>);

impl Keeper {
    pub fn new(c: &Cluster) -> Keeper {
        Keeper {
            before: c
                .nodes
                .iter()
                .map(|n| (n.name.clone(), files(&n.root), meta(&n.root)))
                .collect(),
        }
    }

    /// Check every node; `touched` are the managed names and the unmanaged groups whose member
    /// lists a managed user legitimately changed.
    pub fn check(&self, c: &Cluster, step: &str, touched: &[&str]) {
        let mut bad = Vec::new();
        for (n, files_before, meta_before) in &self.before {
            let root = &c.node(n).root;
            let now = files(root);
            for ((f, b), a) in FILES.iter().zip(files_before).zip(&now) {
                if let Err(e) = kept_lines(f, b, a, touched) {
                    bad.push(format!("{n}: {e}"));
                }
            }
            if meta(root) != *meta_before {
                bad.push(format!(
                    "{n}: modes/owners of the four files changed: {:?} -> {:?}",
                    meta_before,
                    meta(root)
                ));
            }
            if let Err(e) = tools_check(root) {
                bad.push(format!("{n}: {e}"));
            }
        }
        assert!(bad.is_empty(), "after {step}:\n{}", bad.join("\n"));
    }
}

/// The `[accounts]` section appended to the cluster's config (before any daemon starts).
pub fn add_accounts(c: &Cluster, section: &str) {
    let mut cfg = std::fs::read_to_string(&c.cfg).unwrap();
    cfg.push_str("\n[accounts]\n");
    cfg.push_str(section);
    cfg.push('\n');
    std::fs::write(&c.cfg, cfg).unwrap();
}

/// A cluster of `names` with `[accounts] section` and every node's base written.
pub fn cluster(names: &[&str], opts: Opts, section: &str) -> Cluster {
    let c = Cluster::new(names, opts);
    add_accounts(&c, section);
    for n in &c.nodes {
        base(&n.root, "", "", "");
    }
    c
}

/// `status --json`'s `accounts` object of a node.
pub fn acct_status(c: &Cluster, n: &str) -> serde_json::Value {
    c.status(n)
        .map(|s| s["accounts"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// The audit log of a node, as JSON lines.
pub fn audit(c: &Cluster, n: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(c.node(n).state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The raw audit log of a node.
pub fn audit_text(c: &Cluster, n: &str) -> String {
    std::fs::read_to_string(c.node(n).state.join("audit.log")).unwrap_or_default()
}

/// Wait until every running node's `status --json` says accounts are in sync with nothing
/// pending.
pub fn wait_accounts_in_sync(c: &Cluster, nodes: &[&str]) {
    for n in nodes {
        wait_until(&format!("{n}: accounts in sync"), WAIT, || {
            let a = acct_status(c, n);
            a["in_sync"] == true && a["pending"] == 0
        });
    }
}

/// Start node `name`'s daemon so that its user and group lookups (file owners by name) read its
/// own `<root>/etc/{passwd,group,shadow,gshadow}`, as a real node's do with `root = "/"`: it
/// runs in a private mount namespace where `/etc` is a directory of symlinks, to the real
/// `/etc` entries (bind-mounted read-only elsewhere first) and, for the four account files, to
/// the node's root. The real `/etc` is never written. `false` (and nothing started) when this
/// machine cannot make mount namespaces.
pub fn start_with_own_accounts(c: &mut Cluster, name: &str) -> bool {
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("no mount namespaces here: {name} not started with its own accounts");
        return false;
    }
    let dir = c.dir.path().to_path_buf();
    let (state, root) = {
        let n = c.node(name);
        (n.state.clone(), n.root.clone())
    };
    let host = dir.join(format!("{name}-hostetc"));
    let farm = dir.join(format!("{name}-etc"));
    std::fs::create_dir_all(&host).unwrap();
    std::fs::create_dir_all(&farm).unwrap();
    for e in std::fs::read_dir("/etc").unwrap().flatten() {
        let f = e.file_name();
        let to = if FILES.iter().any(|a| f == *a) {
            root.join("etc").join(&f)
        } else {
            host.join(&f)
        };
        std::os::unix::fs::symlink(to, farm.join(&f)).unwrap();
    }
    for a in FILES {
        if !farm.join(a).exists() {
            let _ = std::os::unix::fs::symlink(root.join("etc").join(a), farm.join(a));
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let script = "mount --bind /etc \"$1\" && mount -o remount,bind,ro \"$1\" && mount --bind \"$2\" /etc && shift 2 && exec \"$@\"";
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&host)
        .arg(&farm)
        .arg(super::common::BIN)
        .arg("-c")
        .arg(&c.cfg)
        .args(["--node", name, "--state-dir"])
        .arg(&state)
        .arg("daemon")
        .env("CLUSTERSYNC_LOG", "clustersync=debug,info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let n = c.nodes.iter_mut().find(|n| n.name == name).unwrap();
    assert!(n.child.is_none(), "{name} already running");
    n.child = Some(child);
    wait_until(&format!("{name} control socket"), WAIT, || {
        std::os::unix::net::UnixStream::connect(state.join("control.sock")).is_ok()
    });
    true
}
