//! An account record from a peer: `Change::decode` (postcard, size limit, no trailing bytes),
//! then `validate_change`; whatever the bytes, no panic. A change that validates is planned
//! against fixed Debian-like files: no injection is possible, so every line of the files that
//! is not the record's own is kept byte for byte (only member lists may change), and reading
//! the result back gives the record's fields as they were sent.
#![no_main]

use clustersync::accounts::{AccountFiles, Change, DbFile, ManagedSet, Policy, validate_change};
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

/// Lines of the file before that are not named `name` are still there, in order, unchanged
/// but for member lists.
fn kept(file: DbFile, after: &AccountFiles, name: &str) {
    let before = FILES.bytes(file).unwrap_or_default();
    let after = after.bytes(file).unwrap_or_default();
    let after: Vec<Vec<u8>> = after
        .split(|&c| c == b'\n')
        .map(|l| fixed(file, l))
        .collect();
    let mut pos = 0;
    for line in before.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let n = name.as_bytes();
        if line.starts_with(n) && line.get(n.len()) == Some(&b':') {
            continue;
        }
        let want = fixed(file, line);
        let off = after[pos..].iter().position(|l| *l == want);
        assert!(
            off.is_some(),
            "{file} line lost: {}",
            String::from_utf8_lossy(line)
        );
        pos += off.unwrap_or(0) + 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(change) = Change::decode(data) else {
        return;
    };
    let policy = policy();
    let _ = format!("{change:?} {}", change.id());
    if let Err(e) = validate_change(&change, &policy.set) {
        let _ = e.to_string();
        return;
    }
    let plan = FILES.plan(std::slice::from_ref(&change), &policy, 20000);
    for r in &plan.report.refused {
        let _ = r.to_string();
    }
    for c in &plan.report.collisions {
        let _ = c.to_string();
    }
    let name = match &change {
        Change::User(u) => u.name.clone(),
        Change::Group(g) => g.name.clone(),
        Change::DeleteUser(n) | Change::DeleteGroup(n) => n.clone(),
    };
    for f in DbFile::ALL {
        kept(f, &plan.files, &name);
    }
    if !plan.report.applied.contains(&change.id()) {
        return;
    }
    let back = plan.files.snapshot(&policy);
    match &change {
        Change::User(u) => {
            let got = back.users.get(&u.name).expect("an applied user reads back");
            assert_eq!(
                (got.uid, got.gid, &got.gecos, &got.home, &got.shell),
                (u.uid, u.gid, &u.gecos, &u.home, &u.shell)
            );
            if u.password.is_some() {
                assert_eq!(got.password, u.password);
                assert_eq!(got.aging, u.aging);
            }
        }
        Change::Group(g) => {
            let got = back
                .groups
                .get(&g.name)
                .expect("an applied group reads back");
            assert_eq!((got.gid, &got.admins), (g.gid, &g.admins));
            if g.password.is_some() {
                assert_eq!(got.password, g.password);
            }
        }
        Change::DeleteUser(n) => assert!(!back.users.contains_key(n)),
        Change::DeleteGroup(n) => assert!(!back.groups.contains_key(n)),
    }
});
