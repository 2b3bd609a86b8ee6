//! Account sync end to end (SPEC §3 `[accounts]`, §5.7; issue 9): real daemons, each node with
//! its own root prefix holding a Debian-like `etc/{passwd,group,shadow,gshadow}`, changed only
//! with the real shadow-utils tools (`useradd -P`, `usermod -P`, `userdel -P`, `groupadd -P`,
//! `groupdel -P`, `gpasswd -Q`, `chpasswd -R`). After every step: the managed accounts are the
//! same on every node, unmanaged lines are byte-identical, the four files keep their modes and
//! owners, and `pwck -r`/`grpck -r` find nothing. Needs root and shadow-utils; skipped (with a
//! note) otherwise.

#[path = "common/accounts.rs"]
mod acct;
mod common;

use acct::*;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

const ALL: [&str; 3] = ["a", "b", "c"];
const SECTION: &str = "uid_range = [2000, 2999]\npasswords = true\ncreate_home = true";

fn root(c: &Cluster, n: &str) -> std::path::PathBuf {
    c.node(n).root.clone()
}

/// `(mode, uid, gid)` of a path.
fn owner_mode(p: &std::path::Path) -> Option<(u32, u32, u32)> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
}

/// No node's log or audit log holds `secret`.
fn never_logged(c: &Cluster, secret: &str) {
    for n in &c.nodes {
        assert!(
            !c.log(&n.name).contains(secret),
            "{}: a password hash is in the daemon log",
            n.name
        );
        assert!(
            !audit_text(c, &n.name).contains(secret),
            "{}: a password hash is in the audit log",
            n.name
        );
    }
}

/// Create, modify, delete with the tools on different nodes: each change reaches every node with
/// the same ids, shell, home, gecos, memberships and hash; homes are made from skel and never
/// deleted; unmanaged lines, modes and owners stay; backups are kept; status counts.
#[test]
fn tool_changes_reach_every_node() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let cc = c.cli("a", &["check-config"]);
    let out = String::from_utf8_lossy(&cc.stdout).to_string();
    assert!(
        cc.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    assert!(
        out.contains("2000-2999") && out.contains("accounts"),
        "check-config does not print the managed set:\n{out}"
    );
    let initial: Vec<Vec<String>> = ALL.iter().map(|n| files(&root(&c, n))).collect();
    let keep = Keeper::new(&c);
    c.start_all();
    for n in ALL {
        let a = acct_status(&c, n);
        assert_eq!(
            (a["users"].as_u64(), a["groups"].as_u64()),
            (Some(0), Some(0)),
            "{n}: {a}"
        );
    }

    // create on a
    let (a, b, cn) = (root(&c, "a"), root(&c, "b"), root(&c, "c"));
    tool(&a, "groupadd", "-P", &["-g", "2100", "webdev"], None);
    tool(
        &a,
        "useradd",
        "-P",
        &[
            "-m",
            "-u",
            "2001",
            "-U",
            "-s",
            "/bin/bash",
            "-c",
            "Ni Den",
            "-G",
            "webdev,users",
            "niden",
        ],
        None,
    );
    let users = ["niden"];
    let groups = ["niden", "webdev"];
    wait_accounts(&c, &ALL, "create reaches b and c", &users, &groups, |v| {
        v.contains("niden:x:2001:2001:Ni Den:/home/niden:/bin/bash")
            && v.contains("member of [\"users\", \"webdev\"]")
            && v.contains("webdev:x:2100:")
    });
    keep.check(&c, "create", &["niden", "webdev", "users"]);
    for n in ["b", "c"] {
        let r = root(&c, n);
        for f in FILES {
            assert!(
                r.join("etc").join(format!("{f}-")).exists(),
                "{n}: no {f}- backup"
            );
        }
        assert_eq!(
            read(&r, "passwd-"),
            PASSWD,
            "{n}: passwd- holds the previous content"
        );
        assert_eq!(
            owner_mode(&r.join("home/niden")),
            Some((0o700, 2001, 2001)),
            "{n}: home made with mode 0700, owned by the user"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("home/niden/.bashrc"))
                .ok()
                .as_deref(),
            Some("# ~/.bashrc from skel\n"),
            "{n}: skel copied"
        );
        assert_eq!(
            owner_mode(&r.join("home/niden/.config/app.conf")).map(|m| (m.1, m.2)),
            Some((2001, 2001)),
            "{n}: skel files owned by the user"
        );
    }
    wait_accounts_in_sync(&c, &ALL);
    for n in ALL {
        let s = acct_status(&c, n);
        assert_eq!(
            (s["users"].as_u64(), s["groups"].as_u64()),
            (Some(1), Some(2)),
            "{n}: status counts one user and two groups: {s}"
        );
        assert_eq!(s["not_applied"], serde_json::json!([]), "{n}: {s}");
    }

    // modify on b: shell, gecos, a supplementary group (unmanaged `sudo`)
    tool(
        &b,
        "usermod",
        "-P",
        &["-s", "/bin/sh", "-c", "Niden,Room 1", "niden"],
        None,
    );
    tool(&b, "usermod", "-P", &["-aG", "sudo", "niden"], None);
    wait_accounts(&c, &ALL, "usermod from b", &users, &groups, |v| {
        v.contains("niden:x:2001:2001:Niden,Room 1:/home/niden:/bin/sh")
            && v.contains("member of [\"sudo\", \"users\", \"webdev\"]")
    });
    keep.check(&c, "usermod", &["niden", "webdev", "users", "sudo"]);

    // a password hash from c
    let hash = "$6$saltsalt$HASHFROMCxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    tool(
        &cn,
        "chpasswd",
        "-R",
        &["-e"],
        Some(&format!("niden:{hash}\n")),
    );
    wait_accounts(&c, &ALL, "chpasswd from c", &users, &groups, |v| {
        v.contains(&format!("niden:{hash}:"))
    });
    // a membership removed on a, with gpasswd
    tool(&a, "gpasswd", "-Q", &["-d", "niden", "users"], None);
    wait_accounts(&c, &ALL, "gpasswd -d from a", &users, &groups, |v| {
        v.contains("member of [\"sudo\", \"webdev\"]")
    });
    keep.check(
        &c,
        "chpasswd and gpasswd",
        &["niden", "webdev", "users", "sudo"],
    );
    never_logged(&c, "HASHFROMC");

    // delete: the user on a (with its own group), the group on b
    tool(&a, "userdel", "-P", &["niden"], None);
    wait_accounts(&c, &ALL, "userdel from a", &users, &groups, |v| {
        v.contains("passwd None") && v.contains("group None") && v.contains("\"webdev:x:2100:\"")
    });
    tool(&b, "groupdel", "-P", &["webdev"], None);
    wait_accounts(&c, &ALL, "groupdel from b", &users, &groups, |v| {
        !v.contains("webdev:")
    });
    keep.check(&c, "userdel and groupdel", &["niden", "webdev"]);
    for n in ALL {
        let r = root(&c, n);
        assert!(
            r.join("home/niden/.bashrc").exists(),
            "{n}: a home is never deleted"
        );
    }
    // everything is back as it was, byte for byte, on every node
    for (n, before) in ALL.iter().zip(&initial) {
        let now = files(&root(&c, n));
        for ((f, b), a) in FILES.iter().zip(before).zip(&now) {
            assert_eq!(a, b, "{n}: {f} is not back to its first bytes");
        }
    }
    wait_accounts_in_sync(&c, &ALL);
    for n in ALL {
        let s = acct_status(&c, n);
        assert_eq!(
            (s["users"].as_u64(), s["groups"].as_u64()),
            (Some(0), Some(0)),
            "{n}: {s}"
        );
    }
    let kinds: Vec<String> = audit(&c, "b")
        .iter()
        .filter(|r| r["group"] == "@accounts")
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        kinds.iter().any(|k| k == "apply user/niden")
            && kinds.iter().any(|k| k == "delete user/niden"),
        "b's audit log: {kinds:?}"
    );
    never_logged(&c, "HASHFROMC");
}

/// `passwords = false`: a new user's shadow line on the peers is locked (`!`, not the origin's
/// hash), a peer keeps its own hash when the user changes elsewhere, no hash is logged; homes
/// are made with `HOME_MODE` from login.defs when it is set, 0700 otherwise.
#[test]
fn without_passwords_peers_lock_new_users_and_keep_their_own_hash() {
    if !can_run() {
        return;
    }
    let mut c = cluster(
        &ALL,
        Opts::default(),
        "uid_range = [2000, 2999]\npasswords = false\ncreate_home = true",
    );
    base(&root(&c, "b"), "", "", "HOME_MODE 0750\n");
    let keep = Keeper::new(&c);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    tool(
        &a,
        "useradd",
        "-P",
        &[
            "-m",
            "-u",
            "2001",
            "-U",
            "-p",
            "$6$asalt$AHASHxxxxxxxxxxxxxxxxx",
            "niden",
        ],
        None,
    );
    let users = ["niden"];
    let groups = ["niden"];
    // the peers agree with each other on everything (hashes included), and with a on all but
    // the hash
    wait_accounts(
        &c,
        &["b", "c"],
        "new user on b and c",
        &users,
        &groups,
        |v| v.contains("niden:x:2001:2001::/home/niden:"),
    );
    for n in ["b", "c"] {
        let r = root(&c, n);
        assert_eq!(
            accounts_view(&r, &users, &groups, false),
            accounts_view(&a, &users, &groups, false),
            "{n} and a differ beyond the hash"
        );
        let sp = line(&r, "shadow", "niden").unwrap_or_default();
        assert!(sp.starts_with("niden:!:"), "{n}: not locked: {sp}");
    }
    keep.check(&c, "useradd", &["niden"]);
    // homes are made right after the account files are written
    wait_until("the homes on b and c", WAIT, || {
        owner_mode(&b.join("home/niden")).is_some()
            && owner_mode(&root(&c, "c").join("home/niden")).is_some()
    });
    assert_eq!(
        owner_mode(&b.join("home/niden")),
        Some((0o750, 2001, 2001)),
        "b: HOME_MODE 0750 from its login.defs"
    );
    assert_eq!(
        owner_mode(&root(&c, "c").join("home/niden")),
        Some((0o700, 2001, 2001)),
        "c: 0700 without HOME_MODE"
    );

    // b sets its own password; a changes the gecos: b keeps its hash, c stays locked
    tool(
        &b,
        "chpasswd",
        "-R",
        &["-e"],
        Some("niden:$6$bsalt$BHASHxxxxxxxxxxxxxxxxx\n"),
    );
    tool(&a, "usermod", "-P", &["-c", "changed on a", "niden"], None);
    wait_until("the gecos from a on b and c", WAIT, || {
        ["b", "c"].iter().all(|n| {
            line(&root(&c, n), "passwd", "niden").is_some_and(|l| l.contains(":changed on a:"))
        })
    });
    // and nothing more comes (a second for any late change to land)
    std::thread::sleep(Duration::from_millis(1500));
    let sp_b = line(&b, "shadow", "niden").unwrap_or_default();
    assert!(
        sp_b.starts_with("niden:$6$bsalt$BHASH"),
        "b lost its own hash: {sp_b}"
    );
    let sp_c = line(&root(&c, "c"), "shadow", "niden").unwrap_or_default();
    assert!(sp_c.starts_with("niden:!:"), "c: {sp_c}");
    let sp_a = line(&a, "shadow", "niden").unwrap_or_default();
    assert!(
        sp_a.starts_with("niden:$6$asalt$AHASH"),
        "a lost its own hash: {sp_a}"
    );
    keep.check(&c, "chpasswd on b, usermod on a", &["niden"]);
    for secret in ["AHASH", "BHASH"] {
        never_logged(&c, secret);
    }
    wait_accounts_in_sync(&c, &ALL);
}

/// Two nodes add different users (eight each, in a burst; and a third a group) at the same moment: every node ends up
/// with all of them.
#[test]
fn concurrent_adds_on_two_nodes_are_both_kept() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let keep = Keeper::new(&c);
    c.start_all();
    let (a, b, cn) = (root(&c, "a"), root(&c, "b"), root(&c, "c"));
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..8 {
                let (u, id) = (format!("a{i}"), format!("{}", 2001 + i));
                tool(
                    &a,
                    "useradd",
                    "-P",
                    &["-u", &id, "-U", "-s", "/bin/bash", &u],
                    None,
                );
            }
        });
        s.spawn(|| {
            for i in 0..8 {
                let (u, id) = (format!("b{i}"), format!("{}", 2101 + i));
                tool(&b, "useradd", "-P", &["-u", &id, "-U", &u], None);
            }
        });
        s.spawn(|| tool(&cn, "groupadd", "-P", &["-g", "2200", "ops"], None));
    });
    let names: Vec<String> = (0..8)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    let users: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut groups = users.clone();
    groups.push("ops");
    wait_accounts(
        &c,
        &ALL,
        "all sixteen users and the group everywhere",
        &users,
        &groups,
        |v| !v.contains("None"),
    );
    keep.check(&c, "concurrent adds", &groups);
    wait_accounts_in_sync(&c, &ALL);
    for n in ALL {
        let s = acct_status(&c, n);
        assert_eq!(
            (s["users"].as_u64(), s["groups"].as_u64()),
            (Some(16), Some(17)),
            "{n}: {s}"
        );
    }
}

/// The same user changed on both sides of a partition: when it heals, every node converges to
/// the change made last (`newest`), and `conflicts --json` lists it under `@accounts`.
#[test]
fn the_same_user_changed_on_both_sides_of_a_partition_newest_wins() {
    if !can_run() {
        return;
    }
    let mut c = cluster(
        &ALL,
        Opts {
            proxies: true,
            ..Default::default()
        },
        SECTION,
    );
    let keep = Keeper::new(&c);
    c.start_all();
    let (a, cn) = (root(&c, "a"), root(&c, "c"));
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-c", "first", "niden"],
        None,
    );
    let users = ["niden"];
    let groups = ["niden"];
    wait_accounts(&c, &ALL, "niden everywhere", &users, &groups, |v| {
        v.contains(":first:")
    });
    c.cut_off("c", "a");
    c.cut_off("c", "b");
    tool(&a, "usermod", "-P", &["-c", "older, from a", "niden"], None);
    wait_accounts(&c, &["a", "b"], "a's change on b", &users, &groups, |v| {
        v.contains(":older, from a:")
    });
    std::thread::sleep(Duration::from_millis(300));
    tool(
        &cn,
        "usermod",
        "-P",
        &["-c", "newer, from c", "-s", "/bin/sh", "niden"],
        None,
    );
    std::thread::sleep(Duration::from_millis(300));
    c.node("c").proxy.as_ref().unwrap().heal();
    c.wait_connected();
    wait_accounts(
        &c,
        &ALL,
        "the newest change everywhere",
        &users,
        &groups,
        |v| v.contains("niden:x:2001:2001:newer, from c:/home/niden:/bin/sh"),
    );
    keep.check(&c, "partition healed", &["niden"]);
    // the files are written before the commit that records the conflict: wait for a's record
    let listed_on = |n: &str| -> bool {
        let out = c.cli(n, &["conflicts", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["conflicts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["group"] == "@accounts")
    };
    wait_until("the losing node a lists the conflict", WAIT, || {
        listed_on("a")
    });
    // every node's list, to report which ones show it
    let mut listed = Vec::new();
    for n in ALL {
        let out = c.cli(n, &["conflicts", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(x) = v["conflicts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["group"] == "@accounts")
        {
            assert_eq!(x["path"], "user/niden", "{n}: {x}");
            assert_eq!(x["nodes"], serde_json::json!(["a", "c"]), "{n}: {x}");
            assert_eq!(x["resolved"], true, "{n}: {x}");
            listed.push(n);
        }
    }
    assert!(
        listed.contains(&"a"),
        "the losing node a does not list the conflict (listed on {listed:?})"
    );
    wait_accounts_in_sync(&c, &ALL);
}

/// A managed account whose uid (or name) a different local, unmanaged account holds on one node
/// is not applied there: reported in status, audit, and an ERROR line naming both; that node's
/// files are untouched; the other nodes are unaffected. Once the administrator moves the local
/// account away, it is applied. With `create_home = false`, no home is made.
#[test]
fn a_collision_is_set_aside_reported_and_settled_by_the_admin() {
    if !can_run() {
        return;
    }
    let mut c = cluster(
        &ALL,
        Opts::default(),
        "users = [\"niden\"]\nuid_range = [2000, 2999]\ncreate_home = false",
    );
    // c: a local user on uid 1500 (unmanaged: not named, outside the range)
    base(
        &root(&c, "c"),
        "carol:x:1500:1500:Carol:/home/carol:/bin/bash\n",
        "carol:x:1500:\n",
        "",
    );
    // b: a local user named webapp on another uid
    base(
        &root(&c, "b"),
        "webapp:x:1002:1002::/home/webapp:/bin/sh\n",
        "webapp:x:1002:\n",
        "",
    );
    let keep = Keeper::new(&c);
    let c_before = files(&root(&c, "c"));
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "useradd", "-P", &["-u", "1500", "-U", "niden"], None);
    tool(&a, "useradd", "-P", &["-u", "2002", "-U", "webapp"], None);
    // b gets niden, c gets webapp
    wait_until("niden on b, webapp on c", WAIT, || {
        line(&root(&c, "b"), "passwd", "niden") == line(&a, "passwd", "niden")
            && line(&root(&c, "c"), "passwd", "webapp") == line(&a, "passwd", "webapp")
    });
    // c: niden (uid 1500 = carol) is set aside and reported
    wait_until("c reports the collision in status", WAIT, || {
        acct_status(&c, "c")["not_applied"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|x| {
                    let x = x.as_str().unwrap_or("");
                    x.contains("niden") && x.contains("carol")
                })
            })
    });
    let st = acct_status(&c, "c");
    assert_eq!(st["in_sync"], false, "c: {st}");
    let log = c.log("c");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("niden") && l.contains("carol")),
        "c: no ERROR line naming both accounts"
    );
    let aud = audit(&c, "c");
    assert!(
        aud.iter()
            .any(|r| r["kind"] == "collision" && r["path"] == "user/niden"),
        "c: no collision in the audit log: {aud:?}"
    );
    assert_eq!(line(&root(&c, "c"), "passwd", "niden"), None);
    // c's files: carol's lines and everything else as before; only webapp added
    let now = files(&root(&c, "c"));
    for ((f, b), n) in FILES.iter().zip(&c_before).zip(&now) {
        kept_lines(f, b, n, &[]).unwrap();
        assert!(!n.contains("niden"), "c: {f} names niden");
    }
    // b: webapp collides by name with the local one
    wait_until("b reports webapp", WAIT, || {
        acct_status(&c, "b")["not_applied"]
            .as_array()
            .is_some_and(|l| {
                l.iter()
                    .any(|x| x.as_str().unwrap_or("").contains("webapp"))
            })
    });
    assert_eq!(
        line(&root(&c, "b"), "passwd", "webapp").as_deref(),
        Some("webapp:x:1002:1002::/home/webapp:/bin/sh"),
        "b's own webapp untouched"
    );
    // a is unaffected
    let sa = acct_status(&c, "a");
    assert_eq!(sa["not_applied"], serde_json::json!([]), "a: {sa}");
    keep.check(&c, "collisions", &["niden", "webapp"]);
    assert!(
        !root(&c, "b").join("home/niden").exists(),
        "create_home = false made a home"
    );
    // the conflict is visible to `conflicts --json` too (issue 9: status, conflicts, audit, log)
    let out = c.cli("c", &["conflicts", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let in_conflicts = v["conflicts"]
        .as_array()
        .is_some_and(|l| l.iter().any(|x| x["group"] == "@accounts"));

    // the administrator of c moves carol to another uid: niden is applied on the next try
    let cn = root(&c, "c");
    tool(&cn, "groupmod", "-P", &["-g", "1600", "carol"], None);
    // (groupmod -g also moves carol's primary gid in passwd; `usermod -P -g` cannot find
    // groups under a prefix with this shadow-utils)
    tool(&cn, "usermod", "-P", &["-u", "1600", "carol"], None);
    wait_until("niden applied on c once carol moved", WAIT, || {
        line(&cn, "passwd", "niden") == line(&a, "passwd", "niden")
            && line(&cn, "group", "niden") == line(&a, "group", "niden")
    });
    wait_until("c's status clear", WAIT, || {
        acct_status(&c, "c")["not_applied"] == serde_json::json!([])
    });
    tools_check(&cn).unwrap();
    assert!(
        in_conflicts,
        "c's collision is not listed by `conflicts --json` (issue 9 asks for it there too): {v}"
    );
}

/// A daemon stopped while accounts change elsewhere (and on its own node) catches up when it
/// starts: it applies what it missed and sends what was done on it meanwhile.
#[test]
fn a_stopped_node_catches_up_both_ways_at_start() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let keep = Keeper::new(&c);
    c.start_all();
    let (a, b, cn) = (root(&c, "a"), root(&c, "b"), root(&c, "c"));
    tool(&a, "useradd", "-P", &["-u", "2001", "-U", "niden"], None);
    let users = ["niden", "alice", "carl"];
    let groups = ["niden", "alice", "carl", "ops"];
    wait_accounts(&c, &ALL, "niden everywhere", &["niden"], &["niden"], |v| {
        !v.contains("None")
    });
    c.stop("c");
    tool(&a, "useradd", "-P", &["-u", "2002", "-U", "alice"], None);
    tool(
        &b,
        "usermod",
        "-P",
        &["-c", "while c was down", "niden"],
        None,
    );
    tool(&cn, "useradd", "-P", &["-u", "2003", "-U", "carl"], None);
    tool(&cn, "groupadd", "-P", &["-g", "2100", "ops"], None);
    tool(&cn, "gpasswd", "-Q", &["-a", "carl", "ops"], None);
    wait_accounts(
        &c,
        &["a", "b"],
        "a and b agree while c is down",
        &users[..2],
        &groups[..2],
        |v| v.contains(":while c was down:") && v.contains("alice:x:2002"),
    );
    c.start("c");
    c.wait_connected();
    wait_accounts(
        &c,
        &ALL,
        "c caught up, and its changes sent",
        &users,
        &groups,
        |v| {
            !v.contains("None") && v.contains(":while c was down:") && v.contains("ops:x:2100:carl")
        },
    );
    keep.check(&c, "catch-up", &groups);
    // no node took what it received (or its own unchanged files at start) for a change of its own
    for (n, own) in [
        (
            "a",
            &["user/niden", "group/niden", "user/alice", "group/alice"][..],
        ),
        ("b", &["user/niden"][..]),
        (
            "c",
            &["user/carl", "group/carl", "group/ops", "members/ops"][..],
        ),
    ] {
        let theirs: Vec<String> = audit(&c, n)
            .iter()
            .filter(|r| r["group"] == "@accounts" && r["kind"] == "local-change")
            .filter_map(|r| r["path"].as_str().map(String::from))
            .filter(|p| !own.contains(&p.as_str()))
            .collect();
        assert!(
            theirs.is_empty(),
            "{n}: changes of its own it did not make: {theirs:?}"
        );
    }
    wait_accounts_in_sync(&c, &ALL);
}

/// A file owned by a user arrives on b before b has the user (b's account files are locked by
/// a tool for a while): b's copy has the user's uid/gid, and still has it once the user has
/// arrived; the file's owner by name changing from unknown to known on b is not a new version
/// of the file (nothing travels back, no conflict). The daemons resolve owners through their
/// own root's account files here (see [`start_with_own_accounts`]), as on a real node.
#[test]
fn a_file_that_arrives_before_its_owner_gets_the_right_owner() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let own = ALL.iter().all(|n| start_with_own_accounts(&mut c, n));
    if !own {
        for n in ALL {
            if c.node(n).child.is_none() {
                c.start(n);
            }
        }
    }
    c.wait_connected();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    // a tool on b holds passwd.lock: b cannot apply accounts for now
    let mut holder = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(b.join("etc/passwd.lock"), format!("{}\0", holder.id())).unwrap();
    tool(&a, "groupadd", "-P", &["-g", "2100", "webdev"], None);
    tool(
        &a,
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-G", "webdev", "niden"],
        None,
    );
    // give a's daemon the moment to see its new accounts before the file (its owner cache)
    std::thread::sleep(Duration::from_millis(300));
    let f = c.path("a", "owned.txt");
    write(&f, "niden's file\n");
    std::os::unix::fs::chown(&f, Some(2001), Some(2100)).unwrap();
    let on_b = c.path("b", "owned.txt");
    wait_until("the file on b", WAIT, || on_b.exists());
    std::thread::sleep(Duration::from_millis(200));
    let early = owner_mode(&on_b);
    let user_was_there = line(&b, "passwd", "niden").is_some();
    // the tool is done: b applies the user
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = std::fs::remove_file(b.join("etc/passwd.lock"));
    wait_accounts(
        &c,
        &ALL,
        "niden reaches b",
        &["niden"],
        &["niden", "webdev"],
        |v| !v.contains("None"),
    );
    c.wait_converged("the file and its owner");
    assert!(
        !user_was_there,
        "the user reached b before the file: the order was not tested"
    );
    assert_eq!(
        owner_mode(&on_b).map(|m| (m.1, m.2)),
        Some((2001, 2100)),
        "b's copy is not owned by niden:webdev (before the user arrived: {early:?})"
    );
    // a change of the file on a still arrives with its owner
    write(&f, "niden's file, v2\n");
    c.wait_converged("v2");
    std::thread::sleep(Duration::from_millis(1500));
    c.wait_converged("v2, settled");
    wait_accounts_in_sync(&c, &ALL);
    let mut spurious = Vec::new();
    for n in ALL {
        tools_check(&root(&c, n)).unwrap();
        for r in audit(&c, n) {
            let path = r["path"].as_str().unwrap_or("");
            if path.ends_with("/owned.txt") && (r["origin"] != "a" || r["kind"] == "conflict") {
                spurious.push(format!("{n}: {r}"));
            }
        }
    }
    assert!(
        spurious.is_empty(),
        "the file got versions from other nodes than a (names resolved per node: {own}):\n{}",
        spurious.join("\n")
    );
}

/// Two admins give the same new uid to two different users on two nodes at once (a mistake):
/// no node loses or renumbers either; each node keeps the one it got first and reports the other
/// as a collision naming both.
#[test]
fn one_uid_given_to_two_new_users_at_once_is_reported_not_merged() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    c.start_all();
    let (a, b) = (root(&c, "a"), root(&c, "b"));
    std::thread::scope(|s| {
        s.spawn(|| tool(&a, "useradd", "-P", &["-u", "2001", "-U", "alice"], None));
        s.spawn(|| tool(&b, "useradd", "-P", &["-u", "2001", "-U", "ann"], None));
    });
    for n in ALL {
        wait_until(&format!("{n} reports the other user"), WAIT, || {
            acct_status(&c, n)["not_applied"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
        });
    }
    assert!(line(&a, "passwd", "alice").is_some() && line(&a, "passwd", "ann").is_none());
    assert!(line(&b, "passwd", "ann").is_some() && line(&b, "passwd", "alice").is_none());
    let cn = root(&c, "c");
    let on_c = [line(&cn, "passwd", "alice"), line(&cn, "passwd", "ann")];
    assert_eq!(on_c.iter().flatten().count(), 1, "c: {on_c:?}");
    for n in ALL {
        let st = acct_status(&c, n);
        let text = st["not_applied"].to_string();
        assert!(text.contains("alice") && text.contains("ann"), "{n}: {st}");
        tools_check(&root(&c, n)).unwrap();
    }
}

/// Renames with the tools (`usermod -l`, `groupmod -n`: a delete and an add with the same id)
/// reach every node; the old home stays where it is and the new home path is created from skel.
#[test]
fn renames_reach_every_node() {
    if !can_run() {
        return;
    }
    let mut c = cluster(&ALL, Opts::default(), SECTION);
    let keep = Keeper::new(&c);
    c.start_all();
    let a = root(&c, "a");
    tool(&a, "groupadd", "-P", &["-g", "2100", "webdev"], None);
    tool(
        &a,
        "useradd",
        "-P",
        &["-m", "-u", "2001", "-U", "-G", "webdev", "niden"],
        None,
    );
    let users = ["niden", "nadia"];
    let groups = ["niden", "webdev", "devs"];
    wait_accounts(&c, &ALL, "niden everywhere", &users, &groups, |v| {
        v.contains("niden:x:2001:2001::/home/niden:")
    });
    tool(
        &a,
        "usermod",
        "-P",
        &["-l", "nadia", "-d", "/home/nadia", "niden"],
        None,
    );
    tool(&a, "groupmod", "-P", &["-n", "devs", "webdev"], None);
    wait_accounts(&c, &ALL, "the renames everywhere", &users, &groups, |v| {
        v.contains("nadia:x:2001:2001::/home/nadia:")
            && v.contains("passwd None")
            && v.contains("devs:x:2100:nadia")
            && v.contains("member of [\"devs\"]")
    });
    keep.check(&c, "renames", &["niden", "nadia", "webdev", "devs"]);
    for n in ["b", "c"] {
        let r = root(&c, n);
        assert!(
            r.join("home/niden/.bashrc").exists(),
            "{n}: the old home was moved or deleted"
        );
        assert_eq!(
            owner_mode(&r.join("home/nadia")),
            Some((0o700, 2001, 2001)),
            "{n}"
        );
    }
    wait_accounts_in_sync(&c, &ALL);
    let mut noise = Vec::new();
    for n in ["b", "c"] {
        for r in audit(&c, n) {
            if r["kind"] == "collision" {
                noise.push(format!("{n}: {r}"));
            }
        }
    }
    assert!(
        noise.is_empty(),
        "a rename was taken for a collision on the way:\n{}",
        noise.join("\n")
    );
}

mod hostile {
    //! A peer with a valid key that sends malformed account records over the real protocol.
    use super::*;
    use clustersync::accounts::{
        Account, Aging, Group as GroupRecord, Member, Members, Secret, User as UserRecord,
    };
    use clustersync::config::Config;
    use clustersync::engine::group::{ACCOUNTS, GroupRt};
    use clustersync::identity::Identity;
    use clustersync::item::{Body, Item, VersionVector};
    use clustersync::net::protocol::{GroupHello, Msg, WireItem};
    use clustersync::net::transport::{self, Link, Versions};

    fn id_of(c: &Cluster, n: &str) -> String {
        String::from_utf8(c.cli(n, &["id"]).stdout)
            .unwrap()
            .trim()
            .to_string()
    }

    /// b's `Hello` for the accounts pseudo-group, with the settings a computes from the config.
    fn hello(c: &Cluster) -> Msg {
        let cfg = Config::load(&c.cfg).expect("the cluster's config");
        let settings = GroupRt::accounts(cfg.accounts.as_ref().unwrap(), &cfg, "b")
            .expect("b is a member")
            .settings;
        Msg::Hello {
            node: "b".into(),
            groups: vec![GroupHello {
                group: ACCOUNTS.into(),
                inc: 7,
                resume_inc: 0,
                resume_seq: 0,
                head: 1,
                pending: 1,
                pending_bytes: 0,
                settings,
            }],
        }
    }

    fn item(key: &str, body: Option<Body>) -> WireItem {
        let mut vv = VersionVector::default();
        vv.bump("b", 1);
        WireItem {
            item: Item {
                key: key.as_bytes().to_vec(),
                version: vv,
                origin: "b".into(),
                body,
                beat: vec![],
            },
            inline: None,
        }
    }

    fn user(name: &str, uid: u32) -> UserRecord {
        UserRecord {
            name: name.into(),
            uid,
            gid: uid,
            gecos: "From B".into(),
            home: format!("/home/{name}"),
            shell: "/bin/bash".into(),
            password: Some(Secret::new("$6$hsalt$HOSTILEHASHxxxxxxxxxxxx")),
            aging: Aging {
                last_change: Some(19700),
                min: Some(0),
                max: Some(99999),
                warn: Some(7),
                ..Default::default()
            },
        }
    }

    fn group(name: &str, gid: u32) -> GroupRecord {
        GroupRecord {
            name: name.into(),
            gid,
            password: Some(Secret::new("!")),
            admins: vec![],
        }
    }

    fn u(r: UserRecord) -> WireItem {
        item(
            &format!("user/{}", r.name),
            Some(Body::Account(Account::User { user: r, made: 1 })),
        )
    }

    fn g(r: GroupRecord) -> WireItem {
        item(
            &format!("group/{}", r.name),
            Some(Body::Account(Account::Group { group: r, made: 1 })),
        )
    }

    fn index(items: Vec<WireItem>) -> Msg {
        Msg::Index {
            group: ACCOUNTS.into(),
            items,
            through: 1,
            head: 1,
        }
    }

    /// Connect to a as b, send the hello and `msgs`; whether a closed the link within `limit`.
    async fn session(c: &Cluster, msgs: Vec<Msg>, limit: Duration) -> bool {
        let ident = Identity::load(&c.node("b").state.join("node.key")).unwrap();
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.node("a").port))
            .await
            .unwrap();
        let mut link: Link = match transport::connect_speaking(
            stream,
            &ident,
            "a",
            &id_of(c, "a"),
            Some((Versions::OURS, transport::Suite::preferred())),
        )
        .await
        {
            Ok(l) => l,
            Err(_) => return true,
        };
        for m in std::iter::once(hello(c)).chain(msgs) {
            if link.writer.send_frame(&m.encode().unwrap()).await.is_err() {
                return true;
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = link.reader.recv_frame(limit + Duration::from_secs(60));
            match tokio::time::timeout_at(deadline, frame).await {
                Err(_) => return false,
                Ok(Err(_)) => return true,
                Ok(Ok(f)) => {
                    if matches!(Msg::decode(&f), Ok(Msg::Bye { .. })) {
                        return true;
                    }
                }
            }
        }
    }

    fn refused(c: &Cluster) -> Vec<String> {
        audit_text(c, "a")
            .lines()
            .filter(|l| l.contains("\"kind\":\"refused\""))
            .map(String::from)
            .collect()
    }

    /// Every malformed record (a `:` or a newline in a field, uid or gid 0, an account outside
    /// the managed set, a key that does not match its record, content attached) is refused on
    /// its own (issue 20, case 1): audited, nothing of it written, no hash logged, and the link
    /// stays up; the good record next to it in the same batch is applied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_account_records_are_refused_one_by_one() {
        if !can_run() {
            return;
        }
        let mut c = cluster(&["a", "b"], Opts::default(), SECTION);
        c.start("a");
        let a = c.node("a").root.clone();

        // control: a good group and user from b are applied, the link stays up
        let closed = session(
            &c,
            vec![index(vec![g(group("ctrl", 2050)), u(user("ctrl", 2050))])],
            Duration::from_secs(3),
        )
        .await;
        assert!(!closed, "a well-behaved b was disconnected");
        wait_until("the control user on a", WAIT, || {
            line(&a, "passwd", "ctrl").is_some()
        });
        assert_eq!(
            line(&a, "passwd", "ctrl").as_deref(),
            Some("ctrl:x:2050:2050:From B:/home/ctrl:/bin/bash")
        );
        tools_check(&a).unwrap();
        let before = files(&a);
        let backups: Vec<String> = FILES.iter().map(|f| read(&a, &format!("{f}-"))).collect();

        let good = |n: u32| u(user(&format!("okay{n}"), 2060 + n));
        let with = |f: &dyn Fn(&mut UserRecord)| {
            let mut r = user("evil", 2070);
            f(&mut r);
            u(r)
        };
        let mut mismatch = u(user("evil", 2070));
        mismatch.item.key = b"user/other".to_vec();
        let mut inline = u(user("evil", 2070));
        inline.inline = Some(b"content".to_vec());
        let cases: Vec<(&str, WireItem)> = vec![
            (
                "gecos with ':'",
                with(&|r| r.gecos = "x:0:0::/root:/bin/bash".into()),
            ),
            (
                "gecos with a newline",
                with(&|r| r.gecos = "x\nroot::0:0::/:/bin/sh".into()),
            ),
            (
                "home with a newline",
                with(&|r| r.home = "/home/e\nvil".into()),
            ),
            (
                "shell not a plain path",
                with(&|r| r.shell = "../../bin/sh".into()),
            ),
            ("uid 0", with(&|r| r.uid = 0)),
            ("gid 0", with(&|r| r.gid = 0)),
            ("a system account outside the managed set", {
                let mut r = user("www-data", 33);
                r.home = "/var/www".into();
                u(r)
            }),
            ("a name with ':'", with(&|r| r.name = "ev:il".into())),
            (
                "a member with a newline",
                item(
                    "members/sudo",
                    Some(Body::Account(Account::Members(Members {
                        group: "sudo".into(),
                        members: vec![Member {
                            user: "evil\nroot".into(),
                            dots: vec![],
                        }],
                    }))),
                ),
            ),
            (
                "a hash with ':'",
                with(&|r| r.password = Some(Secret::new("$6$s$x:0:0"))),
            ),
            ("key and record differ", mismatch),
            ("content attached", inline),
            ("group gid 0", g(group("evilgrp", 0))),
            ("group name with a newline", g(group("evil\ngrp", 2080))),
        ];
        let mut failed = Vec::new();
        for (i, (what, bad)) in cases.into_iter().enumerate() {
            let n = refused(&c).len();
            let ok = good(i as u32);
            let okname = format!("okay{i}");
            let okgroup = g(group(&okname, 2060 + i as u32));
            let closed = session(
                &c,
                vec![index(vec![okgroup, ok, bad])],
                Duration::from_secs(3),
            )
            .await;
            assert!(c.status("a").is_some(), "{what}: the daemon died");
            if closed {
                failed.push(format!("{what}: the link was closed"));
            }
            let t0 = std::time::Instant::now();
            while refused(&c).len() == n {
                if t0.elapsed() > Duration::from_secs(5) {
                    failed.push(format!("{what}: no refusal in the audit log"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t0 = std::time::Instant::now();
            while line(&a, "passwd", &okname).is_none() {
                if t0.elapsed() > Duration::from_secs(10) {
                    failed.push(format!(
                        "{what}: the good record next to it was not applied"
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for f in FILES {
            let now = read(&a, f);
            for bad in ["evil", "x:0:0", "root::0:0"] {
                assert!(
                    !now.lines().any(|l| l.starts_with(bad)),
                    "{f} holds a refused record: {now}"
                );
            }
            assert!(!now.contains("evil"), "{f} holds a refused record: {now}");
            let _ = &before;
        }
        tools_check(&a).unwrap();
        let _ = backups;
        assert!(!a.join("home/evil").exists());
        never_logged(&c, "HOSTILEHASH");
        assert!(!c.log("a").contains("panicked"));
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    /// Tombstones (deletions) from a peer for accounts that are not managed here (`root`, a
    /// system user, `sudo`): there is no managed account of that name here, so nothing is
    /// deleted, and the link stays up (issue 20, case 1: never a reason to close it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deletions_of_unmanaged_accounts_delete_nothing() {
        if !can_run() {
            return;
        }
        let mut c = cluster(&["a", "b"], Opts::default(), SECTION);
        c.start("a");
        let a = c.node("a").root.clone();
        let before = files(&a);
        let closed = session(
            &c,
            vec![index(vec![
                item("user/root", None),
                item("user/www-data", None),
                item("group/sudo", None),
            ])],
            Duration::from_secs(3),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(files(&a), before, "an unmanaged account was deleted");
        assert!(!closed, "the link was closed");
        assert!(c.status("a").is_some());
    }
}
