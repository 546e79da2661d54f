//! The daemon's configuration: defaults, file < environment < flags, the errors that stop
//! start-up (each naming the key, the file, the variable or the flag), and the security rule.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pool_core::Policy;
use pool_managerd::config::{
    relevant_env, Config, ConfigError, Origin, Overrides, Sources, EXAMPLE_TOML,
};
use tempfile::TempDir;

/// One configuration's inputs; `None` file means no `--config`.
#[derive(Default)]
struct Input<'a> {
    file: Option<&'a str>,
    env: &'a [(&'a str, &'a str)],
    flags: Overrides,
}

/// Loads `input` (the file written into a fresh temporary directory) and returns the result
/// with the file's path.
fn load(input: Input<'_>) -> (Result<Config, ConfigError>, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("pool-managerd.toml");
    if let Some(text) = input.file {
        std::fs::write(&path, text).unwrap();
    }
    let sources = Sources {
        file: input.file.map(|_| path.clone()),
        env: input
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: input.flags,
    };
    (Config::load(&sources), path)
}

fn ok(input: Input<'_>) -> Config {
    let (result, _) = load(input);
    result.unwrap_or_else(|e| panic!("expected a config, got: {e}"))
}

/// Expects an error whose message contains every one of `needles` (`{path}` stands for the
/// config file's path); returns it for further checks.
fn check_err(input: Input<'_>, needles: &[&str]) -> ConfigError {
    let (result, path) = load(input);
    let error = match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    };
    let message = error.to_string();
    for needle in needles {
        let needle = needle.replace("{path}", &path.display().to_string());
        assert!(
            message.contains(&needle),
            "`{needle}` not in the message:\n{message}"
        );
    }
    error
}

fn file(text: &str) -> Input<'_> {
    Input {
        file: Some(text),
        ..Input::default()
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn defaults() {
    let config = ok(Input::default());
    assert_eq!(config, Config::default());
    assert_eq!(config.addr, addr("127.0.0.1:9200"));
    assert_eq!(config.runtime_dir, Path::new(".runtime"));
    assert_eq!(config.journal_dir, Path::new(".runtime/journal"));
    assert!(config.require_gpu);
    assert!(config.allowed_binaries.is_empty());
    assert_eq!(config.engine_user, "");
    assert_eq!(config.api_token, None);
    assert!(!config.stop_engines_on_shutdown);
    assert_eq!(config.journal.snapshot_every, 10_000);
    assert_eq!(config.policy(), Policy::default());
    // An empty file is the defaults too.
    assert_eq!(ok(file("")), Config::default());
}

#[test]
fn example_toml_is_the_defaults_and_names_every_key() {
    assert_eq!(ok(file(EXAMPLE_TOML)), Config::default());

    // Every key the daemon prints appears in the example (journal_dir commented out, on
    // purpose: written out it would stop following runtime_dir).
    fn paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let toml::Value::Table(sub) = v {
                paths(sub, &path, out);
            } else {
                out.push(path);
            }
        }
    }
    let (mut printed, mut example) = (Vec::new(), Vec::new());
    paths(
        &Config::default().to_toml().parse().unwrap(),
        "",
        &mut printed,
    );
    paths(&EXAMPLE_TOML.parse().unwrap(), "", &mut example);
    example.push("journal_dir".into());
    printed.sort();
    example.sort();
    assert_eq!(printed, example);
    assert!(EXAMPLE_TOML.contains("# journal_dir = \".runtime/journal\""));
}

#[test]
fn file_env_flags_precedence() {
    // (key, file line, env var and value, flags, expected values from: defaults, file only,
    // file + env, file + env + flag). journal_dir is given explicitly in every layer here.
    struct Case {
        file: &'static str,
        var: &'static str,
        env: &'static str,
        flags: Overrides,
        get: fn(&Config) -> String,
        want: [&'static str; 4],
    }
    let cases = [
        Case {
            file: "addr = \"127.0.0.1:1001\"",
            var: "POOL_MANAGERD_ADDR",
            env: "127.0.0.1:1002",
            flags: Overrides {
                addr: Some(addr("127.0.0.1:1003")),
                ..Overrides::default()
            },
            get: |c| c.addr.to_string(),
            want: [
                "127.0.0.1:9200",
                "127.0.0.1:1001",
                "127.0.0.1:1002",
                "127.0.0.1:1003",
            ],
        },
        Case {
            file: "runtime_dir = \"/file/rt\"",
            var: "POOL_MANAGERD_RUNTIME_DIR",
            env: "/env/rt",
            flags: Overrides {
                runtime_dir: Some("/flag/rt".into()),
                ..Overrides::default()
            },
            get: |c| c.runtime_dir.display().to_string(),
            want: [".runtime", "/file/rt", "/env/rt", "/flag/rt"],
        },
        Case {
            file: "journal_dir = \"/file/j\"",
            var: "POOL_MANAGERD_JOURNAL_DIR",
            env: "/env/j",
            flags: Overrides {
                journal_dir: Some("/flag/j".into()),
                ..Overrides::default()
            },
            get: |c| c.journal_dir.display().to_string(),
            want: [".runtime/journal", "/file/j", "/env/j", "/flag/j"],
        },
    ];
    for case in cases {
        let env = [(case.var, case.env)];
        let layers = [
            Input::default(),
            file(case.file),
            Input {
                file: Some(case.file),
                env: &env,
                ..Input::default()
            },
            Input {
                file: Some(case.file),
                env: &env,
                flags: case.flags.clone(),
            },
        ];
        for (layer, want) in layers.into_iter().zip(case.want) {
            assert_eq!((case.get)(&ok(layer)), want, "{}", case.var);
        }
        // A flag wins over the file even with no environment.
        let flag_only = Input {
            file: Some(case.file),
            flags: case.flags.clone(),
            ..Input::default()
        };
        assert_eq!((case.get)(&ok(flag_only)), case.want[3], "{}", case.var);
    }
}

#[test]
fn journal_dir_follows_runtime_dir_unless_explicit() {
    let journal = |input: Input<'_>| ok(input).journal_dir;
    assert_eq!(
        journal(file("runtime_dir = \"/srv/rt\"")),
        Path::new("/srv/rt/journal")
    );
    assert_eq!(
        journal(Input {
            env: &[("POOL_MANAGERD_RUNTIME_DIR", "/env/rt")],
            ..Input::default()
        }),
        Path::new("/env/rt/journal")
    );
    assert_eq!(
        journal(Input {
            file: Some("runtime_dir = \"/file/rt\""),
            flags: Overrides {
                runtime_dir: Some("/flag/rt".into()),
                ..Overrides::default()
            },
            ..Input::default()
        }),
        Path::new("/flag/rt/journal")
    );
    // An explicit journal_dir wins, even from a lower layer than runtime_dir.
    assert_eq!(
        journal(Input {
            file: Some("journal_dir = \"/file/j\""),
            flags: Overrides {
                runtime_dir: Some("/flag/rt".into()),
                ..Overrides::default()
            },
            ..Input::default()
        }),
        Path::new("/file/j")
    );
}

#[test]
fn the_stop_engines_flag_overrides_the_default_and_the_file() {
    let flag = Overrides {
        stop_engines_on_shutdown: true,
        ..Overrides::default()
    };
    assert!(
        !ok(Input::default()).stop_engines_on_shutdown,
        "engines outlive the daemon by default"
    );
    assert!(
        ok(Input {
            file: Some("stop_engines_on_shutdown = false"),
            flags: flag,
            ..Input::default()
        })
        .stop_engines_on_shutdown
    );
}

#[test]
fn dev_flag_clears_require_gpu() {
    let dev = Overrides {
        dev: true,
        ..Overrides::default()
    };
    assert!(
        !ok(Input {
            flags: dev.clone(),
            ..Input::default()
        })
        .require_gpu
    );
    assert!(
        !ok(Input {
            file: Some("require_gpu = true"),
            flags: dev,
            ..Input::default()
        })
        .require_gpu
    );
    assert!(!ok(file("require_gpu = false")).require_gpu);
    assert!(ok(Input::default()).require_gpu);
}

#[test]
fn file_values_reach_the_policy() {
    let config = ok(file(
        "[health]\nfailures_to_crash = 7\n[backoff]\nfactor = 3\nreason_multiplier = { \
         cuda_error = 4.0 }\n[storm]\nwindow_ms = 1000\n[journal]\nsnapshot_every = 5\n",
    ));
    let policy = config.policy();
    assert_eq!(policy.health.failures_to_crash, 7);
    assert_eq!(policy.health.ready_interval_ms, 5_000);
    assert_eq!(policy.health.progress_interval_ms, 5_000);
    assert_eq!(policy.health.stall_after_ms, 120_000);
    assert_eq!(policy.backoff.factor, 3.0);
    assert_eq!(policy.backoff.reason_multiplier.cuda_error, 4.0);
    assert_eq!(policy.backoff.reason_multiplier.vram_oom, 2.0);
    assert_eq!(policy.storm.window_ms, 1000);
    assert_eq!(config.journal.snapshot_every, 5);
}

#[test]
fn unknown_keys_are_named_with_their_table() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("frobnicate = 1\n", "frobnicate", &["the top-level keys are"]),
        (
            "[health]\nbogus = 1\n",
            "health.bogus",
            &["the keys of [health] are", "preload_interval_ms"],
        ),
        (
            "[backoff]\nreason_multiplier = { cuda = 1.0 }\n",
            "backoff.reason_multiplier.cuda",
            &[],
        ),
        (
            "[backoff.reason_multiplier]\nxid = 1.0\n",
            "backoff.reason_multiplier.xid",
            &[],
        ),
        (
            "[heath]\nfailures_to_crash = 1\n",
            "heath",
            &["did you mean `health`?"],
        ),
        (
            "[health]\npreload_intervall_ms = 1\n",
            "health.preload_intervall_ms",
            &["did you mean `health.preload_interval_ms`?"],
        ),
        (
            // A top-level key written after a table header belongs to that table.
            "[journal]\nsnapshot_every = 5\naddr = \"127.0.0.1:1\"\n",
            "journal.addr",
            &["did you mean `addr`?"],
        ),
        (
            "snapshot_every = 5\n",
            "snapshot_every",
            &["did you mean `journal.snapshot_every`?"],
        ),
        (
            "[journal]\ndir = \"/x\"\n",
            "journal.dir",
            &["the keys of [journal] are: retain_bytes, retain_ms, segment_records, snapshot_every"],
        ),
        (
            "api_token = \"s3cret\"\n",
            "api_token",
            &["LLORCH_API_TOKEN"],
        ),
    ];
    for (text, key, hints) in cases {
        let mut needles = vec!["{path}", "unknown key"];
        let quoted = format!("`{key}`");
        needles.push(&quoted);
        needles.extend_from_slice(hints);
        let error = check_err(file(text), &needles);
        assert_eq!(error.key(), Some(*key), "{text}");
        assert!(!error.to_string().contains("s3cret"));
    }
    // All unknown keys are listed at once.
    let error = check_err(
        file("bogus = 1\n[storm]\nextra = 2\n"),
        &["`bogus`", "`storm.extra`"],
    );
    assert!(matches!(error, ConfigError::UnknownKeys { ref keys, .. } if keys.len() == 2));
}

#[test]
fn invalid_values_are_named_with_their_table() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "[health]\npreload_interval_ms = \"fast\"\n",
            "health.preload_interval_ms",
            &["expected u64", "default (500)"],
        ),
        (
            "[health]\npreload_interval_ms = 0\n",
            "health.preload_interval_ms",
            &["must be > 0", "default (500)"],
        ),
        (
            "[health]\npreload_timeout_ms = 0\n",
            "health.preload_timeout_ms",
            &["must be > 0"],
        ),
        (
            "[health]\nready_interval_ms = 0\n",
            "health.ready_interval_ms",
            &["must be > 0"],
        ),
        (
            "[health]\nfailures_to_crash = 0\n",
            "health.failures_to_crash",
            &["must be >= 1"],
        ),
        (
            "[health]\nfailures_to_crash = -1\n",
            "health.failures_to_crash",
            &["-1"],
        ),
        (
            "[health]\nprogress_interval_ms = 0\n",
            "health.progress_interval_ms",
            &["must be within 10..=3600000", "default (5000)"],
        ),
        (
            "[health]\nprogress_interval_ms = 1000\nstall_after_ms = 1500\n",
            "health.stall_after_ms",
            &[
                "at least twice health.progress_interval_ms (1000)",
                "default (120000)",
            ],
        ),
        (
            "[backoff]\nreason_multiplier = { stalled = 101.0 }\n",
            "backoff.reason_multiplier.stalled",
            &["within 0.0..=100.0"],
        ),
        (
            "[gpu]\nquarantine_after = 0\n",
            "gpu.quarantine_after",
            &["must be within 1..=64", "default (3)"],
        ),
        (
            "[gpu]\nquarantine_window_ms = 0\n",
            "gpu.quarantine_window_ms",
            &["must be > 0", "default (3600000)"],
        ),
        (
            "[journal]\nsnapshot_every = 0\n",
            "journal.snapshot_every",
            &["must be >= 1", "default (10000)"],
        ),
        (
            "[backoff]\njitter = 0.9\n",
            "backoff.jitter",
            &["0.0..=0.5"],
        ),
        (
            "[backoff]\nreason_multiplier = { cuda_error = \"x\" }\n",
            "backoff.reason_multiplier.cuda_error",
            &["expected f64"],
        ),
        (
            "addr = \"localhost:9200\"\n",
            "addr",
            &["host names are not resolved"],
        ),
        ("addr = 9200\n", "addr", &[]),
        ("health = 3\n", "health", &[]),
        ("[addr]\nip = 1\n", "addr", &[]),
        ("runtime_dir = \"\"\n", "runtime_dir", &["empty"]),
        ("journal_dir = \"\"\n", "journal_dir", &["empty"]),
        (
            "allowed_binaries = [\"bin/llama-server\"]\n",
            "allowed_binaries",
            &["not an absolute path"],
        ),
        ("allowed_binaries = [3]\n", "allowed_binaries", &[]),
        (
            "[engines]\nenv_allow = [\"CUDA_*_X\"]\n",
            "engines.env_allow",
            &["not a variable name or a prefix ending in '*'"],
        ),
        (
            "engine_user = \"llama \"\n",
            "engine_user",
            &["not a user name"],
        ),
        (
            "require_gpu = \"yes\"\n",
            "require_gpu",
            &["expected a boolean"],
        ),
    ];
    for (text, key, hints) in cases {
        let quoted = format!("`{key}`");
        let mut needles = vec!["config file {path}", "invalid value for", &quoted];
        needles.extend_from_slice(hints);
        let error = check_err(file(text), &needles);
        assert_eq!(error.key(), Some(*key), "{text}");
    }
}

#[test]
fn bad_environment_values_name_the_variable() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("POOL_MANAGERD_ADDR", "nope", &["`nope` is not an IP:PORT"]),
        ("POOL_MANAGERD_ADDR", "", &["empty"]),
        ("POOL_MANAGERD_RUNTIME_DIR", "", &["empty"]),
        ("POOL_MANAGERD_JOURNAL_DIR", "", &["empty"]),
        ("LLORCH_API_TOKEN", "s3cret\n", &["trailing newline"]),
    ];
    for (var, value, hints) in cases {
        let env = [(*var, *value)];
        let mut needles = vec![format!("environment variable {var}")];
        needles.extend(hints.iter().map(|h| h.to_string()));
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let error = check_err(
            Input {
                env: &env,
                ..Input::default()
            },
            &needles,
        );
        assert!(
            matches!(&error, ConfigError::InvalidValue { origin: Origin::Env(v), .. } if v == var)
        );
        assert!(!error.to_string().contains("s3cret"), "token echoed");
    }
    // An empty token means none; other variables are ignored.
    let config = ok(Input {
        env: &[("LLORCH_API_TOKEN", ""), ("POOL_MANAGERD_BOGUS", "x")],
        ..Input::default()
    });
    assert_eq!(config.api_token, None);
    let config = ok(Input {
        env: &[("LLORCH_API_TOKEN", "s3cret-0123456789")],
        ..Input::default()
    });
    assert_eq!(config.api_token.as_deref(), Some("s3cret-0123456789"));
}

#[test]
fn bad_flag_values_name_the_flag() {
    check_err(
        Input {
            flags: Overrides {
                runtime_dir: Some(PathBuf::new()),
                ..Overrides::default()
            },
            ..Input::default()
        },
        &["flag --runtime-dir", "`runtime_dir`", "empty"],
    );
}

#[test]
fn missing_or_broken_file_names_the_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.toml");
    let error = Config::load(&Sources {
        file: Some(path.clone()),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(matches!(error, ConfigError::NotFound { .. }));
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("--config"), "{message}");

    check_err(
        file("[health\n"),
        &["config file {path}", "not valid TOML", "line 1"],
    );
    check_err(
        file("addr = \"127.0.0.1:1\"\naddr = \"127.0.0.1:2\"\n"),
        &["config file {path}", "duplicate key"],
    );
}

#[test]
fn non_loopback_needs_a_token_of_16_characters_or_more() {
    let with_list = "addr = \"0.0.0.0:9200\"\nallowed_binaries = [\"/opt/llama/bin\"]\n";
    let error = check_err(
        Input {
            file: Some(with_list),
            env: &[("LLORCH_API_TOKEN", "t")],
            ..Input::default()
        },
        &[
            "0.0.0.0:9200",
            "LLORCH_API_TOKEN is 1 character(s)",
            "at least 16",
        ],
    );
    assert!(matches!(error, ConfigError::WeakToken { chars: 1, .. }));
}

#[test]
fn non_loopback_needs_token_and_allow_list() {
    let public = "addr = \"0.0.0.0:9200\"\n";
    let with_list = "addr = \"0.0.0.0:9200\"\nallowed_binaries = [\"/opt/llama/bin\"]\n";
    let token = [("LLORCH_API_TOKEN", "s3cret-0123456789")];

    let error = check_err(
        file(public),
        &["0.0.0.0:9200", "LLORCH_API_TOKEN", "allowed_binaries"],
    );
    assert!(matches!(
        error,
        ConfigError::Insecure {
            token_missing: true,
            allow_list_missing: true,
            ..
        }
    ));
    let error = check_err(
        Input {
            file: Some(public),
            env: &token,
            ..Input::default()
        },
        &["allowed_binaries"],
    );
    assert!(matches!(
        error,
        ConfigError::Insecure {
            token_missing: false,
            allow_list_missing: true,
            ..
        }
    ));
    let error = check_err(file(with_list), &["LLORCH_API_TOKEN"]);
    assert!(matches!(
        error,
        ConfigError::Insecure {
            token_missing: true,
            allow_list_missing: false,
            ..
        }
    ));
    // Through the environment and the flag too.
    check_err(
        Input {
            env: &[("POOL_MANAGERD_ADDR", "192.0.2.7:9200")],
            ..Input::default()
        },
        &["192.0.2.7:9200"],
    );
    check_err(
        Input {
            flags: Overrides {
                addr: Some(addr("[::]:9200")),
                ..Overrides::default()
            },
            ..Input::default()
        },
        &["[::]:9200"],
    );

    let config = ok(Input {
        file: Some(with_list),
        env: &token,
        ..Input::default()
    });
    assert_eq!(config.addr, addr("0.0.0.0:9200"));
    assert!(config.check_security().is_ok());

    // Loopback needs neither.
    for a in [
        "127.0.0.1:9200",
        "127.1.2.3:0",
        "[::1]:9200",
        "[::ffff:127.0.0.1]:9200",
    ] {
        let config = ok(Input {
            flags: Overrides {
                addr: Some(addr(a)),
                ..Overrides::default()
            },
            ..Input::default()
        });
        assert!(config.check_security().is_ok(), "{a}");
    }
}

#[test]
fn printed_config_loads_back_and_hides_the_token() {
    let config = ok(Input {
        file: Some(
            "runtime_dir = \"/srv/rt\"\nallowed_binaries = [\"/opt/llama\"]\nengine_user = \
             \"llama\"\nstop_engines_on_shutdown = true\n[backoff]\njitter = 0.25\n\
             [backoff.reason_multiplier]\nsignal = 1.5\n",
        ),
        env: &[("LLORCH_API_TOKEN", "s3cret-0123456789")],
        flags: Overrides {
            addr: Some(addr("10.0.0.1:9300")),
            dev: true,
            ..Overrides::default()
        },
    });
    let printed = config.to_toml();
    assert!(!printed.contains("s3cret-0123456789"), "{printed}");
    assert!(printed.contains("API token: set (redacted)"), "{printed}");
    assert!(!format!("{config:?}").contains("s3cret-0123456789"));
    assert!(
        printed.contains("journal_dir = \"/srv/rt/journal\""),
        "{printed}"
    );

    let reloaded = ok(Input {
        file: Some(&printed),
        env: &[("LLORCH_API_TOKEN", "s3cret-0123456789")],
        ..Input::default()
    });
    assert_eq!(reloaded, config);
    assert!(Config::default().to_toml().contains("API token: not set"));
}

#[test]
fn relevant_env_keeps_our_variables_only() {
    let vars = [
        ("PATH", "/usr/bin"),
        ("POOL_MANAGERD_ADDR", "127.0.0.1:1"),
        ("LLORCH_API_TOKEN", "t"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let env = relevant_env(vars).unwrap();
    let want: BTreeMap<String, String> = [
        ("LLORCH_API_TOKEN".to_string(), "t".to_string()),
        ("POOL_MANAGERD_ADDR".to_string(), "127.0.0.1:1".to_string()),
    ]
    .into();
    assert_eq!(env, want);

    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        // Not ours: ignored; ours: an error naming it.
        assert!(relevant_env([(OsString::from("OTHER"), bad.clone())]).is_ok());
        let error = relevant_env([(OsString::from("POOL_MANAGERD_RUNTIME_DIR"), bad)]).unwrap_err();
        assert!(error.to_string().contains("POOL_MANAGERD_RUNTIME_DIR"));
    }

    // The Debug of Sources shows our variables only, the token redacted.
    let sources = Sources {
        env: [
            ("LLORCH_API_TOKEN".to_string(), "s3cret".to_string()),
            ("AWS_SECRET".to_string(), "x".to_string()),
        ]
        .into(),
        ..Sources::default()
    };
    let debug = format!("{sources:?}");
    assert!(
        !debug.contains("s3cret-0123456789") && !debug.contains("AWS_SECRET"),
        "{debug}"
    );
}
