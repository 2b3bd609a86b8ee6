//! Which entries of a group are synced: gitignore-style `exclude` and optional `include`
//! patterns, relative to each configured path, plus clustersync's own temporary files, which
//! are never synced. An `exclude` written with one of the group's paths in front
//! (`/var/www/*/cache` in a group of `/var/www` and `/etc/nginx`) applies below that path only,
//! as `/*/cache` relative to it ([`anchored`]; since 0.3, what csync2's path excludes mean).
//!
//! Invariants: an excluded directory is not descended into; with `include` set, only entries
//! that match it (or lie below a matching directory) are synced, while directories are still
//! traversed to find them; a peer's path is checked with all its ancestors.

use crate::config::GroupConfig;
use crate::fs::safefs::TEMP_PREFIX;
use crate::item::name;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::path::Path;

/// The decision for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Sync it (and descend if it is a directory).
    Sync,
    /// Do not sync the entry itself, but look below it (directories under `include`).
    Traverse,
    /// Neither sync nor descend.
    Skip,
}

struct PathRules {
    base: String,
    exclude: Gitignore,
    include: Option<Gitignore>,
}

/// The compiled patterns of one group.
pub struct Filter {
    rules: Vec<PathRules>,
}

fn build(base: &str, pats: &[String]) -> Result<Gitignore, String> {
    let mut b = GitignoreBuilder::new(Path::new(base));
    for p in pats {
        b.add_line(None, p)
            .map_err(|e| format!("pattern {p:?}: {e}"))?;
    }
    b.build().map_err(|e| e.to_string())
}

/// The group path a pattern is anchored at (written with that path in front, the longest
/// one), if any.
fn anchor<'a>(paths: &'a [String], pattern: &str) -> Option<&'a str> {
    let body = pattern.strip_prefix('!').unwrap_or(pattern);
    paths
        .iter()
        .filter(|gp| {
            gp.len() > 1
                && body.len() > gp.len() + 1
                && body.starts_with(gp.as_str())
                && body.as_bytes()[gp.len()] == b'/'
        })
        .max_by_key(|gp| gp.len())
        .map(String::as_str)
}

/// The excludes of `g` that are anchored at one of its paths (written with it in front): a
/// release before 0.3 reads them relative to every path, where they match nothing.
pub fn anchored(g: &GroupConfig) -> Vec<&str> {
    g.exclude
        .iter()
        .filter(|p| anchor(&g.paths, p).is_some())
        .map(String::as_str)
        .collect()
}

/// The excludes that apply below `base`: the ones anchored at it, made relative to it, and
/// every one not anchored at any path.
fn excludes_for(base: &str, g: &GroupConfig) -> Vec<String> {
    g.exclude
        .iter()
        .filter_map(|p| match anchor(&g.paths, p) {
            None => Some(p.clone()),
            Some(gp) if gp == base => {
                let neg = if p.starts_with('!') { "!" } else { "" };
                let body = p.strip_prefix('!').unwrap_or(p);
                Some(format!("{neg}{}", &body[gp.len()..]))
            }
            Some(_) => None,
        })
        .collect()
}

impl Filter {
    /// Compile a group's patterns.
    pub fn new(g: &GroupConfig) -> Result<Filter, String> {
        let mut rules = Vec::new();
        for base in &g.paths {
            rules.push(PathRules {
                base: base.clone(),
                exclude: build(base, &excludes_for(base, g))?,
                include: if g.include.is_empty() {
                    None
                } else {
                    Some(build(base, &g.include)?)
                },
            });
        }
        Ok(Filter { rules })
    }

    fn rules(&self, gp: &str) -> Option<&PathRules> {
        self.rules.iter().find(|r| r.base == gp)
    }

    /// Decision for one entry, assuming its ancestors were already accepted (scan order).
    pub fn want(&self, gp: &str, p: &[u8], is_dir: bool) -> Want {
        let rel = name::relative(p, gp);
        if rel.is_empty() {
            return Want::Sync;
        }
        if name::file_name(rel).starts_with(TEMP_PREFIX.as_bytes()) {
            return Want::Skip;
        }
        let Some(r) = self.rules(gp) else {
            return Want::Skip;
        };
        let rel = name::os(rel);
        if r.exclude.matched(rel, is_dir).is_ignore() {
            return Want::Skip;
        }
        match &r.include {
            None => Want::Sync,
            Some(inc) => {
                if inc.matched(rel, is_dir).is_ignore() {
                    Want::Sync
                } else if is_dir {
                    Want::Traverse
                } else {
                    Want::Skip
                }
            }
        }
    }

    /// Decision for a path from a peer: checks every ancestor too.
    pub fn accepts(&self, gp: &str, p: &[u8], is_dir: bool) -> bool {
        let rel = name::relative(p, gp);
        if rel.is_empty() {
            return true;
        }
        let comps: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
        let mut included_above = false;
        let mut sub = gp.as_bytes().to_vec();
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            sub = name::join(&sub, c);
            match self.want(gp, &sub, if last { is_dir } else { true }) {
                Want::Skip => return false,
                Want::Sync => included_above = true,
                Want::Traverse => {}
            }
        }
        included_above
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(exclude: &[&str], include: &[&str]) -> GroupConfig {
        let text = format!(
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv/www\"]\nexclude = {:?}\ninclude = {:?}\n",
            exclude, include
        );
        let c = crate::config::Config::parse(&text, Path::new("t.toml")).unwrap();
        c.groups["g"].clone()
    }

    #[test]
    fn excludes_gitignore_style() {
        let f = Filter::new(&group(&["*.tmp", "cache/", ".git/"], &[])).unwrap();
        assert_eq!(f.want("/srv/www", b"/srv/www/a.tmp", false), Want::Skip);
        assert_eq!(f.want("/srv/www", b"/srv/www/x/cache", true), Want::Skip);
        assert_eq!(f.want("/srv/www", b"/srv/www/x/cache", false), Want::Sync);
        assert_eq!(f.want("/srv/www", b"/srv/www/a.txt", false), Want::Sync);
        assert_eq!(
            f.want("/srv/www", b"/srv/www/.clustersync.tmp.abc", false),
            Want::Skip
        );
        assert!(!f.accepts("/srv/www", b"/srv/www/cache/deep/file", false));
        assert!(f.accepts("/srv/www", b"/srv/www/ok/deep/file", false));
        // names that are not UTF-8 match like any other
        let f = Filter::new(&group(&["*.jpg"], &[])).unwrap();
        assert_eq!(
            f.want("/srv/www", b"/srv/www/caf\xe9.jpg", false),
            Want::Skip
        );
        assert_eq!(
            f.want("/srv/www", b"/srv/www/caf\xe9.txt", false),
            Want::Sync
        );
    }

    /// Issue 22 item 11: an exclude written with one group path in front applies below that
    /// path only (csync2's `exclude /var/www/*/cache` must not exclude
    /// `/etc/nginx/sites-available/conf/cache`).
    #[test]
    fn an_exclude_anchored_at_one_path_applies_below_that_path_only() {
        let text = "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/var/www\", \"/etc/nginx/sites-available\"]\nexclude = [\"/var/www/*/cache\", \"*.tmp\"]\n";
        let c = crate::config::Config::parse(text, Path::new("t.toml")).unwrap();
        let g = &c.groups["g"];
        assert_eq!(anchored(g), ["/var/www/*/cache"]);
        let f = Filter::new(g).unwrap();
        assert_eq!(f.want("/var/www", b"/var/www/site/cache", true), Want::Skip);
        assert_eq!(f.want("/var/www", b"/var/www/site/x", true), Want::Sync);
        let nginx = "/etc/nginx/sites-available";
        assert_eq!(
            f.want(nginx, b"/etc/nginx/sites-available/conf/cache", false),
            Want::Sync
        );
        assert_eq!(
            f.want(nginx, b"/etc/nginx/sites-available/a.tmp", false),
            Want::Skip
        );
        assert!(!f.accepts("/var/www", b"/var/www/site/cache/f", false));
        assert!(f.accepts(nginx, b"/etc/nginx/sites-available/conf/cache", false));
    }

    #[test]
    fn include_limits() {
        let f = Filter::new(&group(&[], &["*.conf"])).unwrap();
        assert_eq!(f.want("/srv/www", b"/srv/www/a.conf", false), Want::Sync);
        assert_eq!(f.want("/srv/www", b"/srv/www/a.txt", false), Want::Skip);
        assert_eq!(f.want("/srv/www", b"/srv/www/sub", true), Want::Traverse);
        assert!(f.accepts("/srv/www", b"/srv/www/sub/x.conf", false));
        assert!(!f.accepts("/srv/www", b"/srv/www/sub/x.txt", false));
    }
}
