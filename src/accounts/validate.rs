//! Checks on account items before anything uses them (a peer's, or one read locally).
//!
//! Names: what Debian's shadow-utils accepts and the files can hold unambiguously: 1 to 32
//! bytes of UTF-8 without `:`, `,`, `/`, whitespace or control characters, not starting with
//! `-`, `+`, `#` or `~`, and not `.`, `..` or all digits (a numeric name would be read as an id
//! by `chown`). So `dev@corp` and `dé` are synced; a name outside that is reported on the node
//! that has it (`status`), never sent. No field may hold `:`, a newline, NUL or another control
//! character, so no record can add a field or a line to the files. Ids are never 0 or
//! 4294967295 and users must be in the managed set; whether a group is managed depends on the
//! node's users, so that is checked when it is applied. The hash is checked for plausibility
//! and never appears in an error.

use super::managed::{ManagedSet, reserved_id};
use super::model::{Account, Aging, Group, Members, Secret, User, shown};
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

/// Whether a record is a user, a group or a member set, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    User,
    Group,
    Members,
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::User => "user",
            RecordKind::Group => "group",
            RecordKind::Members => "member set",
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
    Gecos,
    Home,
    Shell,
    /// A member of a member set, by position.
    Member(usize),
    Password,
    Aging(&'static str),
    /// A group administrator, by position.
    Admins(usize),
    /// The time of the change.
    Made,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Name => f.write_str("name"),
            Field::Uid => f.write_str("uid"),
            Field::Gid => f.write_str("gid"),
            Field::Gecos => f.write_str("gecos"),
            Field::Home => f.write_str("home"),
            Field::Shell => f.write_str("shell"),
            Field::Member(i) => write!(f, "members[{i}]"),
            Field::Password => f.write_str("password hash"),
            Field::Aging(which) => write!(f, "aging {which}"),
            Field::Admins(i) => write!(f, "administrators[{i}]"),
            Field::Made => f.write_str("time of change"),
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
    /// Members must be sorted and unique, dots sorted, unique and not above the version.
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
            Reason::NotSorted => f.write_str("is not sorted or repeats an entry"),
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

/// Check a user against the managed set.
pub fn validate_user(rec: &User, set: &ManagedSet) -> Result<(), InvalidRecord> {
    user_fields(rec, set).map_err(|(field, reason)| InvalidRecord {
        kind: RecordKind::User,
        name: shown(&rec.name),
        field,
        reason,
    })
}

/// Check a group. Whether the group is managed on a node (its gid in the range, or the private
/// group of a managed user there) is decided when it is applied.
pub fn validate_group(rec: &Group) -> Result<(), InvalidRecord> {
    group_fields(rec).map_err(|(field, reason)| InvalidRecord {
        kind: RecordKind::Group,
        name: shown(&rec.name),
        field,
        reason,
    })
}

/// Check a member set: names, order, and that every dot is covered by the item's version
/// (`counter_of(node)`: that node's counter in it).
pub fn validate_members(
    m: &Members,
    counter_of: &dyn Fn(&str) -> u64,
) -> Result<(), InvalidRecord> {
    members_fields(m, counter_of).map_err(|(field, reason)| InvalidRecord {
        kind: RecordKind::Members,
        name: shown(&m.group),
        field,
        reason,
    })
}

/// Most members of one set.
pub const MAX_MEMBERS: usize = 65_536;
/// Most dots of one member.
pub const MAX_DOTS: usize = 64;

fn members_fields(m: &Members, counter_of: &dyn Fn(&str) -> u64) -> Check {
    check_name(&m.group).map_err(|r| (Field::Name, r))?;
    if m.members.len() > MAX_MEMBERS {
        return Err((
            Field::Member(MAX_MEMBERS),
            Reason::TooMany { max: MAX_MEMBERS },
        ));
    }
    for (i, x) in m.members.iter().enumerate() {
        check_name(&x.user).map_err(|r| (Field::Member(i), r))?;
        if x.dots.len() > MAX_DOTS {
            return Err((Field::Member(i), Reason::TooMany { max: MAX_DOTS }));
        }
        if x.dots.windows(2).any(|w| w[0] >= w[1])
            || x.dots
                .iter()
                .any(|d| d.node.is_empty() || d.node.len() > 255 || d.counter > counter_of(&d.node))
        {
            return Err((Field::Member(i), Reason::NotSorted));
        }
    }
    if m.members.windows(2).any(|w| w[0].user >= w[1].user) {
        return Err((Field::Member(0), Reason::NotSorted));
    }
    Ok(())
}

/// Check any account body (`counter_of`: the item's version, for member sets).
pub fn validate_account(
    a: &Account,
    set: &ManagedSet,
    counter_of: &dyn Fn(&str) -> u64,
) -> Result<(), InvalidRecord> {
    match a {
        Account::User { user, made } => {
            validate_user(user, set)?;
            check_made(*made).map_err(|reason| InvalidRecord {
                kind: RecordKind::User,
                name: shown(&user.name),
                field: Field::Made,
                reason,
            })
        }
        Account::Group { group, made } => {
            validate_group(group)?;
            check_made(*made).map_err(|reason| InvalidRecord {
                kind: RecordKind::Group,
                name: shown(&group.name),
                field: Field::Made,
                reason,
            })
        }
        Account::Members(m) => validate_members(m, counter_of),
    }
}

/// A time of change: 0 (adopted) up to year 10,000.
fn check_made(made: i64) -> Result<(), Reason> {
    if (0..=253_402_300_800_000).contains(&made) {
        Ok(())
    } else {
        Err(Reason::OutOfRange)
    }
}

fn user_fields(rec: &User, set: &ManagedSet) -> Check {
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
    check_text(&rec.gecos, MAX_GECOS).map_err(|r| (Field::Gecos, r))?;
    check_path(&rec.home).map_err(|r| (Field::Home, r))?;
    if !rec.shell.is_empty() {
        check_path(&rec.shell).map_err(|r| (Field::Shell, r))?;
    }
    if let Some(h) = &rec.password {
        check_hash(h).map_err(|r| (Field::Password, r))?;
    }
    check_aging(&rec.aging)
}

fn group_fields(rec: &Group) -> Check {
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

/// A user or group name as the files can hold it and Debian's tools accept it (see the
/// module documentation).
pub fn check_name(name: &str) -> Result<(), Reason> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(Reason::Empty);
    }
    if b.len() > MAX_NAME {
        return Err(Reason::TooLong { max: MAX_NAME });
    }
    if name
        .chars()
        .any(|c| matches!(c, ':' | ',' | '/') || c.is_whitespace() || c.is_control())
    {
        return Err(Reason::ForbiddenChar);
    }
    if matches!(b[0], b'+' | b'#' | b'~') {
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
    use crate::accounts::model::{Dot, Member};

    const HASH: &str = "$y$j9T$abcdefghijklmnop$QRSTUVWXYZ0123456789abcdefghijklmnopqrstu";

    fn set() -> ManagedSet {
        ManagedSet::new(["niden"], Some((2000, 2999)))
    }

    fn user() -> User {
        User {
            name: "niden".into(),
            uid: 2001,
            gid: 2001,
            gecos: "Ni Den,,,".into(),
            home: "/home/niden".into(),
            shell: "/bin/bash".into(),
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
    fn names_debian_accepts_pass_and_ambiguous_ones_do_not() {
        for ok in [
            "a",
            "niden",
            "A.b",
            "x-",
            "_svc",
            "web_1",
            "host$",
            "dev@corp",
            "dé",
            "x~",
            "*",
            "ab\\",
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
            ("+nis", Reason::ForbiddenChar),
            ("#x", Reason::ForbiddenChar),
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
            assert_eq!(field_of(validate_user(&u, &set())).0, Field::Home);
            let mut u = user();
            u.shell = format!("/bin/sh{bad}");
            assert_eq!(field_of(validate_user(&u, &set())).0, Field::Shell);
            let mut u = user();
            u.password = Some(Secret::new(format!("$6$salt$hash{bad}root::0:0")));
            assert_eq!(
                field_of(validate_user(&u, &set())),
                (Field::Password, Reason::ForbiddenChar)
            );
            let g = Group {
                name: "g".into(),
                gid: 2100,
                password: None,
                admins: vec![format!("a{bad}")],
            };
            assert_eq!(field_of(validate_group(&g)).0, Field::Admins(0));
            let m = Members {
                group: "g".into(),
                members: vec![Member {
                    user: format!("a{bad}"),
                    dots: vec![],
                }],
            };
            assert_eq!(field_of(validate_members(&m, &|_| 5)).0, Field::Member(0));
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
        u.name = "other".into();
        u.uid = 1500;
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Uid, Reason::NotManaged)
        );
        let mut u = user();
        u.uid = 1500;
        assert_eq!(validate_user(&u, &set()), Ok(()), "managed by name");
        let g = Group {
            name: "root".into(),
            gid: 0,
            password: None,
            admins: vec![],
        };
        assert_eq!(
            field_of(validate_group(&g)),
            (Field::Gid, Reason::ReservedId)
        );
    }

    #[test]
    fn member_sets_sorted_with_dots_under_the_version() {
        let dot = |n: &str, c| Dot {
            node: n.into(),
            counter: c,
        };
        let m = |names: &[(&str, Vec<Dot>)]| Members {
            group: "web".into(),
            members: names
                .iter()
                .map(|(u, d)| Member {
                    user: u.to_string(),
                    dots: d.clone(),
                })
                .collect(),
        };
        let vv = |n: &str| if n == "a" { 10 } else { 0 };
        assert_eq!(
            validate_members(&m(&[("x", vec![dot("a", 3)]), ("y", vec![])]), &vv),
            Ok(())
        );
        assert!(validate_members(&m(&[("y", vec![]), ("x", vec![])]), &vv).is_err());
        assert!(validate_members(&m(&[("x", vec![]), ("x", vec![])]), &vv).is_err());
        assert!(validate_members(&m(&[("x", vec![dot("a", 11)])]), &vv).is_err());
        assert!(validate_members(&m(&[("x", vec![dot("b", 1)])]), &vv).is_err());
        assert!(validate_members(&m(&[("x", vec![dot("a", 2), dot("a", 1)])]), &vv).is_err());
    }

    #[test]
    fn paths_hashes_and_aging() {
        for ok in ["/", "/home/niden", "/var/www/ni den", "/srv/é"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in ["", "home/x", "/home/../root", "//x", "/home/x/"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for ok in [
            "",
            "!",
            "*",
            "!!",
            HASH,
            "!$6$salt$hash",
            "$2b$10$abcdefghijklmnopqrstuu",
        ] {
            assert_eq!(check_hash(&Secret::new(ok)), Ok(()), "{ok}");
        }
        for bad in ["a b", "$6$x", "é"] {
            assert!(check_hash(&Secret::new(bad)).is_err(), "{bad}");
        }
        let mut u = user();
        u.aging.expire = Some(-2);
        assert_eq!(
            field_of(validate_user(&u, &set())),
            (Field::Aging("expire"), Reason::OutOfRange)
        );
    }

    #[test]
    fn errors_never_show_the_hash_and_escape_names() {
        let mut u = user();
        u.password = Some(Secret::new(format!("{HASH}\n")));
        let e = validate_user(&u, &set()).expect_err("newline in hash");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("QRSTUVWXYZ"), "{shown}");
        let dbg = format!("{:?}", user());
        assert!(!dbg.contains("QRSTUVWXYZ") && !dbg.contains("$y$"), "{dbg}");
        let mut u = user();
        u.name = "evil\nERROR forged line".into();
        let e = validate_user(&u, &set()).expect_err("bad name");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
