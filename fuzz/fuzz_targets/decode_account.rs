//! An account item body from a peer: `Account::decode` (postcard, size limit, no trailing
//! bytes), then `validate_account`; whatever the bytes, no panic. A body that validates is
//! planned against fixed Debian-like files: no injection is possible, so every line of the
//! files that is not the record's own is kept (only member lists may change, and managed lines
//! move into their sorted block), and reading the result back gives the record's fields as
//! they were sent.
#![no_main]

use clustersync::accounts::apply::{Outcome, plan_files};
use clustersync::accounts::{
    Account, AccountFiles, DbFile, ManagedSet, Policy, View, validate_account,
};
use clustersync::item::{Body, Item, VersionVector};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
# comment
+@nis::::::
alice:x:1000:1000:Alice:/home/alice:/bin/bash
niden:x:2001:2001:Ni Den:/home/niden:/bin/bash
";
const GROUP: &[u8] = b"root:x:0:
sudo:x:27:alice,niden
www-data:x:33:
alice:x:1000:
niden:x:2001:
webdev:x:2100:niden,alice
";
const SHADOW: &[u8] = b"root:*:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
www-data:*:19000:0:99999:7:::
alice:$6$a$ALICE:19000:0:99999:7:::
niden:$6$n$NIDEN:19000:0:99999:7:::
";
const GSHADOW: &[u8] = b"root:*::
sudo:*::alice,niden
www-data:*::
alice:!::
niden:!::
webdev:!:niden:niden,alice
";

static FILES: LazyLock<AccountFiles> =
    LazyLock::new(|| AccountFiles::parse(PASSWD, GROUP, Some(SHADOW), Some(GSHADOW)));

fn policy() -> Policy {
    Policy {
        set: ManagedSet::new(["niden", "beauty"], Some((2000, 2999))),
        passwords: true,
        create_home: false,
    }
}

/// The part of a line no change of another account may touch: all of it, except the member
/// lists of group (4th field) and the admin and member lists of gshadow (3rd and 4th).
fn fixed(file: DbFile, line: &[u8]) -> Vec<u8> {
    let keep = match file {
        DbFile::Group => 3,
        DbFile::Gshadow => 2,
        DbFile::Passwd | DbFile::Shadow => usize::MAX,
    };
    let fields: Vec<&[u8]> = line.split(|&c| c == b':').collect();
    if fields.len() <= keep {
        return line.to_vec();
    }
    fields[..keep].join(&b':')
}

/// Lines of the file before that are not named `name` are still there, unchanged but for
/// member lists (managed lines may move into their block, so order is not checked).
fn kept(file: DbFile, after: &AccountFiles, name: &str) {
    let before = FILES.bytes(file).unwrap_or_default();
    let after = after.bytes(file).unwrap_or_default();
    let after: Vec<Vec<u8>> = after
        .split(|&c| c == b'\n')
        .map(|l| fixed(file, l))
        .collect();
    for line in before.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let n = name.as_bytes();
        if line.starts_with(n) && line.get(n.len()) == Some(&b':') {
            continue;
        }
        let want = fixed(file, line);
        assert!(
            after.contains(&want),
            "{file} line lost: {}",
            String::from_utf8_lossy(line)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(account) = Account::decode(data) else {
        return;
    };
    let policy = policy();
    let _ = format!("{account:?} {}", account.id());
    if let Err(e) = validate_account(&account, &policy.set, &|_| u64::MAX) {
        let _ = e.to_string();
        return;
    }
    let id = account.id();
    let mut version = VersionVector::default();
    version.bump("a", u64::MAX - 1);
    let item = Item {
        key: id.key(),
        version,
        origin: "a".into(),
        body: Some(Body::Account(account.clone())),
        beat: vec![],
    };
    let plan = plan_files(&FILES, &policy, std::slice::from_ref(&item), 20000);
    for o in &plan.outcomes {
        let _ = format!("{o:?}");
    }
    let name = id.name().to_string();
    for f in DbFile::ALL {
        kept(f, &plan.files, &name);
    }
    if plan.outcomes[0] != Outcome::Applied {
        return;
    }
    let view = View::new(&plan.files, &policy);
    match &account {
        Account::User { user: u, .. } => {
            let got = view
                .user(u.name.as_bytes(), &policy)
                .and_then(Result::ok)
                .expect("an applied user reads back");
            assert_eq!(
                (got.uid, got.gid, &got.gecos, &got.home, &got.shell),
                (u.uid, u.gid, &u.gecos, &u.home, &u.shell)
            );
            if u.password.is_some() {
                assert_eq!(got.password, u.password);
                assert_eq!(got.aging, u.aging);
            }
        }
        Account::Group { group: g, .. } => {
            let got = view
                .group(g.name.as_bytes(), &policy)
                .and_then(Result::ok)
                .expect("an applied group reads back");
            assert_eq!((got.gid, &got.admins), (g.gid, &g.admins));
            if g.password.is_some() {
                assert_eq!(got.password, g.password);
            }
        }
        Account::Members(m) => {
            let got = view.members_of(m.group.as_bytes()).unwrap_or_default();
            for u in m.names() {
                if view.is_managed_user(u.as_bytes()) {
                    assert!(got.iter().any(|g| g == u), "member {u} applied");
                }
            }
        }
    }
});
