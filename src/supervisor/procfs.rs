//! The one reader of `/proc`: a process's `stat` (state, session, start time), its cgroup
//! lines, its command line, its executable and the sockets it holds; the processes, and those
//! of a session; the boot id; the TCP
//! sockets listening on a port (`/proc/net/tcp{,6}`) and the processes holding them. Every
//! other module asks here.
//!
//! Owns: the parsing of those files (the command name in `stat` is in parentheses and may
//! hold spaces and parentheses: fields are counted after its last `)`).
//! Never: writes anything, or fails louder than `None`/empty (a process may end between two
//! reads; callers decide what that means).

use std::collections::HashSet;
use std::path::PathBuf;

/// Where the kernel names the current boot (a random UUID drawn at each boot).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

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

/// The current boot's id (`/proc/sys/kernel/random/boot_id`), when readable.
pub fn boot_id() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    Some(text.trim().to_string()).filter(|id| !id.is_empty())
}

/// `/proc/<pid>/cmdline` as one line: the arguments joined by spaces (lossy UTF-8), at most
/// `max` bytes (cut on a character boundary, with `...`); `None` when unreadable (gone, or
/// a kernel thread's empty command line).
pub fn cmdline_text(pid: u32, max: usize) -> Option<String> {
    let raw = cmdline(pid)?;
    let text = raw
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        return None;
    }
    if text.len() <= max {
        return Some(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}...", &text[..end]))
}

/// The inodes of the TCP sockets listening on `port`, IPv4 or IPv6 (`/proc/net/tcp` and
/// `tcp6`, state `0A`), in this process's network namespace.
pub fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(parse_listening(&text, port));
        }
    }
    inodes
}

fn parse_listening(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let (_, local_port) = local.rsplit_once(':')?;
            let listening =
                *state == "0A" && u16::from_str_radix(local_port, 16).ok() == Some(port);
            listening.then(|| inode.parse().ok()).flatten()
        })
        .collect()
}

/// Every process in `/proc` (this PID namespace's), in pid order.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The processes of session `sid` that have not ended (zombies are over), in pid order.
pub fn session_members(sid: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.session == sid && !s.ended()))
        .collect()
}

/// The processes holding any of the sockets `inodes` open (their `/proc/<pid>/fd`), in pid
/// order. Processes whose descriptors cannot be read (another user's, without privileges)
/// are not found.
pub fn socket_holders(inodes: &HashSet<u64>) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    pids()
        .into_iter()
        .filter(|pid| socket_inodes(*pid).iter().any(|i| inodes.contains(i)))
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
    fn a_listener_of_this_process_is_found_with_its_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inodes = listening_inodes(port);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        assert_eq!(socket_holders(&inodes), vec![std::process::id()]);
        drop(listener);
        assert!(listening_inodes(port).is_empty());
        assert!(
            boot_id().is_some_and(|id| id.len() == 36),
            "{:?}",
            boot_id()
        );
        let me = cmdline_text(std::process::id(), 4096).unwrap();
        assert!(me.contains(' ') || !me.is_empty());
        let short = cmdline_text(std::process::id(), 3).unwrap();
        assert!(short.ends_with("...") && short.len() <= 6, "{short}");
    }

    #[test]
    fn only_listening_sockets_on_the_port_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1\n\
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 222 1\n\
            2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1\n";
        assert_eq!(parse_listening(table, 8080), vec![111]);
        assert_eq!(parse_listening(table, 8081), vec![333]);
        assert!(parse_listening(table, 80).is_empty());
    }

    #[test]
    fn cgroup_lines_of_both_versions_parse() {
        let lines = parse_cgroups("0::/system.slice/x.service\n4:memory,pids:/a\n");
        assert_eq!(lines[0].controllers, Vec::<String>::new());
        assert_eq!(lines[0].path, "/system.slice/x.service");
        assert_eq!(lines[1].controllers, vec!["memory", "pids"]);
    }
}
