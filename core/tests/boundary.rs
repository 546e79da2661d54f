//! The purity boundary: pool-core depends on serde and thiserror only, and its sources never
//! reach for I/O, clocks, processes or the daemon's runtime crates.

use std::path::Path;

#[test]
fn dependencies_are_serde_and_thiserror_only() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]"
                || line.starts_with("[dependencies.")
                || line.starts_with("[target.") && line.ends_with(".dependencies]");
            if let Some(name) = line.strip_prefix("[dependencies.") {
                deps.push(name.trim_end_matches(']').to_string());
            }
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                deps.push(name.trim().split('.').next().unwrap_or("").to_string());
            }
        }
    }
    for dep in &deps {
        assert!(
            dep == "serde" || dep == "thiserror",
            "pool-core must not depend on {dep}"
        );
    }
    assert!(deps.iter().any(|d| d == "serde"));
}

#[test]
fn sources_do_no_io() {
    let forbidden = [
        "tokio",
        "sled",
        "axum",
        "nvml",
        "std::time::SystemTime",
        "SystemTime::now",
        "Instant::now",
        "std::fs",
        "std::net",
        "std::process",
        "std::env",
        "std::thread",
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for path in rust_files(&src) {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            for word in forbidden {
                assert!(
                    !line.contains(word),
                    "{}:{}: '{word}' is forbidden in pool-core: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "expected the core's modules, found {checked}"
    );
}

/// Every `.rs` file under `dir`, in sub-modules too.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
