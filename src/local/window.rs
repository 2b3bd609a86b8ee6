//! The coalescing windows between inotify events and the scans of a group's lane, as a pure
//! state machine with an injected clock (every method takes `now`), so its timing is tested
//! without sleeping.
//!
//! Rules, per path and per group:
//! - a finished write (`CLOSE_WRITE`), a rename into place (`MOVED_TO`), a new directory or
//!   symlink, an attribute change of a file not being written: due **at once** (events read together still coalesce, since
//!   the watcher drains what the kernel has queued before it asks what is due);
//! - a file being written (`MODIFY` without a close yet, or a regular file just created): due
//!   when it has been quiet for [`Params::write_quiet`], and at the latest
//!   [`Params::write_max`] after its first unsent write, so a file that never stays still (a log
//!   appended every second) is still sent, as a consistent snapshot, every few seconds;
//! - a deletion: due after [`Params::delete_peek`] (1 ms), the time it takes an `rm -rf` to
//!   delete dozens more entries, unless it is part of a burst (at least [`Params::burst_count`]
//!   deletions in the group within [`Params::burst_window`]): then the group's deletions are
//!   held until none came for [`Params::delete_settle`], at most [`Params::delete_max`] after
//!   the burst began, and handed over together, so the mass-deletion guard sees an `rm -rf`
//!   of a group path whole and not one file of it is deleted elsewhere;
//! - every wait has a maximum; windows are per group: a burst in one group never holds back
//!   another group, and a stream of single deletions is never a reason to wait.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The window lengths.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub delete_peek: Duration,
    pub write_quiet: Duration,
    pub write_max: Duration,
    pub burst_count: usize,
    pub burst_window: Duration,
    pub delete_settle: Duration,
    pub delete_max: Duration,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            delete_peek: Duration::from_millis(1),
            write_quiet: Duration::from_millis(1000),
            write_max: Duration::from_secs(3),
            burst_count: 3,
            burst_window: Duration::from_millis(50),
            delete_settle: Duration::from_millis(150),
            delete_max: Duration::from_secs(3),
        }
    }
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Written and closed, renamed into place, created (not a regular file).
    Done,
    /// Attributes changed (chmod, chown, xattrs, utimes): due at once, unless the file is being
    /// written (a copy sets the mode right after it creates the file, before the content).
    Attrib,
    /// Modified and not closed yet, or a regular file just created.
    Writing,
    /// Deleted or moved away.
    Deleted,
}

#[derive(Debug, Clone)]
struct Pending {
    recursive: bool,
    writing: bool,
    delete: bool,
    /// When the current unsent write began.
    first_write: Option<Instant>,
    last: Instant,
}

#[derive(Debug, Default)]
struct GroupDeletes {
    recent: VecDeque<Instant>,
    /// The burst in progress: when it began and when its last deletion came.
    burst: Option<(Instant, Instant)>,
}

/// Paths ready for a scan.
#[derive(Debug, PartialEq, Eq)]
pub struct Ready {
    pub group: String,
    /// (logical path, recursive).
    pub paths: Vec<(Vec<u8>, bool)>,
    /// Deletions that went through the deletion window (single, or a settled burst): what
    /// their scan finds gone may be recorded at once. Other paths' scans hold what they find
    /// gone for a settle time first (a directory's change event can come before the events of
    /// the deletions in it).
    pub deletes: bool,
    /// The deletions of a burst that has settled (or reached its maximum).
    pub burst: bool,
}

/// The windows of every watched group.
#[derive(Debug, Default)]
pub struct Windows {
    params: Params,
    pending: HashMap<(String, Vec<u8>), Pending>,
    deletes: HashMap<String, GroupDeletes>,
}

impl Windows {
    pub fn new(params: Params) -> Windows {
        Windows {
            params,
            ..Default::default()
        }
    }

    /// Paths waiting, per group (for `status`).
    pub fn waiting(&self, group: &str) -> usize {
        self.pending.keys().filter(|(g, _)| g == group).count()
    }

    /// Record an event.
    pub fn event(&mut self, group: &str, path: Vec<u8>, ev: Event, recursive: bool, now: Instant) {
        let p = self
            .pending
            .entry((group.to_string(), path))
            .or_insert(Pending {
                recursive,
                writing: false,
                delete: false,
                first_write: None,
                last: now,
            });
        p.recursive |= recursive;
        p.last = now;
        match ev {
            Event::Done => {
                p.writing = false;
            }
            Event::Attrib => {}
            Event::Writing => {
                p.writing = true;
                p.first_write.get_or_insert(now);
            }
            Event::Deleted => {
                p.delete = true;
                p.writing = false;
                p.recursive = true;
                let d = self.deletes.entry(group.to_string()).or_default();
                d.recent.push_back(now);
                while d
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.params.burst_window)
                {
                    d.recent.pop_front();
                }
                if let Some((start, _)) = d.burst {
                    d.burst = Some((start, now));
                } else if d.recent.len() >= self.params.burst_count {
                    let start = d.recent.front().copied().unwrap_or(now);
                    d.burst = Some((start, now));
                }
            }
        }
    }

    fn due_of(&self, group: &str, p: &Pending) -> Instant {
        if p.delete {
            if let Some((start, last)) = self.deletes.get(group).and_then(|d| d.burst) {
                return (last + self.params.delete_settle).min(start + self.params.delete_max);
            }
            return p.last + self.params.delete_peek;
        }
        if p.writing {
            let quiet = p.last + self.params.write_quiet;
            return match p.first_write {
                Some(f) => quiet.min(f + self.params.write_max),
                None => quiet,
            };
        }
        p.last
    }

    /// Hand over what is due at `now`; returns it and when the next path will be due.
    pub fn take_due(&mut self, now: Instant) -> (Vec<Ready>, Option<Instant>) {
        // a burst whose time is up ends here (its deletions go out together below)
        let mut ended: Vec<String> = Vec::new();
        for (g, d) in &self.deletes {
            if let Some((start, last)) = d.burst
                && (last + self.params.delete_settle).min(start + self.params.delete_max) <= now
            {
                ended.push(g.clone());
            }
        }
        // (group, deletes, burst) -> (path, recursive)
        type Key = (String, bool, bool);
        let mut ready: HashMap<Key, Vec<(Vec<u8>, bool)>> = HashMap::new();
        let mut next: Option<Instant> = None;
        let keys: Vec<(String, Vec<u8>)> = self.pending.keys().cloned().collect();
        for k in keys {
            let Some(p) = self.pending.get(&k) else {
                continue;
            };
            let due = self.due_of(&k.0, p);
            if due <= now {
                let burst = p.delete && ended.contains(&k.0);
                let (recursive, delete) = (p.recursive, p.delete);
                self.pending.remove(&k);
                ready
                    .entry((k.0.clone(), delete, burst))
                    .or_default()
                    .push((k.1, recursive));
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        for g in ended {
            if let Some(d) = self.deletes.get_mut(&g) {
                d.burst = None;
                d.recent.clear();
            }
        }
        let mut out: Vec<Ready> = ready
            .into_iter()
            .map(|((group, deletes, burst), mut paths)| {
                paths.sort();
                Ready {
                    group,
                    paths,
                    deletes,
                    burst,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.group, a.deletes, a.burst).cmp(&(&b.group, b.deletes, b.burst)));
        (out, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn paths(r: &[Ready], group: &str) -> Vec<Vec<u8>> {
        r.iter()
            .filter(|x| x.group == group)
            .flat_map(|x| x.paths.iter().map(|p| p.0.clone()))
            .collect()
    }

    #[test]
    fn closed_files_and_single_deletes_go_at_once() {
        let t0 = Instant::now();
        let mut w = Windows::new(Params::default());
        w.event("g", b"/a".to_vec(), Event::Writing, false, t0);
        w.event("g", b"/a".to_vec(), Event::Done, false, t0 + ms(1));
        w.event("g", b"/b".to_vec(), Event::Deleted, true, t0 + ms(1));
        let (r, next) = w.take_due(t0 + ms(1));
        assert_eq!(paths(&r, "g"), vec![b"/a".to_vec()]);
        assert_eq!(next, Some(t0 + ms(2)));
        let (r, _) = w.take_due(t0 + ms(2));
        assert_eq!(paths(&r, "g"), vec![b"/b".to_vec()]);
    }

    #[test]
    fn a_mode_set_on_a_file_being_written_does_not_send_it_half_written() {
        let t0 = Instant::now();
        let mut w = Windows::new(Params::default());
        // cp: create, fchmod, then the content, then close
        w.event("g", b"/copy".to_vec(), Event::Writing, false, t0);
        w.event("g", b"/copy".to_vec(), Event::Attrib, false, t0 + ms(1));
        assert!(w.take_due(t0 + ms(2)).0.is_empty(), "sent while written");
        w.event("g", b"/copy".to_vec(), Event::Done, false, t0 + ms(30));
        assert_eq!(
            paths(&w.take_due(t0 + ms(30)).0, "g"),
            vec![b"/copy".to_vec()]
        );
        // a chmod of a file nobody writes goes at once
        w.event("g", b"/other".to_vec(), Event::Attrib, false, t0 + ms(40));
        assert_eq!(
            paths(&w.take_due(t0 + ms(40)).0, "g"),
            vec![b"/other".to_vec()]
        );
    }

    #[test]
    fn a_file_being_written_waits_for_quiet_but_not_forever() {
        let p = Params::default();
        let t0 = Instant::now();
        let mut w = Windows::new(p);
        // appended every 500 ms, never closed
        let mut t = t0;
        let mut sent_at = None;
        for i in 0..20 {
            t = t0 + ms(500 * i);
            w.event("g", b"/log".to_vec(), Event::Writing, false, t);
            let (r, _) = w.take_due(t);
            if !r.is_empty() {
                sent_at = Some(t);
                break;
            }
        }
        let sent_at = sent_at.expect("a growing file must be sent within write_max");
        assert!(sent_at.duration_since(t0) <= p.write_max);
        assert!(t >= t0);
        // quiet for write_quiet: due then
        let mut w = Windows::new(p);
        w.event("g", b"/f".to_vec(), Event::Writing, false, t0);
        assert!(w.take_due(t0 + ms(999)).0.is_empty());
        assert_eq!(w.take_due(t0 + ms(1000)).0.len(), 1);
    }

    #[test]
    fn a_burst_of_deletes_goes_together_and_a_stream_of_single_ones_does_not_wait() {
        let p = Params::default();
        let t0 = Instant::now();
        let mut w = Windows::new(p);
        for i in 0..1000u64 {
            w.event(
                "g",
                format!("/d/{i}").into_bytes(),
                Event::Deleted,
                true,
                t0 + Duration::from_micros(i * 10),
            );
        }
        let (r, next) = w.take_due(t0 + ms(11));
        // not one goes before the burst is over
        assert!(paths(&r, "g").is_empty(), "{}", paths(&r, "g").len());
        let next = next.unwrap();
        assert!(next <= t0 + ms(11) + p.delete_settle);
        let (r, _) = w.take_due(next);
        assert_eq!(r.iter().filter(|x| x.burst).count(), 1);
        assert!(paths(&r, "g").len() >= 998);
        // another group is never held by it
        let mut w = Windows::new(p);
        for i in 0..100u64 {
            w.event(
                "g",
                format!("/d/{i}").into_bytes(),
                Event::Deleted,
                true,
                t0 + ms(i),
            );
        }
        w.event("h", b"/x".to_vec(), Event::Deleted, true, t0 + ms(100));
        let (r, _) = w.take_due(t0 + ms(103));
        assert_eq!(paths(&r, "h"), vec![b"/x".to_vec()]);
        // one deletion every 100 ms is never a burst: each goes at once
        let mut w = Windows::new(p);
        for i in 0..50u64 {
            let t = t0 + ms(100 * i);
            w.event("g", format!("/s/{i}").into_bytes(), Event::Deleted, true, t);
            let (r, _) = w.take_due(t + p.delete_peek);
            assert_eq!(paths(&r, "g").len(), 1, "deletion {i} waited");
        }
    }

    #[test]
    fn an_endless_burst_is_cut_at_its_maximum() {
        let p = Params::default();
        let t0 = Instant::now();
        let mut w = Windows::new(p);
        let mut got = 0;
        let mut first_out = None;
        for i in 0..10_000u64 {
            let t = t0 + ms(i);
            w.event("g", format!("/d/{i}").into_bytes(), Event::Deleted, true, t);
            let (r, _) = w.take_due(t);
            let n = paths(&r, "g").len();
            if n > 0 && first_out.is_none() {
                first_out = Some(t);
            }
            got += n;
            if t > t0 + p.delete_max * 2 {
                break;
            }
        }
        let first = first_out.expect("held deletions must go out at delete_max");
        assert!(first.duration_since(t0) <= p.delete_max + ms(1));
        assert!(got > 2000);
    }
}
