//! The four account files as lines, parsed only as far as needed.
//!
//! A [`Table`] keeps every line's bytes exactly as read (comments, blank lines, NIS `+`/`-`
//! lines, malformed lines, non-UTF-8 text, a last line without a newline), so writing back an
//! unchanged table gives the same bytes. Entries are parsed on demand from the bytes; an entry
//! line is one that is not empty, not a comment (`#`) and not a NIS line (`+`, `-`), and its
//! name is what comes before the first `:`. Only the lines of managed accounts (and the member
//! lists that name a managed user) are ever replaced, and new lines are appended (after a
//! newline added to a last line that had none).

use super::model::Aging;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// Which of the four files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DbFile {
    Passwd,
    Shadow,
    Group,
    Gshadow,
}

impl DbFile {
    /// In the order shadow-utils writes them.
    pub const ALL: [DbFile; 4] = [
        DbFile::Passwd,
        DbFile::Shadow,
        DbFile::Group,
        DbFile::Gshadow,
    ];

    /// The file name in `<root>/etc`.
    pub fn name(self) -> &'static str {
        match self {
            DbFile::Passwd => "passwd",
            DbFile::Shadow => "shadow",
            DbFile::Group => "group",
            DbFile::Gshadow => "gshadow",
        }
    }

    /// The backup shadow-utils keeps (`passwd-`).
    pub fn backup_name(self) -> &'static str {
        match self {
            DbFile::Passwd => "passwd-",
            DbFile::Shadow => "shadow-",
            DbFile::Group => "group-",
            DbFile::Gshadow => "gshadow-",
        }
    }

    /// passwd and group must exist; shadow and gshadow may not.
    pub fn required(self) -> bool {
        matches!(self, DbFile::Passwd | DbFile::Group)
    }
}

impl fmt::Display for DbFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One file as lines (without their `\n`). A line is a [`Bytes`]: the lines of a file read
/// are slices of the one buffer read (no allocation per line), and a table patched from
/// another shares the lines it keeps with it (a patch copies no line it does not change).
#[derive(Clone, PartialEq, Eq)]
pub struct Table {
    lines: Vec<Bytes>,
    /// Whether the last line ended with `\n` (true for an empty file).
    final_newline: bool,
}

impl fmt::Debug for Table {
    /// Only the size: a shadow table holds hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({} lines)", self.lines.len())
    }
}

/// A window computed between two shared tables, kept so that it is not computed again (a
/// detect finds what changed, then the view is patched with the same windows).
#[derive(Debug, Clone)]
pub struct Compared {
    pub old: Arc<Table>,
    pub new: Arc<Table>,
    pub window: Window,
}

/// A NIS compat line (`+`, `+@netgroup`, `-user`).
pub fn is_nis(l: &[u8]) -> bool {
    matches!(l.first(), Some(b'+' | b'-'))
}

/// The lines that differ between two versions of a table: `old[first..old_end]` became
/// `new[first..new_end]`; the lines before `first` and from the ends on are the same lines in
/// the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub first: usize,
    pub old_end: usize,
    pub new_end: usize,
}

impl Window {
    /// The window of `old` → `new`. Lines shared by both tables (a patched table keeps the
    /// lines it did not change) compare by pointer, others by bytes.
    pub fn of(old: &Table, new: &Table) -> Window {
        let same =
            |(x, y): &(&Bytes, &Bytes)| (x.as_ptr() == y.as_ptr() && x.len() == y.len()) || x == y;
        let (a, b) = (old.lines(), new.lines());
        let pre = a.iter().zip(b).take_while(same).count();
        let room = a.len().min(b.len()) - pre;
        let suf = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take(room)
            .take_while(same)
            .count();
        Window {
            first: pre,
            old_end: a.len() - suf,
            new_end: b.len() - suf,
        }
    }

    /// The window of two shared tables, taken from `known` when it was computed for these
    /// very tables; `None` when they are the same table.
    pub fn between(old: &Arc<Table>, new: &Arc<Table>, known: &[Compared]) -> Option<Window> {
        if Arc::ptr_eq(old, new) {
            return None;
        }
        Some(
            known
                .iter()
                .find(|c| Arc::ptr_eq(&c.old, old) && Arc::ptr_eq(&c.new, new))
                .map_or_else(|| Window::of(old, new), |c| c.window),
        )
    }

    /// Whether the lines after the window moved.
    pub fn moves(&self) -> bool {
        self.old_end != self.new_end
    }

    /// A line number of the old table after the window moves with the lines after it.
    pub fn shift(&self, line: &mut usize) {
        if *line >= self.old_end {
            *line = *line - self.old_end + self.new_end;
        }
    }
}

impl Table {
    pub fn parse(bytes: &[u8]) -> Table {
        Table::parse_owned(bytes.to_vec())
    }

    /// [`Table::parse`] of a buffer the table keeps (its lines are slices of it).
    pub fn parse_owned(bytes: Vec<u8>) -> Table {
        let bytes = Bytes::from(bytes);
        if bytes.is_empty() {
            return Table {
                lines: Vec::new(),
                final_newline: true,
            };
        }
        let mut lines: Vec<Bytes> =
            Vec::with_capacity(memchr::memchr_iter(b'\n', &bytes).count() + 1);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &bytes) {
            lines.push(bytes.slice(start..end));
            start = end + 1;
        }
        lines.push(bytes.slice(start..));
        let final_newline = bytes.ends_with(b"\n");
        if final_newline {
            lines.pop();
        }
        Table {
            lines,
            final_newline,
        }
    }

    /// A table of `lines` replacing `like`: it keeps `like`'s missing final newline only when
    /// the lines are the same.
    pub fn from_lines(lines: Vec<Bytes>, like: &Table) -> Table {
        let final_newline = like.final_newline || lines != like.lines;
        Table {
            lines,
            final_newline,
        }
    }

    /// A table of these lines, ending with a newline.
    pub fn of_lines(lines: Vec<Bytes>) -> Table {
        Table {
            lines,
            final_newline: true,
        }
    }

    /// Whether the last line ends with a newline.
    pub fn final_newline(&self) -> bool {
        self.final_newline
    }

    /// Write the bytes of [`Table::to_bytes`] to `w` without making them first (a file of
    /// 15 MiB is not copied once more before it is written).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        use std::io::Write;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, w);
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                w.write_all(b"\n")?;
            }
            w.write_all(l)?;
        }
        if self.final_newline && !self.lines.is_empty() {
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self
            .lines
            .iter()
            .map(|l| &l[..])
            .collect::<Vec<_>>()
            .join(&b'\n');
        if self.final_newline && !self.lines.is_empty() {
            out.push(b'\n');
        }
        out
    }

    /// The index of the first NIS compat line ([`is_nis`]), or the number of lines: where the
    /// canonical block of managed lines ends.
    pub fn nis_start(&self) -> usize {
        self.lines
            .iter()
            .position(|l| is_nis(l))
            .unwrap_or(self.lines.len())
    }

    pub fn lines(&self) -> &[Bytes] {
        &self.lines
    }

    pub fn line(&self, i: usize) -> &[u8] {
        &self.lines[i]
    }

    /// Replace line `i`; returns whether its bytes changed.
    pub fn set(&mut self, i: usize, line: Vec<u8>) -> bool {
        if self.lines[i] == line {
            return false;
        }
        self.lines[i] = Bytes::from(line);
        true
    }

    /// Append a line (the file then ends with a newline).
    pub fn push(&mut self, line: Vec<u8>) {
        self.lines.push(Bytes::from(line));
        self.final_newline = true;
    }

    /// Remove the lines for which `drop` is true; returns how many.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&[u8]) -> bool) -> usize {
        let before = self.lines.len();
        self.lines.retain(|l| !drop(l));
        before - self.lines.len()
    }

    /// Indices of the entry lines named `name`.
    pub fn find(&self, name: impl AsRef<[u8]>) -> Vec<usize> {
        let name = name.as_ref();
        self.lines
            .iter()
            .enumerate()
            .filter(|(_, l)| entry_name(l) == Some(name))
            .map(|(i, _)| i)
            .collect()
    }
}

/// The name of an entry line; `None` for blank, comment and NIS lines.
pub fn entry_name(line: &[u8]) -> Option<&[u8]> {
    let start = line.iter().position(|c| !matches!(c, b' ' | b'\t'))?;
    let line = &line[start..];
    if matches!(line.first(), Some(b'#' | b'+' | b'-')) {
        return None;
    }
    let end = line.iter().position(|&c| c == b':').unwrap_or(line.len());
    Some(&line[..end])
}

/// The `N` fields of an entry line that has exactly `N` (found with `memchr`, no allocation:
/// a group line with a thousand members is scanned once, fast).
fn fields<const N: usize>(line: &[u8]) -> Option<[&[u8]; N]> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut rest = line;
    for slot in out.iter_mut().take(N - 1) {
        let i = memchr::memchr(b':', rest)?;
        *slot = &rest[..i];
        rest = &rest[i + 1..];
    }
    if memchr::memchr(b':', rest).is_some() {
        return None;
    }
    out[N - 1] = rest;
    (entry_name(line) == Some(out[0])).then_some(out)
}

/// A decimal id as the files write it: digits only.
fn id(field: &[u8]) -> Option<u32> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// An aging field: empty, or a decimal number (possibly `-1`).
fn days(field: &[u8]) -> Option<Option<i64>> {
    if field.is_empty() {
        return Some(None);
    }
    let digits = field.strip_prefix(b"-").unwrap_or(field);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok().map(Some)
}

/// A `passwd` line.
pub struct Pw<'a> {
    pub name: &'a [u8],
    pub passwd: &'a [u8],
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a [u8],
    pub home: &'a [u8],
    pub shell: &'a [u8],
}

pub fn parse_pw(line: &[u8]) -> Option<Pw<'_>> {
    let f = fields::<7>(line)?;
    Some(Pw {
        name: f[0],
        passwd: f[1],
        uid: id(f[2])?,
        gid: id(f[3])?,
        gecos: f[4],
        home: f[5],
        shell: f[6],
    })
}

/// A `group` line.
pub struct Gr<'a> {
    pub name: &'a [u8],
    pub passwd: &'a [u8],
    pub gid: u32,
    pub members: &'a [u8],
}

pub fn parse_gr(line: &[u8]) -> Option<Gr<'_>> {
    let f = fields::<4>(line)?;
    Some(Gr {
        name: f[0],
        passwd: f[1],
        gid: id(f[2])?,
        members: f[3],
    })
}

/// A `shadow` line.
pub struct Sp<'a> {
    pub name: &'a [u8],
    pub hash: &'a [u8],
    pub aging: Aging,
}

pub fn parse_sp(line: &[u8]) -> Option<Sp<'_>> {
    let f = fields::<9>(line)?;
    Some(Sp {
        name: f[0],
        hash: f[1],
        aging: Aging {
            last_change: days(f[2])?,
            min: days(f[3])?,
            max: days(f[4])?,
            warn: days(f[5])?,
            inactive: days(f[6])?,
            expire: days(f[7])?,
            reserved: days(f[8])?,
        },
    })
}

/// A `gshadow` line.
pub struct Sg<'a> {
    pub name: &'a [u8],
    pub hash: &'a [u8],
    pub admins: &'a [u8],
    pub members: &'a [u8],
}

pub fn parse_sg(line: &[u8]) -> Option<Sg<'_>> {
    let f = fields::<4>(line)?;
    Some(Sg {
        name: f[0],
        hash: f[1],
        admins: f[2],
        members: f[3],
    })
}

/// The names of a comma-separated list (`a,b`); empty for an empty field.
pub fn list(field: &[u8]) -> Vec<&[u8]> {
    if field.is_empty() {
        return Vec::new();
    }
    field.split(|&c| c == b',').collect()
}

/// `field` with `name` present (appended at the end) or absent (every occurrence removed);
/// `None` when it already is as wanted, so an untouched list keeps its bytes.
pub fn with_member(field: &[u8], name: &str, present: bool) -> Option<Vec<u8>> {
    let items = list(field);
    let has = items.contains(&name.as_bytes());
    if has == present {
        return None;
    }
    let kept: Vec<&[u8]> = if present {
        let mut v = items;
        v.push(name.as_bytes());
        v
    } else {
        items
            .into_iter()
            .filter(|m| *m != name.as_bytes())
            .collect()
    };
    Some(kept.join(&b','))
}

/// Line `line` with field `i` replaced (`line` has been parsed, so it has that field).
pub fn replace_field(line: &[u8], i: usize, value: &[u8]) -> Vec<u8> {
    let mut f: Vec<&[u8]> = line.split(|&c| c == b':').collect();
    if let Some(slot) = f.get_mut(i) {
        *slot = value;
    }
    f.join(&b':')
}

/// Join fields into a line.
pub fn join(fields: &[&[u8]]) -> Vec<u8> {
    fields.join(&b':')
}

/// An optional number as a field.
pub fn num(v: Option<i64>) -> Vec<u8> {
    v.map(|v| v.to_string().into_bytes()).unwrap_or_default()
}

/// The four files of one root. Each table is shared (`Arc`): a copy of the files is cheap, a
/// table nobody changed stays the same allocation (compared by pointer first), and a change
/// makes a new table of that file only ([`Arc::make_mut`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccountFiles {
    pub passwd: Arc<Table>,
    pub group: Arc<Table>,
    pub shadow: Option<Arc<Table>>,
    pub gshadow: Option<Arc<Table>>,
}

impl AccountFiles {
    /// Parse the files' bytes (`None`: that file does not exist).
    pub fn parse(
        passwd: &[u8],
        group: &[u8],
        shadow: Option<&[u8]>,
        gshadow: Option<&[u8]>,
    ) -> Self {
        AccountFiles {
            passwd: Arc::new(Table::parse(passwd)),
            group: Arc::new(Table::parse(group)),
            shadow: shadow.map(|b| Arc::new(Table::parse(b))),
            gshadow: gshadow.map(|b| Arc::new(Table::parse(b))),
        }
    }

    pub fn table(&self, f: DbFile) -> Option<&Table> {
        self.shared(f).map(|t| &**t)
    }

    /// The shared table of one file.
    pub fn shared(&self, f: DbFile) -> Option<&Arc<Table>> {
        match f {
            DbFile::Passwd => Some(&self.passwd),
            DbFile::Group => Some(&self.group),
            DbFile::Shadow => self.shadow.as_ref(),
            DbFile::Gshadow => self.gshadow.as_ref(),
        }
    }

    /// Whether both hold the very same tables (no comparison of lines).
    pub fn same_tables(&self, other: &AccountFiles) -> bool {
        DbFile::ALL
            .into_iter()
            .all(|f| match (self.shared(f), other.shared(f)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
    }

    /// The bytes of one file, `None` when it does not exist.
    pub fn bytes(&self, f: DbFile) -> Option<Vec<u8>> {
        self.table(f).map(Table::to_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_whatever_the_text() {
        for text in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"root:x:0:0:root:/root:/bin/bash\n",
            b"root:x:0:0:root:/root:/bin/bash",
            b"# comment\n\nroot:x:0:0::/root:/bin/sh\n+@netgroup::::::\n-baduser\n+\n",
            b"caf\xe9:x:1:1:\xff:/:/bin/sh\r\nbroken line\n\x00\n",
        ] {
            assert_eq!(
                Table::parse(text).to_bytes(),
                text,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn written_bytes_are_the_bytes() {
        for text in [&b""[..], b"\n", b"a", b"a\nb", b"a\nb\n", b"\n\nx\n"] {
            let t = Table::parse(text);
            let mut out = Vec::new();
            t.write_to(&mut out).expect("write to a Vec");
            assert_eq!(out, t.to_bytes());
        }
    }

    #[test]
    fn push_onto_a_file_without_final_newline() {
        let mut t = Table::parse(b"a:x:1:1::/:/bin/sh");
        t.push(b"b:x:2:2::/:/bin/sh".to_vec());
        assert_eq!(t.to_bytes(), b"a:x:1:1::/:/bin/sh\nb:x:2:2::/:/bin/sh\n");
        let mut t = Table::parse(b"");
        t.push(b"b".to_vec());
        assert_eq!(t.to_bytes(), b"b\n");
    }

    #[test]
    fn entry_lines_and_names() {
        assert_eq!(entry_name(b"root:x:0"), Some(&b"root"[..]));
        assert_eq!(entry_name(b"  root:x"), Some(&b"root"[..]));
        assert_eq!(entry_name(b"# root:x"), None);
        assert_eq!(entry_name(b"+root:"), None);
        assert_eq!(entry_name(b"-root"), None);
        assert_eq!(entry_name(b""), None);
        assert_eq!(entry_name(b"junk"), Some(&b"junk"[..]));
        assert!(parse_pw(b"junk").is_none());
        assert!(parse_pw(b"a:x:1:1::/:/bin/sh:extra").is_none());
        assert!(parse_pw(b"a:x:-1:1::/:/bin/sh").is_none());
        assert!(parse_pw(b"a:x:4294967296:1::/:/bin/sh").is_none());
        assert!(
            parse_pw(b"  a:x:1:1::/:/bin/sh").is_none(),
            "indented lines stay text"
        );
        let p = parse_pw(b"a:x:1:2:g:/h:/s").expect("valid");
        assert_eq!((p.uid, p.gid, p.home), (1, 2, &b"/h"[..]));
        let s = parse_sp(b"a:!:19000::99999:7:::").expect("valid");
        assert_eq!(s.aging.last_change, Some(19000));
        assert_eq!(s.aging.min, None);
        assert!(parse_sp(b"a:!:x::::::").is_none());
        assert_eq!(
            parse_sp(b"a:!:-1::::::").expect("-1").aging.last_change,
            Some(-1)
        );
    }

    #[test]
    fn member_lists_change_only_when_needed() {
        assert_eq!(with_member(b"", "a", true), Some(b"a".to_vec()));
        assert_eq!(with_member(b"b,c", "a", true), Some(b"b,c,a".to_vec()));
        assert_eq!(with_member(b"b,a,c,a", "a", false), Some(b"b,c".to_vec()));
        assert_eq!(with_member(b"b,a", "a", true), None);
        assert_eq!(with_member(b"b", "a", false), None);
        assert_eq!(with_member(b"ab", "a", false), None);
    }
}
