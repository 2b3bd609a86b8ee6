//! Accounts made by the real shadow-utils tools (`useradd -P`, `usermod -P`, `groupadd -P`,
//! `groupmod -P`, `userdel -P`, `gpasswd -Q`, `chpasswd -R`, `chgpasswd -R`) in one root prefix, read with
//! `clustersync::accounts`, applied to a second root prefix (a peer node with other local
//! accounts), and checked there with the tools' own consistency checks (`pwck -r`, `grpck -r`)
//! and byte comparisons. Needs root and shadow-utils; skipped (with a note) otherwise.

use clustersync::accounts::{
    AccountDb, AccountsError, ApplyReport, Change, CollisionKind, DbFile, ManagedSet, Policy,
    Snapshot,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
news:x:9:9:news:/var/spool/news:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
backup:x:34:34:backup:/var/backups:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
news:x:9:
man:x:12:
sudo:x:27:
audio:x:29:
www-data:x:33:
backup:x:34:
shadow:x:42:
staff:x:50:
games:x:60:
users:x:100:
nogroup:x:65534:
";

/// Days field of the Debian base.
const DAY: &str = "19700";

fn shadow_of(passwd: &str) -> String {
    passwd
        .lines()
        .map(|l| {
            format!(
                "{}:*:{DAY}:0:99999:7:::\n",
                l.split(':').next().unwrap_or("")
            )
        })
        .collect()
}

fn gshadow_of(group: &str) -> String {
    group
        .lines()
        .map(|l| format!("{}:*::\n", l.split(':').next().unwrap_or("")))
        .collect()
}

/// Root and the tools, or a note why the test does not run.
fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = [
        "useradd", "usermod", "userdel", "groupadd", "groupmod", "pwck", "grpck",
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

/// One node's root prefix.
struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Node {
    /// A Debian base plus `extra` local lines, shadow files 0640 root:shadow, login.defs, skel.
    fn new(extra_passwd: &str, extra_group: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        std::fs::create_dir_all(etc.join("skel/.config")).expect("mkdir");
        std::fs::create_dir_all(root.join("home")).expect("mkdir home");
        std::fs::write(etc.join("skel/.bashrc"), "# ~/.bashrc\n").expect("skel");
        std::fs::write(etc.join("skel/.config/app.conf"), "x=1\n").expect("skel");
        std::fs::write(
            etc.join("login.defs"),
            "MAIL_DIR /var/mail\nUMASK 022\nUSERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\n",
        )
        .expect("login.defs");
        let passwd = format!("{PASSWD}{extra_passwd}");
        let group = format!("{GROUP}{extra_group}");
        for (name, text, mode) in [
            ("passwd", passwd.clone(), 0o644),
            ("group", group.clone(), 0o644),
            ("shadow", shadow_of(&passwd), 0o640),
            ("gshadow", gshadow_of(&group), 0o640),
        ] {
            let p = etc.join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            if mode == 0o640 {
                std::os::unix::fs::chown(&p, Some(0), Some(42)).expect("chown");
            }
        }
        Node { _dir: dir, root }
    }

    fn etc(&self, name: &str) -> PathBuf {
        self.root.join("etc").join(name)
    }

    fn read(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.etc(name)).expect("read")).into_owned()
    }

    /// Run a tool with `-P ROOT` (or another root flag) and require success.
    fn tool(&self, prog: &str, root_flag: &str, args: &[&str], stdin: Option<&str>) {
        let mut c = Command::new(prog);
        c.arg(root_flag).arg(&self.root).args(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("{prog}: {e}"));
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            w.write_all(text.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// shadow-utils' own read-only consistency checks of the four files.
    fn check_with_tools(&self) {
        for (prog, args) in [("pwck", ["-r", "-q"]), ("grpck", ["-r", "-q"])] {
            let out = Command::new(prog)
                .args(args)
                .arg("-R")
                .arg(&self.root)
                .output()
                .expect(prog);
            assert!(
                out.status.success(),
                "{prog} -r -R found problems: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn meta(&self) -> Vec<(u32, u32, u32)> {
        DbFile::ALL
            .iter()
            .map(|f| {
                let m = std::fs::metadata(self.etc(f.name())).expect("stat");
                (m.mode() & 0o7777, m.uid(), m.gid())
            })
            .collect()
    }
}

fn policy() -> Policy {
    Policy {
        set: ManagedSet::new(["niden"], Some((2000, 2999))),
        passwords: true,
        create_home: true,
    }
}

fn db(n: &Node) -> AccountDb {
    AccountDb::new(&n.root).with_lock_timeout(Duration::from_secs(20))
}

/// Read node `a`, send what changed since `last` to `b`, and check that `b` now has the same
/// managed accounts and passes pwck/grpck.
fn sync(a: &Node, b: &Node, last: &Snapshot) -> (Snapshot, ApplyReport) {
    let now = db(a).read(&policy()).expect("read a");
    assert_eq!(now.problems, vec![], "a's accounts read cleanly");
    let changes: Vec<Change> = now.changes_since(last);
    let wire: Vec<Change> = changes
        .iter()
        .map(|c| Change::decode(&c.encode().expect("encode")).expect("decode"))
        .collect();
    let report = db(b).apply(&policy(), &wire).expect("apply on b");
    let got = db(b).read(&policy()).expect("read b");
    assert_eq!(got.users, now.users, "users on b");
    assert_eq!(got.groups, now.groups, "groups on b");
    b.check_with_tools();
    (now, report)
}

/// Lines of `before` not named in `touched` are in `after`, byte for byte and in order.
fn kept_lines(before: &str, after: &str, touched: &[&str]) {
    let after: Vec<&str> = after.lines().collect();
    let mut pos = 0;
    for line in before.lines() {
        let name = line.split(':').next().unwrap_or("");
        if touched.contains(&name) {
            continue;
        }
        match after[pos..].iter().position(|l| *l == line) {
            Some(off) => pos += off + 1,
            None => panic!("unmanaged line {line:?} lost or moved"),
        }
    }
}

#[test]
fn tool_changes_replicate_to_a_peer() {
    if !can_run() {
        return;
    }
    let a = Node::new(
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
        "alice:x:1000:\n",
    );
    let b = Node::new(
        "carol:x:1000:1000:Carol:/home/carol:/bin/bash\nsvc:x:1500:1500::/srv:/usr/sbin/nologin\n",
        "carol:x:1000:\nsvc:x:1500:carol\n",
    );
    let b_meta = b.meta();
    let b_before: Vec<String> = DbFile::ALL.iter().map(|f| b.read(f.name())).collect();

    // Create: a group, a user with its own group, home and supplementary groups, another user.
    a.tool("groupadd", "-P", &["-g", "2100", "webdev"], None);
    a.tool(
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
            "webdev,sudo",
            "niden",
        ],
        None,
    );
    a.tool(
        "useradd",
        "-P",
        &["-u", "2002", "-U", "-d", "/home/webapp", "webapp"],
        None,
    );
    a.tool(
        "usermod",
        "-P",
        &["-p", "$6$rounds=5000$salt$NIDENHASH1", "niden"],
        None,
    );
    a.tool(
        "chpasswd",
        "-R",
        &["-e"],
        Some("webapp:$y$j9T$wsalt$WEBAPPHASH\n"),
    );
    a.tool(
        "gpasswd",
        "-Q",
        &["-A", "niden", "-M", "niden,alice", "webdev"],
        None,
    );
    let (s1, r1) = sync(&a, &b, &Snapshot::default());
    assert_eq!(r1.collisions, vec![]);
    assert_eq!(r1.refused, vec![]);
    assert_eq!(r1.applied.len(), 5, "{r1:?}");
    assert_eq!(s1.users["niden"].groups, ["sudo", "webdev"]);
    assert_eq!(b.meta(), b_meta, "modes and owners of the four files kept");
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        assert_eq!(
            &b.read(f.backup_name()),
            before,
            "{} holds the previous content",
            f.backup_name()
        );
        kept_lines(before, &b.read(f.name()), &["sudo"]);
    }
    let b_group = b.read("group");
    assert!(b_group.contains("\nsudo:x:27:niden\n"), "{b_group}");
    assert!(
        b_group.contains("\nwebdev:x:2100:niden\n"),
        "alice is a's own member: {b_group}"
    );
    assert!(b_group.contains("\nsvc:x:1500:carol\n"));
    assert!(b.read("gshadow").contains("\nwebdev:!:niden:niden\n"));
    assert!(
        b.read("shadow")
            .contains("\nniden:$6$rounds=5000$salt$NIDENHASH1:")
    );
    assert!(
        b.read("shadow")
            .contains("\nwebapp:$y$j9T$wsalt$WEBAPPHASH:")
    );
    let home = std::fs::metadata(b.root.join("home/niden")).expect("home made on b");
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o700, 2001, 2001)
    );
    assert!(b.root.join("home/niden/.config/app.conf").exists());
    assert!(b.root.join("home/webapp/.bashrc").exists());

    // Modify: shell, gecos, group membership, password hash.
    a.tool(
        "usermod",
        "-P",
        &[
            "-s",
            "/bin/sh",
            "-c",
            "Niden,Room 1",
            "-G",
            "webdev",
            "niden",
        ],
        None,
    );
    a.tool(
        "chpasswd",
        "-R",
        &["-e"],
        Some("niden:$y$j9T$nsalt$NIDENHASH2\n"),
    );
    let (s2, r2) = sync(&a, &b, &s1);
    assert_eq!(
        r2.applied,
        vec![clustersync::accounts::AccountId::User("niden".into())]
    );
    assert_eq!(s2.users["niden"].shell, "/bin/sh");
    assert!(
        b.read("group").contains("\nsudo:x:27:\n"),
        "membership removed"
    );
    assert!(
        b.read("shadow")
            .contains("\nniden:$y$j9T$nsalt$NIDENHASH2:")
    );
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        kept_lines(before, &b.read(f.name()), &[]);
    }

    // Rename a group (delete + add with the same gid).
    a.tool("groupmod", "-P", &["-n", "developers", "webdev"], None);
    a.tool(
        "chgpasswd",
        "-R",
        &["-e"],
        Some("developers:$6$gsalt$GROUPHASH\n"),
    );
    let (s3, _) = sync(&a, &b, &s2);
    assert!(s3.groups.contains_key("developers") && !s3.groups.contains_key("webdev"));
    assert!(b.read("group").contains("\ndevelopers:x:2100:niden\n"));
    assert!(
        b.read("gshadow")
            .contains("\ndevelopers:$6$gsalt$GROUPHASH:niden:niden\n")
    );

    // Delete: the user and its group go, its home stays.
    a.tool("userdel", "-P", &["niden"], None);
    let (s4, r4) = sync(&a, &b, &s3);
    assert!(!s4.users.contains_key("niden"));
    assert!(
        r4.applied
            .contains(&clustersync::accounts::AccountId::User("niden".into()))
    );
    assert!(!b.read("passwd").contains("niden") && !b.read("shadow").contains("niden"));
    assert!(
        !b.read("group").contains("niden"),
        "group niden and memberships gone"
    );
    assert!(
        b.root.join("home/niden/.bashrc").exists(),
        "a home is never deleted"
    );
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        kept_lines(before, &b.read(f.name()), &[]);
    }
    assert_eq!(b.meta(), b_meta);
}

#[test]
fn a_collision_on_the_peer_is_reported_and_left_alone() {
    if !can_run() {
        return;
    }
    let a = Node::new("", "");
    // b already has its own "webapp" (uid 1002, unmanaged) and a "ops" group on gid 2200.
    let b = Node::new(
        "webapp:x:1002:1002::/home/webapp:/bin/sh\n",
        "webapp:x:1002:\nops:x:2200:\n",
    );
    a.tool("useradd", "-P", &["-u", "2002", "-U", "webapp"], None);
    a.tool("groupadd", "-P", &["-g", "2200", "admins"], None);
    a.tool(
        "useradd",
        "-P",
        &["-u", "2003", "-U", "-G", "admins", "dora"],
        None,
    );
    let before: Vec<String> = DbFile::ALL.iter().map(|f| b.read(f.name())).collect();
    let snap = db(&a).read(&policy()).expect("read a");
    let r = db(&b)
        .apply(&policy(), &snap.changes_since(&Snapshot::default()))
        .expect("apply");
    let kinds: Vec<(String, CollisionKind, String)> = r
        .collisions
        .iter()
        .map(|c| (c.account.to_string(), c.kind, c.local.name.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "group \"admins\"".into(),
                CollisionKind::Id,
                "\"ops\"".into()
            ),
            (
                "group \"webapp\"".into(),
                CollisionKind::Name,
                "\"webapp\"".into()
            ),
            (
                "user \"webapp\"".into(),
                CollisionKind::Name,
                "\"webapp\"".into()
            ),
        ]
    );
    let msg = r.collisions[2].to_string();
    assert!(
        msg.contains("uid 2002") && msg.contains("local user \"webapp\" (uid 1002)"),
        "{msg}"
    );
    // dora is applied, waiting for "admins", which collided.
    assert_eq!(r.waiting.len(), 1);
    assert!(b.read("passwd").contains("\ndora:x:2003:2003:"));
    assert!(
        b.read("passwd")
            .contains("\nwebapp:x:1002:1002::/home/webapp:/bin/sh\n")
    );
    for (f, old) in DbFile::ALL.iter().zip(&before) {
        kept_lines(old, &b.read(f.name()), &[]);
    }
    b.check_with_tools();
}

#[test]
fn hostile_records_refuse_the_batch_and_change_nothing() {
    if !can_run() {
        return;
    }
    let a = Node::new("", "");
    let b = Node::new("", "");
    a.tool("useradd", "-P", &["-u", "2001", "-U", "niden"], None);
    let snap = db(&a).read(&policy()).expect("read a");
    let good = snap.users["niden"].clone();
    let mut hostile = Vec::new();
    let mut u = good.clone();
    u.gecos = "x:0:0::/root:/bin/bash\nevil".into();
    hostile.push(u);
    let mut u = good.clone();
    u.home = "/home/niden\nroot::0:0::/:/bin/sh".into();
    hostile.push(u);
    let mut u = good.clone();
    u.shell = "../../bin/sh".into();
    hostile.push(u);
    let mut u = good.clone();
    u.uid = 0;
    hostile.push(u);
    let mut u = good.clone();
    u.name = "www-data".into();
    u.uid = 33;
    hostile.push(u);
    let mut u = good.clone();
    u.groups = vec!["sudo\nroot".into()];
    hostile.push(u);
    let before: Vec<Vec<u8>> = DbFile::ALL
        .iter()
        .map(|f| std::fs::read(b.etc(f.name())).expect("read"))
        .collect();
    for u in hostile {
        let batch = [Change::User(good.clone()), Change::User(u)];
        let e = db(&b).apply(&policy(), &batch).expect_err("refused");
        assert!(matches!(e, AccountsError::Invalid { index: 1, .. }), "{e}");
    }
    // Bytes injected into an encoded record do not decode into anything usable either.
    let mut bytes = Change::User(good.clone()).encode().expect("encode");
    let at = bytes.len() / 2;
    bytes.insert(at, b':');
    if let Ok(c) = Change::decode(&bytes) {
        assert!(db(&b).apply(&policy(), &[c]).is_err());
    }
    let after: Vec<Vec<u8>> = DbFile::ALL
        .iter()
        .map(|f| std::fs::read(b.etc(f.name())).expect("read"))
        .collect();
    assert_eq!(before, after);
    assert!(!b.etc("passwd-").exists(), "nothing was written");
}

#[test]
fn the_tools_and_clustersync_wait_for_each_others_locks() {
    if !can_run() {
        return;
    }
    let b = Node::new("", "");
    // While clustersync holds the locks, useradd -P waits (it retries for 15 s) and then works.
    let lock =
        clustersync::accounts::lock::PwdLock::acquire(&b.root.join("etc"), Duration::from_secs(5))
            .expect("lock");
    let mut child = Command::new("useradd")
        .arg("-P")
        .arg(&b.root)
        .args(["-u", "2005", "late"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("useradd");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "useradd waits for the lock"
    );
    assert!(!b.read("passwd").contains("late"));
    drop(lock);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(b.read("passwd").contains("\nlate:x:2005:"));
    // A lock held by a live tool process makes clustersync wait, then give up cleanly.
    let mut holder = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::write(b.etc("shadow.lock"), format!("{}\0", holder.id())).expect("lock file");
    let short = AccountDb::new(&b.root).with_lock_timeout(Duration::from_millis(500));
    let e = short.read(&policy()).expect_err("locked");
    assert!(
        matches!(
            e,
            AccountsError::Locked {
                holder: Some(_),
                ..
            }
        ),
        "{e}"
    );
    holder.kill().expect("kill");
    holder.wait().expect("reap");
    // Its process is gone: the lock is stale and taken over.
    let s = short.read(&policy()).expect("stale lock taken over");
    assert!(s.users.contains_key("late"));
    assert!(!b.etc("shadow.lock").exists());
}

#[test]
fn without_passwords_the_peer_gets_a_locked_account() {
    if !can_run() {
        return;
    }
    // passwords = false: a's hash never leaves a; b's new shadow line is locked (`!`) with
    // today as last change, and pwck/grpck are satisfied with it.
    let a = Node::new("", "");
    let b = Node::new("", "");
    a.tool(
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-p", "$6$s$NOSYNC", "niden"],
        None,
    );
    let p = Policy {
        passwords: false,
        ..policy()
    };
    let snap = db(&a).read(&p).expect("read a");
    assert!(snap.users["niden"].password.is_none());
    let r = db(&b)
        .apply(&p, &snap.changes_since(&Snapshot::default()))
        .expect("apply");
    assert_eq!(r.applied.len(), 2);
    let shadow = b.read("shadow");
    let line = shadow
        .lines()
        .find(|l| l.starts_with("niden:"))
        .expect("shadow line");
    assert!(line.starts_with("niden:!:"), "locked, not a's hash: {line}");
    assert!(!shadow.contains("NOSYNC"));
    b.check_with_tools();
}
