//! The fixture inventory: GPUs described in a JSON file. A **testing aid** for machines
//! without a GPU (CI, the demo, the feature suite): `--gpu-fixture FILE` or `[gpu] fixture`.
//!
//! The file is read again at every reading, so a test changes what the daemon sees by
//! rewriting it (a process on a GPU, less free VRAM, an Xid). A file that cannot be read or is
//! invalid is reported (a warning naming the file and the error, once per distinct error) and
//! the last good reading is kept; with no good reading yet, it is a "no GPU" state naming the
//! problem.
//!
//! The file: a list of GPUs (or `{"gpus": [...]}`), each
//!
//! ```json
//! {"index": 0, "uuid": "GPU-0a1b...", "name": "NVIDIA H100 80GB HBM3",
//!  "compute_capability": "9.0", "vram_total_bytes": 85899345920,
//!  "vram_free_bytes": 84825604096,
//!  "mig_devices": [{"uuid": "MIG-...", "name": "1g.10gb", "vram_total_bytes": 10737418240,
//!                   "vram_free_bytes": 10737418240, "processes": []}],
//!  "processes": [{"pid": 4242, "used_bytes": 1073741824}],
//!  "xids": [79], "driver_resets": 0}
//! ```
//!
//! `mig_devices`, `processes`, `xids` and `driver_resets` are optional; unknown fields are
//! refused. The shape is that of `GET /v2/gpus` (whose answer can be saved as a fixture: a
//! MIG device's `parent_index`, a process's `pool_id` and a GPU's `quarantined` and
//! `quarantined_since_ms` are accepted, all but the first ignored). Indexes and UUIDs must be unique. Each listed Xid is reported once (append to the
//! list to report another); `driver_resets` is a count, each increment reported once.
//!
//! Owns: reading and validating the file, and remembering which faults it has reported.
//! Never: touches NVML or a real device.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pool_core::{GpuInfo, MigDeviceInfo};
use serde::Deserialize;

use super::NoGpu;
use super::{
    validate, Gpu, GpuEvent, GpuInventory, GpuProcess, GpuReading, GpuSnapshot, MigDevice,
};

/// A fixture larger than this is refused.
pub const FIXTURE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureGpu {
    index: u32,
    uuid: String,
    name: String,
    compute_capability: String,
    vram_total_bytes: u64,
    vram_free_bytes: u64,
    #[serde(default)]
    mig_devices: Vec<FixtureMig>,
    #[serde(default)]
    processes: Vec<FixtureProcess>,
    #[serde(default)]
    xids: Vec<u32>,
    #[serde(default)]
    driver_resets: u32,
    /// Accepted so that a `GET /v2/gpus` answer can be saved as a fixture; ignored (the
    /// quarantine is the registry's, from the journal).
    #[serde(default, rename = "quarantined")]
    _quarantined: Option<bool>,
    /// As `quarantined`.
    #[serde(default, rename = "quarantined_since_ms")]
    _quarantined_since_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureMig {
    uuid: String,
    /// Optional (the GPU it is listed under); when given, it must be that GPU's index.
    #[serde(default)]
    parent_index: Option<u32>,
    #[serde(default = "mig_name")]
    name: String,
    vram_total_bytes: u64,
    vram_free_bytes: u64,
    #[serde(default)]
    processes: Vec<FixtureProcess>,
}

fn mig_name() -> String {
    "MIG device".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureProcess {
    pid: u32,
    used_bytes: u64,
    /// Accepted so that a `GET /v2/gpus` answer can be saved as a fixture; ignored (the
    /// daemon maps pids to pools itself).
    #[serde(default, rename = "pool_id")]
    _pool_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    gpus: Vec<FixtureGpu>,
}

#[derive(Debug, Default)]
struct Memory {
    /// The last good GPUs of the file.
    last_good: Option<Vec<Gpu>>,
    /// The last problem reported (warned once per distinct problem).
    last_error: Option<String>,
    /// Per GPU UUID: Xids of its list already reported.
    xids_reported: HashMap<String, usize>,
    /// Per GPU UUID: driver resets already reported.
    resets_reported: HashMap<String, u32>,
}

/// GPUs from a JSON file (see the module doc).
#[derive(Debug)]
pub struct FixtureInventory {
    path: PathBuf,
    memory: Mutex<Memory>,
}

impl FixtureInventory {
    /// The fixture at `path` (read at each reading, not now).
    pub fn new(path: &Path) -> FixtureInventory {
        FixtureInventory {
            path: path.to_path_buf(),
            memory: Mutex::new(Memory::default()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Vec<FixtureGpu>, String> {
        let file = std::fs::File::open(&self.path).map_err(|e| format!("cannot open it: {e}"))?;
        let mut bytes = Vec::new();
        file.take(FIXTURE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() as u64 > FIXTURE_BYTES_MAX {
            return Err(format!("larger than {FIXTURE_BYTES_MAX} bytes"));
        }
        parse(&bytes)
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<FixtureGpu>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let described = |e: serde_path_to_error::Error<serde_json::Error>| {
        let path = e.path().to_string();
        format!("at `{path}`: {}", e.into_inner())
    };
    if value.is_array() {
        serde_path_to_error::deserialize::<_, Vec<FixtureGpu>>(value).map_err(described)
    } else {
        serde_path_to_error::deserialize::<_, FixtureFile>(value)
            .map(|f| f.gpus)
            .map_err(described)
    }
}

/// `count` simulated GPUs (80 GiB, 79 GiB free, compute capability 9.0, UUIDs
/// `GPU-00000000-0000-0000-0000-00000000000<i>`), e.g. to write a fixture for a test:
/// `serde_json::to_vec(&simulated_gpus(2))`.
pub fn simulated_gpus(count: u32) -> Vec<Gpu> {
    (0..count)
        .map(|index| Gpu {
            info: GpuInfo {
                index,
                uuid: format!("GPU-00000000-0000-0000-0000-{index:012}"),
                name: "Simulated GPU 80GB".to_string(),
                compute_capability: "9.0".to_string(),
                vram_total_bytes: 80 << 30,
                vram_free_bytes: 79 << 30,
            },
            mig_devices: Vec::new(),
            processes: Vec::new(),
        })
        .collect()
}

fn processes(list: Vec<FixtureProcess>) -> Vec<GpuProcess> {
    list.into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_bytes: p.used_bytes,
            pool_id: None,
        })
        .collect()
}

/// Xid and reset counts of one GPU of the file: its uuid, its Xids so far, its resets so far.
type Faults = (String, Vec<u32>, u32);

/// The GPUs a fixture file lists, sorted by index and checked, with each GPU's faults.
fn gpus_of(fixture: Vec<FixtureGpu>) -> Result<(Vec<Gpu>, Vec<Faults>), String> {
    let mut gpus = Vec::with_capacity(fixture.len());
    let mut faults = Vec::with_capacity(fixture.len());
    for (i, g) in fixture.into_iter().enumerate() {
        let index = g.index;
        if let Some(j) = g
            .mig_devices
            .iter()
            .position(|m| m.parent_index.is_some_and(|p| p != index))
        {
            return Err(format!(
                "gpus[{i}].mig_devices[{j}]: parent_index is not {index}, the index of \
                 the GPU it is listed under"
            ));
        }
        gpus.push(Gpu {
            info: GpuInfo {
                index,
                uuid: g.uuid.clone(),
                name: g.name,
                compute_capability: g.compute_capability,
                vram_total_bytes: g.vram_total_bytes,
                vram_free_bytes: g.vram_free_bytes,
            },
            mig_devices: g
                .mig_devices
                .into_iter()
                .map(|m| MigDevice {
                    info: MigDeviceInfo {
                        uuid: m.uuid,
                        parent_index: index,
                        name: m.name,
                        vram_total_bytes: m.vram_total_bytes,
                        vram_free_bytes: m.vram_free_bytes,
                    },
                    processes: processes(m.processes),
                })
                .collect(),
            processes: processes(g.processes),
        });
        faults.push((g.uuid, g.xids, g.driver_resets));
    }
    gpus.sort_by_key(|g| g.info.index);
    validate(&gpus)?;
    Ok((gpus, faults))
}

/// The Xids and resets the file gained since the last reading (a shortened Xid list reports
/// what is appended to it next).
fn new_faults(memory: &mut Memory, faults: Vec<Faults>) -> Vec<GpuEvent> {
    let mut events = Vec::new();
    for (uuid, xids, resets) in faults {
        let seen = memory.xids_reported.entry(uuid.clone()).or_insert(0);
        if *seen > xids.len() {
            *seen = xids.len(); // the list was cut: report what is appended next
        }
        for xid in &xids[*seen..] {
            events.push(GpuEvent::Xid {
                gpu_uuid: uuid.clone(),
                xid: *xid,
            });
        }
        *seen = xids.len();
        let seen = memory.resets_reported.entry(uuid.clone()).or_insert(0);
        for _ in *seen..resets {
            events.push(GpuEvent::DriverReset {
                gpu_uuid: uuid.clone(),
            });
        }
        *seen = resets;
    }
    events
}

impl GpuInventory for FixtureInventory {
    fn source(&self) -> String {
        format!("fixture {}", self.path.display())
    }

    fn observe(&self) -> GpuReading {
        let mut memory = match self.memory.lock() {
            Ok(memory) => memory,
            Err(poisoned) => poisoned.into_inner(),
        };
        let read = self.read().and_then(gpus_of);
        match read {
            Ok((gpus, faults)) => {
                memory.last_error = None;
                let events = new_faults(&mut memory, faults);
                memory.last_good = Some(gpus.clone());
                if gpus.is_empty() {
                    return Err(NoGpu::new(format!(
                        "the GPU fixture {} lists no GPU; add GPUs to it, or run with --dev \
                         (require_gpu = false) for CPU-only engines",
                        self.path.display()
                    )));
                }
                Ok(GpuSnapshot { gpus, events })
            }
            Err(problem) => {
                let problem = format!("GPU fixture {}: {problem}", self.path.display());
                if memory.last_error.as_ref() != Some(&problem) {
                    match &memory.last_good {
                        Some(_) => tracing::warn!("{problem}; keeping its last good reading"),
                        None => tracing::warn!("{problem}"),
                    }
                    memory.last_error = Some(problem.clone());
                }
                match &memory.last_good {
                    Some(gpus) if !gpus.is_empty() => Ok(GpuSnapshot {
                        gpus: gpus.clone(),
                        events: Vec::new(),
                    }),
                    Some(_) => Err(NoGpu::new(format!(
                        "the GPU fixture {} lists no GPU (and now: {problem}); run with --dev \
                         (require_gpu = false) for CPU-only engines",
                        self.path.display()
                    ))),
                    None => Err(NoGpu::new(format!(
                        "{problem}; fix the file given to --gpu-fixture ([gpu] fixture), or \
                         run with --dev (require_gpu = false) for CPU-only engines"
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"[
      {"index": 1, "uuid": "GPU-b", "name": "Small", "compute_capability": "8.6",
       "vram_total_bytes": 100, "vram_free_bytes": 50},
      {"index": 0, "uuid": "GPU-a", "name": "Big", "compute_capability": "9.0",
       "vram_total_bytes": 1000, "vram_free_bytes": 900,
       "mig_devices": [{"uuid": "MIG-a1", "vram_total_bytes": 10, "vram_free_bytes": 10}],
       "processes": [{"pid": 42, "used_bytes": 7}], "xids": [79]}
    ]"#;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_sorts_and_reports_xids_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        write(&path, TWO);
        let inventory = FixtureInventory::new(&path);
        let snapshot = inventory.observe().unwrap();
        assert_eq!(snapshot.gpus.len(), 2);
        assert_eq!(snapshot.gpus[0].info.uuid, "GPU-a");
        assert_eq!(snapshot.gpus[0].mig_devices[0].info.parent_index, 0);
        assert_eq!(snapshot.mig_infos()[0].uuid, "MIG-a1");
        assert_eq!(snapshot.gpus[0].processes[0].pid, 42);
        assert_eq!(
            snapshot.events,
            vec![GpuEvent::Xid {
                gpu_uuid: "GPU-a".into(),
                xid: 79
            }]
        );
        // Reported once.
        assert!(inventory.observe().unwrap().events.is_empty());
        // An appended Xid and a reset are reported next.
        write(
            &path,
            &TWO.replace(r#""xids": [79]"#, r#""xids": [79, 48], "driver_resets": 1"#),
        );
        let events = inventory.observe().unwrap().events;
        assert_eq!(
            events,
            vec![
                GpuEvent::Xid {
                    gpu_uuid: "GPU-a".into(),
                    xid: 48
                },
                GpuEvent::DriverReset {
                    gpu_uuid: "GPU-a".into()
                }
            ]
        );
        assert!(inventory.source().contains("gpus.json"));
    }

    #[test]
    fn an_api_answer_reads_back_as_a_fixture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        write(&path, TWO);
        let mut seen = FixtureInventory::new(&path).observe().unwrap().gpus;
        seen[0].processes[0].pool_id = Some("p1".into());
        write(&path, &serde_json::to_string(&seen).unwrap());
        let again = FixtureInventory::new(&path).observe().unwrap().gpus;
        seen[0].processes[0].pool_id = None;
        assert_eq!(again, seen);

        write(&path, &serde_json::to_string(&simulated_gpus(3)).unwrap());
        let simulated = FixtureInventory::new(&path).observe().unwrap().gpus;
        assert_eq!(simulated, simulated_gpus(3));
    }

    #[test]
    fn bad_json_keeps_the_last_good_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        write(&path, TWO);
        let inventory = FixtureInventory::new(&path);
        let good = inventory.observe().unwrap();
        write(&path, "[{\"index\": 0,");
        let kept = inventory.observe().unwrap();
        assert_eq!(kept.gpus, good.gpus);
        assert!(kept.events.is_empty());
    }

    #[test]
    fn a_bad_first_reading_is_no_gpu_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        let missing = FixtureInventory::new(&path).observe().unwrap_err();
        assert!(missing.reason.contains("gpus.json"), "{}", missing.reason);
        assert!(missing.reason.contains("--dev"), "{}", missing.reason);

        write(
            &path,
            r#"[{"index": 0, "uuid": "GPU-a", "name": "x", "compute_capability": "9.0", "vram_total_bytes": 1, "vram_free_bytes": 1, "colour": "green"}]"#,
        );
        let unknown = FixtureInventory::new(&path).observe().unwrap_err();
        assert!(unknown.reason.contains("colour"), "{}", unknown.reason);

        write(&path, &TWO.replace("GPU-b", "GPU-a"));
        let dup = FixtureInventory::new(&path).observe().unwrap_err();
        assert!(dup.reason.contains("appears twice"), "{}", dup.reason);

        write(&path, r#"{"gpus": []}"#);
        let none = FixtureInventory::new(&path).observe().unwrap_err();
        assert!(none.reason.contains("lists no GPU"), "{}", none.reason);
    }
}
