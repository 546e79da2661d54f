//! Unit tests of `process`.

use super::*;

#[test]
fn masks_become_cuda_visible_devices() {
    assert_eq!(cuda_visible_devices("GPU0,GPU1"), "0,1");
    assert_eq!(cuda_visible_devices("0, 1"), "0,1");
    assert_eq!(
        cuda_visible_devices("GPU-5f2c,MIG-1a2b"),
        "GPU-5f2c,MIG-1a2b"
    );
}

#[test]
fn exits_are_classified() {
    let exit = |code, signal| ExitInfo {
        code,
        signal,
        oom_killed: false,
    };
    assert_eq!(
        classify(exit(Some(0), None), false, ""),
        ExitReason::Graceful
    );
    assert_eq!(classify(exit(Some(3), None), false, ""), ExitReason::Crash);
    assert_eq!(
        classify(exit(None, Some(11)), false, ""),
        ExitReason::Signal
    );
    assert_eq!(
        classify(exit(None, Some(9)), false, ""),
        ExitReason::OomKilled
    );
    assert_eq!(classify(exit(None, Some(9)), true, ""), ExitReason::Signal);
    assert_eq!(
        classify(exit(Some(137), None), false, ""),
        ExitReason::OomKilled,
        "a wrapper's 128 + SIGKILL"
    );
    assert_eq!(
        classify(exit(Some(139), None), false, ""),
        ExitReason::Signal
    );
    assert_eq!(
        classify(exit(Some(128), None), false, ""),
        ExitReason::Crash
    );
    let counted = ExitInfo {
        oom_killed: true,
        ..exit(None, Some(9))
    };
    assert_eq!(
        classify(counted, true, ""),
        ExitReason::OomKilled,
        "the cgroup counted an OOM kill, even while we were stopping it"
    );
    let vram = "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 97656.25 MiB on device 0: cudaMalloc failed: out of memory\nexiting due to model loading error";
    assert_eq!(
        classify(exit(Some(1), None), false, vram),
        ExitReason::VramOom
    );
    let cuda = "CUDA error: an illegal memory access was encountered";
    assert_eq!(
        classify(exit(Some(1), None), false, cuda),
        ExitReason::CudaError
    );
    assert_eq!(
        classify(
            exit(Some(1), None),
            false,
            "NVRM: Xid 79, GPU has fallen off the bus"
        ),
        ExitReason::DriverError
    );
    assert_eq!(
        classify(exit(Some(1), None), false, "host: out of memory"),
        ExitReason::Crash
    );
}

#[test]
fn the_oom_kill_counter_is_found_where_the_host_has_one() {
    // Hosts without a memory cgroup have none: that is a clear `None`, never an error.
    if let Some((file, count)) = oom_kill_counter(std::process::id()) {
        assert_eq!(read_oom_kills(&file), Some(count));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("memory.events");
    std::fs::write(&file, "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n").unwrap();
    assert_eq!(read_oom_kills(&file), Some(1));
}

#[test]
fn the_session_of_this_process_is_read() {
    let ours = session_id(std::process::id()).unwrap();
    assert_eq!(
        Some(ours),
        nix::unistd::getsid(None).ok().map(|s| s.as_raw() as u32)
    );
}

#[test]
fn start_time_of_this_process_is_read() {
    assert!(start_time(std::process::id()).is_some_and(|t| t > 0));
    assert!(!is_gone(std::process::id()));
}

#[test]
fn engine_env_is_scrubbed_and_mask_wins() {
    let mut engine: PreparedEngine = serde_json::from_value(serde_json::json!({
        "binary_path": "/bin/true", "host": "127.0.0.1", "port": 1, "model_path": "m",
        "engine_version": "v", "pool_id": "p", "replica_id": "r0", "device_mask": "GPU1",
        "env": {"CUDA_VISIBLE_DEVICES": "7", "FOO": "bar"}
    }))
    .unwrap();
    let env = engine_env(&engine, |name| match name {
        "PATH" => Some("/usr/bin".into()),
        "SECRET" => Some("x".into()),
        _ => None,
    });
    assert_eq!(
        env,
        vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("FOO".to_string(), "bar".to_string()),
            ("CUDA_VISIBLE_DEVICES".to_string(), "1".to_string()),
            ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
        ]
    );
    engine.device_mask = None;
    assert!(engine_env(&engine, |_| None)
        .iter()
        .all(|(k, _)| k != "CUDA_DEVICE_ORDER"));
}
