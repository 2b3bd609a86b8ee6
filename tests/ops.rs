//! Actions, metrics and health on real daemons (SPEC §5.8, §5.10; issue 10 "Verify"): an
//! action runs once per burst on each receiver, sees its paths, is coalesced over thousands of
//! files, times out and fails visibly; `/metrics` parses and has every family; `/health` goes
//! 503 when a group stops, when the node is cut off from every peer and when it is behind, and
//! back to 200 after each.

mod common;
#[path = "common/ops.rs"]
mod ops;

use common::*;
use ops::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// `[[groups.www.actions]]` that appends each run's `CLUSTERSYNC_*` variables to
/// `<test dir>/<tag>.<node>` (one block per run, ended by `--`).
fn recording_action(c: &Cluster, tag: &str, patterns: &[&str], extra: &str) -> String {
    let out = c.dir.path().join(tag);
    let pats: Vec<String> = patterns.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[[groups.www.actions]]\npattern = [{}]\nrun = '''printf 'node=%s group=%s count=%s\\n%s\\n--\\n' \"$CLUSTERSYNC_NODE\" \"$CLUSTERSYNC_GROUP\" \"$CLUSTERSYNC_PATHS_COUNT\" \"$CLUSTERSYNC_PATHS\" >> {}.\"$CLUSTERSYNC_NODE\"'''\n{extra}\n",
        pats.join(", "),
        out.display()
    )
}

/// The runs recorded by [`recording_action`] on `node`: each run's lines (header first).
fn runs(c: &Cluster, tag: &str, node: &str) -> Vec<Vec<String>> {
    let text =
        std::fs::read_to_string(c.dir.path().join(format!("{tag}.{node}"))).unwrap_or_default();
    text.split("--\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().map(str::to_owned).collect())
        .collect()
}

/// The action entries of `status --json`.
fn action_status(c: &Cluster, node: &str, index: usize) -> serde_json::Value {
    let st = c.status(node).expect("status");
    st["actions"]
        .as_array()
        .and_then(|l| l.iter().find(|a| a["index"] == index).cloned())
        .unwrap_or_else(|| panic!("no action {index} in {st}"))
}

/// An action is idle: nothing pending, nothing running.
fn action_idle(c: &Cluster, node: &str, index: usize) -> bool {
    c.status(node)
        .and_then(|st| {
            st["actions"]
                .as_array()
                .and_then(|l| l.iter().find(|a| a["index"] == index).cloned())
        })
        .is_some_and(|a| a["pending"] == 0 && a["running"] == false)
}

#[test]
fn action_runs_once_per_burst_on_each_receiver_with_its_paths_and_not_on_the_origin() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    append_cfg(&c, &recording_action(&c, "conf", &["/srv/www/conf/**"], ""));
    append_cfg(
        &c,
        &recording_action(&c, "local", &["*.local"], "local = true"),
    );
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");

    // a burst of 5 files in conf/ on a, and one file the patterns do not match
    for i in 0..5 {
        write(&c.path("a", &format!("conf/site{i}.conf")), format!("{i}"));
    }
    write(&c.path("a", "other/unrelated.txt"), "u");
    c.wait_converged("the burst");
    for n in ["b", "c"] {
        wait_until(&format!("the action to run on {n}"), WAIT, || {
            !runs(&c, "conf", n).is_empty() && action_idle(&c, n, 0)
        });
    }
    // a quiet second: no second run shows up, and none on the origin
    std::thread::sleep(Duration::from_secs(1));
    for n in ["b", "c"] {
        let r = runs(&c, "conf", n);
        assert_eq!(r.len(), 1, "{n}: one run per burst, got {r:?}");
        assert_eq!(r[0][0], format!("node={n} group=www count=5"), "{n}: {r:?}");
        let paths: BTreeSet<&str> = r[0][1..].iter().map(String::as_str).collect();
        let want: BTreeSet<String> = (0..5)
            .map(|i| format!("/srv/www/conf/site{i}.conf"))
            .collect();
        assert_eq!(
            paths,
            want.iter().map(String::as_str).collect(),
            "{n}: CLUSTERSYNC_PATHS holds the logical paths, one a line"
        );
        let a = action_status(&c, n, 0);
        assert_eq!(a["runs"], 1, "{a}");
        assert_eq!(a["failures"], 0, "{a}");
        assert_eq!(a["last_ok"], true, "{a}");
        assert_eq!(a["last_paths"], 5, "{a}");
        assert_eq!(a["group"], "www", "{a}");
        assert!(a["last"].as_str().unwrap().contains("exit status 0"), "{a}");
        assert!(
            audit(&c, n).iter().any(|l| l["kind"] == "action"),
            "{n}: the run is audited (kind action)"
        );
    }
    assert!(
        runs(&c, "conf", "a").is_empty(),
        "the action ran on the origin without local = true"
    );

    // deletions match too
    std::fs::remove_file(c.path("a", "conf/site3.conf")).unwrap();
    wait_until("the delete to run the action on b", WAIT, || {
        runs(&c, "conf", "b").len() == 2 && action_idle(&c, "b", 0)
    });
    assert_eq!(runs(&c, "conf", "b")[1][1..], ["/srv/www/conf/site3.conf"]);

    // local = true: the origin runs it too, each node once
    write(&c.path("a", "x.local"), "l");
    for n in ["a", "b", "c"] {
        wait_until(&format!("the local action on {n}"), WAIT, || {
            runs(&c, "local", n).len() == 1 && action_idle(&c, n, 1)
        });
    }
    std::thread::sleep(Duration::from_millis(800));
    for n in ["a", "b", "c"] {
        let r = runs(&c, "local", n);
        assert_eq!(r.len(), 1, "{n}: {r:?}");
        assert_eq!(r[0][1..], ["/srv/www/x.local"], "{n}: {r:?}");
    }
}

#[test]
fn two_thousand_files_arriving_in_many_batches_run_an_action_a_handful_of_times() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    append_cfg(&c, &recording_action(&c, "all", &["/srv/www/**"], ""));
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    // 2,000 files written over about two seconds: many batches on the wire
    for d in 0..20 {
        for f in 0..100 {
            write(
                &c.path("a", &format!("d{d:02}/f{f:03}")),
                format!("{d}/{f}"),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("b to have the 2,000 files", Duration::from_secs(60), || {
        (0..20).all(|d| {
            std::fs::read_dir(c.path("b", &format!("d{d:02}")))
                .map(|r| r.count() == 100)
                .unwrap_or(false)
        })
    });
    wait_until("the action to be done on b", WAIT, || {
        action_idle(&c, "b", 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = runs(&c, "all", "b");
    eprintln!("2,000 files ran the action {} times", r.len());
    let files: BTreeSet<&str> = r
        .iter()
        .flat_map(|run| run[1..].iter())
        .map(String::as_str)
        .filter(|p| p.contains("/f"))
        .collect();
    assert_eq!(
        files.len(),
        2000,
        "every path reached the action once or more"
    );
    assert!(
        (1..=8).contains(&r.len()),
        "2,000 files ran the action {} times (a handful expected)",
        r.len()
    );
    assert_eq!(action_status(&c, "b", 0)["runs"], r.len() as u64);
    assert!(runs(&c, "all", "a").is_empty(), "not on the origin");
}

#[test]
fn a_slow_action_never_blocks_syncing_and_never_runs_twice_at_once() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let d = c.dir.path().to_owned();
    // each run: take a lock directory (or record an overlap), list its paths, sleep 2 s
    append_cfg(
        &c,
        &format!(
            "[[groups.www.actions]]\npattern = [\"/srv/www/**\"]\nrun = '''mkdir {d}/lock || echo overlap >> {d}/overlaps; printf '%s\\n--\\n' \"$CLUSTERSYNC_PATHS\" >> {d}/slow.b; sleep 2; rmdir {d}/lock'''\n",
            d = d.display()
        ),
    );
    c.start_all();
    write(&c.path("a", "first"), "1");
    wait_until("the first run to start", WAIT, || d.join("lock").exists());
    // while it runs: more changes arrive and are applied at once, not after the action
    for i in 0..5 {
        write(&c.path("a", &format!("during{i}")), "x");
    }
    let took = wait_until("the changes to arrive during the run", WAIT, || {
        (0..5).all(|i| c.path("b", &format!("during{i}")).exists())
    });
    assert!(
        d.join("lock").exists(),
        "the first run already ended: the test proves nothing"
    );
    assert!(
        took < Duration::from_secs(2),
        "syncing waited for the action: {took:?}"
    );
    // then one more run takes everything that came meanwhile
    wait_until("the second run", WAIT, || {
        runs(&c, "slow", "b").len() == 2 && action_idle(&c, "b", 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = runs(&c, "slow", "b");
    assert_eq!(r.len(), 2, "{r:?}");
    for i in 0..5 {
        assert!(r[1].contains(&format!("/srv/www/during{i}")), "{r:?}");
    }
    assert!(
        !d.join("overlaps").exists(),
        "two runs of one action overlapped"
    );
}

#[test]
fn action_past_its_timeout_is_stopped_and_status_says_timed_out() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let trace = c.dir.path().join("slow.trace");
    append_cfg(
        &c,
        &format!(
            "[[groups.www.actions]]\npattern = [\"/srv/www/slow/**\"]\nrun = \"echo started >> {t}; sleep 20; echo survived >> {t}\"\ntimeout = \"1s\"\n",
            t = trace.display()
        ),
    );
    c.start_all();
    write(&c.path("a", "slow/x"), "x");
    wait_until("the action to start on b", WAIT, || {
        std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("started"))
    });
    // 1 s timeout, then SIGTERM to the process group (SIGKILL 5 s later at the latest)
    let took = wait_until(
        "status to show the timeout",
        Duration::from_secs(12),
        || {
            action_status(&c, "b", 0)["last"]
                .as_str()
                .is_some_and(|l| l.contains("timed out"))
        },
    );
    let a = action_status(&c, "b", 0);
    assert_eq!(a["last_ok"], false, "{a}");
    assert_eq!(a["failures"], 1, "{a}");
    assert_eq!(a["running"], false, "{a}");
    assert!(
        took < Duration::from_secs(10),
        "stopped {took:?} after start"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !std::fs::read_to_string(&trace)
            .unwrap()
            .contains("survived"),
        "the shell's child (sleep) outlived the timeout"
    );
}

#[test]
fn failing_action_shows_in_status_metrics_audit_log_and_its_logfile() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let logfile = c.dir.path().join("action-output.log");
    append_cfg(
        &c,
        &format!(
            "[[groups.www.actions]]\npattern = [\"*.conf\"]\nrun = \"echo out-line-$CLUSTERSYNC_NODE; echo err-line >&2; exit 3\"\nlogfile = \"{}\"\n",
            logfile.display()
        ),
    );
    let port = metrics_on(&c, "b");
    c.start_all();
    write(&c.path("a", "nginx.conf"), "x");
    wait_until("the failed run in status", WAIT, || {
        c.status("b").is_some_and(|s| {
            s["actions"][0]["failures"] == 1 && s["actions"][0]["running"] == false
        })
    });
    let a = action_status(&c, "b", 0);
    assert_eq!(a["last"], "exit status 3", "{a}");
    assert_eq!(a["last_ok"], false, "{a}");
    assert_eq!(a["runs"], 1, "{a}");
    assert!(a["last_duration_ms"].is_u64(), "{a}");
    // the human status says so too
    let (out, _) = texts(&c.cli("b", &["status"]));
    assert!(
        out.contains("FAILED") && out.contains("exit status 3"),
        "{out}"
    );
    // metrics
    let (s, _) = scrape(port);
    let labels = [("group", "www"), ("action", "0")];
    assert_eq!(
        sample(&s, "clustersync_action_runs_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        sample(&s, "clustersync_action_failures_total", &labels),
        Some(1.0)
    );
    // audit: kind action with the outcome
    let lines = audit(&c, "b");
    let act: Vec<_> = lines.iter().filter(|l| l["kind"] == "action").collect();
    assert_eq!(act.len(), 1, "{lines:?}");
    assert!(act[0].to_string().contains("exit status 3"), "{}", act[0]);
    // its output: in the daemon's log and in the action's logfile
    wait_until("the output in the log", WAIT, || {
        c.log("b").contains("out-line-b") && c.log("b").contains("err-line")
    });
    let lf = std::fs::read_to_string(&logfile).unwrap_or_default();
    assert!(
        lf.contains("out-line-b") && lf.contains("err-line"),
        "logfile {} holds the output: {lf:?}",
        logfile.display()
    );
}

/// Families of `/metrics` (SPEC §5.10 and issue 10).
const FAMILIES: &[&str] = &[
    "clustersync_group_files",
    "clustersync_group_bytes",
    "clustersync_group_pending",
    "clustersync_group_conflicts",
    "clustersync_group_stopped",
    "clustersync_peer_connected",
    "clustersync_peer_behind",
    "clustersync_peer_sent_bytes_total",
    "clustersync_peer_received_bytes_total",
    "clustersync_changes_applied_total",
    "clustersync_changes_sent_total",
    "clustersync_apply_latency_seconds",
    "clustersync_scan_duration_seconds",
    "clustersync_action_runs_total",
    "clustersync_action_failures_total",
    "clustersync_backups_bytes",
    "clustersync_uptime_seconds",
    "clustersync_build_info",
];

#[test]
fn metrics_parse_as_prometheus_text_with_every_family_per_group_and_peer() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    append_cfg(&c, &recording_action(&c, "m", &["*.txt"], ""));
    // a through [metrics] listen, b through its own [nodes.b] metrics
    let pa = free_port();
    append_cfg(&c, &format!("[metrics]\nlisten = \"127.0.0.1:{pa}\"\n"));
    let pb = metrics_on(&c, "b");
    for i in 0..10 {
        write(&c.path("a", &format!("f{i}.txt")), bytes(1000, i));
    }
    c.start_all();
    c.wait_converged("start");
    // an overwrite on a keeps a backup on b; a bigger file travels as chunks
    write(&c.path("a", "f0.txt"), "changed");
    write(&c.path("a", "big.bin"), bytes(300_000, 9));
    c.wait_converged("changes");
    wait_until("the action on b", WAIT, || {
        action_idle(&c, "b", 0) && !runs(&c, "m", "b").is_empty()
    });

    let (sb, text) = scrape(pb);
    let names: BTreeSet<&str> = sb.samples.iter().map(|s| s.metric.as_str()).collect();
    for f in FAMILIES {
        assert!(names.contains(f), "/metrics of b lacks {f}:\n{text}");
    }
    let www = [("group", "www")];
    let peer_a = [("peer", "a")];
    assert_eq!(
        sample(&sb, "clustersync_group_files", &www),
        Some(11.0),
        "{text}"
    );
    assert!(sample(&sb, "clustersync_group_bytes", &www).unwrap() >= 300_000.0);
    assert_eq!(sample(&sb, "clustersync_group_pending", &www), Some(0.0));
    assert_eq!(sample(&sb, "clustersync_group_conflicts", &www), Some(0.0));
    assert_eq!(sample(&sb, "clustersync_group_stopped", &www), Some(0.0));
    assert_eq!(
        sample(&sb, "clustersync_peer_connected", &peer_a),
        Some(1.0)
    );
    assert_eq!(sample(&sb, "clustersync_peer_behind", &peer_a), Some(0.0));
    assert!(sample(&sb, "clustersync_peer_received_bytes_total", &peer_a).unwrap() > 300_000.0);
    assert!(sample(&sb, "clustersync_peer_sent_bytes_total", &peer_a).unwrap() > 0.0);
    assert!(sample(&sb, "clustersync_changes_applied_total", &www).unwrap() >= 12.0);
    assert!(
        sample(&sb, "clustersync_apply_latency_seconds", &www).unwrap() >= 1.0,
        "apply latency observed on the receiver:\n{text}"
    );
    assert!(sample(&sb, "clustersync_scan_duration_seconds", &www).unwrap() >= 1.0);
    assert!(sample(&sb, "clustersync_action_runs_total", &[("group", "www")]).unwrap() >= 1.0);
    assert!(
        sample(&sb, "clustersync_backups_bytes", &[]).unwrap() >= 1000.0,
        "{text}"
    );
    assert!(sample(&sb, "clustersync_uptime_seconds", &[]).unwrap() >= 0.0);
    assert!(
        sb.samples
            .iter()
            .any(|s| s.metric == "clustersync_build_info" && s.labels.get("version").is_some()),
        "build info with its version"
    );
    // the sender counts what it sent
    let (sa, text_a) = scrape(pa);
    assert!(
        sample(&sa, "clustersync_changes_sent_total", &www).unwrap() >= 12.0,
        "{text_a}"
    );
    assert!(
        sample(&sa, "clustersync_peer_sent_bytes_total", &[("peer", "b")]).unwrap() > 300_000.0
    );
    assert_eq!(
        sample(&sa, "clustersync_peer_connected", &[("peer", "b")]),
        Some(1.0)
    );

    // promtool agrees, where it is installed
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // health: in sync and connected
    assert_eq!(health(pb), (200, "ok\n".to_owned()));
    assert_eq!(health(pa).0, 200);
    assert_eq!(http_get(pb, "/nothing-here").unwrap().0, 404);
}

#[test]
fn health_is_503_while_the_group_is_stopped_and_200_after_it_resumes() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let port = metrics_on(&c, "b");
    for i in 0..5 {
        write(&c.path("a", &format!("f{i}")), format!("{i}"));
    }
    c.start_all();
    c.wait_converged("start");
    wait_health(port, 200, "b healthy", WAIT);
    // the disk goes away: the group path is moved aside
    let gp = c.path("b", "");
    let aside = gp.with_extension("away");
    std::fs::rename(&gp, &aside).unwrap();
    let t0 = std::time::Instant::now();
    let why = wait_health(port, 503, "b unhealthy with its group stopped", WAIT);
    eprintln!("503 {:?} after the group path went away", t0.elapsed());
    assert!(why.contains("www") && why.contains("stopped"), "{why:?}");
    assert_eq!(why.lines().count(), 1, "one line: {why:?}");
    let (s, _) = scrape(port);
    assert_eq!(
        sample(&s, "clustersync_group_stopped", &[("group", "www")]),
        Some(1.0)
    );
    // it comes back
    std::fs::rename(&aside, &gp).unwrap();
    let t0 = std::time::Instant::now();
    wait_health(port, 200, "b healthy after the group resumed", WAIT);
    eprintln!("200 {:?} after the group path came back", t0.elapsed());
    let (s, _) = scrape(port);
    assert_eq!(
        sample(&s, "clustersync_group_stopped", &[("group", "www")]),
        Some(0.0)
    );
}

#[test]
fn health_is_503_when_cut_off_from_every_peer_and_200_after_the_link_returns() {
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            proxies: true,
            ..Default::default()
        },
    );
    let pa = metrics_on(&c, "a");
    let pc = metrics_on(&c, "c");
    c.start_all();
    wait_health(pc, 200, "c healthy", WAIT);
    wait_health(pa, 200, "a healthy", WAIT);
    // every link of c goes through its proxy (it sorts last: the others dial it)
    c.cut_off("c", "a");
    c.cut_off("c", "b");
    let why = wait_health(pc, 503, "c unhealthy when cut off from a and b", WAIT);
    assert!(why.contains("cut off"), "{why:?}");
    // a lost one peer of two: still serving current content
    assert_eq!(health(pa).0, 200, "a still reaches b");
    let (s, _) = scrape(pa);
    assert_eq!(
        sample(&s, "clustersync_peer_connected", &[("peer", "c")]),
        Some(0.0)
    );
    c.node("c").proxy.as_ref().unwrap().heal();
    wait_health(pc, 200, "c healthy after the links return", WAIT);
}

#[test]
fn health_is_503_while_remote_changes_wait_longer_than_stale_after_and_200_once_applied() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let pb = metrics_on(&c, "b");
    append_cfg(
        &c,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{}\"\nstale_after = \"2s\"\n",
            free_port()
        ),
    );
    // a dials b through the proxy
    let proxy = interpose(&c, "b");
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    wait_health(pb, 200, "b healthy", WAIT);
    // every batch a sent is acknowledged (a has room to send the next one)
    wait_until("a's batches acknowledged", WAIT, || {
        c.status("a")
            .is_some_and(|s| s["peers"][0]["behind"] == 0 && s["groups"][0]["in_sync"] == true)
    });
    // b's requests for content stall on the way (its index still arrives): the change is known
    // on b and cannot be applied
    proxy.hold_from_target();
    let big = bytes(2 << 20, 3);
    write(&c.path("a", "big.bin"), &big);
    let took = wait_until("b's health to turn 503", Duration::from_secs(10), || {
        health(pb).0 == 503
    });
    let why = health(pb).1;
    eprintln!("/health turned 503 {took:?} after the write: {why:?}");
    assert!(why.contains("not applied"), "{why:?} after {took:?}");
    assert!(!c.path("b", "big.bin").exists());
    assert_eq!(
        c.status("b").unwrap()["groups"][0]["in_sync"],
        false,
        "b knows it is behind"
    );
    // well under the 14 s idle limit of the link: the content flows again
    proxy.release();
    wait_health(pb, 200, "b healthy once the change is applied", WAIT);
    wait_until("the file on b", WAIT, || {
        std::fs::read(c.path("b", "big.bin")).is_ok_and(|d| d == big)
    });
}

#[test]
fn metrics_pending_and_behind_agree_with_status_while_a_peer_is_cut_off() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            proxies: true,
            ..Default::default()
        },
    );
    let pa = metrics_on(&c, "a");
    c.start_all();
    c.cut_off("b", "a");
    for i in 0..3 {
        write(&c.path("a", &format!("while-cut{i}")), "x");
    }
    wait_until("a to count the unsent changes", WAIT, || {
        c.status("a")
            .is_some_and(|s| s["peers"][0]["behind"].as_u64() >= Some(3))
    });
    let st = c.status("a").unwrap();
    let (s, text) = scrape(pa);
    let pending = st["groups"][0]["pending"].as_u64().unwrap() as f64;
    let behind = st["peers"][0]["behind"].as_u64().unwrap() as f64;
    assert_eq!(
        sample(&s, "clustersync_peer_behind", &[("peer", "b")]),
        Some(behind),
        "{st}\n{text}"
    );
    // "changes of the group known but not yet applied or sent", as status counts them
    assert_eq!(
        sample(&s, "clustersync_group_pending", &[("group", "www")]),
        Some(pending),
        "status says pending {pending}:\n{text}"
    );
}

/// Issue 22 item 12: a SIGHUP reload keeps the metrics: counters never go back and
/// `uptime_seconds` is the daemon's, not the reload's.
#[test]
fn a_sighup_reload_keeps_metrics_counters_and_uptime() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let pa = metrics_on(&c, "a");
    c.start_all();
    for i in 0..3 {
        write(&c.path("a", &format!("f{i}")), format!("{i}"));
    }
    c.wait_converged("three files");
    let www = [("group", "www")];
    let mut before = (0.0, 0.0);
    wait_until("a's counters", WAIT, || {
        let (s, _) = scrape(pa);
        before = (
            sample(&s, "clustersync_changes_sent_total", &www).unwrap_or(0.0),
            sample(&s, "clustersync_uptime_seconds", &[]).unwrap_or(0.0),
        );
        before.0 >= 3.0 && before.1 >= 1.0
    });
    unsafe_free_kill(pid(&c, "a"), "HUP");
    wait_until("a reloaded", WAIT, || {
        !log_lines(&c, "a", &["config reloaded"]).is_empty()
    });
    let mut after = (0.0, 0.0);
    wait_until("a's metrics served again", WAIT, || {
        let Some((200, _)) = http_get(pa, "/metrics") else {
            return false;
        };
        let (s, _) = scrape(pa);
        after = (
            sample(&s, "clustersync_changes_sent_total", &www).unwrap_or(0.0),
            sample(&s, "clustersync_uptime_seconds", &[]).unwrap_or(0.0),
        );
        true
    });
    eprintln!("changes sent, uptime: {before:?} before the reload, {after:?} after");
    assert!(
        after.0 >= before.0,
        "a counter went back: {before:?} -> {after:?}"
    );
    assert!(
        after.1 >= before.1,
        "uptime went back: {before:?} -> {after:?}"
    );
}

/// Issue 22 item 10: on a node with a `root` (every node of the harness has one), an action
/// gets the root and the paths where they are on that machine, so the csync2 importer's
/// translation of `exec "... %%"` acts on the node's own files, not on the host's.
#[test]
fn a_translated_csync2_action_acts_on_the_receiving_nodes_own_files() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let out = c.dir.path().join("wc.out");
    let run = clustersync::import::translate::translate_exec(&format!(
        "wc -c %% >> {} 2>&1; echo \"root=$CLUSTERSYNC_ROOT\" >> {}",
        out.display(),
        out.display()
    ));
    append_cfg(
        &c,
        &format!(
            "[[groups.www.actions]]\npattern = [\"*.conf\"]\nrun = {}\n",
            toml::Value::String(run.clone())
        ),
    );
    c.start_all();
    write(&c.path("a", "site.conf"), "12345");
    wait_until("the action on b", WAIT, || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("root="))
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let real = c.path("b", "site.conf");
    eprintln!("{run}\n{text}");
    assert!(text.contains(&format!("5 {}", real.display())), "{text}");
    assert!(
        text.contains(&format!("root={}", c.node("b").root.display())),
        "{text}"
    );
    assert!(!text.contains("No such file"), "{text}");
}
