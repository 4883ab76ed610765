//! Requests on the request queue (docs/protocol.md): a request submitted
//! as a chain, its reply read back, one helper per request type, the
//! commands a driver sends after changing a mapping, the STATS indices, and
//! the small helpers the daemon's tests share.

use std::time::Duration;

use iommu_dev::{Command, DevTableBase, SRange};
use vhost_device_amdvi::virtio_amdvi::{self as w, req, Status};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;

/// The configuration most of the daemon's tests start it with.
pub const CFG: &str = "pri_timeout_ms = 1500\n";

/// A reply to a request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub used: u32,
    pub status: Option<Status>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn obj<T: ByteValued + Default>(&self) -> T {
        w::read_obj(&self.body).expect("response body too short")
    }
}

/// A request in flight.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub head: u16,
    slot: usize,
    room: usize,
}

impl Ticket {
    /// GPA of the request's readable part (its header).
    pub fn readable_gpa(&self) -> u64 {
        SLOTS_BASE + self.slot as u64 * SLOT_SIZE
    }
}

impl Guest {
    /// Submit a request: header + body readable (split into `split`-byte
    /// descriptors when given), `room` writable bytes after the header.
    pub fn submit_split(
        &mut self,
        ty: u32,
        body: &[u8],
        room: usize,
        split: Option<usize>,
    ) -> Ticket {
        let slot = self.free_slots.pop().expect("no free request slot");
        let base = SLOTS_BASE + slot as u64 * SLOT_SIZE;
        let mut rd = Vec::with_capacity(8 + body.len());
        rd.extend_from_slice(&ty.to_le_bytes());
        rd.extend_from_slice(&0u32.to_le_bytes());
        rd.extend_from_slice(body);
        self.mem.write_slice(&rd, GuestAddress(base)).unwrap();
        let wbase = base + SLOT_WRITABLE;
        self.mem
            .write_slice(&vec![0xeeu8; 8 + room], GuestAddress(wbase))
            .unwrap();
        let mut descs = Vec::new();
        let step = split.unwrap_or(rd.len()).max(1);
        let mut off = 0;
        while off < rd.len() {
            let n = step.min(rd.len() - off);
            descs.push((base + off as u64, n as u32, false));
            off += n;
        }
        descs.push((wbase, 8, true));
        if room > 0 {
            descs.push((wbase + 8, room as u32, true));
        }
        let head = self.reqq.add(&self.mem, &descs);
        Ticket { head, slot, room }
    }

    pub fn submit(&mut self, ty: u32, body: &[u8], room: usize) -> Ticket {
        self.submit_split(ty, body, room, None)
    }

    pub fn wait_timeout(&mut self, t: Ticket, timeout: Duration) -> Option<Reply> {
        let used = self.reqq.wait(&self.mem, t.head, timeout)?;
        self.free_slots.push(t.slot);
        let wbase = SLOTS_BASE + t.slot as u64 * SLOT_SIZE + SLOT_WRITABLE;
        let mut buf = vec![0u8; 8 + t.room];
        self.mem.read_slice(&mut buf, GuestAddress(wbase)).unwrap();
        let status = (used >= 8).then(|| {
            Status::from_u32(u32::from_le_bytes(buf[..4].try_into().unwrap())).expect("status code")
        });
        if used >= 8 {
            assert_eq!(&buf[4..8], &[0; 4], "response reserved field");
        }
        let body = buf[8.min(used as usize)..(used as usize).min(buf.len())].to_vec();
        Some(Reply { used, status, body })
    }

    pub fn wait(&mut self, t: Ticket) -> Reply {
        self.wait_timeout(t, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no response to request {}", t.head))
    }

    pub fn request(&mut self, ty: u32, body: &[u8], room: usize) -> Reply {
        let t = self.submit(ty, body, room);
        self.wait(t)
    }

    /// Submit a hand-made chain; returns the head.
    pub fn submit_raw(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        self.reqq.add(&self.mem, descs)
    }

    /// Submit a chain made of one indirect descriptor.
    pub fn submit_indirect(&mut self, table: u64, len: u32) -> u16 {
        self.reqq.add_indirect(&self.mem, table, len)
    }

    pub fn wait_raw(&mut self, head: u16) -> u32 {
        self.reqq
            .wait(&self.mem, head, Duration::from_secs(10))
            .expect("no used entry")
    }

    pub fn info(&mut self) -> w::Info {
        let r = self.request(w::req::INFO, &[], 328);
        assert_eq!(r.status, Some(Status::Ok));
        r.obj()
    }

    pub fn stats(&mut self) -> Vec<u64> {
        let r = self.request(w::req::STATS, &[], 8 + 8 * 64);
        assert_eq!(r.status, Some(Status::Ok));
        let n = u32::from_le_bytes(r.body[..4].try_into().unwrap()) as usize;
        (0..n)
            .map(|i| u64::from_le_bytes(r.body[8 + 8 * i..16 + 8 * i].try_into().unwrap()))
            .collect()
    }

    pub fn set_devtab(&mut self, base: u64, control: u64) -> Option<Status> {
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&control.to_le_bytes());
        self.request(w::req::SET_DEVTAB, &b, 0).status
    }

    pub fn commands_ticket(&mut self, cmds: &[[u8; 16]]) -> Ticket {
        let mut b = Vec::new();
        b.extend_from_slice(&(cmds.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for c in cmds {
            b.extend_from_slice(c);
        }
        self.submit(w::req::COMMANDS, &b, 16)
    }

    pub fn commands(&mut self, cmds: &[Command]) -> Reply {
        let raw: Vec<[u8; 16]> = cmds.iter().map(Command::encode).collect();
        let t = self.commands_ticket(&raw);
        self.wait(t)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn endpoint_ticket(
        &mut self,
        devid: u16,
        op: u8,
        flags: u8,
        pasid: u32,
        va: u64,
        len: u32,
        data: &[u8],
    ) -> Ticket {
        let e = w::Endpoint {
            devid: devid.into(),
            op,
            flags,
            pasid: pasid.into(),
            va: va.into(),
            len: len.into(),
            reserved: 0.into(),
        };
        let mut b = e.as_slice().to_vec();
        b.extend_from_slice(data);
        let room = 16
            + if op == w::ep::OP_READ {
                len as usize
            } else {
                0
            };
        self.submit(w::req::ENDPOINT, &b, room)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn endpoint(
        &mut self,
        devid: u16,
        op: u8,
        flags: u8,
        pasid: u32,
        va: u64,
        len: u32,
        data: &[u8],
    ) -> Reply {
        let t = self.endpoint_ticket(devid, op, flags, pasid, va, len, data);
        self.wait(t)
    }

    pub fn read(&mut self, devid: u16, va: u64, len: u32) -> Reply {
        self.endpoint(devid, w::ep::OP_READ, 0, PASID, va, len, &[])
    }

    pub fn write(&mut self, devid: u16, va: u64, data: &[u8]) -> Reply {
        self.endpoint(
            devid,
            w::ep::OP_WRITE,
            0,
            PASID,
            va,
            data.len() as u32,
            data,
        )
    }
}

/// Commands a driver sends after changing a mapping of PASID 1.
pub fn flush_cmds(devid: u16, domain: u16, store: Option<(u64, u64)>) -> Vec<Command> {
    let mut v = vec![
        Command::InvalidateIommuPages {
            domain_id: domain,
            pasid: PASID,
            gn: true,
            pde: true,
            range: SRange::EVERYTHING,
        },
        Command::InvalidateIotlbPages {
            devid,
            pasid: PASID,
            gn: true,
            maxpend: 0,
            queue_id: 0,
            range: SRange::EVERYTHING,
        },
    ];
    if let Some((addr, data)) = store {
        v.push(Command::CompletionWait {
            store: true,
            interrupt: false,
            flush: false,
            addr,
            data,
        });
    }
    v
}

/// STATS counter indices (protocol order).
pub mod stat {
    pub const REQUESTS: usize = 0;
    pub const BAD_CHAINS: usize = 1;
    pub const COMMANDS: usize = 2;
    pub const COMPLETION_WAITS: usize = 3;
    pub const ATC_HITS: usize = 8;
    pub const ATC_MISSES: usize = 9;
    pub const PAGE_REQUESTS: usize = 12;
    pub const PRG_RESPONSES: usize = 13;
    pub const EVENTS_LOGGED: usize = 14;
    pub const EVENTS_DROPPED: usize = 15;
    pub const PPR_LOGGED: usize = 16;
    pub const ATC_INVALIDATIONS: usize = 19;
    pub const ILLEGAL_COMMANDS: usize = 21;
    pub const INJECTED_FAULTS: usize = 22;
    pub const COUNT: usize = 23;
}

pub fn devtab_reg() -> u64 {
    DevTableBase::encode(DEVTAB, 1)
}

/// The reply's status is OK.
pub fn ok(r: &Reply) {
    assert_eq!(r.status, Some(Status::Ok), "{r:?}");
}

/// A COMPLETION_WAIT that stores `data` at `addr`.
pub fn cw(addr: u64, data: u64) -> Command {
    Command::CompletionWait {
        store: true,
        interrupt: false,
        flush: false,
        addr,
        data,
    }
}

/// A STREAM_START body for PASID 1: a range stream with a 64-byte stride
/// and the given read/write/translate weights, writing 0x1000 + n.
pub fn stream(devid: u16, va: u64, len: u64, weights: [u8; 3], flags: u8) -> w::StreamStart {
    w::StreamStart {
        devid: devid.into(),
        flags,
        pasid: PASID.into(),
        va: va.into(),
        len: len.into(),
        stride: 64.into(),
        read_weight: weights[0],
        write_weight: weights[1],
        translate_weight: weights[2],
        write_value: 0x1000.into(),
        ..Default::default()
    }
}

/// STREAM_STOP with `flags`.
pub fn stop_stream(g: &mut Guest, id: u32, flags: u32) -> Reply {
    let s = w::StreamStop {
        stream_id: id.into(),
        flags: flags.into(),
    };
    g.request(req::STREAM_STOP, s.as_slice(), 80)
}

/// A daemon started with `cfg` and a guest connected to it with its IOMMU
/// set up ([`Guest::setup_iommu`]); the daemon runs while it is kept.
pub fn ready(cfg: &str) -> (Daemon, Guest) {
    let d = Daemon::start(cfg);
    let mut g = Guest::connect(&d);
    g.setup_iommu();
    (d, g)
}
