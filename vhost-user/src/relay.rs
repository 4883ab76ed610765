//! The front door of a connection. The daemon accepts the frontend itself
//! and relays its messages to vhost-user-backend's request handler over a
//! private socket, after checks the library does not make:
//!
//! - a deadline for the handshake (SET_OWNER) and for the rest of any
//!   message once its first byte has arrived, so a silent or stalled
//!   frontend cannot hold the daemon (connections are served one at a time);
//! - SET_MEM_TABLE regions must lie inside their files (fstat, before the
//!   library maps them: an access past the end of a file is SIGBUS);
//! - SET_VRING_NUM must be a power of two the device supports (the library
//!   acknowledges any size and virtio-queue keeps the old one);
//! - SET_VRING_KICK must carry an eventfd (polling mode is not supported;
//!   the library would accept it and the queue would never start);
//!
//! A refused message ends the connection: the frontend sees the socket
//! close, and the daemon logs one line naming the reason. Replies go back
//! unchanged (the protocol features the daemon offers carry no descriptors
//! in replies). SET_CONFIG is refused by the backend itself (a NACK).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserMemory, VhostUserMemoryRegion, VhostUserU64, VhostUserVringState,
    MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The vhost-user message header (the `vhost` crate keeps its own private):
/// request code, flags, payload size, native-endian u32 each.
#[derive(Debug, Clone, Copy)]
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}

const HEADER_SIZE: usize = 12;
/// Flags: bits 1:0 the version (1), bit 2 REPLY, bit 3 NEED_REPLY; the rest reserved.
const FLAG_VERSION_MASK: u32 = 0x3;
const FLAG_REPLY: u32 = 0x4;
const FLAG_RESERVED: u32 = !0xf;

impl Header {
    fn parse(b: &[u8; HEADER_SIZE]) -> Header {
        let w = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Header {
            request: w(0),
            flags: w(4),
            size: w(8),
        }
    }

    /// As the library's own check: a known request, version 1, no reserved
    /// flag, not a reply, a payload that fits a message.
    fn is_valid(&self) -> bool {
        FrontendReq::try_from(self.request).is_ok()
            && self.flags & FLAG_VERSION_MASK == 1
            && self.flags & (FLAG_RESERVED | FLAG_REPLY) == 0
            && self.size as usize <= MAX_MSG_SIZE
    }

    fn code(&self) -> Option<FrontendReq> {
        FrontendReq::try_from(self.request).ok()
    }
}
/// Bit 8 of a SET_VRING_KICK/CALL payload: no file descriptor attached.
const VRING_NOFD: u64 = 0x100;

/// Why the daemon ended a connection.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no handshake (SET_OWNER) within {0:?} of connecting")]
    Handshake(Duration),
    #[error("message stopped after {got} of {want} bytes for {after:?}")]
    Stalled {
        got: usize,
        want: usize,
        after: Duration,
    },
    #[error("frontend closed the socket inside a message ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("invalid message header (request {request}, flags {flags:#x}, size {size})")]
    Header { request: u32, flags: u32, size: u32 },
    #[error("SET_VRING_NUM: queue {index} size {num}: must be a power of two from 1 to {max}")]
    QueueSize { index: u32, num: u32, max: u16 },
    #[error("SET_VRING_KICK for queue {0} without an eventfd: polling mode is not supported")]
    PolledKick(u8),
    #[error("SET_MEM_TABLE: region {index} at GPA {gpa:#x}: {size:#x} bytes at file offset {offset:#x}, but the file has {file:#x} bytes")]
    RegionPastFile {
        index: usize,
        gpa: u64,
        size: u64,
        offset: u64,
        file: u64,
    },
    #[error("SET_MEM_TABLE: region {0}: cannot fstat its file: {1}")]
    RegionStat(usize, io::Error),
    #[error("the daemon is stopping")]
    Stopping,
    #[error("the frontend does not read its replies: {0}")]
    Replies(io::Error),
    #[error("the frontend shrank a memory region's file under the daemon (access past its end)")]
    MemoryShrunk,
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// What the relay checks against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Handshake deadline, and the time a started message may take.
    pub timeout: Duration,
    pub max_queue_size: u16,
}

/// One message as received: header bytes, payload, attached descriptors.
struct Message {
    hdr: Header,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Wait until `fd` is readable; `false` when `deadline` passed first.
fn wait(fd: RawFd, deadline: Instant) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(true);
        }
    }
}

/// Fill `buf` from `sock` by `deadline`, keeping descriptors that arrive.
/// Returns the bytes read (less than `buf.len()` only at end of stream).
fn fill(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    deadline: Instant,
    started: Instant,
) -> Result<usize, Refusal> {
    let mut got = 0;
    while got < buf.len() {
        if !wait(sock.as_raw_fd(), deadline)? {
            return Err(Refusal::Stalled {
                got,
                want: buf.len(),
                after: started.elapsed(),
            });
        }
        let mut raw = [0 as RawFd; MAX_ATTACHED_FD_ENTRIES];
        let mut iov = [libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        }];
        // SAFETY: the iovec points into `buf`, which may hold any bytes.
        let r = unsafe { sock.recv_with_fds(&mut iov, &mut raw) };
        let (n, nfds) = match r {
            Ok(v) => v,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno()).into()),
        };
        for &fd in &raw[..nfds] {
            // SAFETY: recvmsg installed these descriptors for us; nothing
            // else owns them.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            return Ok(got);
        }
        got += n;
    }
    Ok(got)
}

/// Read one message. `None` at a clean end of stream.
fn recv(front: &UnixStream, timeout: Duration) -> Result<Option<Message>, Refusal> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut fds = Vec::new();
    let mut head = [0u8; HEADER_SIZE];
    match fill(front, &mut head, &mut fds, deadline, started)? {
        0 => return Ok(None),
        n if n < HEADER_SIZE => {
            return Err(Refusal::Truncated {
                got: n,
                want: HEADER_SIZE,
            })
        }
        _ => {}
    }
    let hdr = Header::parse(&head);
    if !hdr.is_valid() {
        return Err(Refusal::Header {
            request: hdr.request,
            flags: hdr.flags,
            size: hdr.size,
        });
    }
    let size = hdr.size as usize;
    let mut bytes = vec![0u8; HEADER_SIZE + size];
    bytes[..HEADER_SIZE].copy_from_slice(&head);
    let n = fill(
        front,
        &mut bytes[HEADER_SIZE..],
        &mut fds,
        deadline,
        started,
    )?;
    if n < size {
        return Err(Refusal::Truncated {
            got: HEADER_SIZE + n,
            want: HEADER_SIZE + size,
        });
    }
    Ok(Some(Message { hdr, bytes, fds }))
}

/// The payload's first bytes as a `T`, copied out (the payload starts at
/// offset 12 of the buffer, which `ByteValued::from_slice` would refuse
/// for a `T` aligned to 8).
fn body<T: ByteValued + Default>(m: &Message) -> Option<T> {
    copy_of(m.bytes.get(HEADER_SIZE..)?)
}

fn copy_of<T: ByteValued + Default>(b: &[u8]) -> Option<T> {
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(b.get(..size_of::<T>())?);
    Some(v)
}

/// Size of the file behind `fd`.
fn file_len(fd: &OwnedFd) -> io::Result<u64> {
    let f = File::from(fd.try_clone()?);
    Ok(f.metadata()?.len())
}

/// The checks of the module comment. Messages too short for their body are
/// left to the library, which refuses them.
fn check(m: &Message, limits: &Limits) -> Result<(), Refusal> {
    match m.hdr.code() {
        Some(FrontendReq::SET_VRING_NUM) => {
            if let Some(s) = body::<VhostUserVringState>(m) {
                let (index, num) = (s.index, s.num);
                if num == 0 || !num.is_power_of_two() || num > u32::from(limits.max_queue_size) {
                    return Err(Refusal::QueueSize {
                        index,
                        num,
                        max: limits.max_queue_size,
                    });
                }
            }
        }
        Some(FrontendReq::SET_VRING_KICK) => {
            if let Some(v) = body::<VhostUserU64>(m) {
                let value = v.value;
                if value & VRING_NOFD != 0 {
                    return Err(Refusal::PolledKick(value as u8));
                }
            }
        }
        Some(FrontendReq::SET_MEM_TABLE) => {
            let Some(table) = body::<VhostUserMemory>(m) else {
                return Ok(());
            };
            let regions = &m.bytes[HEADER_SIZE + size_of::<VhostUserMemory>()..];
            let n = table.num_regions as usize;
            for (index, (raw, fd)) in regions
                .chunks_exact(size_of::<VhostUserMemoryRegion>())
                .take(n)
                .zip(&m.fds)
                .enumerate()
            {
                let Some(r) = copy_of::<VhostUserMemoryRegion>(raw) else {
                    continue;
                };
                let file = file_len(fd).map_err(|e| Refusal::RegionStat(index, e))?;
                let (gpa, size, offset) = (r.guest_phys_addr, r.memory_size, r.mmap_offset);
                if offset.checked_add(size).is_none_or(|end| end > file) {
                    return Err(Refusal::RegionPastFile {
                        index,
                        gpa,
                        size,
                        offset,
                        file,
                    });
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Send `m` to the library in one message, descriptors attached.
fn forward(lib: &mut UnixStream, m: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = m.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = lib
        .send_with_fds(&[&m.bytes[..]], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    lib.write_all(&m.bytes[sent..])
}

/// The frontend-to-library direction of one connection.
#[derive(Debug)]
pub struct Inbound {
    limits: Limits,
    owned: bool,
}

impl Inbound {
    pub fn new(limits: Limits) -> Self {
        Inbound {
            limits,
            owned: false,
        }
    }

    /// Whether the frontend has sent SET_OWNER (the handshake deadline no
    /// longer applies).
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Relay one message (call when `front` is readable). `Ok(false)` when
    /// the frontend closed the socket between messages. The rest of a
    /// message that has started must arrive within the deadline.
    pub fn pump(&mut self, front: &UnixStream, lib: &mut UnixStream) -> Result<bool, Refusal> {
        let Some(m) = recv(front, self.limits.timeout)? else {
            return Ok(false);
        };
        log::trace!(
            "frontend request {} ({} payload bytes, {} fds)",
            m.hdr.request,
            m.hdr.size,
            m.fds.len()
        );
        check(&m, &self.limits)?;
        self.owned |= m.hdr.code() == Some(FrontendReq::SET_OWNER);
        forward(lib, &m)?;
        Ok(true)
    }
}

/// Copy what the library wrote back to the frontend, unchanged (call when
/// `lib` is readable). `Ok(false)` when the library closed its socket.
/// The frontend's socket has a write timeout: a frontend that does not read
/// its replies ends its connection instead of blocking the daemon.
pub fn pump_replies(lib: &mut UnixStream, front: &mut UnixStream) -> io::Result<bool> {
    let mut buf = [0u8; MAX_MSG_SIZE + HEADER_SIZE];
    loop {
        match lib.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                front.write_all(&buf[..n])?;
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
