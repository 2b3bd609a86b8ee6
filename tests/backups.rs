//! Backups (SPEC §5.6): every overwrite and delete clustersync performs keeps the previous
//! content, newest N per path; `backups` lists them and `restore` puts one back, as an
//! ordinary change that reaches every node.

mod common;
use common::*;

fn versions(c: &Cluster, n: &str, path: &str) -> Vec<String> {
    let out = c.cli(n, &["backups", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(String::from)
        .collect()
}

#[test]
fn three_successive_versions_and_a_delete_are_kept_and_restored() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "backup_generations = 3".into(),
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    let file = "/srv/www/site.conf";
    for v in 1..=4 {
        write(&c.path("a", "site.conf"), format!("version {v}\n"));
        wait_until(&format!("version {v} on b"), WAIT, || {
            std::fs::read_to_string(c.path("b", "site.conf")).ok() == Some(format!("version {v}\n"))
        });
    }
    // b overwrote versions 1, 2 and 3: the newest three are kept
    let list = versions(&c, "b", file);
    assert_eq!(list.len(), 3, "{list:?}");
    for (i, want) in ["version 3\n", "version 2\n", "version 1\n"]
        .iter()
        .enumerate()
    {
        let dest = c.dir.path().join(format!("gen{}", i + 1));
        let out = c.cli(
            "b",
            &[
                "restore",
                file,
                "--generation",
                &(i + 1).to_string(),
                "--to",
                dest.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), *want);
    }
    // a delete made on a is applied on b, which keeps what it deleted
    std::fs::remove_file(c.path("a", "site.conf")).unwrap();
    wait_until("delete on b", WAIT, || !c.path("b", "site.conf").exists());
    let list = versions(&c, "b", file);
    assert_eq!(list.len(), 3);
    let dest = c.dir.path().join("deleted");
    assert!(
        c.cli("b", &["restore", file, "--to", dest.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "version 4\n");
    // restore in place: an ordinary change that reaches every node
    let out = c.cli("b", &["restore", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the restored file on a", WAIT, || {
        std::fs::read_to_string(c.path("a", "site.conf"))
            .ok()
            .as_deref()
            == Some("version 4\n")
    });
    c.wait_converged("after restore");
    // identical content is stored once
    let objects = std::fs::read_dir(c.node("b").state.join("backups/www/objects"))
        .unwrap()
        .count();
    assert!(objects <= 4, "{objects} objects for 4 distinct contents");
}

/// Issue 22 item 12 (SPEC §6): a kept version is private (0600) as soon as it is kept, not
/// after the next start; the file that replaced it keeps its own mode, and a file deleted by a
/// peer is kept private too.
#[test]
fn kept_versions_are_private_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    c.start_all();
    let f = c.path("a", "page.html");
    write(&f, "old\n");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_until("page.html on b", WAIT, || c.path("b", "page.html").exists());
    write(&c.path("a", "gone.html"), "to be deleted\n");
    std::fs::set_permissions(
        c.path("a", "gone.html"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    wait_until("gone.html on b", WAIT, || c.path("b", "gone.html").exists());
    write(&f, "new\n");
    std::fs::remove_file(c.path("a", "gone.html")).unwrap();
    wait_until("the edit and the delete on b", WAIT, || {
        std::fs::read_to_string(c.path("b", "page.html"))
            .ok()
            .as_deref()
            == Some("new\n")
            && !c.path("b", "gone.html").exists()
    });
    let objects = c.node("b").state.join("backups/www/objects");
    let mut modes = Vec::new();
    wait_until("two kept versions on b", WAIT, || {
        modes = std::fs::read_dir(&objects)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.metadata().unwrap().permissions().mode() & 0o7777)
                    .collect()
            })
            .unwrap_or_default();
        modes.len() >= 2
    });
    assert!(
        modes.iter().all(|m| *m == 0o600),
        "kept versions' modes (octal): {:?}",
        modes.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
    );
    let live = std::fs::metadata(c.path("b", "page.html")).unwrap();
    assert_eq!(live.permissions().mode() & 0o7777, 0o644);
}
