//! A cgroup v2 leaf per engine: `memory.max` (from `ram_required_bytes`) and `pids.max` bound
//! what one engine can take from the node, and the leaf counts that engine's OOM kills and
//! memory exactly, whatever else runs beside the daemon.
//!
//! Layout, under the daemon's unit cgroup `<unit>` (its own cgroup, or the parent of it when
//! the daemon already sits in a `daemon` leaf, as `DelegateSubgroup=daemon` places it):
//! `<unit>/pool-managerd-<id>/pool-<pool_id>` for each engine (`pool-<pool_id>@b` for the engine
//! of a pool's lane B: a surge's second engine has a leaf of its own), where `<id>` names this
//! daemon's runtime directory (two daemons on one host never share a leaf). cgroup v2 lets a
//! cgroup hand controllers down only while it holds no process (the root excepted): a daemon
//! in `<unit>` itself moves into `<unit>/daemon` first, unless it runs as a systemd service
//! (which would then fail to restart while engines outlive it: the unit must set
//! `DelegateSubgroup=daemon`), where the leaves get no controllers and the reason is logged.
//!
//! Owns: finding the hierarchy and the daemon's place in it ([`locate`], pure), setting up the
//! subtree ([`EngineCgroups::set_up`]), each engine's leaf and its limits
//! ([`EngineCgroups::prepare`]), its memory reading and its removal.
//! **Must never:** write outside `<unit>/pool-managerd-<id>/` (but `<unit>`'s
//! `cgroup.subtree_control` and the daemon's own move into `<unit>/daemon`), kill anything,
//! or make a start fail for want of a leaf when the mode is `auto` (it says why at start).

use std::fs;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use pool_core::Lane;

/// The controllers a leaf uses.
pub const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// The leaf a daemon moves itself into (and the one `DelegateSubgroup=daemon` names).
pub const DAEMON_LEAF: &str = "daemon";

/// Where the cgroup v2 hierarchy is mounted and where the daemon sits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
    pub mount: PathBuf,
    /// The daemon's cgroup, as `/proc/self/cgroup` says it (`/system.slice/x.service`).
    pub own: String,
}

impl Location {
    /// The unit's cgroup (relative to the mount) and whether the daemon already sits in its
    /// `daemon` leaf rather than in it.
    pub fn unit(&self) -> (&str, bool) {
        match self.own.rsplit_once('/') {
            Some((parent, leaf)) if leaf == DAEMON_LEAF => {
                (if parent.is_empty() { "/" } else { parent }, true)
            }
            _ => (self.own.as_str(), false),
        }
    }
}

/// Finds the cgroup v2 mount in `mountinfo` (`/proc/self/mountinfo`) and the daemon's
/// cgroup in `self_cgroup` (`/proc/self/cgroup`, its `0::` line). Pure; the error says what
/// is missing.
pub fn locate(mountinfo: &str, self_cgroup: &str) -> Result<Location, String> {
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4))
                .flatten()
        })
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_string())?;
    let own = self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| {
            "this process has no cgroup v2 membership (/proc/self/cgroup)".to_string()
        })?;
    if own.contains("..") || !own.starts_with('/') {
        return Err(format!(
            "unexpected cgroup path {own:?} in /proc/self/cgroup"
        ));
    }
    Ok(Location {
        mount: PathBuf::from(unescape_mount(mount)),
        own: own.trim_end().to_string(),
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The name of this daemon's subtree: `pool-managerd-` and eight hex digits of the runtime
/// directory's path (FNV-1a), so two daemons on one host never share it.
pub fn subtree_name(runtime_dir: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in runtime_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("pool-managerd-{:08x}", hash >> 32)
}

/// The daemon's subtree, set up: engines get leaves under it.
#[derive(Debug, Clone)]
pub struct EngineCgroups {
    /// `engines.cgroup = "required"`: an engine that cannot join its leaf is not started.
    pub required: bool,
    base: PathBuf,
    memory: bool,
    pids: bool,
    pids_max: u64,
}

/// What [`EngineCgroups::set_up`] could do.
#[derive(Debug)]
pub struct SetUp {
    /// The subtree, when it could be created.
    pub cgroups: EngineCgroups,
    /// Why a controller is missing from the leaves (`None`: memory and pids are there).
    pub limits_missing: Option<String>,
}

impl EngineCgroups {
    /// Creates `<unit>/<name>` and hands the memory and pids controllers down to it where
    /// the hierarchy has them. The daemon (`self_pid`) moves into `<unit>/daemon` when
    /// `<unit>` must be emptied for that and `may_move_self` (not a systemd service). `Err`
    /// (the reason) when the subtree cannot be created at all; a controller that cannot be
    /// handed down is `limits_missing`.
    pub fn set_up(
        location: &Location,
        name: &str,
        pids_max: u64,
        (self_pid, may_move_self): (u32, bool),
    ) -> Result<SetUp, String> {
        let (unit, in_daemon_leaf) = location.unit();
        let own_dir = location.mount.join(unit.trim_start_matches('/'));
        let base = own_dir.join(name);
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create the cgroup {}: {e}", base.display())),
        }
        let available = words(&own_dir.join("cgroup.controllers"));
        let wanted: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| available.iter().any(|a| a == c))
            .collect();
        let handed_down = if wanted.is_empty() {
            Ok(())
        } else {
            let mover = (unit != "/" && !in_daemon_leaf).then_some((self_pid, may_move_self));
            hand_down(&own_dir, &base, &wanted, mover)
        };
        let mut cgroups = EngineCgroups {
            required: false,
            base,
            memory: false,
            pids: false,
            pids_max,
        };
        let limits_missing = match handed_down {
            Ok(()) => {
                cgroups.memory = wanted.contains(&"memory");
                cgroups.pids = wanted.contains(&"pids");
                missing_reason(&own_dir, &available, &cgroups)
            }
            Err(reason) => Some(reason),
        };
        Ok(SetUp {
            cgroups,
            limits_missing,
        })
    }

    /// The subtree (`<own>/pool-managerd-<id>`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether leaves have the memory controller (`memory.max`, `memory.current`,
    /// `memory.events`).
    pub fn has_memory(&self) -> bool {
        self.memory
    }

    /// The leaf of `pool_id`'s engine in `lane`: `pool-<pool_id>` (A) or `pool-<pool_id>@b`
    /// (B), so that two engines of one pool never share a leaf (each leaf's `memory.max` is
    /// one engine's). Pool ids are safe file names and never hold '@'.
    pub fn leaf(&self, pool_id: &str, lane: Lane) -> PathBuf {
        self.base.join(format!("pool-{pool_id}{}", lane.suffix()))
    }

    /// Creates the leaf of `pool_id`'s engine in `lane` (an existing one is reused: an adopted engine may be in
    /// it), writes its limits (`memory.max` = `memory_max` or `max`, `pids.max`), and opens
    /// its `cgroup.procs` for a child to join before exec ([`join_in_child`]).
    pub fn prepare(&self, pool_id: &str, lane: Lane, memory_max: Option<u64>) -> io::Result<Leaf> {
        let dir = self.leaf(pool_id, lane);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(named(e, &dir, "create the cgroup")),
        }
        if self.memory {
            let value = memory_max.map_or_else(|| "max".to_string(), |bytes| bytes.to_string());
            write_file(&dir.join("memory.max"), &value)?;
        }
        if self.pids {
            write_file(&dir.join("pids.max"), &self.pids_max.to_string())?;
        }
        let procs = dir.join("cgroup.procs");
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| named(e, &procs, "open"))?;
        Ok(Leaf {
            dir,
            procs: OwnedFd::from(file),
        })
    }

    /// The memory the engine of `pool_id` in `lane` uses now (`memory.current` of its leaf: its
    /// resident memory and page cache, charged to it alone). `None` without the memory
    /// controller or a leaf.
    pub fn memory_current(&self, pool_id: &str, lane: Lane) -> Option<u64> {
        if !self.memory {
            return None;
        }
        fs::read_to_string(self.leaf(pool_id, lane).join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Removes the leaf of `pool_id`'s engine in `lane` (a missing one is fine). Fails while a
    /// process is still in it; the error names the leaf.
    pub fn remove(&self, pool_id: &str, lane: Lane) -> io::Result<()> {
        let dir = self.leaf(pool_id, lane);
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(named(e, &dir, "remove")),
            _ => Ok(()),
        }
    }
}

impl EngineCgroups {
    /// At shutdown: removes the leaves no engine is in (the kernel refuses to remove one that
    /// holds a process: an engine that outlives the daemon keeps its leaf), then the subtree
    /// if it is empty. Failures are expected and not logged.
    pub fn remove_empty(&self) {
        if let Ok(entries) = fs::read_dir(&self.base) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("pool-") && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
        let _ = fs::remove_dir(&self.base);
    }
}

/// An engine's leaf, ready for a child to join.
#[derive(Debug)]
pub struct Leaf {
    /// The leaf's directory.
    pub dir: PathBuf,
    procs: OwnedFd,
}

impl Leaf {
    /// The raw descriptor of the leaf's `cgroup.procs` (open while the `Leaf` lives).
    pub fn procs_fd(&self) -> i32 {
        self.procs.as_raw_fd()
    }

    /// Whether `pid` is in this leaf now (its `/proc/<pid>/cgroup` line names it).
    pub fn holds(&self, pid: u32) -> bool {
        let Some(name) = self.dir.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let suffix = format!("/{name}");
        super::procfs::cgroups(pid)
            .iter()
            .any(|line| line.controllers.is_empty() && line.path.ends_with(&suffix))
    }
}

/// In a child between fork and exec: moves the calling process into the leaf whose
/// `cgroup.procs` is open as `fd` (writing `0` means "the writer"). Async-signal-safe.
pub fn join_in_child(fd: i32) -> io::Result<()> {
    // SAFETY: a plain write of a 1-byte static buffer to a descriptor the parent opened.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Enables `wanted` in `<unit>` and in `base`. When `<unit>` refuses (it holds the daemon)
/// and `mover` allows it, the daemon moves into `<unit>/daemon` first.
fn hand_down(
    own_dir: &Path,
    base: &Path,
    wanted: &[&str],
    mover: Option<(u32, bool)>,
) -> Result<(), String> {
    let enable: String = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let own_control = own_dir.join("cgroup.subtree_control");
    let enabled = words(&own_control);
    if !wanted.iter().all(|c| enabled.iter().any(|e| e == c)) {
        if let Err(first) = write_file(&own_control, &enable) {
            let self_pid = match mover {
                None => return Err(first.to_string()),
                Some((_, false)) => {
                    return Err(format!(
                        "{first}: the daemon runs as a systemd service in {} itself; set \
                         Delegate=yes and DelegateSubgroup={DAEMON_LEAF} in its unit (systemd \
                         254 or later) so that the unit can restart while engines run",
                        own_dir.display()
                    ))
                }
                Some((pid, true)) => pid,
            };
            move_self(own_dir, self_pid)?;
            write_file(&own_control, &enable).map_err(|e| {
                format!(
                    "{e}; other processes share the daemon's cgroup {}: run the daemon in a \
                     unit of its own with Delegate=yes",
                    own_dir.display()
                )
            })?;
        }
    }
    write_file(&base.join("cgroup.subtree_control"), &enable).map_err(|e| e.to_string())
}

/// Moves the daemon into `<unit>/daemon`, so that `<unit>` may hand controllers down.
fn move_self(own_dir: &Path, self_pid: u32) -> Result<(), String> {
    let dir = own_dir.join(DAEMON_LEAF);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(named(e, &dir, "create the cgroup").to_string()),
    }
    write_file(&dir.join("cgroup.procs"), &self_pid.to_string()).map_err(|e| e.to_string())
}

fn missing_reason(own_dir: &Path, available: &[String], cgroups: &EngineCgroups) -> Option<String> {
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|c| match *c {
            "memory" => !cgroups.memory,
            _ => !cgroups.pids,
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the {} controller{} not available in the cgroup v2 hierarchy at {} \
             (cgroup.controllers: {:?}; on a host that mounts cgroup v1 as well, v1 holds it)",
            missing.join(" and "),
            if missing.len() > 1 { "s are" } else { " is" },
            own_dir.display(),
            available.join(" "),
        )
    })
}

fn words(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|text| text.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // O_TRUNC as a shell's `>` does: cgroupfs ignores it, a plain file needs it.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| named(e, path, "open"))?;
    file.write_all(value.as_bytes())
        .map_err(|e| named(e, path, &format!("write {value:?} to")))
}

fn named(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 1 0:22 / /sys ro,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn the_v2_mount_and_the_daemons_cgroup_are_found() {
        let own = "4:memory:/x\n0::/system.slice/pool-managerd.service\n";
        let location = locate(HYBRID, own).unwrap();
        assert_eq!(location.mount, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(location.own, "/system.slice/pool-managerd.service");
        assert_eq!(
            location.unit(),
            ("/system.slice/pool-managerd.service", false)
        );
        let spaced = "31 30 0:27 / /mnt/cg\\040two rw - cgroup2 none rw\n";
        assert_eq!(
            locate(spaced, "0::/\n").unwrap().mount,
            PathBuf::from("/mnt/cg two")
        );
    }

    #[test]
    fn a_daemon_in_its_daemon_leaf_uses_the_units_cgroup() {
        let location = locate(HYBRID, "0::/system.slice/p.service/daemon\n").unwrap();
        assert_eq!(location.unit(), ("/system.slice/p.service", true));
        let at_root = locate(HYBRID, "0::/daemon\n").unwrap();
        assert_eq!(at_root.unit(), ("/", true));
    }

    #[test]
    fn without_cgroup_v2_the_reason_is_given() {
        let v1_only = "35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            locate(v1_only, "0::/\n").unwrap_err(),
            "no cgroup v2 hierarchy is mounted"
        );
        assert!(locate(HYBRID, "4:memory:/x\n")
            .unwrap_err()
            .contains("no cgroup v2"));
        assert!(locate(HYBRID, "0::/a/../b\n")
            .unwrap_err()
            .contains("unexpected"));
    }

    #[test]
    fn subtree_names_differ_by_runtime_directory_and_are_stable() {
        let a = subtree_name(Path::new("/var/lib/pool-managerd"));
        assert_eq!(a, subtree_name(Path::new("/var/lib/pool-managerd")));
        assert_ne!(a, subtree_name(Path::new("/var/lib/pool-managerd2")));
        assert!(a.starts_with("pool-managerd-") && a.len() == "pool-managerd-".len() + 8);
    }

    /// A cgroupfs laid out in a temporary directory: the kernel's interface files exist
    /// before anyone writes them (`write_file` never creates one).
    fn fake_hierarchy(controllers: &str, name: &str, pool: &str) -> (tempfile::TempDir, Location) {
        let tmp = tempfile::tempdir().unwrap();
        let unit = tmp.path().join("svc");
        let leaf = unit.join(name).join(format!("pool-{pool}"));
        fs::create_dir_all(&leaf).unwrap();
        fs::write(unit.join("cgroup.controllers"), controllers).unwrap();
        for file in [
            "cgroup.subtree_control",
            &format!("{name}/cgroup.subtree_control"),
        ] {
            fs::write(unit.join(file), "").unwrap();
        }
        for file in ["memory.max", "pids.max", "cgroup.procs"] {
            fs::write(leaf.join(file), "").unwrap();
        }
        let location = Location {
            mount: tmp.path().to_path_buf(),
            own: "/svc".to_string(),
        };
        (tmp, location)
    }

    #[test]
    fn the_controllers_are_handed_down_and_the_leaf_gets_its_limits() {
        let (tmp, location) = fake_hierarchy("cpu io memory pids\n", "pool-managerd-1", "p1");
        let set_up = EngineCgroups::set_up(&location, "pool-managerd-1", 512, (1, true)).unwrap();
        assert_eq!(set_up.limits_missing, None);
        let unit = tmp.path().join("svc");
        let read = |p: &str| fs::read_to_string(unit.join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(
            read("pool-managerd-1/cgroup.subtree_control"),
            "+memory +pids"
        );
        let leaf = set_up
            .cgroups
            .prepare("p1", Lane::A, Some(500_000_000))
            .unwrap();
        assert_eq!(leaf.dir, unit.join("pool-managerd-1/pool-p1"));
        assert_eq!(read("pool-managerd-1/pool-p1/memory.max"), "500000000");
        assert_eq!(read("pool-managerd-1/pool-p1/pids.max"), "512");
        set_up.cgroups.prepare("p1", Lane::A, None).unwrap();
        assert_eq!(read("pool-managerd-1/pool-p1/memory.max"), "max");
    }

    #[test]
    fn a_hierarchy_without_memory_and_pids_still_gives_leaves_and_says_why() {
        let (tmp, location) = fake_hierarchy("hugetlb\n", "pool-managerd-2", "p2");
        let set_up = EngineCgroups::set_up(&location, "pool-managerd-2", 512, (1, true)).unwrap();
        let reason = set_up.limits_missing.unwrap();
        assert!(
            reason.contains("memory and pids controllers are not available"),
            "{reason}"
        );
        assert!(reason.contains("hugetlb"), "{reason}");
        let unit = tmp.path().join("svc");
        assert_eq!(
            fs::read_to_string(unit.join("cgroup.subtree_control")).unwrap(),
            ""
        );
        set_up.cgroups.prepare("p2", Lane::A, Some(1)).unwrap();
        let leaf = unit.join("pool-managerd-2/pool-p2");
        assert_eq!(fs::read_to_string(leaf.join("memory.max")).unwrap(), "");
        assert!(!set_up.cgroups.has_memory());
        assert_eq!(set_up.cgroups.memory_current("p2", Lane::A), None);
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_it() {
        let location = Location {
            mount: PathBuf::from("/proc/self"),
            own: "/".to_string(),
        };
        let err = EngineCgroups::set_up(&location, "pool-managerd-x", 1, (1, true)).unwrap_err();
        assert!(
            err.contains("cannot create the cgroup /proc/self/pool-managerd-x"),
            "{err}"
        );
    }
}
