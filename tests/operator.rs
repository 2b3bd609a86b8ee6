//! The operator's side on real daemons (SPEC §4, §5.6, §5.12, §6; issue 11): private state
//! files (checked with stat), backups kept as hard links and bounded, root-only backups and
//! restore, `status` exit codes in each state, `check-config` refusing what `daemon` refuses,
//! `sync --dry-run` lines, `mark` with a relative path, restore edge cases, and the logs.

mod common;
#[path = "common/ops.rs"]
mod ops;

use common::*;
use ops::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The generation lines of `backups PATH` on `node` (header dropped).
fn generations(c: &Cluster, node: &str, path: &str) -> Vec<String> {
    let out = c.cli(node, &["backups", path]);
    let (o, e) = texts(&out);
    assert!(out.status.success(), "backups: {e}");
    o.lines().skip(1).map(String::from).collect()
}

#[test]
fn state_dir_index_audit_log_key_and_backups_of_a_0600_file_are_private() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let secret = c.path("a", "secret.key");
    write(&secret, "first secret");
    chmod(&secret, 0o600);
    c.start_all();
    c.wait_converged("start");
    assert_eq!(mode(&c.path("b", "secret.key")), 0o600);
    // overwritten on a: b keeps the old content as a backup; deleted: kept too
    write(&c.path("a", "secret.key"), "second secret, longer");
    wait_until("the overwrite on b", WAIT, || {
        std::fs::read_to_string(c.path("b", "secret.key")).is_ok_and(|s| s.starts_with("second"))
    });
    write(&c.path("a", "public.txt"), "p");
    c.wait_converged("public");
    chmod(&c.path("a", "public.txt"), 0o644);
    std::fs::remove_file(c.path("a", "public.txt")).unwrap();
    c.wait_converged("delete");
    let st = c.node("b").state.clone();
    wait_until("b's kept versions", WAIT, || {
        generations(&c, "b", "/srv/www/secret.key").len() == 1
    });
    assert_eq!(mode(&st), 0o700, "state dir");
    for f in ["index.redb", "audit.log", "node.key"] {
        assert_eq!(mode(&st.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&st.join("backups")), 0o700);
    // the kept copy of the 0600 file is 0600 itself, and everything else is private too
    let objects = st.join("backups/www/objects");
    let kept: Vec<_> = std::fs::read_dir(&objects).unwrap().flatten().collect();
    assert!(!kept.is_empty());
    let secret_obj = kept
        .iter()
        .find(|e| std::fs::read(e.path()).is_ok_and(|d| d == b"first secret"))
        .expect("the old secret is kept");
    assert_eq!(
        mode(&secret_obj.path()) & 0o077,
        0,
        "kept secret readable by others"
    );
    let open = not_private(&st);
    // a hard-linked object of a 0644 file keeps its inode's mode; it is only reachable through
    // the 0700 directories, which is the promise
    let open: Vec<_> = open
        .into_iter()
        .filter(|(p, _)| !(p.starts_with(&objects) && p.is_file()))
        .collect();
    assert!(open.is_empty(), "not private in {}: {open:?}", st.display());
}

#[test]
fn a_state_dir_left_0755_with_0644_files_by_an_older_version_is_made_private_at_start() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "f"), "one");
    c.start_all();
    c.wait_converged("start");
    write(&c.path("a", "f"), "two");
    c.wait_converged("overwrite");
    c.stop("a");
    c.stop("b");
    // as an older version (and a umask of 022) left them
    let st = c.node("b").state.clone();
    let mut n = 0;
    let mut stack = vec![st.clone()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            chmod(&p, 0o755);
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if md.is_file() && p.file_name().unwrap() != "node.key" {
            chmod(&p, 0o644);
            n += 1;
        }
    }
    assert!(n >= 3, "index, audit log and a kept version were made 0644");
    assert!(!not_private(&st).is_empty());
    c.start("b");
    let open = not_private(&st);
    assert!(open.is_empty(), "still open after start: {open:?}");
}

#[test]
fn the_kept_version_of_a_large_file_is_a_hard_link_of_the_replaced_inode() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "big.img"), bytes(8 << 20, 1));
    c.start_all();
    c.wait_converged("start");
    let before = std::fs::metadata(c.path("b", "big.img")).unwrap();
    write(&c.path("a", "big.img"), bytes(8 << 20, 2));
    c.wait_converged("overwrite");
    let objects = c.node("b").state.join("backups/www/objects");
    let kept: Vec<_> = std::fs::read_dir(&objects)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap())
        .collect();
    assert_eq!(kept.len(), 1, "one kept version");
    assert_eq!(
        (kept[0].dev(), kept[0].ino()),
        (before.dev(), before.ino()),
        "the kept version is the replaced inode itself (no copy)"
    );
    assert_eq!(kept[0].nlink(), 1, "only the backup store holds it now");
    let st = c.status("b").unwrap();
    assert_eq!(group_of(&st, "www")["backup_bytes"], 8 << 20, "{st}");
    let (human, _) = texts(&c.cli("b", &["status"]));
    assert!(human.contains("backups: 8.0 MiB"), "{human}");
}

#[test]
fn backup_max_bytes_drops_the_oldest_kept_versions_first_and_logs_it() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "backup_max_bytes = \"300KiB\"".into(),
            ..Default::default()
        },
    );
    // the bound is enforced by the lane's collection pass (every 30 s; 1 s here)
    c.set_env("b", "CLUSTERSYNC_TEST_GC_SECS", "1");
    for i in 1..=5 {
        write(&c.path("a", &format!("f{i}")), bytes(100 * 1024, i));
    }
    c.start_all();
    c.wait_converged("start");
    // five overwrites, a second apart: five kept versions of 100 KiB, oldest first
    for i in 1..=5u64 {
        write(&c.path("a", &format!("f{i}")), bytes(100 * 1024, 100 + i));
        wait_until("the overwrite on b", WAIT, || {
            std::fs::read(c.path("b", &format!("f{i}")))
                .is_ok_and(|d| d == bytes(100 * 1024, 100 + i))
        });
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_until("b's backups under the bound", WAIT, || {
        c.status("b")
            .is_some_and(|s| s["groups"][0]["backup_bytes"].as_u64().unwrap() <= 300 * 1024)
    });
    for i in 1..=2 {
        assert!(
            generations(&c, "b", &format!("/srv/www/f{i}")).is_empty(),
            "the oldest kept version (f{i}) is dropped first"
        );
        assert!(
            !log_lines(&c, "b", &["backup_max_bytes", &format!("/srv/www/f{i}")]).is_empty(),
            "dropping f{i}'s version is logged"
        );
    }
    for i in 3..=5 {
        assert_eq!(
            generations(&c, "b", &format!("/srv/www/f{i}")).len(),
            1,
            "f{i} kept"
        );
    }
}

/// Run the CLI as user `nobody` (setpriv or runuser), with the config readable as it is in
/// /etc; `None` when neither tool exists.
fn as_nobody(c: &Cluster, node: &str, args: &[&str]) -> Option<std::process::Output> {
    let n = c.node(node);
    let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", BIN]);
        cmd
    } else if Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--", BIN]);
        cmd
    } else {
        return None;
    };
    cmd.arg("-c")
        .arg(&c.cfg)
        .args(["--node", node, "--state-dir"])
        .arg(&n.state)
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir("/");
    Some(cmd.output().unwrap())
}

#[test]
fn backups_and_restore_are_refused_to_a_user_who_is_not_root() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "secret.key"), "old secret");
    c.start_all();
    c.wait_converged("start");
    write(&c.path("a", "secret.key"), "new secret");
    c.wait_converged("overwrite");
    assert_eq!(generations(&c, "b", "/srv/www/secret.key").len(), 1);
    // the config is world-readable as in /etc; the state dir is not
    chmod(c.dir.path(), 0o755);
    chmod(&c.cfg, 0o644);
    let dest = std::env::temp_dir().join(format!("cs-nobody-{}", std::process::id()));
    let _ = std::fs::remove_file(&dest);
    let Some(list) = as_nobody(&c, "b", &["backups", "/srv/www/secret.key"]) else {
        eprintln!("skipped: neither setpriv nor runuser");
        return;
    };
    let restore = as_nobody(
        &c,
        "b",
        &[
            "restore",
            "/srv/www/secret.key",
            "--to",
            dest.to_str().unwrap(),
        ],
    )
    .unwrap();
    let in_place = as_nobody(&c, "b", &["restore", "/srv/www/secret.key"]).unwrap();
    for (what, out) in [
        ("backups", &list),
        ("restore --to", &restore),
        ("restore", &in_place),
    ] {
        let (o, e) = texts(out);
        assert!(!out.status.success(), "{what} as nobody succeeded: {o}");
        assert!(e.contains("only root"), "{what}: a clear message: {e:?}");
        assert!(!o.contains("old secret") && !e.contains("old secret"));
    }
    assert!(!dest.exists(), "restore --to wrote {}", dest.display());
    assert_eq!(
        std::fs::read_to_string(c.path("b", "secret.key")).unwrap(),
        "new secret"
    );
}

#[test]
fn status_run_by_a_user_who_is_not_root_says_why_in_one_sentence() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    c.start("a");
    chmod(c.dir.path(), 0o755);
    chmod(&c.cfg, 0o644);
    let Some(st) = as_nobody(&c, "a", &["status"]) else {
        eprintln!("skipped: neither setpriv nor runuser");
        return;
    };
    let (o, e) = texts(&st);
    assert_eq!(st.status.code(), Some(1), "{o}{e}");
    // issue 11: "Permission denied (os error 13): Permission denied (os error 13)" and a
    // wrong hint "(run clustersync init first)"
    assert!(
        e.matches("Permission denied").count() <= 1 && !e.contains("init first"),
        "status as nobody: {e:?}"
    );
    assert!(e.contains("root"), "it says that root is needed: {e:?}");
}

#[test]
fn restore_generation_0_is_refused_and_an_in_place_restore_run_twice_changes_nothing() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "site.conf"), "v1\n");
    c.start_all();
    c.wait_converged("start");
    for v in ["v2\n", "v3\n"] {
        write(&c.path("a", "site.conf"), v);
        wait_until("the version on b", WAIT, || {
            std::fs::read_to_string(c.path("b", "site.conf"))
                .ok()
                .as_deref()
                == Some(v)
        });
    }
    let f = "/srv/www/site.conf";
    let before = generations(&c, "b", f);
    assert_eq!(before.len(), 2, "{before:?}");
    // on a, which made the changes, nothing is kept, and it says where to look
    let (on_a, _) = texts(&c.cli("a", &["backups", f]));
    assert!(
        on_a.contains("no kept versions") && on_a.contains("other nodes"),
        "{on_a}"
    );
    let out = c.cli("b", &["restore", f, "--generation", "0"]);
    let (_, e) = texts(&out);
    assert_eq!(out.status.code(), Some(2), "--generation 0: {e}");
    assert!(e.contains("generation"), "{e}");
    assert_eq!(
        std::fs::read_to_string(c.path("b", "site.conf")).unwrap(),
        "v3\n"
    );
    // restore generation 2 (v1) in place: it syncs, and what it replaced (v3) is kept last
    let out = c.cli("b", &["restore", f, "--generation", "2"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    wait_until("v1 everywhere", WAIT, || {
        std::fs::read_to_string(c.path("a", "site.conf"))
            .ok()
            .as_deref()
            == Some("v1\n")
    });
    let after_one = generations(&c, "b", f);
    assert_eq!(after_one.len(), 3, "{after_one:?}");
    assert_eq!(
        after_one[..2],
        before[..],
        "the numbers shown before stay valid"
    );
    // the same command again changes nothing
    let out = c.cli("b", &["restore", f, "--generation", "2"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_to_string(c.path("b", "site.conf")).unwrap(),
        "v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(c.path("a", "site.conf")).unwrap(),
        "v1\n"
    );
    assert_eq!(generations(&c, "b", f), after_one);
}

#[test]
fn status_exit_codes_in_sync_peer_down_group_stopped_conflict_and_no_daemon() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            proxies: true,
            group_extra: "conflict = \"manual\"".into(),
            ..Default::default()
        },
    );
    write(&c.path("a", "one"), "1");
    c.start_all();
    c.wait_converged("start");
    let code = |c: &Cluster| c.cli("a", &["status"]).status.code();
    wait_until("status 0 when in sync", WAIT, || code(&c) == Some(0));
    let (human, _) = texts(&c.cli("a", &["status"]));
    assert!(human.contains("1 file"), "human units: {human}");

    // a peer down -> 1
    c.stop("b");
    wait_until("status 1 with b down", WAIT, || code(&c) == Some(1));
    c.start("b");
    c.wait_connected();
    wait_until("status 0 again", WAIT, || code(&c) == Some(0));

    // a stopped group -> 1, and the human status says what to do
    let gp = c.path("a", "");
    let aside = gp.with_extension("away");
    std::fs::rename(&gp, &aside).unwrap();
    wait_until("status 1 with the group stopped", WAIT, || {
        code(&c) == Some(1)
    });
    let (stopped, _) = texts(&c.cli("a", &["status"]));
    assert!(stopped.contains("STOPPED"), "{stopped}");
    std::fs::rename(&aside, &gp).unwrap();
    wait_until("status 0 after the group resumed", WAIT, || {
        code(&c) == Some(0)
    });

    // an unresolved conflict under conflict = "manual" -> 3
    c.cut_off("b", "a");
    write(&c.path("a", "one"), "from a");
    write(&c.path("b", "one"), "from b, longer");
    std::thread::sleep(Duration::from_millis(300));
    c.node("b").proxy.as_ref().unwrap().heal();
    c.wait_connected();
    wait_until("status 3 with an unresolved conflict", WAIT, || {
        code(&c) == Some(3)
    });
    let out = c.cli("a", &["resolve", "/srv/www/one", "--keep", "b"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    wait_until("status 0 after resolve", WAIT, || code(&c) == Some(0));

    // no daemon -> 1, and it says so, with the time of the index (not the time of asking)
    c.stop("a");
    let stopped_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let out = c.cli("a", &["status"]);
    let (o, _) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{o}");
    assert!(
        o.contains("the daemon is not running (no daemon answers on"),
        "{o}"
    );
    let st = c.status("a").unwrap();
    assert_eq!(st["daemon"], false);
    let as_of = st["as_of"].as_str().unwrap_or_default().to_owned();
    assert!(
        !as_of.is_empty() && as_of <= stopped_at,
        "the index's own time, not the time of asking: as_of {as_of}, stopped at {stopped_at}"
    );
    assert!(
        o.contains(&format!("its index as last written at {as_of}")),
        "{o}"
    );
    // SPEC §5.6 / issue 11: "a stopped group says in status what happened and what to run"
    assert!(
        stopped.contains("clustersync "),
        "a stopped group says what to run:\n{stopped}"
    );
}

#[test]
fn check_config_refuses_what_the_daemon_refuses_and_warns_about_a_missing_group_path() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let cfg = c.cfg.clone();
    let good = std::fs::read_to_string(&cfg).unwrap();
    let ok = c.cli("a", &["check-config"]);
    assert_eq!(ok.status.code(), Some(0), "{}", texts(&ok).1);
    assert!(texts(&ok).0.contains("config OK"));

    // every refusal: check-config and daemon both exit 2, naming the problem
    let daemon = |c: &Cluster, node: &str| {
        let mut ch = Command::new(BIN)
            .arg("-c")
            .arg(&c.cfg)
            .args(["--node", node, "--state-dir"])
            .arg(&c.node(if node == "web9" { "a" } else { node }).state)
            .arg("daemon")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // a daemon that starts is stopped again after a while
        let t0 = std::time::Instant::now();
        while ch.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if ch.try_wait().unwrap().is_none() {
            unsafe_free_kill(ch.id(), "TERM");
        }
        let out = ch.wait_with_output().unwrap();
        (out.status.code(), texts(&out).1)
    };
    let check = |c: &Cluster, node: &str| {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(&c.cfg)
            .args(["--node", node, "--state-dir"])
            .arg(&c.node(if node == "web9" { "a" } else { node }).state)
            .arg("check-config")
            .output()
            .unwrap();
        (out.status.code(), texts(&out).0, texts(&out).1)
    };
    // 1. this node's id is not its key's
    let other_id = "ab".repeat(32);
    let a_id = good
        .split("[nodes.a]")
        .nth(1)
        .and_then(|s| s.split("id = \"").nth(1))
        .map(|s| s[..64].to_owned())
        .unwrap();
    std::fs::write(&cfg, good.replace(&a_id, &other_id)).unwrap();
    let (code, _, e) = check(&c, "a");
    assert_eq!(code, Some(2), "check-config with a wrong id: {e}");
    assert!(e.contains("id"), "{e}");
    let (code, e) = daemon(&c, "a");
    assert_eq!(code, Some(2), "daemon with a wrong id: {e}");
    // 2. no section for this node
    std::fs::write(&cfg, &good).unwrap();
    let (code, _, e) = check(&c, "web9");
    assert_eq!(code, Some(2), "check-config --node web9: {e}");
    assert!(e.contains("web9"), "{e}");
    let (code, e) = daemon(&c, "web9");
    assert_eq!(code, Some(2), "daemon --node web9: {e}");
    // 3. a group path that does not exist, and neither does its parent
    let srv = c.node("a").root.join("srv");
    std::fs::rename(&srv, srv.with_extension("away")).unwrap();
    let (code, o, e) = check(&c, "a");
    assert_eq!(code, Some(2), "check-config with no /srv: {o}{e}");
    assert!(e.contains("/srv/www"), "{e}");
    let (daemon_code, daemon_err) = daemon(&c, "a");
    // 4. the group path is missing but its parent exists: OK with a warning
    std::fs::rename(srv.with_extension("away"), &srv).unwrap();
    std::fs::remove_dir_all(c.path("a", "")).unwrap();
    let (code, o, e) = check(&c, "a");
    assert_eq!(code, Some(0), "{o}{e}");
    assert!(
        (o.clone() + &e).contains("warning") && (o.clone() + &e).contains("/srv/www"),
        "a warning about the missing group path: {o}{e}"
    );
    assert!(o.contains("config OK"), "{o}");
    // and the daemon starts then
    c.start("a");
    // SPEC §4: check-config checks what the daemon checks before it starts, "its group paths
    // exist or their parent does"; the daemon must not start on what check-config refused
    assert_eq!(
        daemon_code,
        Some(2),
        "check-config refused a group path whose parent does not exist, the daemon started: {daemon_err}"
    );
}

#[test]
fn sync_dry_run_with_a_daemon_prints_one_line_per_path_and_action_and_changes_nothing() {
    // watch = false: changes wait for sync or mark, so the daemon has something to show
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "watch = false".into(),
            ..Default::default()
        },
    );
    write(&c.path("a", "old"), "o");
    write(&c.path("a", "doomed"), "d");
    c.start_all();
    let out = c.cli("a", &["sync", "--timeout", "20s"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    c.wait_converged("start");

    write(&c.path("a", "new.txt"), "n");
    write(&c.path("a", "old"), "changed");
    std::fs::remove_file(c.path("a", "doomed")).unwrap();
    let out = c.cli("a", &["sync", "--dry-run", "--timeout", "20s"]);
    let (o, e) = texts(&out);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !c.path("b", "new.txt").exists(),
        "the dry run sent new.txt to b:\n{o}{e}"
    );
    assert!(
        c.path("b", "doomed").exists(),
        "the dry run deleted doomed on b:\n{o}{e}"
    );
    assert_eq!(out.status.code(), Some(0), "{e}");
    check_dry_run_lines(&o);
    for (what, path) in [("send", "new.txt"), ("send", "old"), ("delete", "doomed")] {
        assert!(
            o.lines()
                .any(|l| l.starts_with(what) && l.contains(&format!("/srv/www/{path}  ("))),
            "`{what} /srv/www/{path}` missing:\n{o}"
        );
    }
}

/// Every line is `ACTION PATH` (send, receive, delete, conflict), optionally followed by the
/// peers it goes to or comes from (`  (to b, c)`, `  (from a)`), each path once, no JSON and no
/// "in sync".
fn check_dry_run_lines(o: &str) {
    assert!(!o.contains('{'), "no JSON: {o}");
    assert!(
        !o.contains("in sync"),
        "a dry run does not claim to be in sync: {o}"
    );
    let lines: Vec<&str> = o.lines().collect();
    for l in &lines {
        let (what, path) = l.split_once(char::is_whitespace).unwrap_or(("", ""));
        let path = match path.rsplit_once("  (") {
            Some((p, peers)) if peers.ends_with(')') => {
                assert!(
                    peers.starts_with("to ") || peers.starts_with("from "),
                    "line {l:?} names its peers with a direction:\n{o}"
                );
                p
            }
            _ => path,
        };
        assert!(
            ["send", "receive", "delete", "conflict"].contains(&what)
                && (path.trim() == "/srv/www" || path.trim().starts_with("/srv/www/")),
            "line {l:?} is `ACTION PATH`:\n{o}"
        );
    }
    let mut sorted = lines.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), lines.len(), "each path once: {o}");
}

#[test]
fn sync_dry_run_without_a_daemon_prints_what_would_be_received_and_changes_nothing() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "old"), "o");
    write(&c.path("a", "doomed"), "d");
    c.start_all();
    c.wait_converged("start");
    c.stop("b");
    write(&c.path("a", "new.txt"), "n");
    write(&c.path("a", "old"), "changed");
    std::fs::remove_file(c.path("a", "doomed")).unwrap();
    wait_until("a to index its changes", WAIT, || {
        c.status("a").is_some_and(|s| {
            s["groups"][0]["files"] == 2 && s["peers"][0]["behind"].as_u64() >= Some(3)
        })
    });
    let before = c.tree("b");
    let out = c.cli("b", &["sync", "--dry-run", "--timeout", "20s"]);
    let (o, e) = texts(&out);
    assert_eq!(c.tree("b"), before, "the dry run changed b:\n{o}");
    assert_eq!(out.status.code(), Some(0), "{e}");
    check_dry_run_lines(&o);
    for (what, path) in [
        ("receive", "new.txt"),
        ("receive", "old"),
        ("delete", "doomed"),
    ] {
        assert!(
            o.lines()
                .any(|l| l.starts_with(what) && l.contains(&format!("/srv/www/{path}  ("))),
            "`{what} /srv/www/{path}` missing:\n{o}"
        );
    }
}

#[test]
fn mark_resolves_a_relative_path_against_the_working_directory() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "watch = false\nrescan = \"0\"".into(),
            ..Default::default()
        },
    );
    std::fs::create_dir_all(c.path("a", "sub")).unwrap();
    c.start_all();
    write(&c.path("a", "sub/page.html"), "p");
    let mark = |cwd: &Path, args: &[&str]| {
        Command::new(BIN)
            .arg("-c")
            .arg(&c.cfg)
            .args(["--node", "a", "--state-dir"])
            .arg(&c.node("a").state)
            .arg("mark")
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap()
    };
    let out = mark(&c.path("a", "sub"), &["page.html"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    wait_until("the marked file on b", WAIT, || {
        c.path("b", "sub/page.html").exists()
    });
    // `..` too
    write(&c.path("a", "top.html"), "t");
    let out = mark(&c.path("a", "sub"), &["../top.html"]);
    assert!(out.status.success(), "{}", texts(&out).1);
    wait_until("the ../ marked file on b", WAIT, || {
        c.path("b", "top.html").exists()
    });
    // outside every group: a plain message naming the path
    let out = mark(Path::new("/"), &["/etc/passwd"]);
    let (o, e) = texts(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        e.contains("/etc/passwd") && !e.contains("String("),
        "{o}{e}"
    );
}

#[test]
fn daemon_logs_have_no_colour_codes_and_a_transfer_of_many_files_is_logged_at_info() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    for i in 0..400 {
        write(&c.path("a", &format!("d/f{i:03}")), format!("{i}"));
    }
    let cfg = c.cfg.clone();
    // the daemons' own defaults: no NO_COLOR, no log filter; stderr is a file
    for n in ["a", "b"] {
        start_with(
            &mut c,
            n,
            Start {
                cfg: &cfg,
                harness_log: false,
                env: vec![],
            },
        );
    }
    c.wait_converged("400 files");
    wait_until("b's INFO line about the transfer", WAIT, || {
        !log_lines(&c, "b", &[" INFO ", "received", "from a"]).is_empty()
    });
    let line = log_lines(&c, "b", &[" INFO ", "received", "from a"]).join("\n");
    assert!(
        line.contains("400")
            || line
                .split_whitespace()
                .any(|w| w.parse::<u32>().is_ok_and(|n| n >= 100)),
        "files counted: {line}"
    );
    assert!(
        line.contains('B') && line.contains(" s"),
        "bytes and seconds: {line}"
    );
    for n in ["a", "b"] {
        assert!(
            !c.log(n).contains('\x1b'),
            "{n}'s log has escape codes:\n{}",
            c.log(n)
        );
        assert!(
            !c.log(n).contains("DEBUG"),
            "{n}: the default level is INFO"
        );
    }
}

#[test]
fn sync_dry_run_exits_as_sync_would_when_a_peer_is_down() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    c.start("a");
    c.start("b");
    write(&c.path("a", "new.txt"), "n");
    wait_until("b to have it", WAIT, || c.path("b", "new.txt").exists());
    // c has no daemon and its in-process dry run reaches a and b; a's daemon cannot reach c
    let out = c.cli("c", &["sync", "--dry-run", "--timeout", "5s"]);
    let (o, e) = texts(&out);
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert!(
        o.lines()
            .any(|l| l.starts_with("receive") && l.contains("/srv/www/new.txt  (from ")),
        "{o}"
    );
    let out = c.cli("a", &["sync", "--dry-run", "--timeout", "5s"]);
    let (o, e) = texts(&out);
    assert_eq!(
        out.status.code(),
        Some(4),
        "c is down, as `sync` would: {o}{e}"
    );
    assert!(e.contains("could not reach c"), "{e}");
    assert!(!c.path("c", "new.txt").exists());
}
