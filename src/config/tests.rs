//! Unit tests of the configuration's parsing, layering and validation helpers.

use super::*;

#[test]
fn schema_knows_every_key() {
    let schema = schema();
    let mut paths = Vec::new();
    all_paths(&schema, "", &mut paths);
    for key in [
        "addr",
        "journal_dir",
        "health.preload_interval_ms",
        "backoff.reason_multiplier.cuda_error",
        "journal.snapshot_every",
        "journal.retain_bytes",
        "journal.retain_ms",
        "journal.segment_records",
        "stop_engines_on_shutdown",
        "gpu.poll_interval_ms",
        "gpu.placement_timeout_ms",
        "gpu.fixture",
        "gpu.nvml_library",
        "gpu.allow_sharing",
        "api.max_connections",
        "api.header_read_timeout_ms",
        "api.body_read_timeout_ms",
        "api.idle_timeout_ms",
    ] {
        assert!(
            paths.iter().any(|p| p == key),
            "{key} missing from {paths:?}"
        );
    }
    assert!(!paths.iter().any(|p| p == "api_token"));
}

#[test]
fn gpu_keys_are_validated_and_the_fixture_flag_wins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let load = |text: &str, flags: Overrides| {
        std::fs::write(&file, text).unwrap();
        Config::load(&Sources {
            file: Some(file.clone()),
            env: BTreeMap::new(),
            flags,
        })
    };
    let config = load(
        "[gpu]\npoll_interval_ms = 250\nfixture = \"/tmp/gpus.json\"\n",
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.gpu.poll_interval_ms, 250);
    assert_eq!(config.gpu.fixture, PathBuf::from("/tmp/gpus.json"));
    let flagged = load(
        "[gpu]\nfixture = \"/tmp/gpus.json\"\n",
        Overrides {
            gpu_fixture: Some(PathBuf::from("/tmp/other.json")),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(flagged.gpu.fixture, PathBuf::from("/tmp/other.json"));
    assert!(flagged.to_toml().contains("/tmp/other.json"));

    let zero = load("[gpu]\npoll_interval_ms = 0\n", Overrides::default()).unwrap_err();
    assert_eq!(zero.key(), Some("gpu.poll_interval_ms"), "{zero}");
    let placement = load("[gpu]\nplacement_timeout_ms = 500\n", Overrides::default()).unwrap();
    assert_eq!(placement.gpu.placement_timeout_ms, 500);
    for bad in ["0", "600001"] {
        let err = load(
            &format!("[gpu]\nplacement_timeout_ms = {bad}\n"),
            Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("gpu.placement_timeout_ms"), "{err}");
    }
    let unknown = load("[gpu]\npoll_interval = 5\n", Overrides::default()).unwrap_err();
    assert!(
        unknown.to_string().contains("gpu.poll_interval_ms"),
        "{unknown}"
    );
    let empty = load(
        "",
        Overrides {
            gpu_fixture: Some(PathBuf::new()),
            ..Overrides::default()
        },
    )
    .unwrap_err();
    assert_eq!(empty.key(), Some("gpu.fixture"), "{empty}");
    let sharing = load("[gpu]\nallow_sharing = true\n", Overrides::default()).unwrap();
    assert!(sharing.gpu.allow_sharing);
    assert!(
        sharing.to_toml().contains("allow_sharing = true"),
        "{}",
        sharing.to_toml()
    );
    assert!(!Config::default().gpu.allow_sharing);
    let not_bool = load("[gpu]\nallow_sharing = \"yes\"\n", Overrides::default()).unwrap_err();
    assert_eq!(not_bool.key(), Some("gpu.allow_sharing"), "{not_bool}");
    assert!(not_bool.to_string().contains("true or false"), "{not_bool}");
    assert_eq!(Config::default().gpu, GpuSettings::default());
    assert_eq!(
        Config::default().gpu.poll_interval_ms,
        DEFAULT_GPU_POLL_INTERVAL_MS
    );
}

#[test]
fn api_limits_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Config::load(&Sources {
            file: Some(file.clone()),
            env: BTreeMap::new(),
            flags: Overrides::default(),
        })
    };
    let config = load("[api]\nmax_connections = 8\nheader_read_timeout_ms = 500\n").unwrap();
    assert_eq!(config.api.max_connections, 8);
    assert_eq!(config.api.header_read_timeout_ms, 500);
    assert_eq!(config.api.idle_timeout_ms, 60_000);
    for (text, key) in [
        ("max_connections = 0", "api.max_connections"),
        ("max_connections = 1000001", "api.max_connections"),
        ("header_read_timeout_ms = 0", "api.header_read_timeout_ms"),
        ("body_read_timeout_ms = 3600001", "api.body_read_timeout_ms"),
        ("idle_timeout_ms = 0", "api.idle_timeout_ms"),
    ] {
        let err = load(&format!("[api]\n{text}\n")).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");
    }
}

#[test]
fn defaults_validate() {
    assert!(validate_file_config(&FileConfig::default(), &Origin::Default).is_ok());
    assert_eq!(DEFAULT_ADDR.parse(), Ok(FileConfig::default().addr));
}

#[test]
fn edit_distance_is_levenshtein() {
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(edit_distance("grace_ms", "grace_ms"), 0);
    assert!(is_near("preload_intervall_ms", "preload_interval_ms"));
    assert!(!is_near("bogus", "grace_ms"));
}

#[test]
fn surge_ports_are_a_range_or_nothing() {
    let settings = |text: &str| ReloadSettings {
        surge_ports: text.to_string(),
    };
    assert_eq!(settings("").surge_range(), None);
    assert_eq!(settings("9300-9309").surge_range(), Some(9300..=9309));
    assert_eq!(settings("9300-9300").surge_range(), Some(9300..=9300));
    for bad in ["9309-9300", "0-10", "9300", "a-b", "9300-70000"] {
        let (key, message) = settings(bad).validate().unwrap_err();
        assert_eq!(key, "reload.surge_ports");
        assert!(message.contains(bad), "{message}");
    }
    let file = parse_file_text(
        Path::new("c.toml"),
        "[reload]\nsurge_ports = \"9400-9401\"\n",
    )
    .unwrap();
    assert_eq!(file.reload.surge_range(), Some(9400..=9401));
    let wrong = FileConfig {
        reload: settings("2-1"),
        ..FileConfig::default()
    };
    let error = validate_file_config(&wrong, &Origin::File("c.toml".into())).unwrap_err();
    assert!(error.to_string().contains("reload.surge_ports"), "{error}");
}

#[test]
fn logs_rotation_has_defaults_and_bounds() {
    let defaults = LogsSettings::default();
    assert_eq!(defaults.max_bytes, 67_108_864);
    assert_eq!(defaults.keep, 3);
    assert!(defaults.validate().is_ok());
    let file =
        parse_file_text(Path::new("c.toml"), "[logs]\nmax_bytes = 65536\nkeep = 2\n").unwrap();
    assert_eq!(file.logs.max_bytes, 65_536);
    assert_eq!(file.logs.keep, 2);
    for (bad, key) in [
        (
            LogsSettings {
                keep: 0,
                ..defaults
            },
            "logs.keep",
        ),
        (
            LogsSettings {
                keep: 101,
                ..defaults
            },
            "logs.keep",
        ),
        (
            LogsSettings {
                max_bytes: 100,
                ..defaults
            },
            "logs.max_bytes",
        ),
    ] {
        let wrong = FileConfig {
            logs: bad,
            ..FileConfig::default()
        };
        let error = validate_file_config(&wrong, &Origin::File("c.toml".into())).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(key), "{text}");
        assert!(text.contains("c.toml"), "{text}");
    }
}
