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
