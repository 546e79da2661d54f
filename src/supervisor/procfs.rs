//! The one reader of `/proc/<pid>/...`: a process's `stat` (state, session, start time), its
//! cgroup lines, its command line, its executable and the sockets it holds. Every other module
//! asks here.
//!
//! Owns: the parsing of those files (the command name in `stat` is in parentheses and may
//! hold spaces and parentheses: fields are counted after its last `)`).
//! Never: writes anything, or fails louder than `None`/empty (a process may end between two
//! reads; callers decide what that means).

use std::path::PathBuf;

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead)...
    pub state: char,
    /// Field 6: the session id (our engines lead their own session).
    pub session: u32,
    /// Field 22: the start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// A zombie or a dead process: it has ended (only its parent's reap may be missing).
    pub fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// `/proc/<pid>/stat`, parsed; `None` when the process does not exist (or the file is not
/// what the kernel writes).
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields of a `stat` line after the command name.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy:controllers:path`; cgroup v2's line has no
/// controllers (`0::/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// The controllers of the hierarchy (empty for cgroup v2).
    pub controllers: Vec<String>,
    /// The process's cgroup in it, from the hierarchy's root (`/system.slice/x.service`).
    pub path: String,
}

/// `/proc/<pid>/cgroup`, parsed (empty when unreadable).
pub fn cgroups(pid: u32) -> Vec<CgroupLine> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|text| parse_cgroups(&text))
        .unwrap_or_default()
}

fn parse_cgroups(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some(CgroupLine {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.trim_end().to_string(),
            })
        })
        .collect()
}

/// `/proc/<pid>/cmdline`: the arguments, each followed by a NUL.
pub fn cmdline(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// The binary `pid` runs (`/proc/<pid>/exe`), when readable.
pub fn exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The inodes of the sockets `pid` holds open (its `/proc/<pid>/fd` links `socket:[N]`);
/// empty when unreadable.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            inode.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "42 (a (weird) name) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 \
                    123456 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                session: 42,
                start_time: 123456
            }
        );
        assert!(!stat.ended());
        assert!(
            parse_stat("42 (x) Z 1 42 42").is_none(),
            "too short: no start time"
        );
    }

    #[test]
    fn this_process_reads_as_running_in_its_own_cgroups() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert!(!stat.ended());
        assert!(stat.start_time > 0);
        assert!(!cgroups(me).is_empty());
        assert_eq!(exe(me), std::env::current_exe().ok());
    }

    #[test]
    fn cgroup_lines_of_both_versions_parse() {
        let lines = parse_cgroups("0::/system.slice/x.service\n4:memory,pids:/a\n");
        assert_eq!(lines[0].controllers, Vec::<String>::new());
        assert_eq!(lines[0].path, "/system.slice/x.service");
        assert_eq!(lines[1].controllers, vec!["memory", "pids"]);
    }
}
