//! What a preload's placement needs from the world before the core decides on it
//! (`pool_core::PlacementInputs`): the node's `[gpu] allow_sharing`, the size of the model file
//! (the VRAM estimate when `vram_required_bytes` is absent) and the host memory available now
//! (checked against `ram_required_bytes`).
//!
//! Owns: those two reads, done on a blocking thread and bounded by [`READ_TIMEOUT_MS`].
//! Never: fails a preload by itself. A model path that is not a readable regular file (not
//! there yet, a directory, a FIFO, a remote reference), a `/proc/meminfo` without
//! `MemAvailable`, or a read that takes too long (a hung network file system) is an unknown
//! size (`None`): the core then makes no estimate or no RAM check, as before.

use std::path::Path;
use std::time::Duration;

use pool_core::{PlacementInputs, PreparedEngine};

/// The longest the two reads may take together; past it, both sizes are unknown.
pub const READ_TIMEOUT_MS: u64 = 2_000;

/// Where the host's memory figures are.
const MEMINFO: &str = "/proc/meminfo";

/// The placement inputs of a preload of `engine`.
pub async fn inputs(engine: &PreparedEngine, allow_gpu_sharing: bool) -> PlacementInputs {
    let model_path = engine.model_path.clone();
    let read = tokio::task::spawn_blocking(move || {
        (
            model_file_bytes(Path::new(&model_path)),
            mem_available_bytes(Path::new(MEMINFO)),
        )
    });
    let (model_file_bytes, ram_available_bytes) =
        match tokio::time::timeout(Duration::from_millis(READ_TIMEOUT_MS), read).await {
            Ok(Ok(sizes)) => sizes,
            Ok(Err(e)) => {
                tracing::warn!("reading the model file's size and the host's memory failed: {e}");
                (None, None)
            }
            Err(_) => {
                tracing::warn!(
                    model = %engine.model_path,
                    "the model file's size and the host's memory took more than \
                     {READ_TIMEOUT_MS} ms to read; preloading without the VRAM estimate and \
                     the RAM check"
                );
                (None, None)
            }
        };
    PlacementInputs {
        allow_gpu_sharing,
        model_file_bytes,
        ram_available_bytes,
    }
}

/// The size of the model file at `path` (a `file://` URI is read as its path), when it is a
/// regular file this process can open; `None` otherwise.
pub fn model_file_bytes(path: &Path) -> Option<u64> {
    let path = path
        .to_str()
        .and_then(|p| p.strip_prefix("file://"))
        .map_or(path, Path::new);
    // Metadata first: opening a FIFO for reading would block until a writer comes.
    let metadata = std::fs::metadata(path).ok()?;
    if !metadata.is_file() {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    file.metadata()
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// `MemAvailable` of the `/proc/meminfo` at `path`, in bytes; `None` when it cannot be read or
/// has no such line (kernels before 3.14).
pub fn mem_available_bytes(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_mem_available(&text)
}

/// `MemAvailable:   16384 kB` -> 16777216.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let meminfo =
            "MemTotal:       32768 kB\nMemFree:         1024 kB\nMemAvailable:   16384 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(16_777_216));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 1 MB\n"), None);
        assert!(mem_available_bytes(Path::new(MEMINFO)).is_some_and(|b| b > 0));
        assert_eq!(mem_available_bytes(Path::new("/nonexistent/meminfo")), None);
    }

    #[test]
    fn model_size_only_of_a_readable_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, vec![0u8; 4096]).unwrap();
        assert_eq!(model_file_bytes(&model), Some(4096));
        let uri = format!("file://{}", model.display());
        assert_eq!(model_file_bytes(Path::new(&uri)), Some(4096));
        assert_eq!(model_file_bytes(dir.path()), None);
        assert_eq!(model_file_bytes(&dir.path().join("missing.gguf")), None);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(model_file_bytes(&fifo), None);
    }

    #[tokio::test]
    async fn inputs_carry_the_sharing_setting_and_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"weights").unwrap();
        let engine: PreparedEngine = serde_json::from_value(serde_json::json!({
            "binary_path": "/bin/true", "flags": [], "host": "127.0.0.1", "port": 1,
            "model_path": model.display().to_string(), "engine_version": "x",
            "pool_id": "p1", "replica_id": "r0"
        }))
        .unwrap();
        let inputs = inputs(&engine, true).await;
        assert!(inputs.allow_gpu_sharing);
        assert_eq!(inputs.model_file_bytes, Some(7));
        assert!(inputs.ram_available_bytes.is_some());
    }
}
