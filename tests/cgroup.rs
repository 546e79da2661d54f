//! Each engine in a cgroup v2 leaf of its own, on the host's real cgroup hierarchy: the
//! engine's `/proc/<pid>/cgroup` names its leaf, two pools get two leaves, the leaf carries
//! `memory.max` (from `ram_required_bytes`) and `pids.max` where the hierarchy has those
//! controllers, and goes with its pool. A host without them (cgroup v1 holds memory on a
//! hybrid host) degrades under `auto` and refuses to start under `required`. Needs root and a
//! cgroup v2 mount: fails under `CI=true` without them.

#[path = "support/daemon_harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{config, engine_sim_preload, Harness};
use pool_managerd::clock::SystemClock;
use pool_managerd::config::CgroupMode;
use pool_managerd::daemon::Daemon;
use pool_managerd::supervisor::cgroup;

/// The daemon's unit cgroup directory (this test process is the daemon), or `None` (skip)
/// without root or cgroup v2; under `CI=true` that is a failure.
fn unit_dir_or_skip() -> Option<PathBuf> {
    let why = if !nix::unistd::geteuid().is_root() {
        "needs root to create cgroups"
    } else {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        match cgroup::locate(&mountinfo, &own) {
            Ok(location) => {
                let (unit, _) = location.unit();
                return Some(location.mount.join(unit.trim_start_matches('/')));
            }
            Err(_) => "needs a cgroup v2 hierarchy",
        }
    };
    assert!(std::env::var_os("CI").is_none(), "CI=true: this test {why}");
    eprintln!("skipped: {why}");
    None
}

/// Whether the hierarchy can give leaves both controllers.
fn has_limits(unit_dir: &std::path::Path) -> bool {
    let controllers = std::fs::read_to_string(unit_dir.join("cgroup.controllers")).unwrap();
    let words: Vec<&str> = controllers.split_whitespace().collect();
    words.contains(&"memory") && words.contains(&"pids")
}

/// The cgroup v2 path of `pid` (its `0::` line).
fn cgroup_of(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap()
        .to_string()
}

async fn preload(h: &Harness, pool: &str, ram: Option<u64>) -> u64 {
    let mut body = engine_sim_preload(pool, None, &[]);
    if let Some(ram) = ram {
        body["prepared"]["ram_required_bytes"] = ram.into();
    }
    let (status, answer) = h.post(&format!("/v2/pools/{pool}/preload"), body).await;
    assert_eq!(status, 200, "{answer}");
    answer["pid"].as_u64().unwrap()
}

#[tokio::test]
async fn each_engine_runs_in_a_leaf_of_its_own_that_goes_with_its_pool() {
    let Some(unit_dir) = unit_dir_or_skip() else {
        return;
    };
    let h = Harness::start_with(|c| c.engines.cgroup = CgroupMode::Auto).await;
    let subtree = cgroup::subtree_name(&h.config.runtime_dir);
    let a = preload(&h, "cga", Some(256 << 20)).await;
    let b = preload(&h, "cgb", None).await;
    let (leaf_a, leaf_b) = (cgroup_of(a), cgroup_of(b));
    assert!(
        leaf_a.ends_with(&format!("/{subtree}/pool-cga")),
        "{leaf_a}"
    );
    assert!(
        leaf_b.ends_with(&format!("/{subtree}/pool-cgb")),
        "{leaf_b}"
    );
    let dir_a = unit_dir.join(&subtree).join("pool-cga");
    let procs = std::fs::read_to_string(dir_a.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        a.to_string(),
        "the engine alone is in its leaf"
    );
    if has_limits(&unit_dir) {
        let read = |f: &str| std::fs::read_to_string(dir_a.join(f)).unwrap();
        assert_eq!(read("memory.max").trim(), (256u64 << 20).to_string());
        assert_eq!(read("pids.max").trim(), "32768");
    } else {
        assert!(!dir_a.join("memory.max").exists());
    }
    let (status, answer) = h.call(reqwest::Method::DELETE, "/v2/pools/cga", None).await;
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + h.wait;
    while dir_a.exists() {
        assert!(
            Instant::now() < deadline,
            "{} is still there",
            dir_a.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unit_dir.join(&subtree).join("pool-cgb").exists());
    let (status, _) = h.call(reqwest::Method::DELETE, "/v2/pools/cgb", None).await;
    assert_eq!(status, 200);
    h.stop().await;
}

#[tokio::test]
async fn with_cgroups_off_an_engine_stays_in_the_daemons_cgroup() {
    if unit_dir_or_skip().is_none() {
        return;
    }
    let h = Harness::start_with(|c| c.engines.cgroup = CgroupMode::Off).await;
    let pid = preload(&h, "cgoff", None).await;
    assert_eq!(cgroup_of(pid), cgroup_of(u64::from(std::process::id())));
    let (status, _) = h
        .call(reqwest::Method::DELETE, "/v2/pools/cgoff", None)
        .await;
    assert_eq!(status, 200);
    h.stop().await;
}

#[tokio::test]
async fn required_cgroups_refuse_to_start_on_a_host_without_the_controllers() {
    let Some(unit_dir) = unit_dir_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.engines.cgroup = CgroupMode::Required;
    let started = Daemon::start(&config, Arc::new(SystemClock)).await;
    if has_limits(&unit_dir) {
        let (daemon, _) = started.expect("the host has memory and pids in cgroup v2");
        daemon.shutdown("test finished").await;
    } else {
        let err = format!(
            "{:#}",
            started.err().expect("no memory controller in v2 here")
        );
        assert!(err.contains("engines.cgroup = \"required\""), "{err}");
        assert!(
            err.contains("memory and pids controllers are not available"),
            "{err}"
        );
        assert!(err.contains("set engines.cgroup = \"auto\""), "{err}");
        // The way out the message names: the same configuration with "auto" starts.
        config.engines.cgroup = CgroupMode::Auto;
        let (daemon, _) = Daemon::start(&config, Arc::new(SystemClock))
            .await
            .expect("engines.cgroup = \"auto\" starts on this host");
        daemon.shutdown("test finished").await;
    }
}
