//! Checks on account records before anything uses them (a peer's, or one read locally).
//!
//! Names follow shadow-utils' portable rule (upstream `is_valid_user_name`): 1 to 32 bytes of
//! `[A-Za-z0-9_.-]`, not starting with `-`, optionally ending in `$` (Samba machine
//! accounts), and not `.`, `..` or all digits (a numeric name would be read as an id by
//! `chown`). Debian's `useradd` accepts more (`é`, `a/b`, `..`); such accounts are not
//! replicated. No field may hold `:`, a newline, NUL or another control character, so no record
//! can add a field or a line to the files. Ids are never 0 or 4294967295 and users must be in
//! the managed set; whether a group is managed depends on the node's users, so that is checked
//! when the change is applied. The hash is checked for plausibility and never appears in an
//! error.

use super::managed::{ManagedSet, reserved_id};
use super::model::{Aging, Change, GroupRecord, Secret, UserRecord, shown};
use std::fmt;

/// Longest user or group name (Debian's shadow-utils: 32).
pub const MAX_NAME: usize = 32;
/// Longest gecos field.
pub const MAX_GECOS: usize = 1024;
/// Longest home or shell path.
pub const MAX_PATH: usize = 4095;
/// Longest hash field.
pub const MAX_HASH: usize = 1024;
/// Most supplementary groups of a user, or administrators of a group.
pub const MAX_LIST: usize = 4096;
/// Largest aging value (days): beyond year 275,000.
pub const MAX_DAYS: i64 = 100_000_000;

/// Whether a record is a user or a group, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    User,
    Group,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::User => "user",
            RecordKind::Group => "group",
        })
    }
}

/// The field a check failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    Name,
    Uid,
    Gid,
    PrimaryGroup,
    Gecos,
    Home,
    Shell,
    /// A supplementary group, by position.
    Groups(usize),
    Password,
    Aging(&'static str),
    /// A group administrator, by position.
    Admins(usize),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Name => f.write_str("name"),
            Field::Uid => f.write_str("uid"),
            Field::Gid => f.write_str("gid"),
            Field::PrimaryGroup => f.write_str("primary group"),
            Field::Gecos => f.write_str("gecos"),
            Field::Home => f.write_str("home"),
            Field::Shell => f.write_str("shell"),
            Field::Groups(i) => write!(f, "groups[{i}]"),
            Field::Password => f.write_str("password hash"),
            Field::Aging(which) => write!(f, "aging {which}"),
            Field::Admins(i) => write!(f, "administrators[{i}]"),
        }
    }
}

/// Why a field is refused. Never carries the field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    Empty,
    TooLong {
        max: usize,
    },
    /// `:`, newline, NUL, another control character, or (in names) a character outside the
    /// portable set.
    ForbiddenChar,
    LeadingDash,
    /// `.`, `..` or all digits.
    ReservedName,
    NotAbsolute,
    /// An empty, `.` or `..` component, or a trailing `/`.
    NotPlain,
    /// 0 or 4294967295.
    ReservedId,
    /// Neither in `users` nor in `uid_range`.
    NotManaged,
    /// Supplementary groups must be sorted and unique.
    NotSorted,
    /// `$id$…` without its parts.
    BadHashFormat,
    OutOfRange,
    TooMany {
        max: usize,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Empty => f.write_str("is empty"),
            Reason::TooLong { max } => write!(f, "is longer than {max} bytes"),
            Reason::ForbiddenChar => f.write_str("contains a forbidden character"),
            Reason::LeadingDash => f.write_str("starts with '-'"),
            Reason::ReservedName => f.write_str("is '.', '..' or all digits"),
            Reason::NotAbsolute => f.write_str("is not an absolute path"),
            Reason::NotPlain => {
                f.write_str("is not a plain path (empty, '.' or '..' component, or trailing '/')")
            }
            Reason::ReservedId => f.write_str("is 0 or 4294967295, which are never synced"),
            Reason::NotManaged => {
                f.write_str("is outside the managed set ([accounts] users/uid_range)")
            }
            Reason::NotSorted => f.write_str("is not sorted or repeats a group"),
            Reason::BadHashFormat => f.write_str("is not a plausible crypt(3) hash"),
            Reason::OutOfRange => write!(f, "is out of range (-1 to {MAX_DAYS})"),
            Reason::TooMany { max } => write!(f, "has more than {max} entries"),
        }
    }
}

/// A record that must not be used, saying which field and why (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} record {name}: {field} {reason}")]
pub struct InvalidRecord {
    pub kind: RecordKind,
    /// The record's name, escaped and shortened for messages.
    pub name: String,
    pub field: Field,
    pub reason: Reason,
}

type Check = Result<(), (Field, Reason)>;

/// Check a user record from a peer (or read locally) against the managed set.
pub fn validate_user(rec: &UserRecord, set: &ManagedSet) -> Result<(), InvalidRecord> {
    user_fields(rec, set).map_err(|(field, reason)| InvalidRecord {
        kind: RecordKind::User,
        name: shown(&rec.name),
        field,
        reason,
    })
}

/// Check a group record. Whether the group is managed on a node (its gid in the range, or the
/// primary group of a managed user there) is decided when it is applied.
pub fn validate_group(rec: &GroupRecord, _set: &ManagedSet) -> Result<(), InvalidRecord> {
    group_fields(rec).map_err(|(field, reason)| InvalidRecord {
        kind: RecordKind::Group,
        name: shown(&rec.name),
        field,
        reason,
    })
}

/// Check one change: its record, or the name it deletes.
pub fn validate_change(change: &Change, set: &ManagedSet) -> Result<(), InvalidRecord> {
    let bad_name = |kind, name: &str| {
        check_name(name).map_err(|reason| InvalidRecord {
            kind,
            name: shown(name),
            field: Field::Name,
            reason,
        })
    };
    match change {
        Change::User(u) => validate_user(u, set),
        Change::Group(g) => validate_group(g, set),
        Change::DeleteUser(n) => bad_name(RecordKind::User, n),
        Change::DeleteGroup(n) => bad_name(RecordKind::Group, n),
    }
}

/// Check a batch; the first bad change refuses the whole batch (its index is returned).
pub fn validate_changes(
    changes: &[Change],
    set: &ManagedSet,
) -> Result<(), (usize, InvalidRecord)> {
    for (i, c) in changes.iter().enumerate() {
        validate_change(c, set).map_err(|e| (i, e))?;
    }
    Ok(())
}

fn user_fields(rec: &UserRecord, set: &ManagedSet) -> Check {
    check_name(&rec.name).map_err(|r| (Field::Name, r))?;
    if reserved_id(rec.uid) {
        return Err((Field::Uid, Reason::ReservedId));
    }
    if !set.user(&rec.name, rec.uid) {
        return Err((Field::Uid, Reason::NotManaged));
    }
    if reserved_id(rec.gid) {
        return Err((Field::Gid, Reason::ReservedId));
    }
    if let Some(g) = &rec.group {
        check_name(g).map_err(|r| (Field::PrimaryGroup, r))?;
    }
    check_text(&rec.gecos, MAX_GECOS).map_err(|r| (Field::Gecos, r))?;
    check_path(&rec.home).map_err(|r| (Field::Home, r))?;
    if !rec.shell.is_empty() {
        check_path(&rec.shell).map_err(|r| (Field::Shell, r))?;
    }
    check_list(&rec.groups, Field::Groups)?;
    if rec.groups.windows(2).any(|w| w[0] >= w[1]) {
        return Err((Field::Groups(0), Reason::NotSorted));
    }
    if let Some(h) = &rec.password {
        check_hash(h).map_err(|r| (Field::Password, r))?;
    }
    check_aging(&rec.aging)
}

fn group_fields(rec: &GroupRecord) -> Check {
    check_name(&rec.name).map_err(|r| (Field::Name, r))?;
    if reserved_id(rec.gid) {
        return Err((Field::Gid, Reason::ReservedId));
    }
    if let Some(h) = &rec.password {
        check_hash(h).map_err(|r| (Field::Password, r))?;
    }
    check_list(&rec.admins, Field::Admins)
}

fn check_list(names: &[String], field: fn(usize) -> Field) -> Check {
    if names.len() > MAX_LIST {
        return Err((field(MAX_LIST), Reason::TooMany { max: MAX_LIST }));
    }
    for (i, n) in names.iter().enumerate() {
        check_name(n).map_err(|r| (field(i), r))?;
    }
    Ok(())
}

/// A user or group name as shadow-utils (upstream) accepts it.
pub fn check_name(name: &str) -> Result<(), Reason> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(Reason::Empty);
    }
    if b.len() > MAX_NAME {
        return Err(Reason::TooLong { max: MAX_NAME });
    }
    let body = b.strip_suffix(b"$").unwrap_or(b);
    if body.is_empty()
        || !body
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(Reason::ForbiddenChar);
    }
    if b[0] == b'-' {
        return Err(Reason::LeadingDash);
    }
    if name == "." || name == ".." || b.iter().all(u8::is_ascii_digit) {
        return Err(Reason::ReservedName);
    }
    Ok(())
}

/// Free text of a field: no `:`, no control character (newline, NUL, DEL…).
fn check_text(s: &str, max: usize) -> Result<(), Reason> {
    if s.len() > max {
        return Err(Reason::TooLong { max });
    }
    if s.chars().any(|c| c == ':' || c.is_control()) {
        return Err(Reason::ForbiddenChar);
    }
    Ok(())
}

/// An absolute path without `.`/`..`/empty components or trailing `/` (except `/` itself).
fn check_path(p: &str) -> Result<(), Reason> {
    if p.is_empty() {
        return Err(Reason::Empty);
    }
    check_text(p, MAX_PATH)?;
    let Some(rest) = p.strip_prefix('/') else {
        return Err(Reason::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Reason::NotPlain);
    }
    Ok(())
}

/// A plausible hash field: printable ASCII without `:` (`!`, `*`, `!!`, DES, `$id$salt$hash`,
/// also empty: no password, as `passwd -d` leaves it).
fn check_hash(h: &Secret) -> Result<(), Reason> {
    let s = h.expose();
    if s.len() > MAX_HASH {
        return Err(Reason::TooLong { max: MAX_HASH });
    }
    if !s.bytes().all(|c| c.is_ascii_graphic() && c != b':') {
        return Err(Reason::ForbiddenChar);
    }
    let bare = s.trim_start_matches('!');
    if let Some(rest) = bare.strip_prefix('$') {
        let mut parts = rest.split('$');
        let id_ok = parts
            .next()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|c| c.is_ascii_alphanumeric()));
        if !id_ok || parts.count() < 2 {
            return Err(Reason::BadHashFormat);
        }
    }
    Ok(())
}

fn check_aging(a: &Aging) -> Check {
    let fields = [
        ("last change", a.last_change),
        ("min", a.min),
        ("max", a.max),
        ("warn", a.warn),
        ("inactive", a.inactive),
        ("expire", a.expire),
        ("reserved", a.reserved),
    ];
    for (name, v) in fields {
        if v.is_some_and(|v| !(-1..=MAX_DAYS).contains(&v)) {
            return Err((Field::Aging(name), Reason::OutOfRange));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$y$j9T$abcdefghijklmnop$QRSTUVWXYZ0123456789abcdefghijklmnopqrstu";

    fn set() -> ManagedSet {
        ManagedSet::new(["niden"], Some((2000, 2999)))
    }

    fn user() -> UserRecord {
        UserRecord {
            name: "niden".into(),
            uid: 2001,
            gid: 2001,
            group: Some("niden".into()),
            gecos: "Ni Den,,,".into(),
            home: "/home/niden".into(),
            shell: "/bin/bash".into(),
            groups: vec!["sudo".into(), "webdev".into()],
            password: Some(Secret::new(HASH)),
            aging: Aging {
                last_change: Some(20000),
                min: Some(0),
                max: Some(99999),
                warn: Some(7),
                ..Aging::default()
            },
        }
    }

    fn field_of(r: Result<(), InvalidRecord>) -> (Field, Reason) {
        let e = r.expect_err("must be refused");
        (e.field, e.reason)
    }

    #[test]
    fn a_normal_user_and_group_pass() {
        assert_eq!(validate_user(&user(), &set()), Ok(()));
        let g = GroupRecord {
            name: "webdev".into(),
            gid: 2100,
            password: Some(Secret::new("!")),
            admins: vec!["niden".into()],
        };
        assert_eq!(validate_group(&g, &set()), Ok(()));
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "niden",
            "A.b",
            "x-",
            "_svc",
            "web_1",
            "host$",
            "a.",
            "32charsxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let cases: &[(&str, Reason)] = &[
            ("", Reason::Empty),
            (
                "33charsxxxxxxxxxxxxxxxxxxxxxxxxxx",
                Reason::TooLong { max: 32 },
            ),
            ("-x", Reason::LeadingDash),
            ("a:b", Reason::ForbiddenChar),
            ("a\nb", Reason::ForbiddenChar),
            ("a\0", Reason::ForbiddenChar),
            ("a b", Reason::ForbiddenChar),
            ("a,b", Reason::ForbiddenChar),
            ("a/b", Reason::ForbiddenChar),
            ("é", Reason::ForbiddenChar),
            ("+nis", Reason::ForbiddenChar),
            ("$", Reason::ForbiddenChar),
            ("a$b", Reason::ForbiddenChar),
            (".", Reason::ReservedName),
            ("..", Reason::ReservedName),
            ("123", Reason::ReservedName),
        ];
        for (name, why) in cases {
            assert_eq!(check_name(name), Err(*why), "{name:?}");
        }
    }

    #[test]
    fn injection_in_every_field_is_refused() {
        for bad in [":", "\n", "\r", "\0", "\u{7f}", "\u{85}"] {
            let mut u = user();
            u.name = format!("ni{bad}den");
            assert_eq!(field_of(validate_user(&u, &set())).0, Field::Name);
            let mut u = user();
            u.gecos = format!("x{bad}y");
            assert_eq!(
                field_of(validate_user(&u, &set())),
                (Field::Gecos, Reason::ForbiddenChar)
            );
            let mut u = user();
            u.home = format!("/home/x{bad}");
            assert_eq!(
                field_of(validate_user(&u, &set())),
                (Field::Home, Reason::ForbiddenChar)
            );
            let mut u = user();
            u.shell = format!("/bin/sh{bad}");
            assert_eq!(
                field_of(validate_user(&u, &set())),
                (Field::Shell, Reason::ForbiddenChar)
            );
            let mut u = user();
            u.group = Some(format!("g{bad}"));
            assert_eq!(field_of(validate_user(&u, &set())).0, Field::PrimaryGroup);
            let mut u = user();
            u.groups = vec!["a".into(), format!("b{bad}")];
            assert_eq!(field_of(validate_user(&u, &set())).0, Field::Groups(1));
            let mut u = user();
            u.password = Some(Secret::new(format!("$6$salt$hash{bad}root::0:0")));
            assert_eq!(
                field_of(validate_user(&u, &set())),
                (Field::Password, Reason::ForbiddenChar)
            );
            let g = GroupRecord {
                name: "g".into(),
                gid: 2100,
                password: None,
                admins: vec![format!("a{bad}")],
            };
            assert_eq!(field_of(validate_group(&g, &set())).0, Field::Admins(0));
        }
    }

    #[test]
    fn ids_and_managed_set() {
        let mut u = user();
        u.uid = 0;
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Uid, Reason::ReservedId)
        );
        let mut u = user();
        u.gid = 0;
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Gid, Reason::ReservedId)
        );
        let mut u = user();
        u.name = "www-data".into();
        u.uid = 33;
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Uid, Reason::NotManaged)
        );
        let mut u = user();
        u.name = "other".into();
        u.uid = 1500;
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Uid, Reason::NotManaged)
        );
        let mut u = user();
        u.name = "niden".into();
        u.uid = 1500;
        assert_eq!(validate_user(&u, &set()), Ok(()), "managed by name");
        let g = GroupRecord {
            name: "root".into(),
            gid: 0,
            password: None,
            admins: vec![],
        };
        assert_eq!(
            field_of(validate_group(&g, &set())),
            (Field::Gid, Reason::ReservedId)
        );
    }

    #[test]
    fn paths() {
        for ok in ["/", "/home/niden", "/var/www/ni den", "/srv/é"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", Reason::Empty),
            ("home/x", Reason::NotAbsolute),
            ("/home/../root", Reason::NotPlain),
            ("/home/./x", Reason::NotPlain),
            ("//x", Reason::NotPlain),
            ("/home/x/", Reason::NotPlain),
            ("/home/x/..", Reason::NotPlain),
        ] {
            assert_eq!(check_path(bad), Err(why), "{bad}");
        }
        let mut u = user();
        u.shell = String::new();
        assert_eq!(validate_user(&u, &set()), Ok(()), "empty shell is /bin/sh");
        u.home = String::new();
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Home, Reason::Empty)
        );
    }

    #[test]
    fn hashes() {
        for ok in [
            "",
            "!",
            "*",
            "!!",
            "!*",
            "x",
            "abcdefghijklm",
            HASH,
            "!$6$salt$hash",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
            "$2b$10$abcdefghijklmnopqrstuu",
        ] {
            assert_eq!(check_hash(&Secret::new(ok)), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("a b", Reason::ForbiddenChar),
            ("$6$x", Reason::BadHashFormat),
            ("$$x$y", Reason::BadHashFormat),
            ("é", Reason::ForbiddenChar),
        ] {
            assert_eq!(check_hash(&Secret::new(bad)), Err(why), "{bad}");
        }
        assert_eq!(
            check_hash(&Secret::new("a".repeat(MAX_HASH + 1))),
            Err(Reason::TooLong { max: MAX_HASH })
        );
    }

    #[test]
    fn groups_sorted_and_aging_in_range() {
        let mut u = user();
        u.groups = vec!["b".into(), "a".into()];
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Groups(0), Reason::NotSorted)
        );
        u.groups = vec!["a".into(), "a".into()];
        assert_eq!(field_of(validate_user(&u, &set())).1, Reason::NotSorted);
        let mut u = user();
        u.aging.expire = Some(-2);
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Aging("expire"), Reason::OutOfRange)
        );
        u.aging.expire = Some(-1);
        assert_eq!(validate_user(&u, &set()), Ok(()));
    }

    #[test]
    fn errors_never_show_the_hash() {
        let mut u = user();
        u.password = Some(Secret::new(format!("{HASH}\n")));
        let e = validate_user(&u, &set()).expect_err("newline in hash");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("QRSTUVWXYZ"), "{shown}");
        assert!(shown.contains("password hash"), "{shown}");
        let dbg = format!("{:?} {:?}", user(), Change::User(user()));
        assert!(!dbg.contains("QRSTUVWXYZ") && !dbg.contains("$y$"), "{dbg}");
    }

    #[test]
    fn deletions_check_the_name() {
        assert!(validate_change(&Change::DeleteUser("a\nb".into()), &set()).is_err());
        assert!(validate_change(&Change::DeleteGroup("ok".into()), &set()).is_ok());
        let batch = [
            Change::DeleteUser("ok".into()),
            Change::DeleteGroup(":".into()),
        ];
        assert_eq!(validate_changes(&batch, &set()).map_err(|e| e.0), Err(1));
    }

    #[test]
    fn hostile_names_are_escaped_in_messages() {
        let mut u = user();
        u.name = "evil\nERROR forged line".into();
        let e = validate_user(&u, &set()).expect_err("bad name");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
