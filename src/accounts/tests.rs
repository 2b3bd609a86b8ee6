//! Unit tests of account sync's pure steps: detect against an index in memory, merge of
//! concurrent versions, apply into the canonical layout. The end-to-end cases with the real
//! tools and daemons are in `tests/accounts_sync.rs` and `tests/accounts_tools.rs`.

use super::apply::{Outcome, canonical, plan_files};
use super::merge::{Decision, decide, merge_members};
use super::model::{Account, AccountId, Aging, Dot, Group, Member, Members, Secret, User};
use super::sync::{Accounts, IndexRead};
use super::{AccountFiles, ManagedSet, Policy};
use crate::config::ConflictPolicy;
use crate::item::{Body, Item, VersionVector};
use std::collections::BTreeMap;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
carol:x:1500:1500::/home/carol:/bin/sh
+@nis::::::
";
const GROUP: &str = "root:x:0:
sudo:x:27:
www-data:x:33:
users:x:100:
carol:x:1500:
+@nis:::
";
const SHADOW: &str = "root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
www-data:*:19000:0:99999:7:::
carol:!:19000:0:99999:7:::
";
const GSHADOW: &str = "root:*::
sudo:*::
www-data:*::
users:$6$grouphash$x:localadm:
carol:!::
";

fn policy() -> Policy {
    Policy {
        set: ManagedSet::new(["niden"], Some((2000, 2999))),
        passwords: true,
        create_home: false,
    }
}

fn files(p: &str, g: &str, s: &str, gs: &str) -> AccountFiles {
    AccountFiles::parse(
        p.as_bytes(),
        g.as_bytes(),
        Some(s.as_bytes()),
        Some(gs.as_bytes()),
    )
}

fn base() -> AccountFiles {
    files(PASSWD, GROUP, SHADOW, GSHADOW)
}

fn text(f: &AccountFiles) -> [String; 4] {
    [
        String::from_utf8_lossy(&f.passwd.to_bytes()).into_owned(),
        String::from_utf8_lossy(&f.group.to_bytes()).into_owned(),
        String::from_utf8_lossy(&f.shadow.as_ref().map(|t| t.to_bytes()).unwrap_or_default())
            .into_owned(),
        String::from_utf8_lossy(&f.gshadow.as_ref().map(|t| t.to_bytes()).unwrap_or_default())
            .into_owned(),
    ]
}

fn user(name: &str, uid: u32, gid: u32) -> User {
    User {
        name: name.into(),
        uid,
        gid,
        gecos: String::new(),
        home: format!("/home/{name}"),
        shell: "/bin/bash".into(),
        password: Some(Secret::new("!")),
        aging: Aging {
            last_change: Some(20000),
            ..Aging::default()
        },
    }
}

fn group(name: &str, gid: u32) -> Group {
    Group {
        name: name.into(),
        gid,
        password: Some(Secret::new("!")),
        admins: vec![],
    }
}

fn vv(pairs: &[(&str, u64)]) -> VersionVector {
    VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
}

fn item(id: AccountId, v: VersionVector, origin: &str, body: Option<Account>) -> Item {
    Item {
        key: id.key(),
        version: v,
        origin: origin.into(),
        body: body.map(Body::Account),
        beat: vec![],
    }
}

fn u_item(u: User, v: VersionVector, origin: &str, made: i64) -> Item {
    item(
        AccountId::User(u.name.clone()),
        v,
        origin,
        Some(Account::User { user: u, made }),
    )
}

fn g_item(g: Group, v: VersionVector, origin: &str, made: i64) -> Item {
    item(
        AccountId::Group(g.name.clone()),
        v,
        origin,
        Some(Account::Group { group: g, made }),
    )
}

fn m_item(g: &str, members: &[(&str, &[(&str, u64)])], v: VersionVector, origin: &str) -> Item {
    item(
        AccountId::Members(g.into()),
        v,
        origin,
        Some(Account::Members(Members {
            group: g.into(),
            members: members
                .iter()
                .map(|(u, d)| Member {
                    user: u.to_string(),
                    dots: d
                        .iter()
                        .map(|(n, c)| Dot {
                            node: n.to_string(),
                            counter: *c,
                        })
                        .collect(),
                })
                .collect(),
        })),
    )
}

// --- apply -------------------------------------------------------------------------------------

#[test]
fn new_accounts_go_in_one_sorted_block_before_the_nis_lines() {
    let items = vec![
        u_item(user("zed", 2002, 2002), vv(&[("a", 1)]), "a", 1),
        g_item(group("zed", 2002), vv(&[("a", 1)]), "a", 1),
        u_item(user("amy", 2001, 2001), vv(&[("a", 1)]), "a", 1),
        g_item(group("amy", 2001), vv(&[("a", 1)]), "a", 1),
        m_item("sudo", &[("amy", &[("a", 1)])], vv(&[("a", 1)]), "a"),
    ];
    let p = plan_files(&base(), &policy(), &items, 20000);
    assert!(
        p.outcomes.iter().all(|o| *o == Outcome::Applied),
        "{:?}",
        p.outcomes
    );
    let [pw, gr, sp, gs] = text(&p.files);
    assert!(
        pw.ends_with("carol:x:1500:1500::/home/carol:/bin/sh\namy:x:2001:2001::/home/amy:/bin/bash\nzed:x:2002:2002::/home/zed:/bin/bash\n+@nis::::::\n"),
        "{pw}"
    );
    assert!(gr.contains("sudo:x:27:amy\n"), "{gr}");
    assert!(gr.ends_with("amy:x:2001:\nzed:x:2002:\n+@nis:::\n"), "{gr}");
    assert!(
        sp.ends_with("carol:!:19000:0:99999:7:::\namy:!:20000::::::\nzed:!:20000::::::\n"),
        "{sp}"
    );
    assert!(gs.contains("sudo:*::amy\n"), "{gs}");
    // an unmanaged group's gshadow line is untouched (issue 20, case 8)
    assert!(gs.contains("users:$6$grouphash$x:localadm:\n"), "{gs}");
    // the same items in another order give the same bytes
    let mut rev = items.clone();
    rev.reverse();
    assert_eq!(
        text(&plan_files(&base(), &policy(), &rev, 20000).files),
        text(&p.files)
    );
}

#[test]
fn a_different_local_account_is_a_collision_and_changes_nothing() {
    // carol is local (uid 1500, not managed); a managed carol arrives with uid 2005
    let items = vec![
        g_item(group("carolg", 2005), vv(&[("a", 1)]), "a", 1),
        u_item(user("carol", 2005, 2005), vv(&[("a", 1)]), "a", 1),
    ];
    let p = plan_files(&base(), &policy(), &items, 20000);
    assert_eq!(p.outcomes[0], Outcome::Applied);
    assert!(
        matches!(&p.outcomes[1], Outcome::Aside { collision: true, reason } if reason.contains("local user \"carol\" (uid 1500)")),
        "{:?}",
        p.outcomes
    );
    assert!(text(&p.files)[0].contains("carol:x:1500:1500"));
    // deleting the managed carol does not delete the local one (issue 20, case 1)
    let del = vec![item(
        AccountId::User("carol".into()),
        vv(&[("a", 2)]),
        "a",
        None,
    )];
    let p = plan_files(&base(), &policy(), &del, 20000);
    assert_eq!(p.outcomes, vec![Outcome::Applied]);
    assert_eq!(text(&p.files), text(&base()));
    // a uid held by another name
    let items = vec![u_item(user("dan", 2001, 100), vv(&[("a", 1)]), "a", 1)];
    let f = plan_files(&base(), &policy(), &items, 20000).files;
    let items = vec![u_item(user("eve", 2001, 100), vv(&[("b", 1)]), "b", 1)];
    let p = plan_files(&f, &policy(), &items, 20000);
    assert!(matches!(
        &p.outcomes[0],
        Outcome::Aside {
            collision: true,
            ..
        }
    ));
}

#[test]
fn uid_changes_inside_the_range_are_applied_in_place() {
    let f = plan_files(
        &base(),
        &policy(),
        &[
            g_item(group("fred", 2008), vv(&[("a", 1)]), "a", 1),
            u_item(user("fred", 2008, 2008), vv(&[("a", 1)]), "a", 1),
        ],
        20000,
    )
    .files;
    let mut u = user("fred", 2018, 2008);
    u.shell = "/bin/sh".into();
    let p = plan_files(&f, &policy(), &[u_item(u, vv(&[("a", 2)]), "a", 2)], 20000);
    assert_eq!(p.outcomes, vec![Outcome::Applied]);
    assert!(text(&p.files)[0].contains("fred:x:2018:2008::/home/fred:/bin/sh\n"));
    assert!(!text(&p.files)[0].contains("2008:2008"));
}

#[test]
fn a_user_waits_for_its_primary_group_and_members_for_their_users() {
    let p = plan_files(
        &base(),
        &policy(),
        &[
            u_item(user("gina", 2010, 2010), vv(&[("a", 1)]), "a", 1),
            m_item(
                "sudo",
                &[("gina", &[("a", 1)]), ("hal", &[("a", 1)])],
                vv(&[("a", 1)]),
                "a",
            ),
        ],
        20000,
    );
    assert!(
        matches!(
            &p.outcomes[0],
            Outcome::Aside {
                collision: false,
                ..
            }
        ),
        "{:?}",
        p.outcomes
    );
    assert_eq!(
        p.outcomes[1],
        Outcome::Partial {
            waiting: vec!["gina".into(), "hal".into()]
        }
    );
    // a user whose primary group is an unmanaged one that exists (users, gid 100)
    let p = plan_files(
        &base(),
        &policy(),
        &[u_item(user("gina", 2010, 100), vv(&[("a", 1)]), "a", 1)],
        20000,
    );
    assert_eq!(p.outcomes, vec![Outcome::Applied]);
    let [_, gr, _, gs] = text(&p.files);
    assert!(gr.contains("users:x:100:\n") && gs.contains("users:$6$grouphash$x:localadm:\n"));
}

#[test]
fn a_group_still_someones_primary_group_is_kept() {
    let f = plan_files(
        &base(),
        &policy(),
        &[
            g_item(group("dan", 2040), vv(&[("a", 1)]), "a", 1),
            u_item(user("dan", 2040, 2040), vv(&[("a", 1)]), "a", 1),
        ],
        20000,
    )
    .files;
    let del = item(AccountId::Group("dan".into()), vv(&[("a", 2)]), "a", None);
    let p = plan_files(&f, &policy(), std::slice::from_ref(&del), 20000);
    assert!(
        matches!(p.outcomes[0], Outcome::KeepLocal { .. }),
        "{:?}",
        p.outcomes
    );
    // with the user deleted in the same apply, both go
    let udel = item(AccountId::User("dan".into()), vv(&[("a", 2)]), "a", None);
    let p = plan_files(&f, &policy(), &[del, udel], 20000);
    assert_eq!(p.outcomes, vec![Outcome::Applied, Outcome::Applied]);
    assert_eq!(text(&p.files), text(&base()));
}

#[test]
fn a_renamed_group_keeps_the_local_members() {
    // webdev (managed, gid 2100) has local member www-data and managed member amy
    let f = plan_files(
        &base(),
        &policy(),
        &[
            g_item(group("amy", 2001), vv(&[("a", 1)]), "a", 1),
            u_item(user("amy", 2001, 2001), vv(&[("a", 1)]), "a", 1),
            g_item(group("webdev", 2100), vv(&[("a", 1)]), "a", 1),
            m_item("webdev", &[("amy", &[("a", 1)])], vv(&[("a", 1)]), "a"),
        ],
        20000,
    )
    .files;
    let mut f = f;
    let gl = f.group.find("webdev")[0];
    std::sync::Arc::make_mut(&mut f.group).set(gl, b"webdev:x:2100:www-data,amy".to_vec());
    let sl = f.gshadow.as_ref().map(|t| t.find("webdev")[0]).unwrap_or(0);
    if let Some(t) = f.gshadow.as_mut().map(std::sync::Arc::make_mut) {
        t.set(sl, b"webdev:!::www-data,amy".to_vec());
    }
    let del = [
        item(
            AccountId::Group("webdev".into()),
            vv(&[("a", 2)]),
            "a",
            None,
        ),
        item(
            AccountId::Members("webdev".into()),
            vv(&[("a", 2)]),
            "a",
            None,
        ),
    ];
    let add = [
        g_item(group("developers", 2100), vv(&[("a", 2)]), "a", 2),
        m_item("developers", &[("amy", &[("a", 2)])], vv(&[("a", 2)]), "a"),
    ];
    let p = plan_files(&f, &policy(), &[&del[..], &add[..]].concat(), 20000);
    assert!(
        p.outcomes.iter().all(|o| *o == Outcome::Applied),
        "{:?}",
        p.outcomes
    );
    let [_, gr, _, gs] = text(&p.files);
    assert!(gr.contains("developers:x:2100:www-data,amy\n"), "{gr}");
    assert!(gs.contains("developers:!::www-data,amy\n"), "{gs}");
    assert!(!gr.contains("webdev"));

    // the same rename in batches of their own, in either order: the deletion first, or the
    // new name first (set aside: the old one still holds the gid)
    fn plan(
        f: &AccountFiles,
        items: &[Item],
        carried: &foldhash::HashMap<u32, Vec<Vec<u8>>>,
    ) -> super::apply::FilePlan {
        super::apply::plan_in(
            &super::View::new(f, &policy()),
            &policy(),
            items,
            20000,
            carried,
        )
    }
    for add_first in [false, true] {
        let mut carried = foldhash::HashMap::default();
        let mut cur = f.clone();
        if add_first {
            let p = plan(&cur, &add, &carried);
            assert!(
                matches!(p.outcomes[0], Outcome::Aside { .. }),
                "{:?}",
                p.outcomes
            );
            cur = p.files;
        }
        let p = plan(&cur, &del, &carried);
        assert!(p.outcomes.iter().all(|o| *o == Outcome::Applied));
        assert_eq!(p.carried.get(&2100), Some(&vec![b"www-data".to_vec()]));
        carried = p.carried;
        cur = p.files;
        let p = plan(&cur, &add, &carried);
        assert!(
            p.outcomes.iter().all(|o| *o == Outcome::Applied),
            "{:?}",
            p.outcomes
        );
        assert!(p.carried.is_empty(), "taken over");
        let [_, gr, _, gs] = text(&p.files);
        assert!(gr.contains("developers:x:2100:www-data,amy\n"), "{gr}");
        assert!(gs.contains("developers:!::www-data,amy\n"), "{gs}");
    }
}

#[test]
fn canonical_order_sorts_managed_members_after_local_ones() {
    let mut f = plan_files(
        &base(),
        &policy(),
        &[
            g_item(group("big", 2200), vv(&[("a", 1)]), "a", 1),
            u_item(user("amy", 2001, 100), vv(&[("a", 1)]), "a", 1),
            u_item(user("bob", 2002, 100), vv(&[("a", 1)]), "a", 1),
        ],
        20000,
    )
    .files;
    let i = f.group.find("big")[0];
    std::sync::Arc::make_mut(&mut f.group).set(i, b"big:x:2200:bob,www-data,amy".to_vec());
    let c = canonical(&f, &policy(), &["big".to_string()].into_iter().collect());
    assert!(
        text(&c)[1].contains("big:x:2200:www-data,amy,bob\n"),
        "{}",
        text(&c)[1]
    );
}

// --- merge ---------------------------------------------------------------------------------

#[test]
fn concurrent_member_adds_both_survive_and_a_removal_removes() {
    // base: {amy} added by a at 1; a adds bob (a:2), b adds cid (b:1) concurrently
    let a = m_item(
        "web",
        &[("amy", &[("a", 1)]), ("bob", &[("a", 2)])],
        vv(&[("a", 2)]),
        "a",
    );
    let b = m_item(
        "web",
        &[("amy", &[("a", 1)]), ("cid", &[("b", 1)])],
        vv(&[("a", 1), ("b", 1)]),
        "b",
    );
    let m = merge_members(&a, &b).expect("a set");
    assert_eq!(m.names().collect::<Vec<_>>(), ["amy", "bob", "cid"]);
    assert_eq!(merge_members(&b, &a), Some(m));
    // b removed amy (having seen her add), a added bob: amy goes, bob stays
    let b = m_item("web", &[], vv(&[("a", 1), ("b", 1)]), "b");
    let m = merge_members(&a, &b).expect("a set");
    assert_eq!(m.names().collect::<Vec<_>>(), ["bob"]);
    // a tombstone is an empty set
    let t = item(
        AccountId::Members("web".into()),
        vv(&[("a", 1), ("b", 1)]),
        "b",
        None,
    );
    assert_eq!(merge_members(&a, &t), Some(m));
    match decide(Some(&a), &b, &ConflictPolicy::Newest) {
        Decision::Take {
            item,
            conflict: None,
        } => {
            assert_eq!(item.version, vv(&[("a", 2), ("b", 1)]));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn concurrent_user_changes_are_a_conflict_won_by_the_change_made_last() {
    let mut u1 = user("alice", 2050, 2050);
    u1.gecos = "one".into();
    let mut u2 = user("alice", 2051, 2051);
    u2.gecos = "two".into();
    // n3's change was made first (time 100) but noticed last (its counter is higher)
    let early = u_item(u1, vv(&[("n3", 900)]), "n3", 100);
    let late = u_item(u2, vv(&[("n1", 200)]), "n1", 200);
    for (local, remote) in [(&early, &late), (&late, &early)] {
        let d = decide(Some(local), remote, &ConflictPolicy::Newest);
        let (item, c) = match d {
            Decision::Take { item, conflict } | Decision::Keep { item, conflict } => {
                (item, conflict)
            }
            d => panic!("{d:?}"),
        };
        assert_eq!(item.origin, "n1");
        assert_eq!(item.version, vv(&[("n1", 200), ("n3", 900)]));
        let c = c.expect("a conflict");
        assert_eq!(c.winner.as_deref(), Some("n1"));
        assert_eq!(c.versions.len(), 2);
    }
    assert!(matches!(
        decide(Some(&early), &late, &ConflictPolicy::Manual),
        Decision::Unresolved { .. }
    ));
    let d = decide(Some(&late), &early, &ConflictPolicy::Prefer("n3".into()));
    assert!(
        matches!(d, Decision::Take { ref item, .. } if item.origin == "n3"),
        "{d:?}"
    );
    // the same change on two nodes is no conflict, and every node keeps the same body
    let a = u_item(user("x", 2001, 2001), vv(&[("n1", 5)]), "n1", 5);
    let b = u_item(user("x", 2001, 2001), vv(&[("n2", 6)]), "n2", 6);
    let (da, db) = (
        decide(Some(&a), &b, &ConflictPolicy::Newest),
        decide(Some(&b), &a, &ConflictPolicy::Newest),
    );
    let body = |d: &Decision| match d {
        Decision::Keep {
            item,
            conflict: None,
        } => item.clone(),
        d => panic!("{d:?}"),
    };
    assert_eq!(body(&da), body(&db));
}

#[test]
fn adopted_copies_lose_to_any_change_without_a_conflict() {
    let adopted = u_item(user("bob", 2001, 2001), VersionVector::default(), "", 0);
    let del = item(AccountId::User("bob".into()), vv(&[("n1", 10)]), "n1", None);
    assert!(matches!(
        decide(Some(&adopted), &del, &ConflictPolicy::Newest),
        Decision::Take { conflict: None, .. }
    ));
    assert_eq!(
        decide(Some(&del), &adopted, &ConflictPolicy::Newest),
        Decision::Ignore
    );
}

// --- detect --------------------------------------------------------------------------------

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

fn read_set(f: &AccountFiles) -> super::FileSet {
    super::store::testing::file_set(f.clone())
}

fn commit(ix: &mut Mem, items: Vec<Item>) {
    for i in items {
        ix.0.insert(i.key.clone(), i);
    }
}

#[test]
fn detect_reports_changes_once_and_leaving_the_set_is_no_delete() {
    let mut acc = Accounts::new(policy(), "n1");
    let mut ix = Mem::default();
    let mut f = base();
    std::sync::Arc::make_mut(&mut f.passwd).push(b"fred:x:2008:2008::/home/fred:/bin/sh".to_vec());
    std::sync::Arc::make_mut(&mut f.group).push(b"fred:x:2008:".to_vec());
    let i = f.group.find("sudo")[0];
    std::sync::Arc::make_mut(&mut f.group).set(i, b"sudo:x:27:fred".to_vec());
    let d = acc
        .detect(&read_set(&f), &mut ix, 1000, false)
        .expect("detect");
    let keys: Vec<String> = d
        .changes
        .iter()
        .map(|i| String::from_utf8_lossy(&i.key).into_owned())
        .collect();
    assert_eq!(keys, ["group/fred", "user/fred", "members/sudo"]);
    commit(&mut ix, d.changes);
    // nothing new
    let d = acc
        .detect(&read_set(&f), &mut ix, 2000, false)
        .expect("detect");
    assert!(d.changes.is_empty(), "{:?}", d.changes);
    // uid out of the range: reported, not deleted
    let j = f.passwd.find("fred")[0];
    std::sync::Arc::make_mut(&mut f.passwd)
        .set(j, b"fred:x:5000:2008::/home/fred:/bin/sh".to_vec());
    let d = acc
        .detect(&read_set(&f), &mut ix, 3000, false)
        .expect("detect");
    assert!(
        d.changes.iter().all(|i| !i.key.starts_with(b"user/")),
        "{:?}",
        d.changes
    );
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("outside the managed set")),
        "{:?}",
        d.problems
    );
    // a malformed line of a managed account is reported and not taken for deleted
    let mut acc = Accounts::new(policy(), "n1");
    let mut g = f.clone();
    let j = g.passwd.find("fred")[0];
    std::sync::Arc::make_mut(&mut g.passwd).set(j, b"fred:x:2008:2008::/home/fred".to_vec());
    let d = acc
        .detect(&read_set(&g), &mut ix, 4000, false)
        .expect("detect");
    assert!(
        d.changes
            .iter()
            .all(|i| !(i.key == b"user/fred" && i.is_deleted())),
        "{:?}",
        d.changes
    );
    assert!(
        d.problems.iter().any(|p| p.contains("malformed")),
        "{:?}",
        d.problems
    );
}

/// The periodic check: files and index that agree give nothing (also with a member set that
/// names a user deleted here); a membership the index has and the files lack (what chaos seed
/// 109 left) is found; the daemon's own state is untouched by the check.
#[test]
fn the_check_finds_files_that_differ_from_the_index_and_nothing_else() {
    let mut acc = Accounts::new(policy(), "n1");
    let mut ix = Mem::default();
    let mut f = base();
    for (u, id) in [("fred", 2008), ("gina", 2009)] {
        std::sync::Arc::make_mut(&mut f.passwd)
            .push(format!("{u}:x:{id}:{id}::/home/{u}:/bin/sh").into_bytes());
        std::sync::Arc::make_mut(&mut f.group).push(format!("{u}:x:{id}:").into_bytes());
    }
    let i = f.group.find("sudo")[0];
    std::sync::Arc::make_mut(&mut f.group).set(i, b"sudo:x:27:fred,gina".to_vec());
    let d = acc
        .detect(&read_set(&f), &mut ix, 1000, false)
        .expect("detect");
    commit(&mut ix, d.changes);
    let check = |acc: &mut Accounts, f: &AccountFiles, ix: &mut Mem| -> Vec<String> {
        acc.checker()
            .differences(&read_set(f), ix, 5000)
            .expect("check")
            .iter()
            .map(|i| i.to_string())
            .collect()
    };
    assert_eq!(check(&mut acc, &f, &mut ix), Vec::<String>::new());
    // gina deleted by a peer's change while the index's sudo still names her (a concurrent
    // add that survived the deletion): the files cannot have her, and that is no difference
    let mut g = f.clone();
    std::sync::Arc::make_mut(&mut g.passwd).remove_where(|l| l.starts_with(b"gina:"));
    std::sync::Arc::make_mut(&mut g.group).remove_where(|l| l.starts_with(b"gina:"));
    let i = g.group.find("sudo")[0];
    std::sync::Arc::make_mut(&mut g.group).set(i, b"sudo:x:27:fred".to_vec());
    let mut ix2 = Mem(ix.0.clone());
    for k in [&b"user/gina"[..], b"group/gina"] {
        let mut t = ix2.0[k].clone();
        t.body = None;
        t.version.bump("n2", 9);
        t.origin = "n2".into();
        ix2.0.insert(k.to_vec(), t);
    }
    assert_eq!(check(&mut acc, &g, &mut ix2), Vec::<String>::new());
    // fred missing from sudo in the files while the index has him: found
    let mut h = f.clone();
    let i = h.group.find("sudo")[0];
    std::sync::Arc::make_mut(&mut h.group).set(i, b"sudo:x:27:gina".to_vec());
    assert_eq!(check(&mut acc, &h, &mut ix), ["members of group \"sudo\""]);
    // the daemon's own state is untouched: the files it knows still give no change
    let d = acc
        .detect(&read_set(&f), &mut ix, 6000, false)
        .expect("detect");
    assert!(d.changes.is_empty(), "{:?}", d.changes);
}

#[test]
fn detect_adopts_unversioned_and_a_group_named_like_debian_allows() {
    let mut acc = Accounts::new(policy(), "n3");
    let mut ix = Mem::default();
    let mut f = base();
    std::sync::Arc::make_mut(&mut f.group).push(b"dev@corp:x:2300:".to_vec());
    let d = acc
        .detect(&read_set(&f), &mut ix, 1000, true)
        .expect("detect");
    assert_eq!(d.changes.len(), 1);
    let i = &d.changes[0];
    assert_eq!(
        (i.key.as_slice(), i.origin.as_str()),
        (&b"group/dev@corp"[..], "")
    );
    assert!(i.version.is_empty());
    assert!(d.problems.is_empty(), "{:?}", d.problems);
}

// --- on disk -----------------------------------------------------------------------------

use super::store::{self, Written};
use super::{AccountDb, AccountsError, DbFile, HomeOutcome, HomeRequest, Recovery, home};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A root with the four files (shadow files 0640 root:shadow as on Debian).
fn make_root(f: &AccountFiles) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let etc = d.path().join("etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(d.path().join("home")).expect("mkdir home");
    for (file, mode) in [
        (DbFile::Passwd, 0o644),
        (DbFile::Group, 0o644),
        (DbFile::Shadow, 0o640),
        (DbFile::Gshadow, 0o640),
    ] {
        let p = etc.join(file.name());
        std::fs::write(&p, f.bytes(file).unwrap_or_default()).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if mode == 0o640 {
            let _ = std::os::unix::fs::chown(&p, Some(0), Some(42));
        }
    }
    d
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).expect("stat");
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn some_items() -> Vec<Item> {
    vec![
        g_item(group("niden", 2001), vv(&[("a", 1)]), "a", 1),
        u_item(user("niden", 2001, 2001), vv(&[("a", 1)]), "a", 1),
        m_item("sudo", &[("niden", &[("a", 1)])], vv(&[("a", 1)]), "a"),
    ]
}

#[test]
fn apply_on_disk_keeps_modes_owners_and_backups_and_holds_the_lock_briefly() {
    let root = make_root(&base());
    let etc = root.path().join("etc");
    let before: Vec<_> = DbFile::ALL
        .iter()
        .map(|f| meta(&etc.join(f.name())))
        .collect();
    let db = AccountDb::new(root.path());
    let mut acc = Accounts::new(policy(), "b");
    let mut ix = Mem::default();
    // apply before any detect: stale, nothing written
    let r = acc.apply(&db, &some_items(), 20000).expect("apply");
    assert!(r.stale);
    let d = acc
        .detect(&db.read().expect("read"), &mut ix, 1, false)
        .expect("detect");
    assert!(d.changes.is_empty() && d.canonical.is_none(), "{d:?}");
    let r = acc.apply(&db, &some_items(), 20000).expect("apply");
    assert!(
        !r.stale && r.outcomes.iter().all(|o| *o == Outcome::Applied),
        "{r:?}"
    );
    assert_eq!(r.files, DbFile::ALL.to_vec());
    assert!(r.locked < std::time::Duration::from_secs(1));
    let after: Vec<_> = DbFile::ALL
        .iter()
        .map(|f| meta(&etc.join(f.name())))
        .collect();
    assert_eq!(before, after, "modes and owners kept");
    for f in DbFile::ALL {
        assert_eq!(
            std::fs::read(etc.join(f.backup_name())).expect("backup"),
            base().bytes(f).unwrap_or_default()
        );
    }
    // what was applied is no local change
    commit(&mut ix, some_items());
    let d = acc
        .detect(&db.read().expect("read"), &mut ix, 2, false)
        .expect("detect");
    assert!(d.changes.is_empty(), "{:?}", d.changes);
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
    // a tool's change between detect and apply: nothing replaced
    let read = db.read().expect("read");
    let mut other = read.files.clone();
    std::sync::Arc::make_mut(&mut other.passwd).push(b"zz:x:2999:100::/:/bin/sh".to_vec());
    std::fs::write(
        etc.join("passwd"),
        [
            base().bytes(DbFile::Passwd).unwrap_or_default(),
            b"tool:x:1600:100::/:/bin/sh\n".to_vec(),
        ]
        .concat(),
    )
    .expect("tool");
    assert!(matches!(
        db.write(&read, &other).expect("write"),
        Written::Stale
    ));
    assert!(
        !String::from_utf8_lossy(&std::fs::read(etc.join("passwd")).expect("read")).contains("zz:")
    );
}

#[test]
fn missing_files_and_symlinks_are_errors() {
    let root = make_root(&base());
    let etc = root.path().join("etc");
    std::fs::remove_file(etc.join("gshadow")).expect("rm");
    let db = AccountDb::new(root.path());
    assert!(
        db.read()
            .expect("gshadow is optional")
            .files
            .gshadow
            .is_none()
    );
    std::fs::remove_file(etc.join("group")).expect("rm");
    std::os::unix::fs::symlink("/etc/group", etc.join("group")).expect("symlink");
    assert!(matches!(db.read(), Err(AccountsError::NotAFile { .. })));
    std::fs::remove_file(etc.join("group")).expect("rm");
    assert!(matches!(db.read(), Err(AccountsError::Missing { .. })));
}

#[test]
fn an_interrupted_write_is_finished_by_the_next_read_or_gives_way() {
    let root = make_root(&base());
    let db = AccountDb::new(root.path());
    let read = db.read().expect("read");
    let new = plan_files(&read.files, &policy(), &some_items(), 20000).files;
    store::testing::write_until_journal(&db, &read, &new).expect("stage");
    let back = db.read().expect("read");
    assert_eq!(
        back.recovery,
        Some(Recovery {
            completed: DbFile::ALL.to_vec(),
            abandoned: vec![]
        })
    );
    assert_eq!(back.files, new);
    // again, but a tool writes passwd after the crash
    let root = make_root(&base());
    let db = AccountDb::new(root.path());
    let read = db.read().expect("read");
    store::testing::write_until_journal(&db, &read, &new).expect("stage");
    let edited = [
        base().bytes(DbFile::Passwd).unwrap_or_default(),
        b"dave:x:1001:1001::/home/dave:/bin/sh\n".to_vec(),
    ]
    .concat();
    std::fs::write(root.path().join("etc/passwd"), &edited).expect("a tool writes passwd");
    let back = db.read().expect("read");
    assert_eq!(
        back.recovery.map(|r| r.abandoned),
        Some(vec![DbFile::Passwd])
    );
    assert_eq!(back.files.passwd.to_bytes(), edited);
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

#[test]
fn without_passwords_new_users_are_locked_and_local_hashes_kept() {
    let p = Policy {
        passwords: false,
        ..policy()
    };
    let mut u = user("niden", 2001, 100);
    u.password = None;
    u.aging.last_change = None;
    let f = plan_files(
        &base(),
        &p,
        &[u_item(u.clone(), vv(&[("a", 1)]), "a", 1)],
        20000,
    )
    .files;
    assert!(text(&f)[2].contains("niden:!:20000:"), "{}", text(&f)[2]);
    let mut f2 = f.clone();
    let i = f2.shadow.as_ref().map(|t| t.find("niden")[0]).unwrap_or(0);
    if let Some(t) = f2.shadow.as_mut().map(std::sync::Arc::make_mut) {
        t.set(i, b"niden:$6$local$hash:19999::::::".to_vec());
    }
    u.shell = "/bin/sh".into();
    let f3 = plan_files(&f2, &p, &[u_item(u, vv(&[("a", 2)]), "a", 2)], 20000).files;
    assert!(
        text(&f3)[2].contains("niden:$6$local$hash:19999:"),
        "{}",
        text(&f3)[2]
    );
    assert!(text(&f3)[0].contains("niden:x:2001:100::/home/niden:/bin/sh"));
}

#[test]
fn homes_are_made_from_skel_and_never_deleted() {
    let root = make_root(&base());
    let skel = root.path().join("etc/skel");
    std::fs::create_dir_all(skel.join(".config")).expect("mkdir");
    std::fs::write(skel.join(".bashrc"), b"# bashrc\n").expect("write");
    let db = AccountDb::new(root.path());
    let p = Policy {
        create_home: true,
        ..policy()
    };
    let mut acc = Accounts::new(p, "b");
    acc.detect(&db.read().expect("read"), &mut Mem::default(), 1, false)
        .expect("detect");
    let r = acc.apply(&db, &some_items(), 20000).expect("apply");
    let made: Vec<String> = r.homes.iter().map(ToString::to_string).collect();
    assert_eq!(
        made,
        ["created home \"/home/niden\" of \"niden\" (mode 0700)"]
    );
    let h = root.path().join("home/niden");
    assert_eq!(meta(&h), (0o700, 2001, 2001));
    assert_eq!(meta(&h.join(".bashrc")).1, 2001);
    let del = item(AccountId::User("niden".into()), vv(&[("a", 2)]), "a", None);
    let gdel = item(AccountId::Group("niden".into()), vv(&[("a", 2)]), "a", None);
    let r = acc.apply(&db, &[del, gdel], 20000).expect("delete");
    assert_eq!(r.outcomes, vec![Outcome::Applied, Outcome::Applied]);
    assert!(h.join(".bashrc").exists(), "a home is never deleted");
    assert_eq!(home::home_mode("HOME_MODE 0750\n"), 0o750);
    let req = HomeRequest {
        user: "u".into(),
        home: "/root/.ssh".into(),
        uid: 2050,
        gid: 2050,
    };
    assert!(matches!(
        home::ensure_home(root.path(), &req, 0o700),
        Some(HomeOutcome::Skipped { .. })
    ));
}

// --- codec and fuzz seeds ------------------------------------------------------------------

fn account_seeds() -> Vec<(String, Vec<u8>)> {
    let mut bodies: Vec<Account> = some_items()
        .into_iter()
        .filter_map(|i| match i.body {
            Some(Body::Account(a)) => Some(a),
            _ => None,
        })
        .collect();
    let mut u = user("beauty", 2002, 2002);
    u.password = None;
    bodies.push(Account::User { user: u, made: 0 });
    bodies
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("seed-{i:02}"), a.encode().expect("encode")))
        .collect()
}

fn account_corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_account")
}

#[test]
fn account_codec_limits_and_round_trip() {
    use super::model::{DecodeError, MAX_RECORD_BYTES};
    for (_, b) in account_seeds() {
        let a = Account::decode(&b).expect("decode");
        assert_eq!(a.encode().expect("encode"), b);
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            Account::decode(&longer),
            Err(DecodeError::Trailing(1))
        ));
    }
    assert!(matches!(
        Account::decode(&vec![0; MAX_RECORD_BYTES + 1]),
        Err(DecodeError::TooLong { .. })
    ));
    assert!(Account::decode(&[9, 9, 9]).is_err());
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

// --- properties ----------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn settle(local: &Item, remote: &Item) -> Item {
        match decide(Some(local), remote, &ConflictPolicy::Newest) {
            Decision::Take { item, .. } | Decision::Keep { item, .. } => item,
            Decision::Ignore | Decision::Unresolved { .. } => local.clone(),
        }
    }

    /// One step of a simulated cluster of three nodes.
    #[derive(Debug, Clone)]
    enum Op {
        /// Node changes the item (a member added or removed, or a shell set).
        Local { node: usize, what: u8 },
        /// Node `to` receives node `from`'s item.
        Send { from: usize, to: usize },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                (0usize..3, 0u8..8).prop_map(|(node, what)| Op::Local { node, what }),
                (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Send { from, to }),
            ],
            0..24,
        )
    }

    const NODES: [&str; 3] = ["a", "b", "c"];

    /// A local change of node `n` on top of `cur`, as detect makes it: a member set with user
    /// `u{what/2}` added (even) or removed (odd), or a user with shell number `what`.
    fn local(n: usize, cur: Option<&Item>, what: u8, members: bool, clock: u64) -> Item {
        let me = NODES[n];
        let mut version = cur.map(|c| c.version.clone()).unwrap_or_default();
        version.bump(me, clock);
        if members {
            let mut set: Vec<Member> = match cur.and_then(|c| c.body.as_ref()) {
                Some(Body::Account(Account::Members(m))) => m.members.clone(),
                _ => vec![],
            };
            let u = format!("u{}", what / 2);
            set.retain(|m| m.user != u);
            if what.is_multiple_of(2) {
                set.push(Member {
                    user: u,
                    dots: vec![Dot {
                        node: me.into(),
                        counter: version.get(me),
                    }],
                });
                set.sort_by(|x, y| x.user.cmp(&y.user));
            }
            Item {
                key: b"members/web".to_vec(),
                version,
                origin: me.into(),
                body: (!set.is_empty()).then(|| {
                    Body::Account(Account::Members(Members {
                        group: "web".into(),
                        members: set,
                    }))
                }),
                beat: vec![],
            }
        } else {
            let mut u = user("x", 2001, 2001);
            u.shell = format!("/bin/sh{}", what % 3);
            let mut it = u_item(u, version, me, clock as i64);
            if what == 7 {
                it.body = None;
            }
            it
        }
    }

    fn run(ops: &[Op], members: bool) -> Vec<Option<Item>> {
        let mut node: Vec<Option<Item>> = vec![None, None, None];
        let mut clock = 0u64;
        for op in ops {
            clock += 1;
            match op {
                Op::Local { node: n, what } => {
                    node[*n] = Some(local(*n, node[*n].as_ref(), *what, members, clock));
                }
                Op::Send { from, to } => {
                    if let Some(r) = node[*from].clone() {
                        node[*to] = Some(match &node[*to] {
                            Some(l) => settle(l, &r),
                            None => r,
                        });
                    }
                }
            }
        }
        // everyone exchanges with everyone until nothing changes
        for _ in 0..4 {
            for from in 0..3 {
                for to in 0..3 {
                    if let Some(r) = node[from].clone() {
                        node[to] = Some(match &node[to] {
                            Some(l) => settle(l, &r),
                            None => r,
                        });
                    }
                }
            }
        }
        node
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Member sets: whatever the changes and the order of delivery, every node converges
        /// to one set.
        #[test]
        fn member_sets_converge(ops in ops()) {
            let n = run(&ops, true);
            prop_assert_eq!(&n[0], &n[1]);
            prop_assert_eq!(&n[1], &n[2]);
        }

        /// Users: whatever the changes and the order of delivery, every node ends with the
        /// same item.
        #[test]
        fn user_decisions_converge(ops in ops()) {
            let n = run(&ops, false);
            prop_assert_eq!(&n[0], &n[1]);
            prop_assert_eq!(&n[1], &n[2]);
        }

        /// An apply to files in canonical layout patches their blocks: the same files and
        /// outcomes as building them anew, whatever the files and the items.
        #[test]
        fn patching_the_blocks_gives_the_files_built_anew(
            users in proptest::collection::vec((0u8..12, any::<bool>(), any::<bool>()), 0..10),
            groups in proptest::collection::vec((0u8..6, any::<bool>(), proptest::collection::vec(0u8..13, 0..6)), 0..6),
            items in proptest::collection::vec((0u8..5, 0u8..12, 0u8..4, proptest::collection::vec(0u8..13, 0..5)), 1..8),
        ) {
            let (mut p, mut g, mut sp, mut gs) = (String::new(), String::new(), String::new(), String::new());
            let mut seen = std::collections::BTreeSet::new();
            for (k, managed, private) in &users {
                if !seen.insert(*k) {
                    continue;
                }
                let id = if *managed { 2000 + u32::from(*k) } else { 1000 + u32::from(*k) };
                p.push_str(&format!("u{k}:x:{id}:{}::/home/u{k}:/bin/sh\n", if *private { id } else { 100 }));
                sp.push_str(&format!("u{k}:!:19000:0:99999:7:::\n"));
                if *private {
                    g.push_str(&format!("u{k}:x:{id}:\n"));
                    gs.push_str(&format!("u{k}:!::\n"));
                }
            }
            let mut gseen = std::collections::BTreeSet::new();
            for (k, managed, members) in &groups {
                if !gseen.insert(*k) {
                    continue;
                }
                let gid = if *managed { 2500 + u32::from(*k) } else { 500 + u32::from(*k) };
                let m: Vec<String> = members
                    .iter()
                    .map(|m| if *m == 12 { "www-data".to_string() } else { format!("u{m}") })
                    .collect();
                g.push_str(&format!("g{k}:x:{gid}:{}\n", m.join(",")));
                gs.push_str(&format!("g{k}:!:u1:{}\n", m.join(",")));
            }
            let f = files(
                &PASSWD.replace("+@nis", &format!("{p}+@nis")),
                &GROUP.replace("+@nis", &format!("{g}+@nis")),
                &format!("{SHADOW}{sp}"),
                &format!("{GSHADOW}{gs}"),
            );
            let all: std::collections::BTreeSet<String> = (0..6).map(|k| format!("g{k}")).chain((0..12).map(|k| format!("u{k}"))).chain(["sudo".to_string()]).collect();
            let raw = f;
            let f = canonical(&raw, &policy(), &all);
            let mut its = Vec::new();
            for (kind, k, x, members) in &items {
                let v = vv(&[("a", 1)]);
                its.push(match kind {
                    0 => u_item(user(&format!("u{k}"), 2000 + u32::from(*k) + 100 * u32::from(*x % 2), if *x >= 2 { 100 } else { 2000 + u32::from(*k) }), v, "a", 1),
                    1 => item(AccountId::User(format!("u{k}")), v, "a", None),
                    2 => g_item(group(&format!("{}{}", if *x % 2 == 0 { "g" } else { "u" }, k % 6), 2500 + u32::from(*k) + 10 * u32::from(*x)), v, "a", 1),
                    3 => item(AccountId::Group(format!("g{}", k % 6)), v, "a", None),
                    _ => {
                        let name = if *x == 3 { "sudo".to_string() } else { format!("g{}", k % 6) };
                        let mut ms: Vec<String> = members.iter().map(|m| format!("u{m}")).collect();
                        ms.sort();
                        ms.dedup();
                        let ms: Vec<(&str, &[(&str, u64)])> = ms.iter().map(|m| (m.as_str(), &[("a", 1u64)][..])).collect();
                        m_item(&name, &ms, v, "a")
                    }
                });
            }
            let patched_view = super::super::View::new(&f, &policy());
            prop_assert!(patched_view.blocks().is_some());
            let full_view = super::super::View::new(&f, &policy()).without_blocks();
            let a = super::super::apply::plan_in(&patched_view, &policy(), &its, 20000, &Default::default());
            let b = super::super::apply::plan_in(&full_view, &policy(), &its, 20000, &Default::default());
            prop_assert_eq!(&a.outcomes, &b.outcomes);
            prop_assert_eq!(text(&a.files), text(&b.files));
            // the view kept between calls, patched with the lines that changed, is the view
            // built anew: after the apply, after a tool's edit back, from files not in
            // canonical layout to the canonical ones
            let new = |f: &AccountFiles| super::super::View::new(f, &policy());
            prop_assert!(new(&f).is_patchable());
            for (from, to) in [(&f, &a.files), (&a.files, &f), (&raw, &f), (&f, &raw)] {
                let patched = new(from).patched(to, &policy(), &[]);
                prop_assert!(patched.same_as(&new(to)));
            }
        }

        /// Whatever the bytes, decoding and validating never panics, and a valid item can be
        /// planned onto the files.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(a) = Account::decode(&bytes)
                && super::super::validate_account(&a, &policy().set, &|_| u64::MAX).is_ok()
            {
                let it = item(a.id(), vv(&[("a", u64::MAX)]), "a", Some(a));
                let _ = plan_files(&base(), &policy(), &[it], 0);
            }
        }
    }
}

/// `View::members_canonical` holds exactly when building the group's member lists in
/// canonical order changes nothing (detect skips the build for such groups).
#[test]
fn members_canonical_agrees_with_the_canonical_build() {
    let p = policy();
    let passwd = format!(
        "{PASSWD}alice:x:2001:2001::/home/alice:/bin/sh\nbob:x:2002:2002::/home/bob:/bin/sh\n"
    );
    let shadow = format!("{SHADOW}alice:!:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n");
    let cases = [
        ("www-data,carol,alice,bob", "www-data,carol,alice,bob"),
        ("alice,bob", "alice,bob"),
        ("", ""),
        ("carol", "carol"),
        ("bob,alice", "bob,alice"),
        ("alice,carol", "alice,carol"),
        ("alice,alice", "alice,alice"),
        ("carol,carol,alice", "carol,carol,alice"),
        ("alice,bob", "bob,alice"),
        ("alice,bob", ""),
        ("carol,alice", "alice"),
    ];
    let mut seen = [0usize; 2];
    for (gr, sg) in cases {
        let group = format!("{GROUP}web:x:2100:{gr}\n");
        let gshadow = format!("{GSHADOW}web:!::{sg}\n");
        let f = files(&passwd, &group, &shadow, &gshadow);
        // the rest of the files in canonical layout first
        let f = canonical(&f, &p, &Default::default());
        let v = super::view::View::new(&f, &p);
        let web: std::collections::BTreeSet<String> = ["web".to_string()].into();
        let unchanged = canonical(&f, &p, &web) == f;
        assert_eq!(
            v.members_canonical(b"web"),
            unchanged,
            "group {gr:?}, gshadow {sg:?}"
        );
        seen[usize::from(unchanged)] += 1;
    }
    assert_eq!(seen, [7, 4], "cases out of order and in order");
}
