//! The service around the daemon (SPEC §5.12, issue 11 "A real service"): the systemd unit,
//! the example config, the Debian maintainer script, the man page and completions as the
//! package builds them, and the help texts an administrator reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_clustersync");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `key=value` settings of the unit, comments and sections dropped.
fn unit_settings() -> Vec<(String, String)> {
    read("dist/clustersync.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Issue 22 item 12: the unit's comment names where the package puts it (cargo-deb installs
/// `[package.metadata.deb.systemd-units]` into /usr/lib/systemd/system, not /lib/...).
#[test]
fn unit_comment_names_the_path_the_package_installs_it_to() {
    let unit = read("dist/clustersync.service");
    let head: String = unit
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        head.contains(" /usr/lib/systemd/system/clustersync.service."),
        "{head}"
    );
    assert!(!head.contains(" /lib/systemd"), "{head}");
    let cargo = read("Cargo.toml");
    assert!(
        cargo.contains("[package.metadata.deb.systemd-units]"),
        "the package installs the unit"
    );
}

#[test]
fn unit_is_a_notify_service_that_does_not_restart_on_config_errors() {
    let s = unit_settings();
    let get = |k: &str| -> Vec<&str> {
        s.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", "/usr/bin/clustersync daemon"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("StateDirectory", "clustersync"),
        ("StateDirectoryMode", "0700"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        // /etc stays writable: groups sync /etc/nginx, accounts rewrite /etc/passwd
        ("ProtectSystem", "yes"),
        // /home stays visible: groups may sync home directories
        ("ProtectHome", "no"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(get(k), [v], "{k}");
    }
    assert!(get("WatchdogSec").len() == 1, "a watchdog interval");
    assert!(get("LimitNOFILE").len() == 1);
    for refused in ["RestrictSUIDSGID", "ReadOnlyPaths", "DynamicUser", "User"] {
        assert!(get(refused).is_empty(), "{refused} would break syncing");
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    // verify checks that ExecStart's binary exists: point it at the one just built; and that
    // the Documentation= man page exists: give it the generated one
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("man1")).unwrap();
    std::fs::write(
        dir.path().join("man1/clustersync.1"),
        clustersync::cli::man_page().unwrap(),
    )
    .unwrap();
    let unit = dir.path().join("clustersync.service");
    std::fs::write(
        &unit,
        read("dist/clustersync.service").replace("/usr/bin/clustersync", BIN),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("MANPATH", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // other units of this machine (or its missing ones) are not ours to judge
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("clustersync.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// Uncomment the example settings (`# key = …` and `# [table]` lines), leaving prose comments.
fn uncomment_examples(text: &str) -> String {
    text.lines()
        .map(|l| {
            let Some(rest) = l.strip_prefix("# ") else {
                return l.to_owned();
            };
            let key = rest.split(" = ").next().unwrap_or("");
            let is_setting = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                && rest.contains(" = ");
            if is_setting || rest.starts_with('[') {
                rest.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn with_ids(text: &str) -> String {
    let mut t = text.to_owned();
    for (i, n) in ["web1", "web2", "web3"].iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        t = t.replace(&format!("PASTE the output of `clustersync id` on {n}"), &id);
    }
    t
}

#[test]
fn example_config_is_valid_once_ids_are_filled_in() {
    let text = read("dist/clustersync.toml.example");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("clustersync.toml");

    // as shipped, the placeholders are refused with a pointer to `clustersync id`
    std::fs::write(&p, &text).unwrap();
    let e = clustersync::config::Config::load(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clustersync id"), "{e}");

    std::fs::write(&p, with_ids(&text)).unwrap();
    let cfg = clustersync::config::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    cfg.refuse_unsupported()
        .unwrap_or_else(|e| panic!("the default example uses only built features: {e}"));
    assert_eq!(cfg.groups.len(), 2);

    // every commented example setting is valid too
    std::fs::write(&p, with_ids(&uncomment_examples(&text))).unwrap();
    let full = clustersync::config::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(full.groups["www"].actions.len(), 1);
    assert!(full.metrics.is_some() && full.accounts.is_some());
}

#[test]
fn postinst_is_valid_sh_with_the_debhelper_token() {
    let p = repo("dist/debian/postinst");
    let text = read("dist/debian/postinst");
    assert!(text.starts_with("#!/bin/sh\n"));
    assert!(text.contains("\n#DEBHELPER#\n"));
    assert!(text.contains("-m 0700") && text.contains("/var/lib/clustersync"));
    let st = Command::new("sh").arg("-n").arg(&p).status().unwrap();
    assert!(st.success());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "executable");
}

#[test]
fn package_assets_from_the_repository_exist() {
    let manifest = read("Cargo.toml");
    let mut n = 0;
    for line in manifest.lines() {
        let l = line.trim();
        let Some(src) = l
            .strip_prefix("[\"")
            .and_then(|r| r.split('"').next())
            .filter(|s| !s.starts_with("target/"))
        else {
            continue;
        };
        assert!(repo(src).is_file(), "asset {src} exists");
        n += 1;
    }
    assert!(n >= 2, "found the asset list ({n})");
    assert!(repo("dist/clustersync.service").is_file());
    // issue 22 item 8: the docs are installed with the package
    for doc in ["CHANGELOG.md", "README.md"]
        .into_iter()
        .map(String::from)
        .chain(
            std::fs::read_dir(repo("docs"))
                .unwrap()
                .flatten()
                .map(|e| format!("docs/{}", e.file_name().to_string_lossy())),
        )
    {
        assert!(
            manifest.contains(&format!("[\"{doc}\", \"usr/share/doc/clustersync/")),
            "{doc} is not installed by the package"
        );
    }
}

#[test]
fn completions_into_a_closed_pipe_exit_quietly() {
    for shell in ["fish", "bash", "zsh"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // like `| head -1` that already exited
        let out = Command::new(BIN)
            .args(["completions", shell])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{shell}: {}: {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{shell}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["completions", "fish"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("complete -c clustersync"));
}

/// The lines of section `name` of a roff page (up to the next `.SH`).
fn section<'a>(roff: &'a str, name: &str) -> Vec<&'a str> {
    roff.lines()
        .skip_while(|l| *l != format!(".SH {name}"))
        .skip(1)
        .take_while(|l| !l.starts_with(".SH "))
        .collect()
}

/// Issue 22 item 8: a real manual page, not a generated stub: every command, every
/// configuration key with its default, exit status, signals, files, examples, and SEE ALSO
/// naming only pages that exist.
#[test]
fn man_page_describes_every_command_and_configuration_key() {
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8(out.stdout).unwrap();
    assert_eq!(clustersync::cli::man_page().unwrap(), roff.as_bytes());
    assert!(
        roff.contains(&format!(
            ".TH clustersync 1 \"\" \"clustersync {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{roff}"
    );
    for s in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "CONFIGURATION",
        "EXIT STATUS",
        "SIGNALS",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(!section(&roff, s).is_empty(), "no section {s}");
    }
    // every command of --help, as a tagged paragraph of COMMANDS
    let commands = section(&roff, "COMMANDS");
    for name in clustersync::cli::command_names() {
        let roffed = name.replace('-', "\\-");
        assert!(
            commands.iter().any(|l| {
                (l.starts_with(".B ") || l.starts_with(".BI ") || l.starts_with(".BR "))
                    && l.split_whitespace().nth(1) == Some(roffed.as_str())
            }),
            "COMMANDS lacks {name}"
        );
    }
    // every key of the file, under its table, with a default or "Required" where it has one
    let config = section(&roff, "CONFIGURATION");
    for (table, keys) in clustersync::config::keys() {
        let head = if table == "groups.NAME.actions" {
            ".SS [[groups.NAME.actions]]".to_owned()
        } else {
            format!(".SS [{table}]")
        };
        let part: Vec<&str> = config
            .iter()
            .skip_while(|l| **l != head)
            .skip(1)
            .take_while(|l| !l.starts_with(".SS "))
            .copied()
            .collect();
        assert!(!part.is_empty(), "CONFIGURATION lacks {head}");
        // `actions` has a section of its own
        for k in keys.into_iter().filter(|k| *k != "actions") {
            assert!(
                part.windows(2)
                    .any(|w| w[0] == ".TP" && w[1] == format!(".B {k}")),
                "CONFIGURATION {head} lacks {k}"
            );
        }
    }
    // the exit codes of SPEC §4
    let exit = section(&roff, "EXIT STATUS").join("\n");
    for code in 0..=4 {
        assert!(
            exit.contains(&format!(".B {code}\n")),
            "EXIT STATUS lacks {code}"
        );
    }
    for sig in ["SIGTERM", "SIGHUP"] {
        assert!(section(&roff, "SIGNALS").join(" ").contains(sig), "{sig}");
    }
    // SEE ALSO: only pages that exist here (checked when man-db is installed)
    let see: Vec<(String, String)> = section(&roff, "SEE ALSO")
        .iter()
        .filter_map(|l| l.strip_prefix(".BR "))
        .filter_map(|l| {
            let (page, rest) = l.split_once(' ')?;
            let sec = rest.trim_start_matches('(').split(')').next()?;
            Some((page.to_owned(), sec.to_owned()))
        })
        .collect();
    assert!(see.len() >= 3, "{see:?}");
    assert!(
        !see.iter().any(|(p, _)| p.starts_with("clustersync-")),
        "{see:?}"
    );
    match tool("man") {
        None => eprintln!("SKIPPED the SEE ALSO check: man is not installed"),
        Some(man) => {
            for (page, sec) in &see {
                let ok = Command::new(&man)
                    .args(["-w", sec, page])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    eprintln!("note: {page}({sec}) is not installed on this machine");
                }
            }
        }
    }
    // hidden from the help
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.lines().any(|l| l.trim_start().starts_with("man ")));
    match tool("groff") {
        None => eprintln!("SKIPPED the groff check: groff is not installed"),
        Some(groff) => {
            let dir = tempfile::tempdir().unwrap();
            let page = dir.path().join("clustersync.1");
            std::fs::write(&page, &roff).unwrap();
            let out = Command::new(groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&page)
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn every_option_and_argument_has_help_text() {
    for (cmd, names) in [
        (&["status"][..], &["--json"][..]),
        (&["conflicts"], &["--json"]),
        (&["resolve"], &["<PATH>", "--keep <NODE>"]),
        (&["mark"], &["<PATH>..."]),
        (&["backups"], &["<PATH>"]),
        (&["restore"], &["<PATH>", "--generation <N>", "--to <DEST>"]),
    ] {
        let out = Command::new(BIN).args(cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for name in names {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("{cmd:?} --help lists {name}:\n{help}"));
            let text = line.trim_start()[name.len()..].trim();
            assert!(text.len() > 10, "{cmd:?} {name} has help text: {line:?}");
        }
    }
}

#[test]
fn metrics_and_monitoring_examples_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    };
    use clustersync::ops::metrics::{GroupGauges, Metrics};
    let m = Metrics::new();
    m.set_group("www", GroupGauges::default());
    m.set_peer("web2", true, 0);
    m.add_peer_bytes("web2", 1, 1);
    m.changes_applied("www", 1);
    m.changes_sent("www", 1);
    m.observe_apply_latency("www", std::time::Duration::from_millis(4));
    m.observe_scan("www", std::time::Duration::from_secs(1));
    m.action_finished("www", 0, false);
    let text = m.encode().unwrap();
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo("dist/monitoring/clustersync-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon and systemd's notify protocol, on a real daemon (a fake NOTIFY_SOCKET).

mod common;
#[path = "common/ops.rs"]
mod ops;

/// Datagrams received on a fake `NOTIFY_SOCKET`, collected by a thread.
struct FakeSystemd {
    path: PathBuf,
    got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl FakeSystemd {
    fn bind(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let got: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>> =
            Default::default();
        let g2 = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                g2.lock().unwrap().push((std::time::Instant::now(), msg));
            }
        });
        FakeSystemd { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Index of the first message at or after `from` that starts with `prefix`.
    fn find(&self, from: usize, prefix: &str) -> Option<usize> {
        self.messages()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, m)| m.starts_with(prefix))
            .map(|(i, _)| i)
    }

    fn wait(&self, from: usize, prefix: &str, what: &str) -> usize {
        let mut at = None;
        common::wait_until(&format!("{what} on NOTIFY_SOCKET"), common::WAIT, || {
            at = self.find(from, prefix);
            at.is_some()
        });
        at.unwrap()
    }
}

#[test]
fn daemon_notifies_ready_status_watchdog_and_stopping_on_notify_socket() {
    use common::*;
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let sd = FakeSystemd::bind(c.dir.path());
    c.set_env("a", "NOTIFY_SOCKET", sd.path.to_str().unwrap());
    c.set_env("a", "WATCHDOG_USEC", "1000000");
    write(&c.path("a", "f"), "x");
    c.start("a");
    sd.wait(0, "READY=1", "READY=1 after start");
    sd.wait(0, "STATUS=", "a STATUS= line");
    // the watchdog at half of WATCHDOG_USEC: a few pings in 2 s
    let before = sd
        .messages()
        .iter()
        .filter(|m| m.starts_with("WATCHDOG=1"))
        .count();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pings = sd
        .messages()
        .iter()
        .filter(|m| m.starts_with("WATCHDOG=1"))
        .count()
        - before;
    assert!(
        (2..=8).contains(&pings),
        "{pings} watchdog pings in 2 s: {:?}",
        sd.messages()
    );
    // SIGTERM: STOPPING=1
    let n = sd.messages().len();
    let st = c.stop("a");
    assert!(st.success(), "{st:?}");
    sd.wait(n, "STOPPING=1", "STOPPING=1 on SIGTERM");
}

#[test]
fn sighup_reload_notifies_reloading_then_ready_again() {
    use common::*;
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let sd = FakeSystemd::bind(c.dir.path());
    c.set_env("a", "NOTIFY_SOCKET", sd.path.to_str().unwrap());
    c.start("a");
    let ready = sd.wait(0, "READY=1", "READY=1 after start");
    unsafe_free_kill(ops::pid(&c, "a"), "HUP");
    let reloading = sd.wait(ready, "RELOADING=1", "RELOADING=1 on SIGHUP");
    assert!(
        sd.messages()[reloading].contains("MONOTONIC_USEC="),
        "{:?}",
        sd.messages()
    );
    wait_until("READY=1 after the reload, or an exit", WAIT, || {
        sd.find(reloading, "READY=1").is_some() || !ops::alive(&mut c, "a")
    });
    assert!(
        ops::alive(&mut c, "a"),
        "a exited on SIGHUP:\n{}",
        c.log("a")
    );
}

#[test]
fn ready_is_sent_only_once_the_control_socket_answers() {
    use common::*;
    // systemd starts what comes After=clustersync once READY=1 arrives: a `clustersync status`
    // then must find the daemon
    let c = Cluster::new(&["a"], Opts::default());
    let sd = FakeSystemd::bind(c.dir.path());
    let cfg = c.cfg.clone();
    let state = c.node("a").state.clone();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .args(["--node", "a", "--state-dir"])
        .arg(&state)
        .arg("daemon")
        .env("NOTIFY_SOCKET", &sd.path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sd.wait(0, "READY=1", "READY=1 after start");
    let connected = std::os::unix::net::UnixStream::connect(state.join("control.sock")).is_ok();
    unsafe_free_kill(child.id(), "TERM");
    let _ = child.wait();
    assert!(connected, "READY=1 came before the control socket was up");
}
