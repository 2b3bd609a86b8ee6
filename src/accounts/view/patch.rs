//! A [`View`] brought up to date with new files by looking only at the lines that changed.
//!
//! In each file that changed, the lines between the first and the last that differ (the same
//! window as detect's) leave the lookups and the lines that replace them join; the lines after
//! the window only move (their numbers shift by the change in length); the canonical blocks
//! are checked in one pass over the managed lines (no sort). This needs a view in which no
//! name has two lines in a file, no id two accounts and no line is malformed (else, or when the
//! new lines bring one of those, the view is built anew). Debug builds check that the result
//! is the view [`View::new`] makes of the same files.
//!
//! The names of the lines that join are copied, not sliced from the buffer their file was read
//! into: a view patched after every change would otherwise keep every buffer read alive (one
//! 15 MiB copy of the files per change at 10,000 users) for as long as one of its names stays.
//!
//! Cost: the lines of the window, plus one pass over the lookups when lines moved and one over
//! the managed lines for the blocks; no parse of a line outside the window, no sort, no map
//! built again (a change of one account in 10,000 costs well under a millisecond instead of the
//! several of [`View::new`]).

use super::{Block, GroupLine, Map, UserLine, View, maybe_managed};
use crate::accounts::db::{self, AccountFiles, Compared, Table, Window};
use crate::accounts::managed::Policy;
use bytes::Bytes;

impl View {
    /// The view of `files`, made from this view of other files (see the module
    /// documentation): the same as `View::new(files, policy)`, at the cost of the lines that
    /// changed plus one pass over the lookups. `known`: windows already computed between
    /// tables of this view's files and of `files` (a detect's), not computed again.
    pub fn patched(mut self, files: &AccountFiles, policy: &Policy, known: &[Compared]) -> View {
        if !self.patchable || self.patch(files, policy, known).is_none() {
            return View::new(files, policy);
        }
        debug_assert!(
            self.same_as(&View::new(files, policy)),
            "a patched view differs from the view built anew"
        );
        self
    }

    /// Whether [`View::patched`] can patch this view (else it builds the view anew).
    pub fn is_patchable(&self) -> bool {
        self.patchable
    }

    /// Patch in place; `None`: the files need a view built anew (`self` is then garbage).
    fn patch(&mut self, files: &AccountFiles, policy: &Policy, known: &[Compared]) -> Option<()> {
        let changed = |a, b| Window::between(a, b, known);
        let mut changed_names: Vec<Bytes> = Vec::new();
        if let Some(w) = changed(&self.files.passwd, &files.passwd) {
            let user = |n: &str, id| policy.set.user(n, id);
            let read = |i, l: &[u8], name: &[u8]| match db::parse_pw(l) {
                Some(pw) => Read::Entry(UserLine {
                    line: i,
                    uid: pw.uid,
                    gid: pw.gid,
                    managed: std::str::from_utf8(name).is_ok_and(|n| user(n, pw.uid)),
                }),
                None if maybe_managed(policy, l, name, &user) => Read::Rebuild,
                None => Read::Skip,
            };
            let old = self.files.passwd.clone();
            let (map, ids) = (&mut self.users, &mut self.uids);
            patch_entries(map, ids, &old, &files.passwd, w, &mut changed_names, read)?;
        }
        if let Some(w) = changed(&self.files.group, &files.group) {
            // after the users: owners are up to date
            let users = &self.users;
            let read = |i, l: &[u8], name: &[u8]| {
                let owner = users.get(name).map(|u| (u.uid, u.gid));
                let group = |n: &str, id| policy.set.group(n, id, owner);
                match db::parse_gr(l) {
                    Some(gr) => Read::Entry(GroupLine {
                        line: i,
                        gid: gr.gid,
                        managed: std::str::from_utf8(name).is_ok_and(|n| group(n, gr.gid)),
                    }),
                    None if maybe_managed(policy, l, name, &group) => Read::Rebuild,
                    None => Read::Skip,
                }
            };
            let old = self.files.group.clone();
            let (map, ids) = (&mut self.groups, &mut self.gids);
            patch_entries(map, ids, &old, &files.group, w, &mut changed_names, read)?;
        }
        // a group is managed by its own gid and the ids of the user of its name
        for n in &changed_names {
            let owner = self.users.get(n).map(|u| (u.uid, u.gid));
            if let Some(g) = self.groups.get_mut(n) {
                g.managed = std::str::from_utf8(n).is_ok_and(|s| policy.set.group(s, g.gid, owner));
            }
        }
        match (&self.files.shadow, &files.shadow) {
            (Some(a), Some(b)) => {
                if let Some(w) = changed(a, b) {
                    patch_first_lines(&mut self.shadow, a, b, w)?;
                }
            }
            (None, None) => {}
            _ => return None,
        }
        match (&self.files.gshadow, &files.gshadow) {
            (Some(a), Some(b)) => {
                if let Some(w) = changed(a, b) {
                    patch_first_lines(&mut self.gshadow, a, b, w)?;
                }
            }
            (None, None) => {}
            _ => return None,
        }
        self.files = files.clone();
        self.blocks = std::sync::OnceLock::new();
        self.patched = true;
        Some(())
    }

    /// [`View::find_blocks`] without sorting: the managed lines of each file must be the last
    /// lines before its first NIS line (or its end), in (id, name) order, one per account.
    /// `passwd` and `group` are checked line by line; `shadow` and `gshadow` by walking their
    /// lines next to the block of the file they follow (a name looked up only where they
    /// differ).
    pub(super) fn blocks_in_one_pass(&self) -> Option<[Option<Block>; 4]> {
        let users = self.users.values().filter(|u| u.managed).count();
        let groups = self.groups.values().filter(|g| g.managed).count();
        let user_key = |n: &[u8], i: usize| {
            self.users
                .get(n)
                .filter(|u| u.managed && u.line == i)
                .map(|u| u.uid)
        };
        let group_key = |n: &[u8], i: usize| {
            self.groups
                .get(n)
                .filter(|g| g.managed && g.line == i)
                .map(|g| g.gid)
        };
        let pw = block_in(&self.files.passwd, users, &user_key)?;
        let gr = block_in(&self.files.group, groups, &group_key)?;
        let sp = match &self.files.shadow {
            Some(t) => Some(follow_block(&self.files.passwd, pw, t, &self.shadow)?),
            None => None,
        };
        let sg = match &self.files.gshadow {
            Some(t) => Some(follow_block(&self.files.group, gr, t, &self.gshadow)?),
            None => None,
        };
        Some([Some(pw), sp, Some(gr), sg])
    }

    /// Whether both hold the same lookups of the same files (debug checks, tests).
    pub fn same_as(&self, other: &View) -> bool {
        self.files == other.files
            && self.users == other.users
            && self.groups == other.groups
            && self.uids == other.uids
            && self.gids == other.gids
            && self.shadow == other.shadow
            && self.gshadow == other.gshadow
            && self.dup_users == other.dup_users
            && self.dup_groups == other.dup_groups
            && self.malformed == other.malformed
            && self.blocks() == other.blocks()
            && self.patchable == other.patchable
    }
}

/// A lookup of a `passwd` or `group` entry.
trait EntryLine: Copy {
    fn line_mut(&mut self) -> &mut usize;
    fn id(&self) -> u32;
}

impl EntryLine for UserLine {
    fn line_mut(&mut self) -> &mut usize {
        &mut self.line
    }
    fn id(&self) -> u32 {
        self.uid
    }
}

impl EntryLine for GroupLine {
    fn line_mut(&mut self) -> &mut usize {
        &mut self.line
    }
    fn id(&self) -> u32 {
        self.gid
    }
}

/// What a line of the new window is to the lookups.
enum Read<E> {
    Entry(E),
    /// Not an entry to look up (a malformed line that cannot be a managed account's).
    Skip,
    /// A line only a view built anew can hold (one that may be a managed account's).
    Rebuild,
}

/// Patch the lookups of `passwd` or `group` (`map`: name → entry, `ids`: id → its name) with
/// window `w` of `old` → `new`: the entries whose line is in the old window leave, the later
/// lines move, the lines of the new window join as `read(line number, line, name)` says. The
/// names that left or joined are pushed to `names`. `None`: the view must be built anew (a
/// name or id that would have two entries, or `Read::Rebuild`).
fn patch_entries<E: EntryLine>(
    map: &mut Map<Bytes, E>,
    ids: &mut Map<u32, Bytes>,
    old: &Table,
    new: &Table,
    w: Window,
    names: &mut Vec<Bytes>,
    read: impl Fn(usize, &[u8], &[u8]) -> Read<E>,
) -> Option<()> {
    for i in w.first..w.old_end {
        let Some(n) = db::entry_name(old.line(i)) else {
            continue;
        };
        if map.get_mut(n).is_some_and(|e| *e.line_mut() == i)
            && let Some((n, e)) = map.remove_entry(n)
        {
            ids.remove(&e.id());
            names.push(n);
        }
    }
    if w.moves() {
        map.values_mut().for_each(|e| w.shift(e.line_mut()));
    }
    for i in w.first..w.new_end {
        let l = new.line(i);
        let Some(name) = db::entry_name(l) else {
            continue;
        };
        let e = match read(i, l, name) {
            Read::Entry(e) => e,
            Read::Skip => continue,
            Read::Rebuild => return None,
        };
        if map.contains_key(name) || ids.contains_key(&e.id()) {
            return None;
        }
        let name = Bytes::copy_from_slice(name);
        map.insert(name.clone(), e);
        ids.insert(e.id(), name.clone());
        names.push(name);
    }
    Some(())
}

/// The block of `n` managed lines of `t`: the `n` lines before the first NIS line (or the
/// end), each the line of a managed account (`key` of its name and line number: its id), in
/// (id, name) order.
fn block_in(t: &Table, n: usize, key: &dyn Fn(&[u8], usize) -> Option<u32>) -> Option<Block> {
    let lines = t.lines();
    let end = t.nis_start();
    let start = end.checked_sub(n)?;
    let mut prev: Option<(u32, &[u8])> = None;
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        let name = db::entry_name(l)?;
        let k = (key(name, i)?, name);
        if prev.is_some_and(|p| p >= k) {
            return None;
        }
        prev = Some(k);
    }
    Some(Block { start, end })
}

/// The block of `t` (`shadow` or `gshadow`, whose first lines of each name are `lines`) that
/// follows block `b` of `primary` (`passwd` or `group`): the lines just before `t`'s first NIS
/// line (or its end) are those of `b`'s accounts that have a line in `t`, in `b`'s order. `None`
/// when such an account's line is elsewhere (the layout is not canonical). The view has no
/// name with two lines (patchable), so a line found in place is its name's first.
fn follow_block(primary: &Table, b: Block, t: &Table, lines: &Map<Bytes, usize>) -> Option<Block> {
    let tl = t.lines();
    let end = t.nis_start();
    let mut at = end;
    for i in (b.start..b.end).rev() {
        let name = db::entry_name(primary.line(i))?;
        if at > 0 && db::entry_name(&tl[at - 1]) == Some(name) {
            at -= 1;
        } else if lines.contains_key(name) {
            return None;
        }
    }
    Some(Block { start: at, end })
}

/// [`super::first_lines`] patched with window `w` of `old` → `new`; `None` when a name of
/// the new lines has a line already.
fn patch_first_lines(m: &mut Map<Bytes, usize>, old: &Table, new: &Table, w: Window) -> Option<()> {
    for i in w.first..w.old_end {
        if let Some(n) = db::entry_name(old.line(i))
            && m.get(n) == Some(&i)
        {
            m.remove(n);
        }
    }
    if w.moves() {
        m.values_mut().for_each(|l| w.shift(l));
    }
    for i in w.first..w.new_end {
        let l = &new.lines()[i];
        if let Some(n) = db::entry_name(l) {
            if m.contains_key(n) {
                return None;
            }
            m.insert(Bytes::copy_from_slice(n), i);
        }
    }
    Some(())
}
