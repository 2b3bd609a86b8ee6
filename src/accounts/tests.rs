//! Tests of the accounts module on Debian-like files: pure parsing, snapshots and plans first,
//! then applies on a temp root (locks, backups, modes, crash journal, homes).

use super::*;
use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const SECRET: &str = "NIDENSECRETHASH";

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
games:x:5:60:games:/usr/games:/usr/sbin/nologin
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
lp:x:7:7:lp:/var/spool/lpd:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
# local admins below

alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash
niden:x:2001:2001:Ni Den,,,:/home/niden:/bin/bash
beauty:x:1500:1500::/home/beauty:/bin/zsh
caf\xe9:x:1600:1600:g\xe9cos latin-1:/home/cafe:/bin/sh
broken line without colons
+@netadmins::::::
-baduser::::::
webapp:x:2002:2002:Web App:/srv/webapp:/usr/sbin/nologin";

const GROUP: &[u8] = b"root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:alice
tty:x:5:
cdrom:x:24:alice
sudo:x:27:alice,niden
www-data:x:33:niden
shadow:x:42:
staff:x:50:
users:x:100:
nogroup:x:65534:
alice:x:1000:
niden:x:2001:
beauty:x:1500:
caf\xe9:x:1600:
webapp:x:2002:
webdev:x:2100:niden,alice,webapp
+:::
";

const SHADOW: &[u8] = b"root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
bin:*:19000:0:99999:7:::
sys:*:19000:0:99999:7:::
sync:*:19000:0:99999:7:::
games:*:19000:0:99999:7:::
man:*:19000:0:99999:7:::
lp:*:19000:0:99999:7:::
mail:*:19000:0:99999:7:::
www-data:*:19000:0:99999:7:::
_apt:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
alice:$y$j9T$alicesalt$ALICEHASH:19500:0:99999:7:::
niden:$y$j9T$nidensalt$NIDENSECRETHASH:19600:0:99999:7:::
beauty:!:19601:0:99999:7:::
caf\xe9:!:19602:0:99999:7:::
+::::::::
webapp:!*:19603::::::
";

const GSHADOW: &[u8] = b"root:*::
daemon:*::
adm:*::alice
cdrom:*::alice
sudo:*::alice,niden
www-data:*::niden
shadow:*::
users:*::
alice:!::
niden:!::
beauty:!::
caf\xe9:!::
webapp:!::
webdev:!:niden:niden,alice,webapp
";

/// A peer node: the Debian base and other local accounts (carol), no managed one yet.
const PEER_PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
carol:x:1000:1000:Carol:/home/carol:/bin/bash
";
const PEER_GROUP: &[u8] = b"root:x:0:
daemon:x:1:
sudo:x:27:carol
www-data:x:33:
users:x:100:
nogroup:x:65534:
carol:x:1000:
";
const PEER_SHADOW: &[u8] = b"root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
www-data:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
carol:$6$carolsalt$CAROLHASH:19100:0:99999:7:::
";
const PEER_GSHADOW: &[u8] = b"root:*::
daemon:*::
sudo:*::carol
www-data:*::
users:*::
nogroup:*::
carol:!::
";

fn policy() -> Policy {
    Policy {
        set: ManagedSet::new(["beauty", "niden"], Some((2000, 2999))),
        passwords: true,
        create_home: true,
    }
}

fn source() -> AccountFiles {
    AccountFiles::parse(PASSWD, GROUP, Some(SHADOW), Some(GSHADOW))
}

fn peer() -> AccountFiles {
    AccountFiles::parse(
        PEER_PASSWD,
        PEER_GROUP,
        Some(PEER_SHADOW),
        Some(PEER_GSHADOW),
    )
}

fn text(f: &AccountFiles, which: DbFile) -> String {
    String::from_utf8_lossy(&f.bytes(which).unwrap_or_default()).into_owned()
}

fn all_changes(s: &Snapshot) -> Vec<Change> {
    s.changes_since(&Snapshot::default())
}

/// Every line of `before` that is not in `touched` is in `after`, in the same order.
fn untouched_lines_kept(before: &[u8], after: &[u8], touched: &[&str]) {
    let after_lines: Vec<&[u8]> = after.split(|&c| c == b'\n').collect();
    let mut pos = 0;
    for line in before.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let name = db::entry_name(line).unwrap_or_default();
        if touched.iter().any(|t| t.as_bytes() == name) {
            continue;
        }
        let found = after_lines[pos..].iter().position(|l| *l == line);
        let Some(off) = found else {
            panic!("line {:?} lost or moved", String::from_utf8_lossy(line));
        };
        pos += off + 1;
    }
}

// --- parse and snapshot ------------------------------------------------------------------

#[test]
fn files_round_trip_byte_for_byte() {
    let f = source();
    assert_eq!(f.bytes(DbFile::Passwd).as_deref(), Some(PASSWD));
    assert_eq!(f.bytes(DbFile::Group).as_deref(), Some(GROUP));
    assert_eq!(f.bytes(DbFile::Shadow).as_deref(), Some(SHADOW));
    assert_eq!(f.bytes(DbFile::Gshadow).as_deref(), Some(GSHADOW));
    let none = AccountFiles::parse(PASSWD, GROUP, None, None);
    assert_eq!(none.bytes(DbFile::Shadow), None);
}

#[test]
fn snapshot_holds_the_managed_accounts_only() {
    let s = source().snapshot(&policy());
    assert_eq!(s.problems, vec![]);
    let users: Vec<&str> = s.users.keys().map(String::as_str).collect();
    assert_eq!(users, ["beauty", "niden", "webapp"]);
    let groups: Vec<&str> = s.groups.keys().map(String::as_str).collect();
    assert_eq!(groups, ["beauty", "niden", "webapp", "webdev"]);
    let n = &s.users["niden"];
    assert_eq!(
        (n.uid, n.gid, n.group.as_deref()),
        (2001, 2001, Some("niden"))
    );
    assert_eq!(n.gecos, "Ni Den,,,");
    assert_eq!(n.groups, ["sudo", "webdev", "www-data"]);
    assert_eq!(
        n.password.as_ref().map(Secret::expose),
        Some("$y$j9T$nidensalt$NIDENSECRETHASH")
    );
    assert_eq!(n.aging.last_change, Some(19600));
    assert_eq!(n.aging.max, Some(99999));
    assert_eq!(n.aging.inactive, None);
    assert_eq!(s.users["webapp"].groups, ["webdev"]);
    assert_eq!(
        s.users["webapp"].password.as_ref().map(Secret::expose),
        Some("!*")
    );
    assert_eq!(s.groups["webdev"].admins, ["niden"]);
    assert_eq!(
        s.groups["webdev"].password.as_ref().map(Secret::expose),
        Some("!")
    );
}

#[test]
fn snapshot_without_passwords_carries_no_hash() {
    let p = Policy {
        passwords: false,
        ..policy()
    };
    let s = source().snapshot(&p);
    assert!(
        s.users
            .values()
            .all(|u| u.password.is_none() && u.aging.last_change.is_none())
    );
    assert!(s.groups.values().all(|g| g.password.is_none()));
    assert_eq!(
        s.users["niden"].aging.max,
        Some(99999),
        "aging still travels"
    );
}

#[test]
fn snapshot_reports_bad_managed_lines_and_skips_them() {
    let passwd = [
        PASSWD,
        b"\nniden:x:2001:2001:dup:/x:/bin/sh\nbad:x:2500:2500:a:b:c:d\n",
    ]
    .concat();
    let shadow = SHADOW.to_vec();
    let shadow =
        String::from_utf8_lossy(&shadow).replace("beauty:!:19601:0:99999:7:::", "beauty:!:oops");
    let f = AccountFiles::parse(&passwd, GROUP, Some(shadow.as_bytes()), Some(GSHADOW));
    let s = f.snapshot(&policy());
    assert!(
        !s.users.contains_key("beauty"),
        "malformed shadow line: no record"
    );
    assert!(s.users.contains_key("niden"));
    let kinds: Vec<(DbFile, String)> = s
        .problems
        .iter()
        .map(|p| (p.file, format!("{:?}", p.kind)))
        .collect();
    assert!(
        kinds.contains(&(DbFile::Shadow, "Malformed".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(DbFile::Passwd, "Duplicate".into())),
        "{kinds:?}"
    );
    let dup = s
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::Duplicate)
        .expect("dup");
    assert_eq!(
        dup.to_string(),
        "passwd line 23: account \"niden\": duplicate name, this line is ignored"
    );
    // A managed user whose line breaks (here: by vipw) is unreadable, not deleted.
    let passwd = String::from_utf8_lossy(PASSWD).replace("webapp:x:2002:2002:", "webapp:x:2002:");
    let broken = AccountFiles::parse(passwd.as_bytes(), GROUP, Some(SHADOW), Some(GSHADOW));
    let now = broken.snapshot(&policy());
    assert_eq!(
        now.unreadable().collect::<Vec<_>>(),
        [&AccountId::User("webapp".into())]
    );
    assert_eq!(now.changes_since(&source().snapshot(&policy())), vec![]);
    // An invalid field (relative home) is a problem too, never a record.
    let passwd = [PASSWD, b"\nrel:x:2600:2600::home/rel:/bin/sh\n"].concat();
    let s = AccountFiles::parse(&passwd, GROUP, Some(SHADOW), Some(GSHADOW)).snapshot(&policy());
    assert!(!s.users.contains_key("rel"));
    assert!(
        matches!(s.problems[0].kind, ProblemKind::Invalid(_)),
        "{:?}",
        s.problems
    );
}

#[test]
fn changes_since_finds_upserts_and_deletions() {
    let before = source().snapshot(&policy());
    let mut after = before.clone();
    after.users.remove("webapp");
    if let Some(n) = after.users.get_mut("niden") {
        n.shell = "/bin/sh".into();
    }
    let ch = after.changes_since(&before);
    assert_eq!(ch.len(), 2);
    assert!(matches!(&ch[0], Change::User(u) if u.name == "niden" && u.shell == "/bin/sh"));
    assert_eq!(ch[1], Change::DeleteUser("webapp".into()));
}

// --- plan --------------------------------------------------------------------------------

#[test]
fn applying_a_nodes_own_records_changes_nothing() {
    let f = source();
    let s = f.snapshot(&policy());
    let plan = f.plan(&all_changes(&s), &policy(), 20000);
    assert!(plan.changed.is_empty(), "{:?}", plan.report);
    assert_eq!(plan.report.unchanged.len(), 7);
    assert_eq!(plan.files, f);
}

#[test]
fn records_applied_to_a_peer_reproduce_the_source_and_keep_its_lines() {
    let src = source().snapshot(&policy());
    let p = peer();
    let plan = p.plan(&all_changes(&src), &policy(), 20000);
    assert_eq!(plan.report.collisions, vec![]);
    assert_eq!(plan.report.refused, vec![]);
    assert_eq!(plan.report.applied.len(), 7);
    assert_eq!(plan.changed.len(), 4);
    let got = plan.files.snapshot(&policy());
    assert_eq!(got.users, src.users);
    assert_eq!(got.groups, src.groups);
    // Unmanaged lines byte-identical and in place, except the member lists naming niden.
    untouched_lines_kept(
        PEER_PASSWD,
        &plan.files.bytes(DbFile::Passwd).unwrap_or_default(),
        &[],
    );
    untouched_lines_kept(
        PEER_SHADOW,
        &plan.files.bytes(DbFile::Shadow).unwrap_or_default(),
        &[],
    );
    let group = plan.files.bytes(DbFile::Group).unwrap_or_default();
    untouched_lines_kept(PEER_GROUP, &group, &["sudo", "www-data"]);
    untouched_lines_kept(
        PEER_GSHADOW,
        &plan.files.bytes(DbFile::Gshadow).unwrap_or_default(),
        &["sudo", "www-data"],
    );
    let g = text(&plan.files, DbFile::Group);
    assert!(g.contains("\nsudo:x:27:carol,niden\n"), "{g}");
    assert!(g.contains("\nwww-data:x:33:niden\n"), "{g}");
    assert!(
        g.contains("\nwebdev:x:2100:niden,webapp\n"),
        "only managed members: {g}"
    );
    assert!(g.starts_with(std::str::from_utf8(&PEER_GROUP[..30]).unwrap_or_default()));
    let sg = text(&plan.files, DbFile::Gshadow);
    assert!(sg.contains("\nsudo:*::carol,niden\n"), "{sg}");
    assert!(sg.contains("\nwebdev:!:niden:niden,webapp\n"), "{sg}");
    let sp = text(&plan.files, DbFile::Shadow);
    assert!(
        sp.contains("\nniden:$y$j9T$nidensalt$NIDENSECRETHASH:19600:0:99999:7:::\n"),
        "{sp}"
    );
    let pw = text(&plan.files, DbFile::Passwd);
    assert!(pw.ends_with("niden:x:2001:2001:Ni Den,,,:/home/niden:/bin/bash\nwebapp:x:2002:2002:Web App:/srv/webapp:/usr/sbin/nologin\n"), "{pw}");
    assert_eq!(plan.homes.len(), 3);
    // And once more: nothing left to do.
    let again = plan.files.plan(&all_changes(&src), &policy(), 20000);
    assert!(again.changed.is_empty());
}

#[test]
fn a_changed_record_replaces_its_lines_in_place() {
    let f = source();
    let mut n = f.snapshot(&policy()).users["niden"].clone();
    n.shell = "/bin/sh".into();
    n.gecos = "Niden".into();
    n.groups = vec!["cdrom".into(), "webdev".into()];
    n.password = Some(Secret::new("$6$new$NEWHASH"));
    n.aging.last_change = Some(20001);
    let plan = f.plan(&[Change::User(n)], &policy(), 20002);
    assert_eq!(plan.report.applied, vec![AccountId::User("niden".into())]);
    let pw = text(&plan.files, DbFile::Passwd);
    let old = String::from_utf8_lossy(PASSWD).replace(
        "niden:x:2001:2001:Ni Den,,,:/home/niden:/bin/bash",
        "niden:x:2001:2001:Niden:/home/niden:/bin/sh",
    );
    assert_eq!(
        pw, old,
        "same place, the rest untouched (no newline added at the end)"
    );
    let g = text(&plan.files, DbFile::Group);
    assert!(g.contains("\ncdrom:x:24:alice,niden\n") && g.contains("\nsudo:x:27:alice\n"));
    assert!(g.contains("\nwww-data:x:33:\n") && g.contains("\nwebdev:x:2100:niden,alice,webapp\n"));
    let sg = text(&plan.files, DbFile::Gshadow);
    assert!(
        sg.contains("\ncdrom:*::alice,niden\n") && sg.contains("\nsudo:*::alice\n"),
        "{sg}"
    );
    let sp = text(&plan.files, DbFile::Shadow);
    assert!(
        sp.contains("\nniden:$6$new$NEWHASH:20001:0:99999:7:::\n"),
        "{sp}"
    );
    assert_eq!(plan.changed, BTreeSet::from(DbFile::ALL));
}

#[test]
fn deleting_a_user_removes_its_lines_and_memberships_only() {
    let f = source();
    let plan = f.plan(&[Change::DeleteUser("niden".into())], &policy(), 0);
    assert_eq!(plan.report.applied, vec![AccountId::User("niden".into())]);
    let pw = text(&plan.files, DbFile::Passwd);
    assert!(!pw.contains("niden"));
    assert!(!text(&plan.files, DbFile::Shadow).contains("niden"));
    let g = text(&plan.files, DbFile::Group);
    assert!(g.contains("\nsudo:x:27:alice\n") && g.contains("\nwebdev:x:2100:alice,webapp\n"));
    assert!(
        g.contains("\nniden:x:2001:\n"),
        "its group is a separate item"
    );
    let sg = text(&plan.files, DbFile::Gshadow);
    assert!(
        sg.contains("\nwebdev:!::alice,webapp\n"),
        "removed as admin and member: {sg}"
    );
    assert!(plan.homes.is_empty(), "a deletion never touches a home");
    // User and its group together (userdel with USERGROUPS_ENAB).
    let both = [
        Change::DeleteGroup("niden".into()),
        Change::DeleteUser("niden".into()),
    ];
    let plan = f.plan(&both, &policy(), 0);
    assert_eq!(plan.report.applied.len(), 2, "{:?}", plan.report);
    assert!(!text(&plan.files, DbFile::Group).contains("\nniden:"));
    assert!(!text(&plan.files, DbFile::Gshadow).contains("\nniden:"));
}

#[test]
fn deletions_outside_the_managed_set_are_refused() {
    let f = source();
    let ch = [
        Change::DeleteUser("alice".into()),
        Change::DeleteUser("root".into()),
        Change::DeleteGroup("sudo".into()),
        Change::DeleteGroup("niden".into()),
        Change::DeleteUser("ghost".into()),
    ];
    let plan = f.plan(&ch, &policy(), 0);
    assert!(plan.changed.is_empty());
    let reasons: Vec<String> = plan
        .report
        .refused
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        reasons,
        [
            "user \"alice\" not applied: the local account (id 1000) is not managed on this node",
            "user \"root\" not applied: the local account (id 0) is not managed on this node",
            "group \"sudo\" not applied: the local account (id 27) is not managed on this node",
            "group \"niden\" not applied: it is the primary group of user \"niden\"",
        ]
    );
    assert_eq!(plan.report.unchanged, vec![AccountId::User("ghost".into())]);
}

#[test]
fn collisions_name_both_accounts_and_change_nothing() {
    let src = source().snapshot(&policy());
    // The peer has its own webapp (uid 1002, unmanaged), a "devs" group on gid 2100 and a
    // "beauty" group with another gid.
    let passwd = [PEER_PASSWD, b"webapp:x:1002:1002::/home/webapp:/bin/sh\n"].concat();
    let group = [
        PEER_GROUP,
        b"webapp:x:1002:\ndevs:x:2100:carol\nbeauty:x:1501:\n",
    ]
    .concat();
    let p = AccountFiles::parse(&passwd, &group, Some(PEER_SHADOW), Some(PEER_GSHADOW));
    let plan = p.plan(&all_changes(&src), &policy(), 0);
    let got: Vec<String> = plan
        .report
        .collisions
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "group \"beauty\" (gid 1500) collides with local group \"beauty\" (gid 1501): same name, different id; not applied on this node",
            "group \"webapp\" (gid 2002) collides with local group \"webapp\" (gid 1002): same name, different id; not applied on this node",
            "group \"webdev\" (gid 2100) collides with local group \"devs\" (gid 2100): same id, different name; not applied on this node",
            "user \"beauty\" (uid 1500) collides with local group \"beauty\" (gid 1501): its primary group differs here; not applied on this node",
            "user \"webapp\" (uid 2002) collides with local user \"webapp\" (uid 1002): same name, different id; not applied on this node",
        ]
    );
    assert_eq!(
        plan.report.applied,
        [
            AccountId::Group("niden".into()),
            AccountId::User("niden".into())
        ]
    );
    let pw = text(&plan.files, DbFile::Passwd);
    assert!(pw.contains("\nwebapp:x:1002:1002::/home/webapp:/bin/sh\n"));
    assert!(!pw.contains("beauty"));
    assert!(text(&plan.files, DbFile::Group).contains("\ndevs:x:2100:carol\n"));
    // niden lists webdev, which collided: it waits for it.
    assert_eq!(
        plan.report.waiting,
        vec![Waiting {
            user: "niden".into(),
            groups: vec!["webdev".into()]
        }]
    );
}

#[test]
fn uid_taken_by_another_name_is_a_collision() {
    let passwd = [PEER_PASSWD, b"other:x:2001:100::/home/other:/bin/sh\n"].concat();
    let p = AccountFiles::parse(&passwd, PEER_GROUP, Some(PEER_SHADOW), Some(PEER_GSHADOW));
    let n = source().snapshot(&policy()).users["niden"].clone();
    let plan = p.plan(&[Change::User(n)], &policy(), 0);
    assert_eq!(plan.report.collisions.len(), 1);
    assert_eq!(plan.report.collisions[0].kind, CollisionKind::Id);
    assert_eq!(plan.report.collisions[0].local.name, "\"other\"");
    assert!(plan.changed.is_empty());
}

#[test]
fn a_rename_frees_the_uid_first() {
    let f = source();
    let mut n = f.snapshot(&policy()).users["niden"].clone();
    n.name = "nid".into();
    let plan = f.plan(
        &[Change::User(n), Change::DeleteUser("niden".into())],
        &policy(),
        0,
    );
    assert_eq!(plan.report.collisions, vec![]);
    assert_eq!(plan.report.applied.len(), 2);
    let pw = text(&plan.files, DbFile::Passwd);
    assert!(pw.contains("\nnid:x:2001:2001:") && !pw.contains("\nniden:"));
    assert!(text(&plan.files, DbFile::Group).contains("\nsudo:x:27:alice,nid\n"));
}

#[test]
fn a_new_group_and_its_member_in_one_batch() {
    let p = peer();
    let g = GroupRecord {
        name: "ops".into(),
        gid: 2200,
        password: None,
        admins: vec!["x".into()],
    };
    let mut u = source().snapshot(&policy()).users["niden"].clone();
    u.groups = vec!["ghost".into(), "ops".into()];
    let mut own = source().snapshot(&policy()).groups["niden"].clone();
    own.password = Some(Secret::new("!"));
    let plan = p.plan(
        &[Change::User(u), Change::Group(g), Change::Group(own)],
        &policy(),
        0,
    );
    assert_eq!(plan.report.applied.len(), 3, "{:?}", plan.report);
    let g = text(&plan.files, DbFile::Group);
    assert!(g.ends_with("ops:x:2200:niden\nniden:x:2001:\n"), "{g}");
    let sg = text(&plan.files, DbFile::Gshadow);
    assert!(sg.ends_with("ops:!:x:niden\nniden:!::\n"), "{sg}");
    assert_eq!(
        plan.report.waiting,
        vec![Waiting {
            user: "niden".into(),
            groups: vec!["ghost".into()]
        }]
    );
}

#[test]
fn a_group_outside_the_set_is_refused() {
    let g = GroupRecord {
        name: "evil".into(),
        gid: 5,
        password: None,
        admins: vec![],
    };
    let plan = peer().plan(&[Change::Group(g)], &policy(), 0);
    assert_eq!(plan.report.refused.len(), 1);
    assert!(matches!(
        plan.report.refused[0].reason,
        RefusalReason::NotManaged { local_id: None }
    ));
    assert!(plan.changed.is_empty());
}

#[test]
fn without_passwords_new_users_are_locked_and_local_hashes_kept() {
    let p = Policy {
        passwords: false,
        ..policy()
    };
    let src = source().snapshot(&policy());
    // Records read with hashes (as if from a misconfigured peer): the hashes are ignored.
    let plan = peer().plan(&all_changes(&src), &p, 20123);
    let sp = text(&plan.files, DbFile::Shadow);
    assert!(sp.contains("\nniden:!:20123:0:99999:7:::\n"), "{sp}");
    assert!(!sp.contains(SECRET));
    assert!(text(&plan.files, DbFile::Gshadow).contains("\nwebdev:!:niden:niden,webapp\n"));
    // Existing user: its hash and last change stay.
    let mut n = src.users["niden"].clone();
    n.password = None;
    n.aging.last_change = None;
    n.shell = "/bin/sh".into();
    let plan = source().plan(&[Change::User(n)], &p, 20123);
    let sp = text(&plan.files, DbFile::Shadow);
    assert!(
        sp.contains("\nniden:$y$j9T$nidensalt$NIDENSECRETHASH:19600:0:99999:7:::\n"),
        "{sp}"
    );
    assert_eq!(plan.changed, BTreeSet::from([DbFile::Passwd]));
}

#[test]
fn without_shadow_files_hashes_go_to_passwd_and_group() {
    let p = AccountFiles::parse(PEER_PASSWD, PEER_GROUP, None, None);
    let src = source().snapshot(&policy());
    let plan = p.plan(&all_changes(&src), &policy(), 0);
    assert_eq!(
        plan.changed,
        BTreeSet::from([DbFile::Passwd, DbFile::Group])
    );
    let pw = text(&plan.files, DbFile::Passwd);
    assert!(
        pw.contains("\nniden:$y$j9T$nidensalt$NIDENSECRETHASH:2001:2001:"),
        "{pw}"
    );
    assert!(text(&plan.files, DbFile::Group).contains("\nwebdev:!:2100:niden,webapp\n"));
    let back = plan.files.snapshot(&policy());
    assert_eq!(back.users["niden"].password, src.users["niden"].password);
}

#[test]
fn malformed_or_duplicate_local_lines_are_left_alone() {
    let passwd = [PEER_PASSWD, b"niden:x:2001:oops\n"].concat();
    let p = AccountFiles::parse(&passwd, PEER_GROUP, Some(PEER_SHADOW), Some(PEER_GSHADOW));
    let n = source().snapshot(&policy()).users["niden"].clone();
    let plan = p.plan(&[Change::User(n.clone())], &policy(), 0);
    assert!(plan.changed.is_empty());
    assert_eq!(
        plan.report.refused[0].reason,
        RefusalReason::MalformedLocal {
            file: DbFile::Passwd,
            line: 6
        }
    );
    let shadow = [PEER_SHADOW, b"niden:!::::::::\nniden:!::::::::\n"].concat();
    let p = AccountFiles::parse(PEER_PASSWD, PEER_GROUP, Some(&shadow), Some(PEER_GSHADOW));
    let plan = p.plan(&[Change::User(n)], &policy(), 0);
    assert!(plan.changed.is_empty(), "checked before the passwd edit");
    assert!(matches!(
        plan.report.refused[0].reason,
        RefusalReason::MalformedLocal {
            file: DbFile::Shadow,
            ..
        } | RefusalReason::DuplicateLocal {
            file: DbFile::Shadow
        }
    ));
}

#[test]
fn hostile_records_are_refused_by_the_plan_too() {
    let mut n = source().snapshot(&policy()).users["niden"].clone();
    n.gecos = "x:0:0:root:/root:/bin/bash\nroot2".into();
    let mut root = n.clone();
    root.name = "toor".into();
    root.uid = 0;
    root.gecos = String::new();
    let plan = peer().plan(&[Change::User(n), Change::User(root)], &policy(), 0);
    assert!(plan.changed.is_empty());
    assert_eq!(plan.report.refused.len(), 2);
    assert!(
        plan.report
            .refused
            .iter()
            .all(|r| matches!(r.reason, RefusalReason::Invalid(_)))
    );
}

#[test]
fn nothing_formatted_shows_a_hash() {
    let f = source();
    let s = f.snapshot(&policy());
    let plan = peer().plan(&all_changes(&s), &policy(), 0);
    let mut bad = s.users["niden"].clone();
    bad.password = Some(Secret::new(format!("$6$x${SECRET}\n")));
    let err = validate_user(&bad, &policy().set).err();
    let shown = format!(
        "{s:?} {f:?} {plan:?} {:?} {err:?} {}",
        all_changes(&s),
        err.as_ref().map(ToString::to_string).unwrap_or_default()
    );
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("Secret(<redacted>)"));
}

#[test]
fn change_codec_limits_and_round_trip() {
    let s = source().snapshot(&policy());
    for c in all_changes(&s) {
        let b = c.encode().expect("encode");
        assert_eq!(Change::decode(&b).expect("decode"), c);
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            Change::decode(&longer),
            Err(DecodeError::Trailing(1))
        ));
    }
    assert!(matches!(
        Change::decode(&vec![0; MAX_RECORD_BYTES + 1]),
        Err(DecodeError::TooLong { .. })
    ));
    assert!(Change::decode(&[9, 9, 9]).is_err());
}

// --- on disk -----------------------------------------------------------------------------

/// A root with the four files (shadow files 0640 root:shadow as on Debian) and etc/login.defs.
fn make_root(passwd: &[u8], group: &[u8], shadow: &[u8], gshadow: &[u8]) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let etc = d.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(d.path().join("home")).expect("mkdir home");
    std::fs::create_dir_all(d.path().join("srv")).expect("mkdir srv");
    for (name, bytes, mode) in [
        ("passwd", passwd, 0o644),
        ("group", group, 0o644),
        ("shadow", shadow, 0o640),
        ("gshadow", gshadow, 0o640),
    ] {
        let p = etc.join(name);
        std::fs::write(&p, bytes).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if name.contains("shadow") {
            let _ = std::os::unix::fs::chown(&p, Some(0), Some(42));
        }
    }
    d
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).expect("stat");
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn apply_on_disk_keeps_modes_owners_and_backups() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    let etc = root.path().join("etc");
    let before: Vec<_> = DbFile::ALL
        .iter()
        .map(|f| meta(&etc.join(f.name())))
        .collect();
    let db = AccountDb::new(root.path());
    let src = source().snapshot(&policy());
    let p = Policy {
        create_home: false,
        ..policy()
    };
    let report = db.apply(&p, &all_changes(&src)).expect("apply");
    assert_eq!(report.applied.len(), 7, "{report:?}");
    assert_eq!(report.files, DbFile::ALL.to_vec());
    let after: Vec<_> = DbFile::ALL
        .iter()
        .map(|f| meta(&etc.join(f.name())))
        .collect();
    assert_eq!(before, after, "modes and owners kept");
    for (f, old) in DbFile::ALL
        .iter()
        .zip([PEER_PASSWD, PEER_SHADOW, PEER_GROUP, PEER_GSHADOW])
    {
        assert_eq!(
            std::fs::read(etc.join(f.backup_name())).expect("backup"),
            old
        );
        assert_eq!(meta(&etc.join(f.backup_name())), meta(&etc.join(f.name())));
    }
    let back = db.read(&p).expect("read");
    assert_eq!(back.users, src.users);
    assert_eq!(back.recovery, None);
    // Nothing left behind: no lock, temp or journal files.
    let mut names: Vec<String> = std::fs::read_dir(&etc)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".pwd.lock",
            "group",
            "group-",
            "gshadow",
            "gshadow-",
            "passwd",
            "passwd-",
            "shadow",
            "shadow-"
        ]
    );
    // A second apply of the same records writes nothing.
    let mtime = std::fs::metadata(etc.join("passwd-"))
        .expect("stat")
        .mtime_nsec();
    let again = db.apply(&p, &all_changes(&src)).expect("apply");
    assert!(again.files.is_empty() && again.applied.is_empty());
    assert_eq!(
        std::fs::metadata(etc.join("passwd-"))
            .expect("stat")
            .mtime_nsec(),
        mtime
    );
}

#[test]
fn an_invalid_change_refuses_the_whole_batch() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    let db = AccountDb::new(root.path());
    let src = source().snapshot(&policy());
    let mut ch = all_changes(&src);
    ch.push(Change::DeleteUser("a:b".into()));
    let e = db.apply(&policy(), &ch).expect_err("refused");
    assert!(matches!(e, AccountsError::Invalid { index: 7, .. }), "{e}");
    assert_eq!(
        std::fs::read(root.path().join("etc/passwd")).expect("read"),
        PEER_PASSWD
    );
    assert!(!root.path().join("etc/passwd-").exists());
}

#[test]
fn missing_files_and_symlinks_are_errors() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    let etc = root.path().join("etc");
    std::fs::remove_file(etc.join("gshadow")).expect("rm");
    let db = AccountDb::new(root.path());
    let s = db.read(&policy()).expect("gshadow is optional");
    assert!(s.users.is_empty());
    std::fs::remove_file(etc.join("group")).expect("rm");
    std::os::unix::fs::symlink("/etc/group", etc.join("group")).expect("symlink");
    assert!(matches!(
        db.read(&policy()),
        Err(AccountsError::NotAFile { .. })
    ));
    std::fs::remove_file(etc.join("group")).expect("rm");
    assert!(matches!(
        db.read(&policy()),
        Err(AccountsError::Missing { .. })
    ));
}

#[test]
fn an_interrupted_apply_is_finished_by_the_next_read() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    let db = AccountDb::new(root.path());
    let src = source().snapshot(&policy());
    store::testing::apply_until_journal(&db, &policy(), &all_changes(&src)).expect("stage");
    assert_eq!(
        std::fs::read(root.path().join("etc/passwd")).expect("read"),
        PEER_PASSWD
    );
    let s = db.read(&policy()).expect("read");
    assert_eq!(
        s.recovery,
        Some(Recovery {
            completed: DbFile::ALL.to_vec(),
            abandoned: vec![]
        })
    );
    assert_eq!(s.users, src.users);
    assert_eq!(
        std::fs::read(root.path().join("etc/passwd-")).expect("read"),
        PEER_PASSWD
    );
    assert_eq!(db.read(&policy()).expect("read").recovery, None);
}

#[test]
fn an_interrupted_apply_gives_way_to_a_file_changed_since() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    let db = AccountDb::new(root.path());
    let src = source().snapshot(&policy());
    store::testing::apply_until_journal(&db, &policy(), &all_changes(&src)).expect("stage");
    let edited = [PEER_PASSWD, b"dave:x:1001:1001::/home/dave:/bin/sh\n"].concat();
    std::fs::write(root.path().join("etc/passwd"), &edited).expect("a tool writes passwd");
    let r = db
        .apply(
            &Policy {
                create_home: false,
                ..policy()
            },
            &[],
        )
        .expect("apply");
    let rec = r.recovery.expect("recovered");
    assert_eq!(rec.abandoned, vec![DbFile::Passwd]);
    assert_eq!(
        std::fs::read(root.path().join("etc/passwd")).expect("read"),
        edited
    );
    let leftovers = std::fs::read_dir(root.path().join("etc"))
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(crate::fs::safefs::TEMP_PREFIX)
        })
        .count();
    assert_eq!(leftovers, 0);
}

// --- homes -------------------------------------------------------------------------------

fn skel(root: &Path) {
    let skel = root.join("etc/skel");
    std::fs::create_dir_all(skel.join(".config/app")).expect("mkdir");
    std::fs::write(skel.join(".bashrc"), b"# bashrc\n").expect("write");
    std::fs::set_permissions(skel.join(".bashrc"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    std::fs::write(skel.join(".config/app/secret"), b"s").expect("write");
    std::fs::set_permissions(
        skel.join(".config/app/secret"),
        std::fs::Permissions::from_mode(0o4600),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("/etc/shadow", skel.join("link-out")).expect("symlink");
}

#[test]
fn homes_are_made_from_skel_with_owner_and_mode() {
    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    skel(root.path());
    let db = AccountDb::new(root.path());
    let src = source().snapshot(&policy());
    // An existing home is left alone; webapp's parent /srv exists; beauty's home is there.
    std::fs::create_dir_all(root.path().join("home/beauty")).expect("mkdir");
    std::fs::write(root.path().join("home/beauty/keep"), b"k").expect("write");
    let r = db.apply(&policy(), &all_changes(&src)).expect("apply");
    let created: Vec<String> = r.homes.iter().map(ToString::to_string).collect();
    assert_eq!(
        created,
        [
            "created home \"/home/niden\" of \"niden\" (mode 0700)",
            "created home \"/srv/webapp\" of \"webapp\" (mode 0700)",
        ]
    );
    let h = root.path().join("home/niden");
    assert_eq!(meta(&h), (0o700, 2001, 2001));
    assert_eq!(meta(&h.join(".bashrc")), (0o644, 2001, 2001));
    assert_eq!(
        std::fs::read(h.join(".bashrc")).expect("read"),
        b"# bashrc\n"
    );
    assert_eq!(
        meta(&h.join(".config/app/secret")),
        (0o600, 2001, 2001),
        "setuid dropped"
    );
    assert_eq!(meta(&h.join(".config")).1, 2001);
    let l = std::fs::symlink_metadata(h.join("link-out")).expect("lstat");
    assert!(l.file_type().is_symlink() && l.uid() == 2001);
    assert_eq!(
        std::fs::read_link(h.join("link-out")).expect("readlink"),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        meta(&root.path().join("home/beauty")).1,
        0,
        "existing home untouched"
    );
    let names: Vec<_> = std::fs::read_dir(root.path().join("home/beauty"))
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["keep"], "nothing copied into an existing home");
    // Deleting the user never deletes the home.
    let r = db
        .apply(&policy(), &[Change::DeleteUser("niden".into())])
        .expect("delete");
    assert_eq!(r.applied.len(), 1);
    assert!(h.join(".bashrc").exists());
}

#[test]
fn home_mode_from_login_defs_and_careful_parents() {
    assert_eq!(home::home_mode(""), 0o700);
    assert_eq!(
        home::home_mode("UMASK 022\n#HOME_MODE 0755\n"),
        0o700,
        "UMASK is not used"
    );
    assert_eq!(home::home_mode("HOME_MODE\t0750\n"), 0o750);
    assert_eq!(home::home_mode("HOME_MODE 0x1e8\n"), 0o750);
    assert_eq!(
        home::home_mode("HOME_MODE 488\n"),
        0o750,
        "decimal, as strtol reads it"
    );
    assert_eq!(
        home::home_mode("HOME_MODE 04755\n"),
        0o755,
        "no setuid on a home"
    );
    assert_eq!(home::home_mode("HOME_MODE nonsense\n"), 0o700);

    let root = make_root(PEER_PASSWD, PEER_GROUP, PEER_SHADOW, PEER_GSHADOW);
    std::fs::write(root.path().join("etc/login.defs"), b"HOME_MODE 0750\n").expect("write");
    std::os::unix::fs::symlink("/etc", root.path().join("etc/skel")).expect("skel symlink");
    let req = |home: &str| HomeRequest {
        user: "u".into(),
        home: home.into(),
        uid: 2050,
        gid: 2050,
    };
    let r = home::ensure_home(root.path(), &req("/home/u"), 0o750);
    assert!(
        matches!(r, Some(HomeOutcome::Created { mode: 0o750, .. })),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("home/u"))
            .expect("ls")
            .count(),
        0,
        "skel symlink not followed"
    );
    assert_eq!(home::ensure_home(root.path(), &req("/home/u"), 0o750), None);
    for home in ["/root/.ssh", "/etc/cron.d", "/", "/nonexistent/u"] {
        let r = home::ensure_home(root.path(), &req(home), 0o700);
        assert!(
            matches!(r, Some(HomeOutcome::Skipped { .. })),
            "{home}: {r:?}"
        );
    }
    std::fs::create_dir_all(root.path().join("tmp")).expect("mkdir");
    std::fs::set_permissions(
        root.path().join("tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .expect("chmod");
    let r = home::ensure_home(root.path(), &req("/tmp/u"), 0o700);
    assert!(
        matches!(r, Some(HomeOutcome::Skipped { .. })),
        "world-writable parent: {r:?}"
    );
    assert!(!root.path().join("tmp/u").exists());
}

// --- fuzz seeds --------------------------------------------------------------------------

fn account_seeds() -> Vec<(String, Vec<u8>)> {
    let s = source().snapshot(&policy());
    let mut changes = all_changes(&s);
    let mut unsynced = s.users["niden"].clone();
    unsynced.password = None;
    unsynced.name = "beauty".into();
    changes.push(Change::User(unsynced));
    changes.push(Change::DeleteUser("niden".into()));
    changes.push(Change::DeleteGroup("webdev".into()));
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("seed-{i:02}"), c.encode().expect("encode")))
        .collect()
}

fn account_corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_account")
}

/// The committed seeds of the `decode_account` fuzz target are what the samples encode to.
#[test]
fn account_fuzz_seeds_are_current() {
    for (name, bytes) in account_seeds() {
        let file = account_corpus().join(&name);
        assert!(
            std::fs::read(&file).unwrap_or_default() == bytes,
            "{} is stale or missing; run `cargo test --lib -- --ignored write_account_fuzz_seeds`",
            file.display()
        );
    }
}

#[test]
#[ignore = "writes fuzz/corpus/decode_account; run by hand after a format change"]
fn write_account_fuzz_seeds() {
    let dir = account_corpus();
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in std::fs::read_dir(&dir).expect("ls").filter_map(Result::ok) {
        if f.file_name().to_string_lossy().starts_with("seed-") {
            std::fs::remove_file(f.path()).expect("rm");
        }
    }
    for (name, bytes) in account_seeds() {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

// --- properties --------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn opt_days() -> impl Strategy<Value = Option<i64>> {
        proptest::option::of(-1i64..100_000)
    }

    fn user() -> impl Strategy<Value = UserRecord> {
        let hash = prop_oneof![
            Just("!".to_owned()),
            Just("*".to_owned()),
            Just(String::new()),
            "\\$(6|y|2b)\\$[a-zA-Z0-9./]{1,16}\\$[a-zA-Z0-9./]{1,43}",
        ];
        let groups = proptest::sample::subsequence(vec!["sudo", "users", "www-data"], 0..=3);
        (
            ("u[a-z0-9_-]{0,15}", 2000u32..=2999, 2000u32..=2999),
            (
                "[A-Za-z0-9 ,.()-]{0,30}",
                "/(home|srv/www)/[a-z][a-z0-9.]{0,10}",
            ),
            (
                prop_oneof![Just(""), Just("/bin/bash"), Just("/usr/sbin/nologin")],
                groups,
            ),
            proptest::option::of(hash),
            (
                opt_days(),
                opt_days(),
                opt_days(),
                opt_days(),
                opt_days(),
                opt_days(),
            ),
        )
            .prop_map(
                |((name, uid, gid), (gecos, home), (shell, groups), hash, a)| UserRecord {
                    name,
                    uid,
                    gid,
                    group: None,
                    gecos,
                    home,
                    shell: shell.to_owned(),
                    groups: groups.into_iter().map(str::to_owned).collect(),
                    aging: Aging {
                        last_change: if hash.is_some() { a.0 } else { None },
                        min: a.1,
                        max: a.2,
                        warn: a.3,
                        inactive: a.4,
                        expire: a.5,
                        reserved: None,
                    },
                    password: hash.map(Secret::new),
                },
            )
    }

    fn group() -> impl Strategy<Value = GroupRecord> {
        (
            "g[a-z0-9_-]{0,15}",
            2000u32..=2999,
            proptest::option::of("!|\\*|\\$6\\$[a-z]{1,8}\\$[a-zA-Z0-9./]{1,20}"),
            proptest::collection::vec("[a-z][a-z0-9]{0,7}", 0..3),
        )
            .prop_map(|(name, gid, hash, admins)| GroupRecord {
                name,
                gid,
                password: hash.map(Secret::new),
                admins,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A valid record applied to a peer reads back as sent (with the password, when it
        /// has one), keeps every other line, and a second apply changes nothing.
        #[test]
        fn users_round_trip_through_the_files(u in user()) {
            prop_assert_eq!(validate_user(&u, &policy().set), Ok(()));
            let c = Change::User(u.clone());
            prop_assert_eq!(Change::decode(&c.encode().expect("encode")).expect("decode"), c.clone());
            let plan = peer().plan(std::slice::from_ref(&c), &policy(), 20000);
            prop_assert_eq!(&plan.report.applied, &vec![u.id()]);
            let mut back = plan.files.snapshot(&policy()).users.remove(&u.name).expect("read back");
            if u.password.is_none() {
                prop_assert_eq!(back.password.as_ref().map(Secret::expose), Some("!"));
                prop_assert_eq!(back.aging.last_change, Some(20000));
                back.password = None;
                back.aging.last_change = None;
            }
            prop_assert_eq!(back, u);
            untouched_lines_kept(PEER_PASSWD, &plan.files.bytes(DbFile::Passwd).unwrap_or_default(), &[]);
            untouched_lines_kept(PEER_SHADOW, &plan.files.bytes(DbFile::Shadow).unwrap_or_default(), &[]);
            let again = plan.files.plan(&[c], &policy(), 20000);
            prop_assert!(again.changed.is_empty());
        }

        #[test]
        fn groups_round_trip_through_the_files(g in group()) {
            prop_assert_eq!(validate_group(&g, &policy().set), Ok(()));
            let c = Change::Group(g.clone());
            let plan = peer().plan(std::slice::from_ref(&c), &policy(), 0);
            prop_assert_eq!(&plan.report.applied, &vec![g.id()]);
            let mut back = plan.files.snapshot(&policy()).groups.remove(&g.name).expect("read back");
            if g.password.is_none() {
                prop_assert_eq!(back.password.as_ref().map(Secret::expose), Some("!"));
                back.password = None;
            }
            prop_assert_eq!(back, g);
            untouched_lines_kept(PEER_GROUP, &plan.files.bytes(DbFile::Group).unwrap_or_default(), &[]);
            untouched_lines_kept(PEER_GSHADOW, &plan.files.bytes(DbFile::Gshadow).unwrap_or_default(), &[]);
        }

        /// Whatever the bytes, decoding and validating never panics, and what validates can be
        /// planned without disturbing other lines.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(c) = Change::decode(&bytes)
                && validate_change(&c, &policy().set).is_ok()
            {
                let _ = source().plan(&[c], &policy(), 0);
            }
        }
    }
}
