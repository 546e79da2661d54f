//! The daemon crate's layers, read from its sources as text (as `core/tests/boundary.rs` reads
//! the core's). Bottom to top:
//!
//! 0. vocabulary: `clock`, `config`, `schema` (the core's events bound to the journal),
//!    `projection` (the registry rebuilt from the journal);
//! 1. ports: `port` (the actor's message protocol and the published registry), `metrics`
//!    (what is counted, and its rendering);
//! 2. the world: `supervisor` (effects against processes and files), `gpu` (NVML and the GPU
//!    loop);
//! 3. the actor: `node`;
//! 4. HTTP: `api`;
//! 5. assembly: `daemon`;
//! 6. entry: `cli`, `table` (rendering for people).
//!
//! A module imports only its own layer or lower ones. The test tools (`engine_sim`, `script`)
//! stand apart: they import the vocabulary only, and only the entry layer imports them. Some
//! crates belong to one folder: axum, utoipa and hyper to `api/` (and the engine simulator),
//! nvml-wrapper to `gpu/`, reqwest to the prober (`supervisor/probe.rs`) and the command-line
//! clients (`cli/`), anyhow to `cli/` and `daemon.rs` (libraries say what failed with
//! `thiserror` types).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LAYERS: [(&str, &[&str]); 7] = [
    ("vocabulary", &["clock", "config", "schema", "projection"]),
    ("ports", &["port", "metrics"]),
    ("world", &["supervisor", "gpu", "watch", "cluster"]),
    ("actor", &["node"]),
    ("http", &["api"]),
    ("assembly", &["daemon"]),
    ("entry", &["cli", "table"]),
];

const TOOLS: [&str; 2] = ["engine_sim", "script"];

/// Crates and the files (path prefixes under `src/`) that may name them.
const CRATE_HOMES: [(&str, &[&str]); 7] = [
    ("axum", &["api/", "engine_sim/"]),
    ("utoipa", &["api/"]),
    ("hyper", &["api/"]),
    ("nvml_wrapper", &["gpu/"]),
    ("reqwest", &["supervisor/probe.rs", "cli/"]),
    ("anyhow", &["cli/", "daemon.rs"]),
    ("async_nats", &["cluster/"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The top module a file belongs to (`src/node/registry.rs` -> `node`); `None` for the crate
/// roots.
fn module_of(relative: &str) -> Option<&str> {
    let first = relative.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then_some(name)
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The code of a line, without its `//` comment (doc comments are comments too). A `//` inside
/// a string is rare enough in this crate's imports not to matter.
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// The top modules a text of code names through `crate::` (also inside a group, over lines:
/// `crate::{a, b::{c, d}}` names `a` and `b`), each with its byte offset.
fn crate_refs_at(text: &str) -> Vec<(usize, String)> {
    let ident = |t: &str| -> String {
        t.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("crate::") {
        let at = from + i;
        from = at + "crate::".len();
        let before = text[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // a longer word ending in `crate`, or a path through another crate
        }
        let rest = &text[from..];
        let Some(group) = rest.strip_prefix('{') else {
            let name = ident(rest);
            if !name.is_empty() {
                out.push((at, name));
            }
            continue;
        };
        // The group's top-level items: split at commas outside nested braces.
        let (mut depth, mut start) = (0usize, 0usize);
        for (k, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push((at, ident(group[start..k].trim())));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push((at, ident(group[start..k].trim())));
                    start = k + 1;
                }
                _ => {}
            }
        }
    }
    out.retain(|(_, name)| !name.is_empty());
    out
}

/// [`crate_refs_at`] of one line, names only.
fn crate_refs(line: &str) -> Vec<String> {
    crate_refs_at(line)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// Whether a line of code uses crate `name` (`name::`, `use name`).
fn uses_crate(line: &str, name: &str) -> bool {
    let mut rest = line;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().last();
        let after = &rest[i + name.len()..];
        let starts_word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let ends_path =
            after.starts_with("::") || after.starts_with(';') || after.starts_with(" as ");
        if starts_word && ends_path {
            return true;
        }
        rest = after;
    }
    false
}

/// Every `(file, line number, from module, to module)` import edge of `src/`.
fn edges() -> Vec<(String, usize, String, String)> {
    let root = src();
    let mut out = Vec::new();
    for path in rust_files(&root) {
        let relative = path.strip_prefix(&root).unwrap().display().to_string();
        let Some(from) = module_of(&relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(code).collect();
        let joined = lines.join("\n");
        for (at, to) in crate_refs_at(&joined) {
            if to != from {
                let line = joined[..at].matches('\n').count() + 1;
                out.push((relative.clone(), line, from.to_string(), to));
            }
        }
    }
    out
}

#[test]
fn every_module_of_the_crate_has_a_layer() {
    let root = src();
    let mut unplaced = BTreeSet::new();
    for path in rust_files(&root) {
        let relative = path.strip_prefix(&root).unwrap().display().to_string();
        if let Some(module) = module_of(&relative) {
            if layer_of(module).is_none() && !TOOLS.contains(&module) {
                unplaced.insert(module.to_string());
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules with no layer: {unplaced:?}; add each to LAYERS (or TOOLS) in tests/layers.rs \
         and to the layer map in src/lib.rs"
    );
}

#[test]
fn no_import_runs_upward() {
    let edges = edges();
    // The reader must see the edges that exist, or this test could pass by reading nothing.
    for (from, to) in [("node", "supervisor"), ("api", "node"), ("daemon", "api")] {
        assert!(
            edges.iter().any(|(_, _, f, t)| f == from && t == to),
            "the reader did not find {from} -> {to}"
        );
    }
    let mut upward = Vec::new();
    for (file, line, from, to) in &edges {
        let allowed = match (layer_of(from), layer_of(to)) {
            (Some(a), Some(b)) => b <= a,
            // A test tool: imported from the entry layer only; it imports the vocabulary only.
            (Some(a), None) => TOOLS.contains(&to.as_str()) && LAYERS[a].0 == "entry",
            (None, Some(b)) => b == 0,
            (None, None) => true,
        };
        if !allowed {
            upward.push(format!("src/{file}:{line}: {from} -> {to}"));
        }
    }
    assert!(
        upward.is_empty(),
        "imports that run upward (bottom to top: {}):\n{}",
        LAYERS.map(|(name, _)| name).join(", "),
        upward.join("\n")
    );
}

#[test]
fn crates_stay_in_their_folder() {
    let root = src();
    let mut strays = Vec::new();
    let mut seen = BTreeSet::new();
    for path in rust_files(&root) {
        let relative = path.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (name, homes) in CRATE_HOMES {
                if uses_crate(code(line), name) {
                    seen.insert(name);
                    if !homes.iter().any(|home| relative.starts_with(home)) {
                        strays.push(format!("src/{relative}:{}: {name}", n + 1));
                    }
                }
            }
        }
    }
    assert_eq!(
        seen.len(),
        CRATE_HOMES.len(),
        "every crate is found at home: {seen:?}"
    );
    assert!(
        strays.is_empty(),
        "crates used outside their folder:\n{}",
        strays.join("\n")
    );
}

#[test]
fn the_reader_sees_what_it_must() {
    assert_eq!(
        crate_refs("use crate::{clock::X, port::{Inbox, Reporter}};"),
        ["clock", "port"]
    );
    assert_eq!(
        crate_refs("use crate::{\n    api::{self, X},\n    node,\n};"),
        ["api", "node"]
    );
    assert_eq!(
        crate_refs("let x = crate::node::NodeError::ShuttingDown;"),
        ["node"]
    );
    assert!(crate_refs("pool_core::crate::x").is_empty());
    assert!(uses_crate("use axum::Router;", "axum"));
    assert!(uses_crate("use anyhow as _;", "anyhow"));
    assert!(uses_crate("    anyhow::bail!(\"x\")", "anyhow"));
    assert!(!uses_crate("let axum_like = 1;", "axum"));
    assert_eq!(code("let a = 1; // crate::node"), "let a = 1; ");
}
