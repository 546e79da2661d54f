//! Where the real llama-server and its tiny model are (`scripts/get-llama-server.sh`): from
//! `POOL_MANAGERD_LLAMA_SERVER` / `POOL_MANAGERD_LLAMA_MODEL`, else the script's default cache
//! (`~/.cache/pool-managerd/llama`). Shared by `tests/llama.rs` and `benches/preload.rs`
//! (included with `#[path]`). Under `CI=true` a missing server fails the run: `.ci/run` builds
//! it first, so the real-engine checks always run there.

use std::path::{Path, PathBuf};

/// The server and the model.
pub struct Llama {
    pub server: PathBuf,
    pub model: PathBuf,
}

/// The server and model, or `None` with the reason printed (`what` says what is skipped);
/// panics under `CI=true` when they are missing.
pub fn find(what: &str) -> Option<Llama> {
    let cache = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cache/pool-managerd/llama"))
        .unwrap_or_default();
    let server = std::env::var_os("POOL_MANAGERD_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("bin/llama-server"));
    let model = std::env::var_os("POOL_MANAGERD_LLAMA_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("models/tiny-llama.gguf"));
    let missing: Vec<String> = [&server, &model]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(Llama { server, model });
    }
    let why = format!(
        "llama-server or its model is missing ({}); run scripts/get-llama-server.sh",
        missing.join(", ")
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why} (CI=true: the real-engine checks must run)"
    );
    eprintln!("{what}: {why}");
    None
}
