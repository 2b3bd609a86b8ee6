//! Accounts made by the real shadow-utils tools (`useradd -P`, `usermod -P`, `groupadd -P`,
//! `groupmod -P`, `userdel -P`, `gpasswd -Q`, `chpasswd -R`, `chgpasswd -R`) in one root prefix,
//! found by `accounts::sync` (detect), sent to a second root prefix (a peer node with other local
//! accounts: validate, plan, apply), and checked there with the tools' own consistency checks
//! (`pwck -r`, `grpck -r`) and byte comparisons. Needs root and shadow-utils; skipped (with a
//! note) otherwise. The daemons' end-to-end cases are in `tests/accounts_sync.rs`.

use clustersync::accounts::{
    AccountDb, Accounts, AccountsError, Check, DbFile, Decision, IndexRead, ManagedSet, Outcome,
    Policy, View, Written, plan, validate_item,
};
use clustersync::config::ConflictPolicy;
use clustersync::item::Item;
use std::collections::BTreeMap;
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

/// An index in memory.
#[derive(Default)]
struct Mem(BTreeMap<Vec<u8>, Item>);

impl IndexRead for Mem {
    fn get(&mut self, key: &[u8]) -> Result<Option<Item>, String> {
        Ok(self.0.get(key).cloned())
    }
    fn keys(&mut self) -> Result<Vec<Vec<u8>>, String> {
        Ok(self.0.keys().cloned().collect())
    }
}

/// One node as the engine drives it: its root, account state and index.
struct Side {
    node: Node,
    name: &'static str,
    acc: Accounts,
    ix: Mem,
    clock: u64,
}

impl Side {
    fn new(node: Node, name: &'static str, policy: Policy) -> Side {
        Side {
            node,
            name,
            acc: Accounts::new(policy, name),
            ix: Mem::default(),
            clock: 1_000,
        }
    }

    /// Detect, commit, write the canonical layout; the new items.
    fn detect(&mut self) -> Vec<Item> {
        self.clock += 1_000;
        let db = db(&self.node);
        let read = db.read().expect("read");
        let adopt = self.acc.first_detect() && self.ix.0.is_empty();
        let d = self
            .acc
            .detect(&read, &mut self.ix, self.clock, adopt)
            .expect("detect");
        assert_eq!(
            d.problems,
            Vec::<String>::new(),
            "{}: accounts read cleanly",
            self.name
        );
        for i in &d.changes {
            self.ix.0.insert(i.key.clone(), i.clone());
        }
        if let Some(c) = d.canonical
            && let Written::Done { set, .. } = db.write(&read, &c).expect("write")
        {
            self.acc.written(set);
        }
        d.changes
    }

    /// Receive a peer's items: validate, plan, apply, commit; the outcome of each taken one.
    fn receive(&mut self, items: &[Item], from: &[String]) -> Vec<(String, Outcome)> {
        self.detect();
        let policy = self.acc.policy().clone();
        let check = Check {
            policy: &policy,
            members: from,
        };
        for i in items {
            validate_item(i, &check).expect("a valid item");
        }
        let locals: Vec<Option<Item>> = items
            .iter()
            .map(|i| self.ix.0.get(&i.key).cloned())
            .collect();
        let locals: Vec<Option<&Item>> = locals.iter().map(Option::as_ref).collect();
        let mut take = Vec::new();
        for d in plan(items, &locals, &ConflictPolicy::Newest) {
            match d {
                Decision::Take { item, .. } => take.push(item),
                Decision::Keep { item, .. } => {
                    self.ix.0.insert(item.key.clone(), item);
                }
                _ => {}
            }
        }
        let r = self
            .acc
            .apply(&db(&self.node), &take, 20000)
            .expect("apply");
        assert!(!r.stale);
        let mut out = Vec::new();
        for (t, o) in take.iter().zip(r.outcomes) {
            if matches!(o, Outcome::Applied | Outcome::Partial { .. }) {
                self.ix.0.insert(t.key.clone(), t.clone());
            }
            out.push((String::from_utf8_lossy(&t.key).into_owned(), o));
        }
        out
    }
}

/// Send what changed on `a` to `b`; check that `b` has the same managed lines and passes
/// pwck/grpck, and that nothing applied on b is a local change there (no echo).
fn sync(a: &mut Side, b: &mut Side) -> Vec<(String, Outcome)> {
    let items = a.detect();
    let members = vec![a.name.to_string(), b.name.to_string()];
    let out = b.receive(&items, &members);
    assert_eq!(b.detect(), Vec::<Item>::new(), "no echo on b");
    same_managed_lines(a, b);
    b.node.check_with_tools();
    out
}

/// The lines of managed accounts are byte-identical on both sides.
fn same_managed_lines(a: &Side, b: &Side) {
    let pa = db(&a.node).read().expect("read");
    let pb = db(&b.node).read().expect("read");
    let (va, vb) = (
        View::new(&pa.files, a.acc.policy()),
        View::new(&pb.files, b.acc.policy()),
    );
    let block = |v: &View, f: &clustersync::accounts::AccountFiles| {
        let users = v.managed_users();
        let groups = v.managed_groups();
        let mut out = Vec::new();
        for (file, names) in [(DbFile::Passwd, &users), (DbFile::Shadow, &users)] {
            let t = f.table(file).expect("table");
            for l in t.lines() {
                if clustersync::accounts::db::entry_name(l).is_some_and(|n| names.contains(n)) {
                    out.push(String::from_utf8_lossy(l).into_owned());
                }
            }
        }
        for file in [DbFile::Group, DbFile::Gshadow] {
            let t = f.table(file).expect("table");
            for l in t.lines() {
                if clustersync::accounts::db::entry_name(l).is_some_and(|n| groups.contains(n)) {
                    // local members differ between nodes: compare the managed ones
                    let mut fields: Vec<String> = String::from_utf8_lossy(l)
                        .split(':')
                        .map(String::from)
                        .collect();
                    if let Some(m) = fields.last_mut() {
                        *m = m
                            .split(',')
                            .filter(|x| v.is_managed_user(x.as_bytes()))
                            .collect::<Vec<_>>()
                            .join(",");
                    }
                    out.push(fields.join(":"));
                }
            }
        }
        out
    };
    assert_eq!(
        block(&va, &pa.files),
        block(&vb, &pb.files),
        "managed lines on {} and {}",
        a.name,
        b.name
    );
}

fn applied(out: &[(String, Outcome)]) -> Vec<String> {
    out.iter()
        .filter(|(_, o)| *o == Outcome::Applied)
        .map(|(k, _)| k.clone())
        .collect()
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
    let mut a = Side::new(
        Node::new(
            "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
            "alice:x:1000:\n",
        ),
        "a",
        policy(),
    );
    let mut b = Side::new(
        Node::new(
            "carol:x:1000:1000:Carol:/home/carol:/bin/bash\nsvc:x:1500:1500::/srv:/usr/sbin/nologin\n",
            "carol:x:1000:\nsvc:x:1500:carol\n",
        ),
        "b",
        policy(),
    );
    a.detect();
    b.detect();
    let b_meta = b.node.meta();
    let b_before: Vec<String> = DbFile::ALL.iter().map(|f| b.node.read(f.name())).collect();

    // Create: a group, a user with its own group, home and supplementary groups, another user.
    a.node
        .tool("groupadd", "-P", &["-g", "2100", "webdev"], None);
    a.node.tool(
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
    a.node.tool(
        "useradd",
        "-P",
        &["-u", "2002", "-U", "-d", "/home/webapp", "webapp"],
        None,
    );
    a.node.tool(
        "usermod",
        "-P",
        &["-p", "$6$rounds=5000$salt$NIDENHASH1", "niden"],
        None,
    );
    a.node.tool(
        "chpasswd",
        "-R",
        &["-e"],
        Some("webapp:$y$j9T$wsalt$WEBAPPHASH\n"),
    );
    a.node.tool(
        "gpasswd",
        "-Q",
        &["-A", "niden", "-M", "niden,alice", "webdev"],
        None,
    );
    let r1 = sync(&mut a, &mut b);
    assert!(r1.iter().all(|(_, o)| *o == Outcome::Applied), "{r1:?}");
    assert_eq!(
        b.node.meta(),
        b_meta,
        "modes and owners of the four files kept"
    );
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        assert_eq!(
            &b.node.read(f.backup_name()),
            before,
            "{} holds the previous content",
            f.backup_name()
        );
        kept_lines(before, &b.node.read(f.name()), &["sudo"]);
    }
    let b_group = b.node.read("group");
    assert!(b_group.contains("\nsudo:x:27:niden\n"), "{b_group}");
    assert!(
        b_group.contains("\nwebdev:x:2100:niden\n"),
        "alice is a's own member: {b_group}"
    );
    assert!(b_group.contains("\nsvc:x:1500:carol\n"));
    assert!(b.node.read("gshadow").contains("\nwebdev:!:niden:niden\n"));
    assert!(
        b.node
            .read("shadow")
            .contains("\nniden:$6$rounds=5000$salt$NIDENHASH1:")
    );
    assert!(
        b.node
            .read("shadow")
            .contains("\nwebapp:$y$j9T$wsalt$WEBAPPHASH:")
    );
    let home = std::fs::metadata(b.node.root.join("home/niden")).expect("home made on b");
    assert_eq!(
        (home.mode() & 0o7777, home.uid(), home.gid()),
        (0o700, 2001, 2001)
    );
    assert!(b.node.root.join("home/niden/.config/app.conf").exists());

    // Modify: shell, gecos, group membership, password hash.
    a.node.tool(
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
    a.node.tool(
        "chpasswd",
        "-R",
        &["-e"],
        Some("niden:$y$j9T$nsalt$NIDENHASH2\n"),
    );
    let r2 = sync(&mut a, &mut b);
    assert_eq!(applied(&r2), ["user/niden", "members/sudo"]);
    assert!(
        b.node.read("group").contains("\nsudo:x:27:\n"),
        "membership removed"
    );
    assert!(
        b.node
            .read("shadow")
            .contains("\nniden:$y$j9T$nsalt$NIDENHASH2:")
    );
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        kept_lines(before, &b.node.read(f.name()), &[]);
    }

    // Rename a group (delete + add with the same gid); b's own member of it stays.
    b.node.tool("gpasswd", "-Q", &["-a", "svc", "webdev"], None);
    b.detect();
    a.node
        .tool("groupmod", "-P", &["-n", "developers", "webdev"], None);
    a.node.tool(
        "chgpasswd",
        "-R",
        &["-e"],
        Some("developers:$6$gsalt$GROUPHASH\n"),
    );
    sync(&mut a, &mut b);
    assert!(
        b.node
            .read("group")
            .contains("\ndevelopers:x:2100:svc,niden\n"),
        "{}",
        b.node.read("group")
    );
    assert!(
        b.node
            .read("gshadow")
            .contains("\ndevelopers:$6$gsalt$GROUPHASH:niden:svc,niden\n"),
        "{}",
        b.node.read("gshadow")
    );
    assert!(!b.node.read("group").contains("webdev"));

    // Delete: the user and its group go, its home stays.
    a.node.tool("userdel", "-P", &["niden"], None);
    let r4 = sync(&mut a, &mut b);
    assert!(applied(&r4).contains(&"user/niden".to_string()), "{r4:?}");
    assert!(!b.node.read("passwd").contains("niden") && !b.node.read("shadow").contains("niden"));
    assert!(
        !b.node.read("group").contains("niden"),
        "group niden and memberships gone"
    );
    assert!(
        b.node.root.join("home/niden/.bashrc").exists(),
        "a home is never deleted"
    );
    for (f, before) in DbFile::ALL.iter().zip(&b_before) {
        kept_lines(before, &b.node.read(f.name()), &["webdev"]);
    }
    assert_eq!(b.node.meta(), b_meta);
}

#[test]
fn a_collision_on_the_peer_is_reported_and_left_alone() {
    if !can_run() {
        return;
    }
    let mut a = Side::new(Node::new("", ""), "a", policy());
    // b already has its own "webapp" (uid 1002, unmanaged) and a "ops" group on gid 2200.
    let mut b = Side::new(
        Node::new(
            "webapp:x:1002:1002::/home/webapp:/bin/sh\n",
            "webapp:x:1002:\nops:x:2200:\n",
        ),
        "b",
        policy(),
    );
    a.detect();
    b.detect();
    a.node
        .tool("useradd", "-P", &["-u", "2002", "-U", "webapp"], None);
    a.node
        .tool("groupadd", "-P", &["-g", "2200", "admins"], None);
    a.node.tool(
        "useradd",
        "-P",
        &["-u", "2003", "-U", "-G", "admins", "dora"],
        None,
    );
    let before: Vec<String> = DbFile::ALL.iter().map(|f| b.node.read(f.name())).collect();
    let items = a.detect();
    let r = b.receive(&items, &["a".to_string(), "b".to_string()]);
    let aside: Vec<(String, String)> = r
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::Aside {
                reason,
                collision: true,
            } => Some((k.clone(), reason.clone())),
            _ => None,
        })
        .collect();
    let keys: Vec<&str> = aside.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["group/admins", "group/webapp", "user/webapp"],
        "{r:?}"
    );
    assert!(
        aside[0].1.contains("local group \"ops\" (gid 2200)"),
        "{}",
        aside[0].1
    );
    assert!(
        aside[2].1.contains("uid 2002") && aside[2].1.contains("local user \"webapp\" (uid 1002)"),
        "{}",
        aside[2].1
    );
    // dora is applied; her membership in admins waits for the group
    assert!(b.node.read("passwd").contains("\ndora:x:2003:2003:"));
    assert!(
        r.iter().any(|(k, o)| k == "members/admins"
            && matches!(
                o,
                Outcome::Aside {
                    collision: false,
                    ..
                }
            )),
        "{r:?}"
    );
    assert!(
        b.node
            .read("passwd")
            .contains("\nwebapp:x:1002:1002::/home/webapp:/bin/sh\n")
    );
    for (f, old) in DbFile::ALL.iter().zip(&before) {
        kept_lines(old, &b.node.read(f.name()), &["dora"]);
    }
    b.node.check_with_tools();
}

#[test]
fn hostile_records_are_refused_and_change_nothing() {
    if !can_run() {
        return;
    }
    let mut a = Side::new(Node::new("", ""), "a", policy());
    a.detect();
    a.node
        .tool("useradd", "-P", &["-u", "2001", "-U", "niden"], None);
    let items = a.detect();
    let good = items
        .iter()
        .find(|i| i.key == b"user/niden")
        .expect("niden")
        .clone();
    let check_policy = policy();
    let members = ["a".to_string()];
    let check = Check {
        policy: &check_policy,
        members: &members,
    };
    assert_eq!(validate_item(&good, &check), Ok(()));
    let edit = |f: &dyn Fn(&mut clustersync::accounts::User)| {
        let mut i = good.clone();
        if let Some(clustersync::item::Body::Account(clustersync::accounts::Account::User {
            user,
            ..
        })) = &mut i.body
        {
            f(user);
        }
        i
    };
    let hostile = [
        edit(&|u| u.gecos = "x:0:0::/root:/bin/bash\nevil".into()),
        edit(&|u| u.home = "/home/niden\nroot::0:0::/:/bin/sh".into()),
        edit(&|u| u.shell = "../../bin/sh".into()),
        edit(&|u| u.uid = 0),
        edit(&|u| {
            u.name = "www-data".into();
            u.uid = 33
        }),
    ];
    for h in hostile {
        assert!(validate_item(&h, &check).is_err(), "{h:?}");
    }
    let mut other = good.clone();
    other.origin = "mallory".into();
    assert!(
        validate_item(&other, &check).is_err(),
        "an origin outside [accounts]"
    );
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
    let e = short.read().expect_err("locked");
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
    let s = short.read().expect("stale lock taken over");
    assert!(!s.files.passwd.find("late").is_empty());
    assert!(!b.etc("shadow.lock").exists());
}

#[test]
fn without_passwords_the_peer_gets_a_locked_account() {
    if !can_run() {
        return;
    }
    // passwords = false: a's hash never leaves a; b's new shadow line is locked (`!`) with
    // today as last change, and pwck/grpck are satisfied with it.
    let p = Policy {
        passwords: false,
        ..policy()
    };
    let mut a = Side::new(Node::new("", ""), "a", p.clone());
    let mut b = Side::new(Node::new("", ""), "b", p);
    a.detect();
    b.detect();
    a.node.tool(
        "useradd",
        "-P",
        &["-u", "2001", "-U", "-p", "$6$s$NOSYNC", "niden"],
        None,
    );
    let items = a.detect();
    assert!(!format!("{items:?}").contains("NOSYNC"));
    let r = b.receive(&items, &["a".to_string()]);
    assert_eq!(applied(&r).len(), 2, "{r:?}");
    let shadow = b.node.read("shadow");
    let line = shadow
        .lines()
        .find(|l| l.starts_with("niden:"))
        .expect("shadow line");
    assert!(line.starts_with("niden:!:"), "locked, not a's hash: {line}");
    assert!(!shadow.contains("NOSYNC"));
    b.node.check_with_tools();
}
