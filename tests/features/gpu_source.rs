//! Where a scenario's daemon reads its GPUs: the JSON fixture (`pool_managerd::gpu::
//! FixtureInventory`), or NVML (`src/gpu/nvml.rs`, the real code path through `nvml-wrapper`)
//! over the fake NVML library (`tests/fake-nvml/fake_nvml.c`).
//!
//! The GPU features run once per source (`tests/features.rs`): the steps are the same, and the
//! GPUs the world describes are always kept as a fixture (`gpus.json`, which the steps read
//! and rewrite); over NVML each rewrite is also translated, here and only here, into the fake
//! library's scenario file. Each scenario's daemon loads its own copy of the library (by path,
//! through `[gpu] nvml_library`, in the scenario's directory), which reads the scenario file
//! next to it: the scenarios that run at once in this one process never see each other's GPUs
//! or events.
//!
//! The translation: a GPU is a `gpu` line (its name with `_` for spaces, the library gives
//! them back), its processes `proc` lines, its MIG devices `mig` lines and their processes
//! `migproc` lines, each listed Xid an `xid` line and each driver reset a `lost` line (the
//! library delivers each once, in order, as the fixture reports each once; an Xid that a
//! step marked as a double-bit ECC error, which the fixture lists as the Xid 48 the daemon
//! reports, is an `ecc` line); then the NVML error returns a step asked for (`error
//! <function> <code>`), which only this source has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

/// The file name of the library copy of a scenario, in [`DIR`].
const LIBRARY_FILE: &str = "libnvidia-ml.so.1";
/// The scenario file the library reads, next to it.
const SCENARIO_FILE: &str = "fake-nvml.scenario";
/// The directory of a scenario's library and scenario file, in the scenario's directory.
const DIR: &str = "nvml";

/// The fake library of the run over NVML (built once per process); `None`: the run over the
/// fixture.
static FAKE_NVML: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Makes the scenarios that start from now on read their GPUs through `library` (the built
/// fake library), or through the fixture (`None`).
pub fn select(library: Option<PathBuf>) {
    *FAKE_NVML.lock().unwrap_or_else(|p| p.into_inner()) = library;
}

/// The fake library of the current run; `None`: the run over the fixture.
pub fn selected() -> Option<PathBuf> {
    FAKE_NVML.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Copies `library` into the scenario directory `dir` and returns the copy's path (what
/// `[gpu] nvml_library` names).
pub fn install(library: &Path, dir: &Path) -> PathBuf {
    let target = dir.join(DIR);
    std::fs::create_dir_all(&target).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
    let copy = target.join(LIBRARY_FILE);
    std::fs::copy(library, &copy)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", library.display(), copy.display()));
    copy
}

/// Replaces the scenario file of the scenario directory `dir` at once (written aside, then
/// renamed over it) with the translation of `fixture` (the fixture's JSON list), the Xids of
/// it that are ECC errors (GPU index, position in its `xids`) and `errors` lines.
pub fn write_scenario(
    dir: &Path,
    fixture: &Value,
    ecc: &BTreeSet<(u64, usize)>,
    errors: &[String],
) {
    let file = dir.join(DIR).join(SCENARIO_FILE);
    let aside = file.with_extension("new");
    let text = scenario(fixture, ecc, errors);
    std::fs::write(&aside, text).unwrap_or_else(|e| panic!("{}: {e}", aside.display()));
    std::fs::rename(&aside, &file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// The scenario file of `fixture`, its ECC Xids and `errors` (see the module doc).
fn scenario(fixture: &Value, ecc: &BTreeSet<(u64, usize)>, errors: &[String]) -> String {
    let gpus = fixture
        .as_array()
        .unwrap_or_else(|| panic!("the fixture is a list of GPUs: {fixture}"));
    let mut lines = Vec::new();
    for gpu in gpus {
        let index = number(gpu, "index");
        let (major, minor) = gpu["compute_capability"]
            .as_str()
            .and_then(|cc| cc.split_once('.'))
            .unwrap_or_else(|| panic!("compute_capability of {gpu}"));
        lines.push(format!(
            "gpu {index} {} {} {major} {minor} {} {}",
            word(gpu, "uuid"),
            name(gpu),
            number(gpu, "vram_total_bytes"),
            number(gpu, "vram_free_bytes"),
        ));
        for process in list(gpu, "processes") {
            let (pid, used) = (number(process, "pid"), number(process, "used_bytes"));
            lines.push(format!("proc {index} {pid} {used}"));
        }
        for (slot, mig) in list(gpu, "mig_devices").iter().enumerate() {
            lines.push(format!(
                "mig {index} {} {} {} {}",
                word(mig, "uuid"),
                name(mig),
                number(mig, "vram_total_bytes"),
                number(mig, "vram_free_bytes"),
            ));
            for process in list(mig, "processes") {
                let (pid, used) = (number(process, "pid"), number(process, "used_bytes"));
                lines.push(format!("migproc {index} {slot} {pid} {used}"));
            }
        }
        for (position, xid) in list(gpu, "xids").iter().enumerate() {
            if ecc.contains(&(index, position)) {
                lines.push(format!("ecc {index}"));
            } else {
                lines.push(format!("xid {index} {xid}"));
            }
        }
        let resets = gpu
            .get("driver_resets")
            .map_or(0, |_| number(gpu, "driver_resets"));
        lines.extend((0..resets).map(|_| format!("lost {index}")));
    }
    lines.extend(errors.iter().cloned());
    lines.join("\n") + "\n"
}

fn number(item: &Value, field: &str) -> u64 {
    item[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} of {item} is not a number"))
}

/// A field that the library reads as one word.
fn word(item: &Value, field: &str) -> String {
    let text = item[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} of {item} is not text"));
    assert!(
        !text.is_empty() && !text.contains(char::is_whitespace),
        "{field} of {item}: the fake NVML library takes it as one word"
    );
    text.to_string()
}

/// The name, spaces as `_` (the library gives them back as spaces).
fn name(item: &Value) -> String {
    let text = item["name"]
        .as_str()
        .unwrap_or_else(|| panic!("name of {item} is not text"));
    assert!(
        !text.contains('_'),
        "name of {item}: the fake NVML library reads `_` as a space"
    );
    text.replace(' ', "_")
}

fn list<'a>(item: &'a Value, field: &str) -> &'a [Value] {
    item.get(field)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The NVML return code of the step's words for it.
pub fn return_code(words: &str) -> u32 {
    match words {
        "not supported" => 3,
        "insufficient permissions" => 4,
        "driver not loaded" => 9,
        "GPU is lost" => 15,
        "unknown error" => 999,
        other => panic!(
            "{other:?}: not an NVML error return the suite knows (not supported, insufficient \
             permissions, driver not loaded, GPU is lost, unknown error)"
        ),
    }
}
