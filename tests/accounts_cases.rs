//! The eleven ways account sync broke in issue 20, and issue 22's two accounts points, each
//! reproduced as it was seen: three daemons, each node with its own root prefix, changes made
//! only with the real shadow-utils tools, concurrency forced by pausing a daemon (SIGSTOP) or
//! cutting its links at the harness's proxy. After each: what every node holds, that the four
//! files are byte-identical where the nodes' own (unmanaged) lines are, that `pwck -r`/`grpck
//! -r` are clean, and what `status`, `conflicts` and the audit log say. Needs root and
//! shadow-utils; skipped (with a note) otherwise.

#[path = "common/accounts.rs"]
mod acct;
mod common;

use acct::*;
use common::*;
use std::time::{Duration, Instant};

const ALL: [&str; 3] = ["a", "b", "c"];
const SECTION: &str = "uid_range = [2000, 2999]\npasswords = true\ncreate_home = false";

fn root(c: &Cluster, n: &str) -> std::path::PathBuf {
    c.node(n).root.clone()
}

fn pid(c: &Cluster, n: &str) -> u32 {
    c.node(n).child.as_ref().expect("running").id()
}

/// SIGSTOP a daemon: it notices nothing and sends nothing until [`resume`].
fn pause(c: &Cluster, n: &str) {
    unsafe_free_kill(pid(c, n), "STOP");
}

fn resume(c: &Cluster, n: &str) {
    unsafe_free_kill(pid(c, n), "CONT");
}

/// `status` exit code of a node.
fn status_code(c: &Cluster, n: &str) -> Option<i32> {
    c.cli(n, &["status"]).status.code()
}

/// Wait until the four files are byte-identical on `nodes` and `ok` holds for a's passwd and
/// group; each node clean for pwck/grpck.
fn wait_identical(c: &Cluster, nodes: &[&str], what: &str, ok: impl Fn(&str, &str) -> bool) {
    let mut last = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, WAIT, || {
            last = nodes.iter().map(|n| files(&root(c, n))).collect();
            last.iter().all(|f| *f == last[0]) && ok(&last[0][0], &last[0][2])
        })
    }));
    if r.is_err() {
        let shown: Vec<String> = nodes
            .iter()
            .zip(&last)
            .map(|(n, f)| format!("-- {n}:\n{}", f.join("--\n")))
            .collect();
        panic!("{what}: files differ:\n{}", shown.join(""));
    }
    for n in nodes {
        tools_check(&root(c, n)).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Append NIS compat lines to every node's passwd and group (new lines go before them).
fn with_nis(c: &Cluster) {
    for n in &c.nodes {
        let etc = n.root.join("etc");
        for (f, l) in [("passwd", "+::::::\n"), ("group", "+:::\n")] {
            let mut t = std::fs::read_to_string(etc.join(f)).unwrap();
            t.push_str(l);
            std::fs::write(etc.join(f), t).unwrap();
        }
    }
}

fn acct_lines(c: &Cluster, n: &str, kind: &str) -> Vec<serde_json::Value> {
    audit(c, n)
        .into_iter()
        .filter(|r| r["group"] == "@accounts" && r["kind"] == kind)
        .collect()
}

/// Issue 20, case 1: a deletion another node cannot apply (its `carol` is a different, local
/// account) is not a reason to close a link: no reconnect flood, no audit flood, and account
/// sync goes on (`dave` arrives). The same `usermod -u` out of the range run on all three nodes
/// at once is reported on each, floods nothing, and stops nothing.
#[test]
fn case01_what_a_node_cannot_apply_is_set_aside_never_a_flood() {
    if !can_run() {
        return;
    }
    let mut c = Cluster::new(&ALL, Opts::default());
    add_accounts(&c, SECTION);
    for n in ALL {
        let extra = if n == "b" {
            (
                "carol:x:1500:1500::/home/carol:/bin/sh\n",
                "carol:x:1500:\n",
            )
        } else {
            ("", "")
        };
        base(&root(&c, n), extra.0, extra.1, "");
    }
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(&a, "useradd", "-P", &["-u", "2005", "-U", "carol"], None);
    wait_until("b reports the collision", WAIT, || {
        acct_status(&c, "b")["not_applied"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|x| {
                    x.as_str()
                        .unwrap_or("")
                        .contains("local user \"carol\" (uid 1500)")
                })
            })
    });
    assert_eq!(status_code(&c, "b"), Some(1));
    tool(&a, "userdel", "-P", &["carol"], None);
    tool(&a, "useradd", "-P", &["-u", "2006", "-U", "dave"], None);
    wait_until("dave on b and c", WAIT, || {
        line(&b, "passwd", "dave").is_some() && line(&root(&c, "c"), "passwd", "dave").is_some()
    });
    // b's own carol is untouched, and the collision is gone with the managed carol
    assert_eq!(
        line(&b, "passwd", "carol").as_deref(),
        Some("carol:x:1500:1500::/home/carol:/bin/sh")
    );
    wait_accounts_in_sync(&c, &ALL);
    let log = c.log("b");
    assert!(!log.contains("closing the link"), "b closed a link");
    let connects = log.matches("connected (protocol").count();
    assert!(connects <= 4, "b reconnected {connects} times");
    assert!(
        audit(&c, "b").len() < 200,
        "b's audit log: {} lines",
        audit(&c, "b").len()
    );

    // the same usermod -u out of the range on every node at once
    tool(&a, "useradd", "-P", &["-u", "2010", "-U", "erin"], None);
    wait_until("erin everywhere", WAIT, || {
        ALL.iter()
            .all(|n| line(&root(&c, n), "passwd", "erin").is_some())
    });
    let t0 = Instant::now();
    let handles: Vec<_> = ALL
        .iter()
        .map(|n| {
            let r = root(&c, n);
            std::thread::spawn(move || tool(&r, "usermod", "-P", &["-u", "1507", "erin"], None))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for n in ALL {
        wait_until(
            &format!("{n} reports erin out of the managed set"),
            WAIT,
            || {
                acct_status(&c, n)["problems"].as_array().is_some_and(|l| {
                    l.iter().any(|x| {
                        x.as_str()
                            .unwrap_or("")
                            .contains("user \"erin\": uid 1507 is outside the managed set")
                    })
                })
            },
        );
        assert_eq!(
            line(&root(&c, n), "passwd", "erin").as_deref(),
            Some("erin:x:1507:2010::/home/erin:/bin/bash")
        );
    }
    tool(&a, "useradd", "-P", &["-u", "2011", "-U", "frank"], None);
    wait_until("frank everywhere", WAIT, || {
        ALL.iter()
            .all(|n| line(&root(&c, n), "passwd", "frank").is_some())
    });
    for n in ALL {
        assert!(!c.log(n).contains("closing the link"), "{n} closed a link");
        assert!(
            acct_lines(&c, n, "delete")
                .iter()
                .all(|r| r["path"] != "user/erin"),
            "{n} deleted erin"
        );
        assert!(audit(&c, n).len() < 300, "{n}: audit flood");
    }
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// Issue 20, case 2: `usermod -u` out of the range on one node is reported there (status exit 1)
/// and never turned into a deletion on the others.
#[test]
fn case02_leaving_the_range_is_reported_never_a_delete_elsewhere() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "useradd", "-P", &["-u", "2008", "-U", "fred"], None);
    wait_identical(&c, &ALL, "fred everywhere", |p, _| {
        p.contains("fred:x:2008:2008")
    });
    tool(&a, "usermod", "-P", &["-u", "5000", "fred"], None);
    wait_until("a reports fred", WAIT, || {
        acct_status(&c, "a")["problems"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
    });
    assert_eq!(status_code(&c, "a"), Some(1), "a says in sync");
    std::thread::sleep(Duration::from_secs(2));
    for n in ["b", "c"] {
        assert!(
            line(&root(&c, n), "passwd", "fred").is_some_and(|l| l.contains(":2008:")),
            "{n} lost fred"
        );
        assert!(acct_lines(&c, n, "delete").is_empty(), "{n}: a delete");
    }
}

/// Issue 20, case 3: a uid change inside the range reaches every node (no collision with the
/// node's own managed fred).
#[test]
fn case03_a_uid_change_inside_the_range_propagates() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "useradd", "-P", &["-u", "2008", "-U", "fred"], None);
    wait_identical(&c, &ALL, "fred everywhere", |p, _| {
        p.contains("fred:x:2008:2008")
    });
    tool(&a, "usermod", "-P", &["-u", "2018", "fred"], None);
    tool(&a, "groupmod", "-P", &["-g", "2018", "fred"], None);
    wait_identical(&c, &ALL, "the new uid and gid everywhere", |p, _| {
        p.contains("fred:x:2018:2018")
    });
    for n in ALL {
        assert!(
            acct_lines(&c, n, "collision").is_empty(),
            "{n}: a collision"
        );
    }
    wait_accounts_in_sync(&c, &ALL);
}

/// Issue 20, case 4: a node started over (its index gone) and `reset @accounts` join as new:
/// newer changes made elsewhere meanwhile (a shell, a deletion) win; nothing comes back.
#[test]
fn case04_a_node_started_over_never_overrides_newer_changes() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "useradd", "-P", &["-u", "2001", "-U", "bob"], None);
    tool(&a, "useradd", "-P", &["-u", "2002", "-U", "amy"], None);
    wait_identical(&c, &ALL, "bob and amy everywhere", |p, _| {
        p.contains("bob:x:") && p.contains("amy:x:")
    });
    for how in ["empty state", "reset @accounts"] {
        c.stop("c");
        tool(&a, "usermod", "-P", &["-s", "/bin/sh", "amy"], None);
        if how == "empty state" {
            tool(&a, "userdel", "-P", &["bob"], None);
        } else {
            tool(&a, "usermod", "-P", &["-c", "after reset", "amy"], None);
        }
        std::thread::sleep(Duration::from_millis(500));
        if how == "empty state" {
            std::fs::remove_file(c.node("c").state.join("index.redb")).unwrap();
        } else {
            let out = c.cli("c", &["reset", "@accounts"]);
            assert!(
                out.status.success(),
                "reset @accounts: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c.start("c");
        c.wait_connected();
        wait_identical(
            &c,
            &ALL,
            &format!("{how}: a's newer changes everywhere"),
            |p, _| {
                !p.contains("bob:x:") && p.contains("amy:x:2002:2002:") && p.contains(":/bin/sh\n")
            },
        );
        if how != "empty state" {
            wait_identical(&c, &ALL, "after reset", |p, _| p.contains("after reset"));
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            line(&root(&c, "b"), "passwd", "bob").is_none(),
            "{how}: bob came back"
        );
    }
    wait_accounts_in_sync(&c, &ALL);
}

/// Issue 20, case 5: a change made on c while its daemon was stopped is older than a later
/// change on a: the later one wins everywhere once c starts, and the loser is reported.
#[test]
fn case05_an_older_change_never_beats_a_newer_one() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, cn) = (root(&c, "a"), root(&c, "c"));
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-c", "first", "niden"],
        None,
    );
    wait_identical(&c, &ALL, "niden everywhere", |p, _| p.contains(":first:"));
    c.stop("c");
    tool(&cn, "usermod", "-P", &["-c", "older, on c", "niden"], None);
    std::thread::sleep(Duration::from_millis(1200));
    tool(&a, "usermod", "-P", &["-c", "newer, on a", "niden"], None);
    wait_until("a's change on b", WAIT, || {
        line(&root(&c, "b"), "passwd", "niden").is_some_and(|l| l.contains("newer, on a"))
    });
    c.start("c");
    c.wait_connected();
    wait_identical(&c, &ALL, "the newer change everywhere", |p, _| {
        p.contains(":newer, on a:")
    });
    std::thread::sleep(Duration::from_secs(1));
    wait_identical(&c, &ALL, "and it stays", |p, _| p.contains(":newer, on a:"));
    let out = c.cli("c", &["conflicts", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let listed = v["conflicts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|x| x["path"] == "user/niden" && x["winner"] == "a");
    assert!(listed, "c does not list its lost change: {v}");
    wait_accounts_in_sync(&c, &ALL);
}

/// Issue 20, case 6: a group that appears on another node (with another gid) strips no
/// membership: alice stays in docker on a, where the admin put her.
#[test]
fn case06_a_group_appearing_elsewhere_strips_no_membership() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(&a, "useradd", "-P", &["-u", "2001", "-U", "alice"], None);
    wait_until("alice everywhere", WAIT, || {
        ALL.iter()
            .all(|n| line(&root(&c, n), "passwd", "alice").is_some())
    });
    tool(&a, "groupadd", "-P", &["-g", "600", "docker"], None);
    tool(&a, "usermod", "-P", &["-aG", "docker", "alice"], None);
    tool(&b, "groupadd", "-P", &["-g", "601", "docker"], None);
    wait_until("alice in docker on b", WAIT, || {
        line(&b, "group", "docker").as_deref() == Some("docker:x:601:alice")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        line(&a, "group", "docker").as_deref(),
        Some("docker:x:600:alice")
    );
    for n in ["a", "b"] {
        tools_check(&root(&c, n)).unwrap();
    }
}

/// Issue 20, case 7: `userdel dan` on a and `usermod -s` of dan on b at once: the policy
/// (`newest`) keeps the modify, and dan comes back everywhere *with* its group; pwck is clean
/// on every node at the end.
#[test]
fn case07_delete_against_modify_never_leaves_a_user_without_its_group() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(&a, "useradd", "-P", &["-u", "2040", "-U", "dan"], None);
    wait_identical(&c, &ALL, "dan everywhere", |p, _| {
        p.contains("dan:x:2040:2040")
    });
    pause(&c, "b");
    tool(&a, "userdel", "-P", &["dan"], None);
    std::thread::sleep(Duration::from_millis(300));
    tool(&b, "usermod", "-P", &["-s", "/bin/sh", "dan"], None);
    resume(&c, "b");
    wait_identical(&c, &ALL, "dan and its group everywhere", |p, g| {
        p.contains("dan:x:2040:2040::/home/dan:/bin/sh") && g.contains("dan:x:2040:")
    });
    std::thread::sleep(Duration::from_secs(2));
    wait_identical(&c, &ALL, "and they stay", |p, g| {
        p.contains("dan:x:2040") && g.contains("dan:x:2040:")
    });
    // the other way round: the deletion is newer, so dan and its group go everywhere
    pause(&c, "b");
    tool(&b, "usermod", "-P", &["-s", "/bin/bash", "dan"], None);
    std::thread::sleep(Duration::from_millis(300));
    tool(&a, "userdel", "-P", &["dan"], None);
    resume(&c, "b");
    wait_identical(&c, &ALL, "dan and its group gone everywhere", |p, g| {
        !p.contains("dan:") && !g.contains("dan:")
    });
}

/// Issue 20, case 8: a user whose primary group is a system group (`users`, not managed) and
/// who joins `sudo`: b's gshadow line of `users` (hash and administrator `root`) is untouched, only
/// `sudo`'s member lists change, and status says in sync.
#[test]
fn case08_an_unmanaged_system_group_is_never_rewritten() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let b = root(&c, "b");
    let gs = read(&b, "gshadow").replace("users:*::", "users:$6$gsalt$GROUPHASHxyz:root:");
    std::fs::write(b.join("etc/gshadow"), gs).unwrap();
    c.start_all();
    let a = root(&c, "a");
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2020", "-g", "users", "-G", "sudo", "gina"],
        None,
    );
    wait_until("gina on b", WAIT, || {
        line(&b, "passwd", "gina").is_some()
            && line(&b, "group", "sudo").as_deref() == Some("sudo:x:27:gina")
    });
    assert_eq!(
        line(&b, "gshadow", "users").as_deref(),
        Some("users:$6$gsalt$GROUPHASHxyz:root:")
    );
    assert_eq!(line(&b, "gshadow", "sudo").as_deref(), Some("sudo:*::gina"));
    tools_check(&b).unwrap();
    tool(&a, "usermod", "-P", &["-c", "later", "gina"], None);
    wait_until("a later change on b", WAIT, || {
        line(&b, "passwd", "gina").is_some_and(|l| l.contains("later"))
    });
    wait_accounts_in_sync(&c, &ALL);
    assert_eq!(status_code(&c, "b"), Some(0));
}

/// Issue 20, case 9: `groupmod -n` on a keeps b's own members of the group (www-data).
#[test]
fn case09_a_group_rename_keeps_local_members() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(&a, "groupadd", "-P", &["-g", "2100", "webdev"], None);
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-G", "webdev", "amy"],
        None,
    );
    wait_until("webdev on b", WAIT, || {
        line(&b, "group", "webdev").as_deref() == Some("webdev:x:2100:amy")
    });
    tool(&b, "gpasswd", "-Q", &["-a", "www-data", "webdev"], None);
    wait_until("b's change kept", WAIT, || {
        line(&b, "group", "webdev").as_deref() == Some("webdev:x:2100:www-data,amy")
    });
    tool(&a, "groupmod", "-P", &["-n", "developers", "webdev"], None);
    // the deletion of webdev and the new group may arrive in one batch or in several (in any
    // order, on a busy machine): b ends with its own member kept either way
    let want = (
        Some("developers:x:2100:www-data,amy"),
        Some("developers:!::www-data,amy"),
        None,
    );
    let mut seen = (None, None, None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the rename on b, www-data kept", WAIT, || {
            seen = (
                line(&b, "group", "developers"),
                line(&b, "gshadow", "developers"),
                line(&b, "group", "webdev"),
            );
            (seen.0.as_deref(), seen.1.as_deref(), seen.2.as_deref()) == want
        })
    }));
    assert!(r.is_ok(), "b has {seen:?}, not {want:?}");
    wait_until("b in sync", WAIT, || status_code(&c, "b") == Some(0));
    tools_check(&b).unwrap();
}

/// Issue 20, case 10: a group named `dev@corp` (Debian accepts it) syncs; a malformed line of a
/// managed account is named in `status` (exit 1, file and line, no debug dump) and everything
/// else keeps syncing.
#[test]
fn case10_unreadable_accounts_are_reported_and_the_rest_syncs() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "groupadd", "-P", &["-g", "2300", "dev@corp"], None);
    wait_identical(&c, &ALL, "dev@corp everywhere", |_, g| {
        g.contains("dev@corp:x:2300:")
    });
    let mut p = read(&a, "passwd");
    p.push_str("broken:x:2400:2300:hand edited:/home/broken\n");
    std::fs::write(a.join("etc/passwd"), p).unwrap();
    wait_until("a names the line", WAIT, || {
        acct_status(&c, "a")["problems"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|x| {
                    let s = x.as_str().unwrap_or("");
                    s.contains("/etc/passwd line")
                        && s.contains("\"broken\"")
                        && s.contains("malformed")
                })
            })
    });
    assert_eq!(status_code(&c, "a"), Some(1));
    let st = String::from_utf8_lossy(&c.cli("a", &["status"]).stdout).to_string();
    assert!(st.contains("not synced: /etc/passwd line"), "{st}");
    assert!(
        !c.log("a").contains("ReadProblem {"),
        "a debug dump in the log"
    );
    tool(&a, "useradd", "-P", &["-u", "2401", "-U", "next"], None);
    wait_until("next everywhere", WAIT, || {
        ALL.iter()
            .all(|n| line(&root(&c, n), "passwd", "next").is_some())
    });
    assert!(line(&root(&c, "b"), "passwd", "broken").is_none());
}

/// Issue 20, case 11 (small form; the 5,000-user figures are in bench/): many users, groups and
/// memberships written at once (a replacement of the files) reach every node whole, with no
/// echo (no node takes what it received for a change of its own) and no lost member; the files
/// end byte-identical, new lines before the NIS lines; and a daemon stops within 5 s of SIGTERM
/// even while it applies such a batch.
#[test]
fn case11_a_bulk_replacement_converges_without_echo_or_lost_members() {
    if !can_run() {
        return;
    }
    let n: u32 = std::env::var("ACCOUNTS_BULK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    with_nis(&c);
    c.start_all();
    let a = root(&c, "a");
    let etc = a.join("etc");
    let mut passwd = PASSWD.to_string();
    let mut group = GROUP.to_string();
    let mut shadow = String::new();
    let mut gshadow = String::new();
    for l in PASSWD.lines() {
        shadow.push_str(&format!("{}:*:19700:0:99999:7:::\n", name_of(l)));
    }
    for l in GROUP.lines() {
        gshadow.push_str(&format!("{}:*::\n", name_of(l)));
    }
    let names: Vec<String> = (0..n).map(|i| format!("u{i:05}")).collect();
    for (i, u) in names.iter().enumerate() {
        let id = 2000 + i as u32;
        passwd.push_str(&format!("{u}:x:{id}:{id}::/home/{u}:/bin/bash\n"));
        shadow.push_str(&format!("{u}:!:20000:0:99999:7:::\n"));
        group.push_str(&format!("{u}:x:{id}:\n"));
        gshadow.push_str(&format!("{u}:!::\n"));
    }
    let all = names.join(",");
    let half = names
        .iter()
        .step_by(2)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    group.push_str(&format!("big:x:2900:{all}\nhalf:x:2901:{half}\n"));
    gshadow.push_str(&format!("big:!::{all}\nhalf:!::{half}\n"));
    passwd.push_str("+::::::\n");
    group.push_str("+:::\n");
    // like vipw: new files renamed into place, under the lock
    {
        let _lock =
            clustersync::accounts::lock::PwdLock::acquire(&etc, Duration::from_secs(15)).unwrap();
        for (f, t) in [
            ("passwd", &passwd),
            ("shadow", &shadow),
            ("group", &group),
            ("gshadow", &gshadow),
        ] {
            let tmp = etc.join(format!("{f}.edit"));
            std::fs::write(&tmp, t).unwrap();
            let m = std::fs::metadata(etc.join(f)).unwrap();
            std::fs::set_permissions(&tmp, m.permissions()).unwrap();
            std::os::unix::fs::chown(&tmp, Some(0), Some(std::os::unix::fs::MetadataExt::gid(&m)))
                .unwrap();
            std::fs::rename(&tmp, etc.join(f)).unwrap();
        }
    }
    let t0 = Instant::now();
    wait_identical(&c, &ALL, "the bulk everywhere", |p, g| {
        p.matches(":/bin/bash\n").count() > n as usize && g.contains(&format!("big:x:2900:{all}\n"))
    });
    eprintln!(
        "{n} users, 2 groups of {n} and {} members: every node in {:?}",
        n / 2,
        t0.elapsed()
    );
    let p = read(&root(&c, "b"), "passwd");
    assert!(
        p.ends_with(&format!(
            "{}:x:{}:{}::/home/{}:/bin/bash\n+::::::\n",
            names[n as usize - 1],
            2000 + n - 1,
            2000 + n - 1,
            names[n as usize - 1]
        )),
        "new lines before the NIS line"
    );
    wait_accounts_in_sync(&c, &ALL);
    for r in ["b", "c"] {
        let echo = acct_lines(&c, r, "local-change");
        assert!(
            echo.is_empty(),
            "{r} took {} received items for its own changes",
            echo.len()
        );
    }
    // SIGTERM while a node applies a bulk change: stopped within 5 s
    let mut g2 = read(&a, "group");
    let more: Vec<String> = names.iter().rev().cloned().collect();
    g2 = g2.replace(
        &format!("half:x:2901:{half}\n"),
        &format!("half:x:2901:{}\n", more.join(",")),
    );
    std::fs::write(a.join("etc/group"), g2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    c.stop("b");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "b took {:?} to stop",
        t.elapsed()
    );
}

/// Issue 22, point 6: the same user added on two nodes at once with different uids is a
/// conflict like any other: the change made last wins on every node (identical lines), the loser
/// is listed by `conflicts` with its uid, and `resolve user/NAME --keep NODE` (and `group/NAME`)
/// settles it by hand. With `conflict = "manual"`, the conflict stays open and `status` exits 3.
#[test]
fn issue22_6_the_same_user_added_twice_at_once_is_a_conflict_resolve_works() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    pause(&c, "b");
    tool(&a, "useradd", "-P", &["-u", "2050", "-U", "alice"], None);
    std::thread::sleep(Duration::from_millis(200));
    tool(&b, "useradd", "-P", &["-u", "2051", "-U", "alice"], None);
    resume(&c, "b");
    wait_identical(&c, &ALL, "b's alice (made last) everywhere", |p, g| {
        p.contains("alice:x:2051:2051:") && g.contains("alice:x:2051:")
    });
    let out = c.cli("a", &["conflicts"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("user/alice") && text.contains("uid 2050"),
        "{text}"
    );
    assert!(
        acct_lines(&c, "a", "conflict")
            .iter()
            .any(|r| r["path"] == "user/alice")
    );
    for k in ["group/alice", "user/alice"] {
        let out = c.cli("c", &["resolve", k, "--keep", "a"]);
        assert!(
            out.status.success(),
            "resolve {k}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_identical(&c, &ALL, "a's alice after resolve", |p, g| {
        p.contains("alice:x:2050:2050:") && g.contains("alice:x:2050:")
    });
    wait_accounts_in_sync(&c, &ALL);
}

#[test]
fn issue22_6_with_manual_an_account_conflict_stays_open_and_status_exits_3() {
    if !can_run() {
        return;
    }
    let mut c = cluster(
        &ALL,
        Opts::default(),
        &format!("{SECTION}\nconflict = \"manual\""),
    );
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(&a, "useradd", "-P", &["-u", "2060", "-U", "zoe"], None);
    wait_identical(&c, &ALL, "zoe everywhere", |p, _| p.contains("zoe:x:2060"));
    pause(&c, "b");
    tool(&a, "usermod", "-P", &["-s", "/bin/sh", "zoe"], None);
    tool(&b, "usermod", "-P", &["-s", "/bin/dash", "zoe"], None);
    resume(&c, "b");
    wait_until("a sees the open conflict", WAIT, || {
        status_code(&c, "a") == Some(3)
    });
    assert_eq!(acct_status(&c, "a")["conflicts"], 1);
    let out = c.cli("a", &["resolve", "user/zoe", "--keep", "b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_identical(&c, &ALL, "b's shell everywhere", |p, _| {
        p.contains("zoe:x:2060:2060::/home/zoe:/bin/dash")
    });
    wait_until("a in sync", WAIT, || status_code(&c, "a") == Some(0));
}

/// Files stay byte-identical on every node through a mix of changes, and new lines go before
/// NIS lines (SPEC §5.7).
#[test]
fn files_are_byte_identical_in_canonical_order() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    with_nis(&c);
    c.start_all();
    let (a, b, cn) = (root(&c, "a"), root(&c, "b"), root(&c, "c"));
    tool(&b, "useradd", "-P", &["-u", "2003", "-U", "zed"], None);
    tool(&a, "groupadd", "-P", &["-g", "2100", "ops"], None);
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-G", "ops,sudo", "amy"],
        None,
    );
    tool(
        &cn,
        "useradd",
        "-P",
        &["-u", "2002", "-U", "-G", "sudo", "bob"],
        None,
    );
    wait_identical(&c, &ALL, "all three users", |p, g| {
        p.contains("zed:")
            && p.contains("amy:")
            && p.contains("bob:")
            && g.contains("ops:x:2100:amy")
    });
    tool(&b, "gpasswd", "-Q", &["-a", "zed", "ops"], None);
    tool(&cn, "gpasswd", "-Q", &["-a", "bob", "ops"], None);
    wait_identical(&c, &ALL, "memberships", |_, g| {
        g.contains("ops:x:2100:amy,bob,zed") && g.contains("sudo:x:27:amy,bob\n")
    });
    let p = read(&a, "passwd");
    let tail: Vec<&str> = p.lines().rev().take(4).collect();
    assert_eq!(tail[0], "+::::::", "{p}");
    assert!(
        tail[3].starts_with("amy:") && tail[2].starts_with("bob:") && tail[1].starts_with("zed:"),
        "{p}"
    );
    wait_accounts_in_sync(&c, &ALL);
}

/// A user deleted on a node whose daemon is stopped, while another node adds it to a group and
/// then (after the deletion is known) modifies it: the modify wins, and the user comes back
/// everywhere *with* the membership the index has (chaos seed 109 found a node whose file
/// lacked it while every `status` said in sync). Then the same name added again by `useradd`
/// after a deletion that won starts with no groups, on every node.
#[test]
fn a_user_whose_deletion_lost_comes_back_with_its_memberships() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b, cn) = (root(&c, "a"), root(&c, "b"), root(&c, "c"));
    tool(&a, "groupadd", "-P", &["-g", "2101", "g1"], None);
    tool(&a, "useradd", "-P", &["-u", "2004", "-U", "u4"], None);
    wait_identical(&c, &ALL, "u4 and g1 everywhere", |p, g| {
        p.contains("u4:x:2004:2004") && g.contains("g1:x:2101:\n")
    });
    c.stop("b");
    tool(&b, "userdel", "-P", &["u4"], None);
    tool(&a, "usermod", "-P", &["-aG", "g1", "u4"], None);
    wait_until("u4 in g1 on c", WAIT, || {
        line(&cn, "group", "g1").as_deref() == Some("g1:x:2101:u4")
    });
    // a notices nothing until b's deletion reached c; then a's modify is the newer change
    pause(&c, "a");
    c.start("b");
    wait_until("b's deletion on c", WAIT, || {
        line(&cn, "passwd", "u4").is_none()
    });
    std::thread::sleep(Duration::from_millis(1100));
    tool(&a, "usermod", "-P", &["-s", "/bin/sh", "u4"], None);
    resume(&c, "a");
    wait_identical(&c, &ALL, "u4 back everywhere, in g1", |p, g| {
        p.contains("u4:x:2004:2004::/home/u4:/bin/sh") && g.contains("g1:x:2101:u4\n")
    });
    wait_accounts_in_sync(&c, &ALL);
    std::thread::sleep(Duration::from_secs(1));
    wait_identical(&c, &ALL, "and it stays", |_, g| {
        g.contains("g1:x:2101:u4\n")
    });

    // b adds u4 to g2 while stopped; a deletes u4 later: u4 goes everywhere, and so does its
    // membership of g1; the concurrent add to g2 survives in the index only (no file has it)
    tool(&a, "groupadd", "-P", &["-g", "2102", "g2"], None);
    wait_identical(&c, &ALL, "g2 everywhere", |_, g| g.contains("g2:x:2102:\n"));
    c.stop("b");
    tool(&b, "usermod", "-P", &["-aG", "g2", "u4"], None);
    std::thread::sleep(Duration::from_millis(1100));
    tool(&a, "userdel", "-P", &["u4"], None);
    wait_until("u4 gone from c", WAIT, || {
        line(&cn, "passwd", "u4").is_none()
    });
    c.start("b");
    wait_identical(&c, &ALL, "u4 gone everywhere", |p, g| {
        !p.contains("u4:") && g.contains("g1:x:2101:\n") && g.contains("g2:x:2102:\n")
    });
    // a new u4 (the name used again) starts with no groups on every node: the nodes that
    // apply it do not hand it the old u4's membership of g2
    tool(&cn, "useradd", "-P", &["-u", "2005", "-U", "u4"], None);
    let no_groups = |p: &str, g: &str| {
        p.contains("u4:x:2005:2005") && g.contains("g1:x:2101:\n") && g.contains("g2:x:2102:\n")
    };
    wait_identical(&c, &ALL, "the new u4 everywhere, in no group", no_groups);
    std::thread::sleep(Duration::from_secs(1));
    wait_identical(&c, &ALL, "and it stays", no_groups);
    wait_accounts_in_sync(&c, &ALL);
}
