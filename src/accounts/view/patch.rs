//! A [`View`] brought up to date with new files by looking only at the lines that changed.
//!
//! In each file that changed, the lines between the first and the last that differ (the same
//! window as detect's) leave the lookups and the lines that replace them join; the lines after
//! the window only move (their numbers shift by the change in length); the canonical blocks
//! are checked in one pass over the managed lines (no sort). This needs a view in which no
//! name has two lines in a file, no id two accounts and no line is malformed (else, or when the
//! new lines bring one of those, the view is built anew). Debug builds check that the result
//! is the view [`View::new`] makes of the same files.

use super::{Block, GroupLine, UserLine, View, maybe_managed};
use crate::accounts::db::{self, AccountFiles, Table};
use crate::accounts::managed::Policy;
use std::collections::HashMap;
use std::sync::Arc;

/// The window of lines that differ: `(first, old end, new end)`; the lines before `first` and
/// from the ends on are the same in both tables.
fn window(old: &Table, new: &Table) -> (usize, usize, usize) {
    let (a, b) = (old.lines(), new.lines());
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let room = a.len().min(b.len()) - pre;
    let suf = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count();
    (pre, a.len() - suf, b.len() - suf)
}

/// The window of a table that changed (`None`: the very same table).
fn changed(old: &Arc<Table>, new: &Arc<Table>) -> Option<(usize, usize, usize)> {
    (!Arc::ptr_eq(old, new)).then(|| window(old, new))
}

/// A line number after the window moves with the lines after it.
fn shift(line: &mut usize, (_, old_end, new_end): (usize, usize, usize)) {
    if *line >= old_end {
        *line = *line - old_end + new_end;
    }
}

impl View {
    /// The view of `files`, made from this view of other files (see the module
    /// documentation): the same as `View::new(files, policy)`, at the cost of the lines that
    /// changed plus one pass over the lookups.
    pub fn patched(mut self, files: &AccountFiles, policy: &Policy) -> View {
        if !self.patchable || self.patch(files, policy).is_none() {
            return View::new(files, policy);
        }
        debug_assert!(
            self.same_as(&View::new(files, policy)),
            "a patched view differs from the view built anew"
        );
        self
    }

    /// Patch in place; `None`: the files need a view built anew (`self` is then garbage).
    fn patch(&mut self, files: &AccountFiles, policy: &Policy) -> Option<()> {
        let mut users_changed: Vec<Vec<u8>> = Vec::new();
        if let Some(w) = changed(&self.files.passwd, &files.passwd) {
            users_changed = self.patch_users(&files.passwd, w, policy)?;
        }
        let mut groups_changed: Vec<Vec<u8>> = Vec::new();
        if let Some(w) = changed(&self.files.group, &files.group) {
            groups_changed = self.patch_groups(&files.group, w, policy)?;
        }
        // a user's private group is managed by its user's ids
        for n in users_changed.iter().chain(&groups_changed) {
            let owner = self.users.get(n.as_slice()).map(|u| (u.uid, u.gid));
            if let Some(g) = self.groups.get_mut(n.as_slice()) {
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
        self.blocks = self.blocks_in_one_pass();
        Some(())
    }

    /// The window of `passwd`: the names whose entry left or joined.
    fn patch_users(
        &mut self,
        new: &Table,
        w: (usize, usize, usize),
        policy: &Policy,
    ) -> Option<Vec<Vec<u8>>> {
        let old = self.files.passwd.clone();
        let mut names = Vec::new();
        for i in w.0..w.1 {
            let Some(n) = db::entry_name(old.line(i)) else {
                continue;
            };
            if self.users.get(n).is_some_and(|u| u.line == i)
                && let Some(u) = self.users.remove(n)
            {
                self.uids.remove(&u.uid);
                names.push(n.to_vec());
            }
        }
        if w.1 != w.2 {
            self.users.values_mut().for_each(|u| shift(&mut u.line, w));
        }
        for i in w.0..w.2 {
            let l = new.line(i);
            let Some(name) = db::entry_name(l) else {
                continue;
            };
            let Some(pw) = db::parse_pw(l) else {
                if maybe_managed(policy, l, name, &|n, id| policy.set.user(n, id)) {
                    return None;
                }
                continue;
            };
            if self.users.contains_key(name) || self.uids.contains_key(&pw.uid) {
                return None;
            }
            let managed = std::str::from_utf8(name).is_ok_and(|n| policy.set.user(n, pw.uid));
            self.users.insert(
                name.to_vec(),
                UserLine {
                    line: i,
                    uid: pw.uid,
                    gid: pw.gid,
                    managed,
                },
            );
            self.uids.insert(pw.uid, name.to_vec());
            names.push(name.to_vec());
        }
        Some(names)
    }

    /// The window of `group`, like [`View::patch_users`] (after it: owners are up to date).
    fn patch_groups(
        &mut self,
        new: &Table,
        w: (usize, usize, usize),
        policy: &Policy,
    ) -> Option<Vec<Vec<u8>>> {
        let old = self.files.group.clone();
        let mut names = Vec::new();
        for i in w.0..w.1 {
            let Some(n) = db::entry_name(old.line(i)) else {
                continue;
            };
            if self.groups.get(n).is_some_and(|g| g.line == i)
                && let Some(g) = self.groups.remove(n)
            {
                self.gids.remove(&g.gid);
                names.push(n.to_vec());
            }
        }
        if w.1 != w.2 {
            self.groups.values_mut().for_each(|g| shift(&mut g.line, w));
        }
        for i in w.0..w.2 {
            let l = new.line(i);
            let Some(name) = db::entry_name(l) else {
                continue;
            };
            let owner = self.users.get(name).map(|u| (u.uid, u.gid));
            let Some(gr) = db::parse_gr(l) else {
                if maybe_managed(policy, l, name, &|n, id| policy.set.group(n, id, owner)) {
                    return None;
                }
                continue;
            };
            if self.groups.contains_key(name) || self.gids.contains_key(&gr.gid) {
                return None;
            }
            let managed =
                std::str::from_utf8(name).is_ok_and(|n| policy.set.group(n, gr.gid, owner));
            self.groups.insert(
                name.to_vec(),
                GroupLine {
                    line: i,
                    gid: gr.gid,
                    managed,
                },
            );
            self.gids.insert(gr.gid, name.to_vec());
            names.push(name.to_vec());
        }
        Some(names)
    }

    /// [`View::find_blocks`] without sorting: the managed lines of each file must be the last
    /// lines before its first NIS line (or its end), in (id, name) order, one per account.
    fn blocks_in_one_pass(&self) -> Option<[Option<Block>; 4]> {
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
            Some(t) => {
                let n = self
                    .users
                    .iter()
                    .filter(|(n, u)| u.managed && self.shadow.contains_key(n.as_slice()))
                    .count();
                let key = |name: &[u8], i: usize| {
                    (self.shadow.get(name) == Some(&i))
                        .then(|| self.users.get(name).filter(|u| u.managed).map(|u| u.uid))
                        .flatten()
                };
                Some(block_in(t, n, &key)?)
            }
            None => None,
        };
        let sg = match &self.files.gshadow {
            Some(t) => {
                let n = self
                    .groups
                    .iter()
                    .filter(|(n, g)| g.managed && self.gshadow.contains_key(n.as_slice()))
                    .count();
                let key = |name: &[u8], i: usize| {
                    (self.gshadow.get(name) == Some(&i))
                        .then(|| self.groups.get(name).filter(|g| g.managed).map(|g| g.gid))
                        .flatten()
                };
                Some(block_in(t, n, &key)?)
            }
            None => None,
        };
        Some([Some(pw), sp, Some(gr), sg])
    }

    /// Whether [`View::patched`] can patch this view (else it builds the view anew).
    pub fn is_patchable(&self) -> bool {
        self.patchable
    }

    /// Whether both views hold the same lookups of the same files (debug checks, tests).
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
            && self.blocks == other.blocks
            && self.patchable == other.patchable
    }
}

/// The block of `n` managed lines of `t`: the `n` lines before the first NIS line (or the
/// end), each the line of a managed account (`key` of its name and line number: its id), in
/// (id, name) order.
fn block_in(t: &Table, n: usize, key: &dyn Fn(&[u8], usize) -> Option<u32>) -> Option<Block> {
    let lines = t.lines();
    let end = lines
        .iter()
        .position(|l| matches!(l.first(), Some(b'+' | b'-')))
        .unwrap_or(lines.len());
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

/// [`super::first_lines`] patched with window `w` of `old` → `new`; `None` when a name of
/// the new lines has a line already.
fn patch_first_lines(
    m: &mut HashMap<Vec<u8>, usize>,
    old: &Table,
    new: &Table,
    w: (usize, usize, usize),
) -> Option<()> {
    for i in w.0..w.1 {
        if let Some(n) = db::entry_name(old.line(i))
            && m.get(n) == Some(&i)
        {
            m.remove(n);
        }
    }
    if w.1 != w.2 {
        m.values_mut().for_each(|l| shift(l, w));
    }
    for i in w.0..w.2 {
        if let Some(n) = db::entry_name(new.line(i)) {
            if m.contains_key(n) {
                return None;
            }
            m.insert(n.to_vec(), i);
        }
    }
    Some(())
}
