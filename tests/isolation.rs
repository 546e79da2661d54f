//! What an engine started as `engine_user` can reach, tried from the engine's side: its
//! user, its capabilities, `no_new_privs`, its `HOME`, and the daemon's environment (where
//! `LLORCH_API_TOKEN` lives). Real daemon, real engine-sim running as `nobody`. Needs root:
//! fails under `CI=true` without it.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::os::unix::process::CommandExt as _;

use harness::{engine_sim_preload, Harness};

const NOBODY: u32 = 65_534;

fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI=true: this test needs root to start engines as another user (CI runs as root)"
    );
    eprintln!("skipped: needs root to start engines as another user");
    false
}

/// The `Name:` line of `/proc/<pid>/status`, its value trimmed.
fn status_field(pid: u64, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn an_engine_as_engine_user_has_no_capability_no_new_privileges_and_its_own_home() {
    if !root_or_skip() {
        return;
    }
    let nobody = nix::unistd::User::from_uid(NOBODY.into()).unwrap().unwrap();
    let h = Harness::start_with(|c| {
        c.engine_user = nobody.name.clone();
        c.allow_root_engines = false;
    })
    .await;
    let body = engine_sim_preload("iso", None, &[]);
    let (status, answer) = h.post("/v2/pools/iso/preload", body).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["pid"].as_u64().unwrap();

    let uids: Vec<String> = status_field(pid, "Uid")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        uids,
        vec![NOBODY.to_string(); 4],
        "real, effective, saved, fs uid"
    );
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let home = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"HOME="))
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(
        home.as_deref(),
        Some(nobody.dir.to_str().unwrap()),
        "the engine user's home, not the daemon's"
    );
    h.stop().await;
}

/// An engine's uid cannot read the daemon's environment (`/proc/<daemon>/environ`: a
/// process of another user is refused by the kernel's ptrace access check). The daemon
/// here is this test's process; the reader runs as the engine user would.
#[test]
fn the_engine_user_cannot_read_the_daemons_environment() {
    if !root_or_skip() {
        return;
    }
    let me = std::process::id();
    let mut command = std::process::Command::new("cat");
    command.arg(format!("/proc/{me}/environ"));
    // SAFETY: setgroups/setgid/setuid only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let gid = nix::unistd::Gid::from_raw(NOBODY);
            nix::unistd::setgroups(&[gid])?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY))?;
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert!(!out.status.success(), "read as uid {NOBODY}: {out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
}

/// `cat path` as uid and gid nobody with the supplementary groups `groups`.
fn cat_as_nobody(path: &std::path::Path, groups: &[u32]) -> std::process::Output {
    let groups: Vec<nix::unistd::Gid> = groups.iter().map(|g| (*g).into()).collect();
    let mut command = std::process::Command::new("cat");
    command.arg(path);
    // SAFETY: setgroups/setgid/setuid only, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(NOBODY.into())?;
            nix::unistd::setuid(NOBODY.into())?;
            Ok(())
        });
    }
    command.output().unwrap()
}

/// `engines.logs_group`: that group may read the engine logs (and only them): the runtime
/// directory 0710 (search), `logs/` 0750 and each log 0640, owned by the group; `pids/`,
/// `engines/` and the journal stay the daemon's alone. An unknown group stops start-up.
#[tokio::test]
async fn a_logs_group_may_read_the_engine_logs_and_nothing_else() {
    use std::os::unix::fs::MetadataExt as _;
    if !root_or_skip() {
        return;
    }
    let adm = nix::unistd::Group::from_name("adm")
        .unwrap()
        .expect("group adm");
    let gid = adm.gid.as_raw();
    let h = Harness::start_with(|c| c.engines.logs_group = "adm".to_string()).await;
    let (status, answer) = h
        .post(
            "/v2/pools/logs/preload",
            engine_sim_preload("logs", None, &[]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let runtime = h.runtime();
    let mode_gid = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        (meta.mode() & 0o7777, meta.gid())
    };
    assert_eq!(mode_gid(&runtime), (0o710, gid));
    assert_eq!(mode_gid(&runtime.join("logs")), (0o750, gid));
    assert_eq!(mode_gid(&runtime.join("logs/logs.log")), (0o640, gid));
    for private in [
        runtime.join("pids"),
        runtime.join("engines"),
        h.dir.path().join("journal"),
    ] {
        assert_eq!(mode_gid(&private).0, 0o700, "{}", private.display());
    }
    assert_eq!(mode_gid(&runtime.join("pids/logs.pid")).0, 0o600);
    // Read as the kernel checks it: uid nobody, in group adm or not.
    let log = runtime.join("logs/logs.log");
    assert!(
        cat_as_nobody(&log, &[gid]).status.success(),
        "a member of adm reads the log"
    );
    assert!(!cat_as_nobody(&runtime.join("pids/logs.pid"), &[gid])
        .status
        .success());
    assert!(!cat_as_nobody(&log, &[]).status.success(), "others do not");
    let (status, _) = h
        .call(reqwest::Method::DELETE, "/v2/pools/logs", None)
        .await;
    assert_eq!(status, 200);
    h.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = harness::config(dir.path());
    config.engines.logs_group = "no-such-group-xyz".to_string();
    let clock = std::sync::Arc::new(pool_managerd::clock::SystemClock);
    let err = pool_managerd::daemon::Daemon::start(&config, clock.clone())
        .await
        .err()
        .expect("an unknown logs_group stops start-up");
    let err = format!("{err:#}");
    assert!(err.contains("engines.logs_group"), "{err}");
    assert!(err.contains("'no-such-group-xyz' does not exist"), "{err}");
    // The way out the message names: logs_group = "" starts, the logs the daemon's alone.
    config.engines.logs_group = String::new();
    let (daemon, _) = pool_managerd::daemon::Daemon::start(&config, clock)
        .await
        .expect("logs_group = \"\" starts");
    use std::os::unix::fs::PermissionsExt as _;
    let logs = std::fs::metadata(config.runtime_dir.join("logs")).unwrap();
    assert_eq!(logs.permissions().mode() & 0o7777, 0o700);
    daemon.shutdown("test finished").await;
}
