//! The TCP sockets listening on a port, asked of the kernel over `NETLINK_SOCK_DIAG`
//! (`inet_diag`) for the listening state only: the kernel then walks its listening sockets
//! alone, where reading `/proc/net/tcp` and `tcp6` walks its whole established-socket hash
//! table as well (262,144 buckets on a host with a few GiB of memory: about 4 ms per file,
//! whatever the number of connections).
//!
//! Owns: the request and the parsing of its answer. Never: blocks longer than
//! `RECV_TIMEOUT_MS` per answer, or answers anything but `None` when the kernel does not
//! answer as expected (the caller then reads `/proc/net/tcp{,6}` through `procfs`).

use std::collections::HashSet;
use std::os::fd::{AsRawFd as _, OwnedFd};

/// The longest wait for one answer of the kernel.
const RECV_TIMEOUT_MS: libc::time_t = 1_000;
/// `NETLINK_SOCK_DIAG`'s request for a family's sockets (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's TCP states (`net/tcp_states.h`).
const TCP_LISTEN: u8 = 10;
/// `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`, up to and with `idiag_inode`.
const MSG_LEN: usize = 72;

/// The inodes of the TCP sockets listening on `port` in this process's network namespace,
/// IPv4 and IPv6; `None` when the kernel could not be asked (no `NETLINK_SOCK_DIAG`, or an
/// answer not understood).
pub fn listening_inodes(port: u16) -> Option<HashSet<u64>> {
    let socket = open()?;
    let mut inodes = HashSet::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let family = u8::try_from(family).ok()?;
        request(&socket, family)?;
        inodes.extend(answers(&socket, port)?);
    }
    Some(inodes)
}

/// A `NETLINK_SOCK_DIAG` socket with a receive timeout.
fn open() -> Option<OwnedFd> {
    use nix::sys::socket::{socket, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
    let socket = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    let timeout =
        nix::sys::time::TimeVal::new(RECV_TIMEOUT_MS / 1_000, (RECV_TIMEOUT_MS % 1_000) * 1_000);
    nix::sys::socket::setsockopt(&socket, sockopt::ReceiveTimeout, &timeout).ok()?;
    Some(socket)
}

/// Sends the dump request of `family`'s TCP sockets in the listening state.
fn request(socket: &OwnedFd, family: u8) -> Option<()> {
    use nix::sys::socket::{sendto, MsgFlags, NetlinkAddr};
    let mut message = [0u8; NLMSG_HDR_LEN + REQ_LEN];
    let len = u32::try_from(message.len()).ok()?;
    message[0..4].copy_from_slice(&len.to_ne_bytes());
    message[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).ok()?;
    message[6..8].copy_from_slice(&flags.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
    let req = &mut message[NLMSG_HDR_LEN..];
    req[0] = family;
    req[1] = u8::try_from(libc::IPPROTO_TCP).ok()?;
    req[4..8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // Port id 0: the kernel.
    let kernel = NetlinkAddr::new(0, 0);
    let sent = sendto(socket.as_raw_fd(), &message, &kernel, MsgFlags::empty()).ok()?;
    (sent == message.len()).then_some(())
}

/// Reads the dump's answers up to its end: the inodes of the sockets on `port`.
fn answers(socket: &OwnedFd, port: u16) -> Option<Vec<u64>> {
    use nix::sys::socket::{recv, MsgFlags};
    let mut buffer = vec![0u8; 32 * 1024];
    let mut inodes = Vec::new();
    loop {
        let got = recv(socket.as_raw_fd(), &mut buffer, MsgFlags::empty()).ok()?;
        if got == 0 {
            return None;
        }
        match parse(&buffer[..got], port, &mut inodes)? {
            Parsed::Done => return Some(inodes),
            Parsed::More => {}
        }
    }
}

/// Whether the dump has ended.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Done,
    More,
}

/// Parses one datagram of the dump, adding the inodes of the listening sockets on `port`;
/// `None` for an error or a message not understood.
fn parse(mut data: &[u8], port: u16, inodes: &mut Vec<u64>) -> Option<Parsed> {
    let done = u16::try_from(libc::NLMSG_DONE).ok()?;
    let error = u16::try_from(libc::NLMSG_ERROR).ok()?;
    while data.len() >= NLMSG_HDR_LEN {
        let len = usize::try_from(u32::from_ne_bytes(data[0..4].try_into().ok()?)).ok()?;
        let kind = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        if len < NLMSG_HDR_LEN || len > data.len() {
            return None;
        }
        if kind == done {
            return Some(Parsed::Done);
        }
        if kind == error || kind != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let msg = data.get(NLMSG_HDR_LEN..len)?;
        if msg.len() < MSG_LEN {
            return None;
        }
        let state = msg[1];
        let sport = u16::from_be_bytes([msg[4], msg[5]]);
        let inode = u32::from_ne_bytes(msg[68..72].try_into().ok()?);
        if state == TCP_LISTEN && sport == port {
            inodes.push(u64::from(inode));
        }
        let aligned = (len + 3) & !3;
        data = data.get(aligned.min(data.len())..)?;
    }
    Some(Parsed::More)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Would catch: a listener missed (IPv4, IPv6), or the inode of another port's.
    #[test]
    fn the_kernel_names_the_same_listeners_as_the_socket_tables() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let asked = listening_inodes(port).expect("NETLINK_SOCK_DIAG answers");
        assert_eq!(asked, super::super::procfs::listening_inodes(port));
        assert_eq!(asked.len(), 1);
        drop(v4);
        assert!(listening_inodes(port).unwrap().is_empty());
        let other_port = other.local_addr().unwrap().port();
        assert_eq!(listening_inodes(other_port).unwrap().len(), 1);
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let port = v6.local_addr().unwrap().port();
            let asked = listening_inodes(port).unwrap();
            assert_eq!(asked, super::super::procfs::listening_inodes(port));
            assert_eq!(asked.len(), 1);
        }
    }

    #[test]
    fn an_error_or_a_short_message_is_not_understood() {
        let mut inodes = Vec::new();
        let mut error = [0u8; 36];
        error[0..4].copy_from_slice(&36u32.to_ne_bytes());
        error[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(parse(&error, 80, &mut inodes), None);
        let mut short = [0u8; 20];
        short[0..4].copy_from_slice(&20u32.to_ne_bytes());
        short[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert_eq!(parse(&short, 80, &mut inodes), None);
        let mut done = [0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(parse(&done, 80, &mut inodes), Some(Parsed::Done));
        assert!(inodes.is_empty());
    }
}
