//! The Debian package's files (`packaging/deb/`, `Cargo.toml`'s `[package.metadata.deb]`): the
//! packaged configuration is the embedded defaults, every one commented out, under the few
//! settings the package makes (the engine user it creates, the state directories), and it
//! loads to exactly those settings; the unit the package installs starts the installed binary.
//!
//! The package itself is built and installed with `dpkg -i` by `scripts/package-check.sh`,
//! which `.ci/run` runs as root (a real install, then `dpkg --purge`).
//!
//! `POOL_MANAGERD_WRITE_PACKAGE_CONFIG=1 cargo test --test package` writes
//! `packaging/deb/config.toml` again after `src/config/example.toml` changed.

use std::path::{Path, PathBuf};

use pool_managerd::config::{Config, Sources, EXAMPLE_TOML};

const PACKAGED: &str = "packaging/deb/config.toml";

/// The lines the package sets, above the commented defaults.
const HEADER: &str = r#"# /etc/pool-managerd/config.toml, installed by the pool-managerd package. It is a conffile:
# dpkg keeps your edits across upgrades. Precedence: this file < environment < flags.
# The API token is never read from this file: the package writes LLORCH_API_TOKEN into
# /etc/pool-managerd/env (mode 0600), which the unit reads; `systemctl restart pool-managerd`
# after changing either.

# Set by the package.
engine_user = "pool-engine"                     # the system user made at install; engines run
                                                # as it, never as the daemon's root
runtime_dir = "/var/lib/pool-managerd/runtime"  # logs/, pids/, engines/ (mode 0700, root's)
journal_dir = "/var/lib/pool-managerd/journal"  # the journal (mode 0700, root's); kept by
                                                # `dpkg --purge` unless asked (README)

# ---- Every other setting, at its default (commented out: uncomment a line to change it) ----
"#;

/// `packaging/deb/config.toml` as the package must ship it: [`HEADER`], then the example with
/// every key line commented out (section headers stay, so an uncommented key lands in its
/// section).
fn packaged_config() -> String {
    let mut out = String::from(HEADER);
    for line in EXAMPLE_TOML.lines() {
        let is_key = line.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        if is_key {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_packaged_config_is_the_defaults_commented_out_under_the_package_settings() {
    let path = root().join(PACKAGED);
    let want = packaged_config();
    if std::env::var_os("POOL_MANAGERD_WRITE_PACKAGE_CONFIG").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{PACKAGED} is not the commented defaults of src/config/example.toml; run \
         POOL_MANAGERD_WRITE_PACKAGE_CONFIG=1 cargo test --test package and commit it"
    );
    let loaded = Config::load(&Sources {
        file: Some(path),
        ..Sources::default()
    })
    .expect("the packaged config loads");
    let expected = Config {
        engine_user: "pool-engine".into(),
        runtime_dir: PathBuf::from("/var/lib/pool-managerd/runtime"),
        journal_dir: PathBuf::from("/var/lib/pool-managerd/journal"),
        ..Config::default()
    };
    assert_eq!(loaded, expected);
}

#[test]
fn the_unit_starts_the_installed_binary_with_the_packaged_config() {
    let unit = std::fs::read_to_string(root().join("packaging/pool-managerd.service")).unwrap();
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        ["ExecStart=/usr/bin/pool-managerd serve --config /etc/pool-managerd/config.toml"]
    );
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let dest = |src: &str| {
        assets
            .iter()
            .find(|a| a[0].as_str() == Some(src))
            .map(|a| a[1].as_str().unwrap().to_string())
    };
    assert_eq!(
        dest("target/release/pool-managerd").as_deref(),
        Some("usr/bin/")
    );
    assert_eq!(
        dest("packaging/deb/config.toml").as_deref(),
        Some("etc/pool-managerd/config.toml")
    );
    for asset in assets {
        let src = asset[0].as_str().unwrap();
        assert!(
            src.starts_with("target/") || Path::new(&root().join(src)).is_file(),
            "package asset {src} is missing"
        );
    }
    assert_eq!(
        deb["conf-files"].as_array().unwrap()[0].as_str(),
        Some("/etc/pool-managerd/config.toml")
    );
}
