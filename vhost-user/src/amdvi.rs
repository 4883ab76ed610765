//! Requests of the amdvi protocol executed on the `iommu-dev` model. This
//! module knows the wire format and the model; it knows nothing of virtqueues
//! (see `vhu_amdvi.rs`) so it can be driven directly by tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use iommu_dev::{control, AccessError, AccessFlags, Finding, Iommu, Mem, RegError};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic};

use crate::config::DaemonConfig;
use crate::stream::{Snapshot, StartError, StreamParams, Streams};
use crate::virtio_amdvi::{self as w, ep, req, Status};

/// A response: status and the body bytes that follow the response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(status: Status) -> Self {
        Response {
            status,
            body: Vec::new(),
        }
    }

    pub fn ok(body: Vec<u8>) -> Self {
        Response {
            status: Status::Ok,
            body,
        }
    }

    /// Header followed by the body, as written to the chain.
    pub fn to_bytes(&self) -> Vec<u8> {
        let hdr = w::RespHdr {
            status: (self.status as u32).into(),
            reserved: 0.into(),
        };
        let mut v = hdr.as_slice().to_vec();
        v.extend_from_slice(&self.body);
        v
    }
}

/// Work that must not run on the request queue's thread.
pub type Deferred = Box<dyn FnOnce() -> Response + Send + 'static>;

/// What a request turned into.
pub enum Outcome {
    Done(Response),
    Deferred(Deferred),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Outcome::Deferred(_) => f.write_str("Deferred"),
        }
    }
}

/// The emulated unit as the guest sees it: the model, its streams, and the
/// daemon's own counters.
#[derive(Debug)]
pub struct Device {
    cfg: DaemonConfig,
    iommu: Arc<Iommu>,
    streams: Arc<Streams>,
    requests: AtomicU64,
    bad_chains: AtomicU64,
    endpoint_requests: AtomicU64,
    mem: RwLock<GuestMemoryAtomic<Mem>>,
}

fn bytes_of<T: ByteValued>(v: &T) -> Vec<u8> {
    v.as_slice().to_vec()
}

fn access_status(e: &AccessError) -> Status {
    match e {
        AccessError::NotReady => Status::NotReady,
        AccessError::NoEndpoint(_) | AccessError::PasidRange(_) => Status::OutOfRange,
        AccessError::Fault { .. } | AccessError::AtcMiss { .. } => Status::TranslationFault,
        AccessError::PriTimeout { .. } => Status::Timeout,
        AccessError::Device { .. } | AccessError::Memory(_) => Status::DeviceError,
    }
}

fn finding(f: &Finding) -> w::Finding {
    w::Finding {
        rule: (f.rule as u32).into(),
        devid: f.devid.into(),
        source: (f.source as u16).into(),
        pasid: f.pasid.into(),
        write: u32::from(f.write).into(),
        va: f.va.into(),
        cached_pa: f.cached_pa.into(),
        current_pte: f.current_pte.into(),
        seq: f.seq.into(),
        epoch: f.epoch.into(),
        reserved: 0.into(),
    }
}

fn stream_counts(s: &Snapshot) -> w::StreamCounts {
    w::StreamCounts {
        reads: s.reads.into(),
        writes: s.writes.into(),
        translations: s.translations.into(),
        faults: s.faults.into(),
        page_requests: s.page_requests.into(),
        atc_hits: s.atc_hits.into(),
        atc_misses: s.atc_misses.into(),
        errors: s.errors.into(),
        elapsed_us: s.elapsed_us.into(),
        running: u32::from(s.running).into(),
        reserved: 0.into(),
    }
}

/// Flags of ENDPOINT and STREAM_START.
fn access_flags(f: u8) -> AccessFlags {
    AccessFlags {
        privileged: f & ep::F_PRIV != 0,
        exec: f & ep::F_EXEC != 0,
        no_write: f & ep::F_NO_WRITE != 0,
        no_pri: f & ep::F_NO_PRI != 0,
        ..Default::default()
    }
}

impl Device {
    pub fn new(cfg: &DaemonConfig, mem: GuestMemoryAtomic<Mem>) -> Self {
        let mem_clone = mem.clone();
        let iommu = Iommu::new(cfg.iommu.clone(), mem);
        for r in &cfg.faults {
            iommu.faults().add(r.clone());
        }
        Device {
            cfg: cfg.clone(),
            iommu: Arc::new(iommu),
            mem: RwLock::new(mem_clone),
            streams: Arc::new(Streams::new(cfg.max_streams)),
            requests: AtomicU64::new(0),
            bad_chains: AtomicU64::new(0),
            endpoint_requests: AtomicU64::new(0),
        }
    }

    /// A new guest memory map (SET_MEM_TABLE).
    pub fn set_memory(&self, mem: GuestMemoryAtomic<Mem>) {
        self.iommu.set_memory(mem.clone());
        *self.mem.write().unwrap() = mem;
    }

    /// The current guest memory.
    pub fn memory(&self) -> Arc<Mem> {
        self.mem.read().unwrap().memory().into_inner()
    }

    pub fn iommu(&self) -> &Arc<Iommu> {
        &self.iommu
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// A chain too broken to carry even a status.
    pub fn count_bad_chain(&self) {
        self.bad_chains.fetch_add(1, Ordering::Relaxed);
    }

    /// Guest device reset: stop streams and return the model to power-on state.
    pub fn reset(&self) {
        self.streams.stop_all();
        self.iommu.reset();
    }

    /// The STATS counters, in protocol order, with their names.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("requests", self.requests.load(Ordering::Relaxed)),
            ("bad_chains", self.bad_chains.load(Ordering::Relaxed)),
        ];
        v.extend(self.iommu.counters());
        v
    }

    /// Accesses done by ENDPOINT requests and streams.
    pub fn accesses(&self) -> u64 {
        self.endpoint_requests.load(Ordering::Relaxed)
            + self.streams.accesses.load(Ordering::Relaxed)
    }

    fn info(&self) -> w::Info {
        let c = &self.cfg.iommu;
        let mut info = w::Info {
            efr: self.iommu.efr().into(),
            num_endpoints: (c.endpoints.len() as u32).into(),
            flags: (if c.oracle { w::INFO_F_ORACLE } else { 0 }
                | if c.five_level {
                    w::INFO_F_FIVE_LEVEL
                } else {
                    0
                })
            .into(),
            iotlb_entries: (c.iotlb_entries as u32).into(),
            pwc_entries: (c.pwc_entries as u32).into(),
            dte_cache_entries: (c.dte_cache_entries as u32).into(),
            atc_entries: (c.atc_entries as u32).into(),
            max_streams: self.cfg.max_streams.into(),
            pri_timeout_ms: (c.pri_timeout.as_millis() as u32).into(),
            ..Default::default()
        };
        for (slot, d) in info.endpoint_devid.iter_mut().zip(&c.endpoints) {
            *slot = (*d).into();
        }
        let rules: String = self
            .iommu
            .faults()
            .rules()
            .iter()
            .map(|r| format!("{r}\n"))
            .collect();
        let n = rules.len().min(w::FAULT_RULES_LEN - 1);
        info.fault_rules[..n].copy_from_slice(&rules.as_bytes()[..n]);
        info
    }

    fn ready(&self) -> bool {
        self.iommu.control() & control::IOMMU_EN != 0
    }

    /// Handle one request. `data` is the readable part (header first),
    /// `gpa_of(off)` the GPA of its byte `off`, `room` the writable size.
    pub fn handle(&self, data: &[u8], gpa_of: &dyn Fn(usize) -> u64, room: usize) -> Outcome {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let bad = || Outcome::Done(Response::status(Status::BadRequest));
        let Some(hdr) = w::read_obj::<w::ReqHdr>(data) else {
            return bad();
        };
        if hdr.reserved.to_native() != 0 {
            return bad();
        }
        let body = &data[8..];
        let room = room.saturating_sub(8);
        let ty = hdr.type_.to_native();
        // Fixed-size bodies and the response room each type needs.
        let (body_len, resp_len) = match ty {
            req::INFO => (Some(0), 328),
            req::SET_DEVTAB => (Some(16), 0),
            req::COMMANDS => (None, 16),
            req::ENDPOINT => (None, 16),
            req::STREAM_START => (Some(48), 8),
            req::STREAM_STOP => (Some(8), 80),
            req::ORACLE_READ => (Some(8), 72),
            req::ORACLE_AUDIT => (Some(24), 72),
            req::ORACLE_EPOCH => (Some(8), 0),
            req::STATS => (Some(0), 8),
            _ => return Outcome::Done(Response::status(Status::Unsupported)),
        };
        if body_len.is_some_and(|n| n != body.len()) || room < resp_len {
            return bad();
        }
        match ty {
            req::INFO => Outcome::Done(Response::ok(bytes_of(&self.info()))),
            req::SET_DEVTAB => Outcome::Done(self.set_devtab(body)),
            req::COMMANDS => Outcome::Done(self.commands(body, gpa_of)),
            req::ENDPOINT => self.endpoint(body, room),
            req::STREAM_START => Outcome::Done(self.stream_start(body)),
            req::STREAM_STOP => self.stream_stop(body),
            req::ORACLE_READ => Outcome::Done(self.oracle_read(body, room)),
            req::ORACLE_AUDIT => Outcome::Done(self.oracle_audit(body, room)),
            req::ORACLE_EPOCH => Outcome::Done(self.oracle_epoch(body)),
            _ => Outcome::Done(self.stats(room)),
        }
    }

    fn set_devtab(&self, body: &[u8]) -> Response {
        let Some(s) = w::read_obj::<w::SetDevtab>(body) else {
            return Response::status(Status::BadRequest);
        };
        match self
            .iommu
            .set_device_table(s.dev_table_base.to_native(), s.control.to_native())
        {
            Ok(()) => Response::ok(Vec::new()),
            Err(RegError::Reserved { .. }) => Response::status(Status::BadRequest),
            Err(RegError::TableOutsideRam { .. }) => Response::status(Status::OutOfRange),
        }
    }

    fn commands(&self, body: &[u8], gpa_of: &dyn Fn(usize) -> u64) -> Response {
        let Some(h) = w::read_obj::<w::CommandsHdr>(body) else {
            return Response::status(Status::BadRequest);
        };
        let count = h.count.to_native();
        if h.reserved.to_native() != 0
            || count == 0
            || count > w::MAX_COMMANDS
            || body.len() != 8 + 16 * count as usize
        {
            return Response::status(Status::BadRequest);
        }
        if !self.ready() {
            return Response::status(Status::NotReady);
        }
        let cmds: Vec<(u64, [u8; 16])> = body[8..]
            .chunks_exact(16)
            .enumerate()
            .map(|(i, c)| {
                let mut raw = [0u8; 16];
                raw.copy_from_slice(c);
                // The command's GPA: where it sits in this request's buffer.
                (gpa_of(8 + 8 + 16 * i), raw)
            })
            .collect();
        let r = self.iommu.execute(&cmds);
        let mut resp = w::CommandsResp {
            executed: (r.executed as u32).into(),
            comp_wait_int: r.comp_wait_int.into(),
            illegal_gpa: 0.into(),
        };
        let status = match r.illegal {
            Some((i, gpa, _)) => {
                resp.executed = (i as u32).into();
                resp.illegal_gpa = gpa.into();
                Status::IllegalCommand
            }
            None => Status::Ok,
        };
        Response {
            status,
            body: bytes_of(&resp),
        }
    }

    fn endpoint(&self, body: &[u8], room: usize) -> Outcome {
        let done = |s| Outcome::Done(Response::status(s));
        let Some(e) = w::read_obj::<w::Endpoint>(body) else {
            return done(Status::BadRequest);
        };
        let len = e.len.to_native();
        let data = &body[24..];
        let ok_len = match e.op {
            ep::OP_TRANSLATE => len == 0 && data.is_empty(),
            ep::OP_READ => (1..=ep::MAX_LEN).contains(&len) && data.is_empty(),
            ep::OP_WRITE => (1..=ep::MAX_LEN).contains(&len) && data.len() == len as usize,
            _ => false,
        };
        if !ok_len || e.flags & !ep::F_MASK != 0 || e.reserved.to_native() != 0 {
            return done(Status::BadRequest);
        }
        if e.op == ep::OP_READ && room < 16 + len as usize {
            return done(Status::BadRequest);
        }
        let (devid, pasid, va) = (e.devid.to_native(), e.pasid.to_native(), e.va.to_native());
        if pasid >> 16 != 0 || self.iommu.endpoint(devid).is_none() {
            return done(Status::OutOfRange);
        }
        if !self.ready() {
            return done(Status::NotReady);
        }
        self.endpoint_requests.fetch_add(1, Ordering::Relaxed);
        let iommu = self.iommu.clone();
        let flags = access_flags(e.flags);
        let op = e.op;
        let wdata = data.to_vec();
        Outcome::Deferred(Box::new(move || {
            let mut resp = w::EndpointResp::default();
            let mut out = Vec::new();
            let res = match op {
                ep::OP_TRANSLATE => iommu.ats_translate(devid, pasid, va, flags).map(|c| {
                    resp.ats = c.encode().into();
                }),
                ep::OP_READ => {
                    out = vec![0u8; len as usize];
                    iommu.dma_read(devid, pasid, va, flags, &mut out).map(|r| {
                        resp.ats = r.completion.encode().into();
                        resp.page_requests = r.page_requests.into();
                    })
                }
                _ => iommu.dma_write(devid, pasid, va, flags, &wdata).map(|r| {
                    resp.ats = r.completion.encode().into();
                    resp.page_requests = r.page_requests.into();
                }),
            };
            let mut body = bytes_of(&resp);
            match res {
                Ok(()) => {
                    body.extend_from_slice(&out);
                    Response::ok(body)
                }
                Err(e) => {
                    log::debug!("ENDPOINT {devid:#06x} pasid {pasid} va {va:#x}: {e}");
                    Response {
                        status: access_status(&e),
                        body,
                    }
                }
            }
        }))
    }

    fn stream_start(&self, body: &[u8]) -> Response {
        let Some(s) = w::read_obj::<w::StreamStart>(body) else {
            return Response::status(Status::BadRequest);
        };
        let (va, len, stride) = (s.va.to_native(), s.len.to_native(), s.stride.to_native());
        let weights = [s.read_weight, s.write_weight, s.translate_weight];
        let follow = s.mode == w::STREAM_MODE_FOLLOW;
        let range_ok = va % 8 == 0 && len >= 8 && stride >= 8 && stride % 8 == 0;
        if s.flags & !ep::F_MASK != 0
            || (s.mode != w::STREAM_MODE_RANGE && !follow)
            || s.reserved2 != 0
            || !(follow || range_ok)
            || weights.iter().all(|&w| w == 0)
        {
            return Response::status(Status::BadRequest);
        }
        let (devid, pasid) = (s.devid.to_native(), s.pasid.to_native());
        if pasid >> 16 != 0 || self.iommu.endpoint(devid).is_none() {
            return Response::status(Status::OutOfRange);
        }
        if !self.ready() {
            return Response::status(Status::NotReady);
        }
        let p = StreamParams {
            devid,
            flags: access_flags(s.flags),
            pasid,
            va,
            len,
            stride,
            weights,
            rate: s.rate.to_native(),
            duration_ms: s.duration_ms.to_native(),
            write_value: s.write_value.to_native(),
            follow,
        };
        match self.streams.start(self.iommu.clone(), p) {
            Ok(id) => Response::ok(bytes_of(&w::StreamStartResp {
                stream_id: id.into(),
                reserved: 0.into(),
            })),
            Err(StartError::TooMany) => Response::status(Status::NoResource),
            Err(StartError::Spawn) => Response::status(Status::DeviceError),
        }
    }

    fn stream_stop(&self, body: &[u8]) -> Outcome {
        let done = |s| Outcome::Done(Response::status(s));
        let Some(s) = w::read_obj::<w::StreamStop>(body) else {
            return done(Status::BadRequest);
        };
        let (id, flags) = (s.stream_id.to_native(), s.flags.to_native());
        if flags & !w::STREAM_STOP_F_REPORT != 0 {
            return done(Status::BadRequest);
        }
        if flags & w::STREAM_STOP_F_REPORT != 0 {
            return match self.streams.report(id) {
                Some(snap) => Outcome::Done(Response::ok(bytes_of(&stream_counts(&snap)))),
                None => done(Status::OutOfRange),
            };
        }
        match self.streams.release(id) {
            // Joining may wait for an access blocked on a page request: not on this thread.
            Some(r) => Outcome::Deferred(Box::new(move || {
                Response::ok(bytes_of(&stream_counts(&r.finish())))
            })),
            None => done(Status::OutOfRange),
        }
    }

    fn oracle_body(counts: [u64; 8], recs: &[Finding], room: usize) -> Vec<u8> {
        let fit = room.saturating_sub(72) / 64;
        let recs = &recs[..recs.len().min(fit)];
        let mut resp = w::OracleResp {
            nrecords: (recs.len() as u32).into(),
            ..Default::default()
        };
        for (d, c) in resp.count.iter_mut().zip(counts) {
            *d = c.into();
        }
        let mut body = bytes_of(&resp);
        for f in recs {
            body.extend_from_slice(finding(f).as_slice());
        }
        body
    }

    fn oracle_read(&self, body: &[u8], room: usize) -> Response {
        let Some(r) = w::read_obj::<w::OracleRead>(body) else {
            return Response::status(Status::BadRequest);
        };
        let (max, flags) = (r.max_records.to_native(), r.flags.to_native());
        if max > w::ORACLE_MAX_RECORDS || flags & !w::ORACLE_READ_F_CLEAR != 0 {
            return Response::status(Status::BadRequest);
        }
        let fit = (room.saturating_sub(72) / 64).min(max as usize);
        let snap = self
            .iommu
            .oracle()
            .read(fit, flags & w::ORACLE_READ_F_CLEAR != 0);
        let mut counts = [0u64; 8];
        counts[..6].copy_from_slice(&snap.counts);
        Response::ok(Self::oracle_body(counts, &snap.records, room))
    }

    fn oracle_audit(&self, body: &[u8], room: usize) -> Response {
        let Some(a) = w::read_obj::<w::OracleAudit>(body) else {
            return Response::status(Status::BadRequest);
        };
        let max = a.max_records.to_native();
        if max > w::ORACLE_MAX_RECORDS {
            return Response::status(Status::BadRequest);
        }
        let fit = (room.saturating_sub(72) / 64).min(max as usize);
        match self.iommu.audit(
            a.pasid.to_native(),
            a.va.to_native(),
            a.len.to_native(),
            fit,
        ) {
            Ok((recs, n)) => {
                let mut counts = [0u64; 8];
                counts[4] = n;
                Response::ok(Self::oracle_body(counts, &recs, room))
            }
            Err(e) => Response::status(access_status(&e)),
        }
    }

    fn oracle_epoch(&self, body: &[u8]) -> Response {
        let Some(e) = w::read_obj::<w::OracleEpoch>(body) else {
            return Response::status(Status::BadRequest);
        };
        let gpa = e.gpa.to_native();
        if gpa % 8 != 0 {
            return Response::status(Status::BadRequest);
        }
        if gpa != 0 && iommu_dev::mem::load_u64(&self.memory(), gpa).is_err() {
            return Response::status(Status::OutOfRange);
        }
        self.iommu.oracle().set_epoch_gpa(gpa);
        Response::ok(Vec::new())
    }

    fn stats(&self, room: usize) -> Response {
        let all = self.counters();
        let n = all.len().min(room.saturating_sub(8) / 8);
        let mut body = bytes_of(&w::StatsHdr {
            count: (n as u32).into(),
            reserved: 0.into(),
        });
        for (_, v) in &all[..n] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        Response::ok(body)
    }
}
