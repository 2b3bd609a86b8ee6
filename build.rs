//! Build script: records the commit the binary is built from, for `clustersync --version`.
//!
//! `CLUSTERSYNC_COMMIT` in the environment wins (a package build from a source tarball sets
//! it); otherwise `git rev-parse --short=7 HEAD`; without git or a repository (a tarball
//! without the variable) the commit is "unknown". Never fails the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CLUSTERSYNC_COMMIT");
    let commit = match std::env::var("CLUSTERSYNC_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs
            // (only paths that exist: a missing one would make every build rerun this)
            for p in ["HEAD", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", p])
                    && Path::new(&path).exists()
                {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(path) = git(&["rev-parse", "--git-path", &branch])
                && Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
            git(&["rev-parse", "--short=7", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=CLUSTERSYNC_COMMIT={commit}");
}
