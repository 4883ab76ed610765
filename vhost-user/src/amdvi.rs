//! Requests of the amdvi protocol executed on the `iommu-dev` model. This
//! module knows the wire format and the model; it knows nothing of virtqueues
//! (see `vhu_amdvi.rs`) so it can be driven directly by tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use iommu_dev::{control, AccessFlags, Finding, Iommu, Mem};
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic};

use crate::config::DaemonConfig;
use crate::request_error::{access_status, RequestError};
use crate::stream::{Snapshot, StreamParams, Streams};
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
        self.dispatch(data, gpa_of, room).unwrap_or_else(|e| {
            log::debug!("request refused ({:?}): {e}", e.status());
            Outcome::Done(Response::status(e.status()))
        })
    }

    fn dispatch(
        &self,
        data: &[u8],
        gpa_of: &dyn Fn(usize) -> u64,
        room: usize,
    ) -> Result<Outcome, RequestError> {
        let hdr = w::read_obj::<w::ReqHdr>(data).ok_or(RequestError::Truncated)?;
        if hdr.reserved.to_native() != 0 {
            return Err(RequestError::Reserved("request header"));
        }
        let body = &data[size_of::<w::ReqHdr>()..];
        let room = room.saturating_sub(size_of::<w::RespHdr>());
        let ty = hdr.type_.to_native();
        // Fixed-size bodies and the response room each type needs.
        let (body_len, need) = match ty {
            req::INFO => (Some(0), size_of::<w::Info>()),
            req::SET_DEVTAB => (Some(size_of::<w::SetDevtab>()), 0),
            req::COMMANDS => (None, size_of::<w::CommandsResp>()),
            req::ENDPOINT => (None, size_of::<w::EndpointResp>()),
            req::STREAM_START => (
                Some(size_of::<w::StreamStart>()),
                size_of::<w::StreamStartResp>(),
            ),
            req::STREAM_STOP => (
                Some(size_of::<w::StreamStop>()),
                size_of::<w::StreamCounts>(),
            ),
            req::ORACLE_READ => (Some(size_of::<w::OracleRead>()), size_of::<w::OracleResp>()),
            req::ORACLE_AUDIT => (
                Some(size_of::<w::OracleAudit>()),
                size_of::<w::OracleResp>(),
            ),
            req::ORACLE_EPOCH => (Some(size_of::<w::OracleEpoch>()), 0),
            req::STATS => (Some(0), size_of::<w::StatsHdr>()),
            _ => return Err(RequestError::UnknownType(ty)),
        };
        if let Some(want) = body_len.filter(|&n| n != body.len()) {
            return Err(RequestError::BodyLength {
                ty,
                got: body.len(),
                want,
            });
        }
        if room < need {
            return Err(RequestError::NoRoom { ty, room, need });
        }
        Ok(match ty {
            req::INFO => Outcome::Done(Response::ok(bytes_of(&self.info()))),
            req::SET_DEVTAB => Outcome::Done(self.set_devtab(body)?),
            req::COMMANDS => Outcome::Done(self.commands(body, gpa_of)?),
            req::ENDPOINT => self.endpoint(body, room)?,
            req::STREAM_START => Outcome::Done(self.stream_start(body)?),
            req::STREAM_STOP => self.stream_stop(body)?,
            req::ORACLE_READ => Outcome::Done(self.oracle_read(body, room)?),
            req::ORACLE_AUDIT => Outcome::Done(self.oracle_audit(body, room)?),
            req::ORACLE_EPOCH => Outcome::Done(self.oracle_epoch(body)?),
            req::STATS => Outcome::Done(self.stats(room)),
            _ => return Err(RequestError::UnknownType(ty)),
        })
    }

    fn set_devtab(&self, body: &[u8]) -> Result<Response, RequestError> {
        let s = w::read_obj::<w::SetDevtab>(body).ok_or(RequestError::Truncated)?;
        self.iommu
            .set_device_table(s.dev_table_base.to_native(), s.control.to_native())?;
        Ok(Response::ok(Vec::new()))
    }

    fn commands(
        &self,
        body: &[u8],
        gpa_of: &dyn Fn(usize) -> u64,
    ) -> Result<Response, RequestError> {
        const HDR: usize = size_of::<w::CommandsHdr>();
        const CMD: usize = size_of::<w::Command>();
        let h = w::read_obj::<w::CommandsHdr>(body).ok_or(RequestError::Truncated)?;
        let count = h.count.to_native();
        if h.reserved.to_native() != 0 {
            return Err(RequestError::Reserved("COMMANDS header"));
        }
        if count == 0 || count > w::MAX_COMMANDS || body.len() != HDR + CMD * count as usize {
            return Err(RequestError::Invalid("COMMANDS count"));
        }
        if !self.ready() {
            return Err(RequestError::NotReady);
        }
        let cmds: Vec<(u64, w::Command)> = body[HDR..]
            .chunks_exact(CMD)
            .enumerate()
            .map(|(i, c)| {
                let mut raw = w::Command::default();
                raw.copy_from_slice(c);
                // The command's GPA: where it sits in this request's buffer.
                (gpa_of(size_of::<w::ReqHdr>() + HDR + CMD * i), raw)
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
        Ok(Response {
            status,
            body: bytes_of(&resp),
        })
    }

    fn endpoint(&self, body: &[u8], room: usize) -> Result<Outcome, RequestError> {
        let e = w::read_obj::<w::Endpoint>(body).ok_or(RequestError::Truncated)?;
        let len = e.len.to_native();
        let data = &body[size_of::<w::Endpoint>()..];
        let ok_len = match e.op {
            ep::OP_TRANSLATE => len == 0 && data.is_empty(),
            ep::OP_READ => (1..=ep::MAX_LEN).contains(&len) && data.is_empty(),
            ep::OP_WRITE => (1..=ep::MAX_LEN).contains(&len) && data.len() == len as usize,
            _ => false,
        };
        if !ok_len {
            return Err(RequestError::Invalid("ENDPOINT op or length"));
        }
        if e.flags & !ep::F_MASK != 0 {
            return Err(RequestError::Invalid("ENDPOINT flags"));
        }
        if e.reserved.to_native() != 0 {
            return Err(RequestError::Reserved("ENDPOINT body"));
        }
        let need = size_of::<w::EndpointResp>() + len as usize;
        if e.op == ep::OP_READ && room < need {
            return Err(RequestError::NoRoom {
                ty: req::ENDPOINT,
                room,
                need,
            });
        }
        let (devid, pasid, va) = (e.devid.to_native(), e.pasid.to_native(), e.va.to_native());
        self.check_target(devid, pasid)?;
        self.endpoint_requests.fetch_add(1, Ordering::Relaxed);
        let iommu = self.iommu.clone();
        let flags = access_flags(e.flags);
        let op = e.op;
        let wdata = data.to_vec();
        Ok(Outcome::Deferred(Box::new(move || {
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
        })))
    }

    /// An existing endpoint, a 16-bit PASID and an enabled IOMMU.
    fn check_target(&self, devid: u16, pasid: u32) -> Result<(), RequestError> {
        if pasid >> 16 != 0 {
            return Err(RequestError::PasidRange(pasid));
        }
        if self.iommu.endpoint(devid).is_none() {
            return Err(RequestError::NoEndpoint(devid));
        }
        if !self.ready() {
            return Err(RequestError::NotReady);
        }
        Ok(())
    }

    fn stream_start(&self, body: &[u8]) -> Result<Response, RequestError> {
        let s = w::read_obj::<w::StreamStart>(body).ok_or(RequestError::Truncated)?;
        let (va, len, stride) = (s.va.to_native(), s.len.to_native(), s.stride.to_native());
        let weights = [s.read_weight, s.write_weight, s.translate_weight];
        let follow = s.mode == w::STREAM_MODE_FOLLOW;
        let range_ok = va % 8 == 0 && len >= 8 && stride >= 8 && stride % 8 == 0;
        if s.flags & !ep::F_MASK != 0 {
            return Err(RequestError::Invalid("STREAM_START flags"));
        }
        if s.mode != w::STREAM_MODE_RANGE && !follow {
            return Err(RequestError::Invalid("STREAM_START mode"));
        }
        if s.reserved2 != 0 {
            return Err(RequestError::Reserved("STREAM_START body"));
        }
        if !(follow || range_ok) {
            return Err(RequestError::Invalid("STREAM_START range"));
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(RequestError::Invalid("STREAM_START weights"));
        }
        let (devid, pasid) = (s.devid.to_native(), s.pasid.to_native());
        self.check_target(devid, pasid)?;
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
        let id = self.streams.start(self.iommu.clone(), p)?;
        Ok(Response::ok(bytes_of(&w::StreamStartResp {
            stream_id: id.into(),
            reserved: 0.into(),
        })))
    }

    fn stream_stop(&self, body: &[u8]) -> Result<Outcome, RequestError> {
        let s = w::read_obj::<w::StreamStop>(body).ok_or(RequestError::Truncated)?;
        let (id, flags) = (s.stream_id.to_native(), s.flags.to_native());
        if flags & !w::STREAM_STOP_F_REPORT != 0 {
            return Err(RequestError::Invalid("STREAM_STOP flags"));
        }
        if flags & w::STREAM_STOP_F_REPORT != 0 {
            let snap = self.streams.report(id).ok_or(RequestError::NoStream(id))?;
            return Ok(Outcome::Done(Response::ok(bytes_of(&stream_counts(&snap)))));
        }
        let r = self.streams.release(id).ok_or(RequestError::NoStream(id))?;
        // Joining may wait for an access blocked on a page request: not on this thread.
        Ok(Outcome::Deferred(Box::new(move || {
            Response::ok(bytes_of(&stream_counts(&r.finish())))
        })))
    }

    /// Finding records that fit in `room` after the oracle response.
    fn records_fit(room: usize) -> usize {
        room.saturating_sub(size_of::<w::OracleResp>()) / size_of::<w::Finding>()
    }

    fn oracle_body(counts: [u64; 8], recs: &[Finding], room: usize) -> Vec<u8> {
        let recs = &recs[..recs.len().min(Self::records_fit(room))];
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

    fn oracle_read(&self, body: &[u8], room: usize) -> Result<Response, RequestError> {
        let r = w::read_obj::<w::OracleRead>(body).ok_or(RequestError::Truncated)?;
        let (max, flags) = (r.max_records.to_native(), r.flags.to_native());
        if max > w::ORACLE_MAX_RECORDS {
            return Err(RequestError::Invalid("ORACLE_READ max_records"));
        }
        if flags & !w::ORACLE_READ_F_CLEAR != 0 {
            return Err(RequestError::Invalid("ORACLE_READ flags"));
        }
        let fit = Self::records_fit(room).min(max as usize);
        let snap = self
            .iommu
            .oracle()
            .read(fit, flags & w::ORACLE_READ_F_CLEAR != 0);
        let mut counts = [0u64; 8];
        counts[..6].copy_from_slice(&snap.counts);
        Ok(Response::ok(Self::oracle_body(counts, &snap.records, room)))
    }

    fn oracle_audit(&self, body: &[u8], room: usize) -> Result<Response, RequestError> {
        let a = w::read_obj::<w::OracleAudit>(body).ok_or(RequestError::Truncated)?;
        let max = a.max_records.to_native();
        if max > w::ORACLE_MAX_RECORDS {
            return Err(RequestError::Invalid("ORACLE_AUDIT max_records"));
        }
        let fit = Self::records_fit(room).min(max as usize);
        let (recs, n) = self.iommu.audit(
            a.pasid.to_native(),
            a.va.to_native(),
            a.len.to_native(),
            fit,
        )?;
        let mut counts = [0u64; 8];
        counts[4] = n;
        Ok(Response::ok(Self::oracle_body(counts, &recs, room)))
    }

    fn oracle_epoch(&self, body: &[u8]) -> Result<Response, RequestError> {
        let e = w::read_obj::<w::OracleEpoch>(body).ok_or(RequestError::Truncated)?;
        let gpa = e.gpa.to_native();
        if gpa % size_of::<u64>() as u64 != 0 {
            return Err(RequestError::Invalid("ORACLE_EPOCH alignment"));
        }
        if gpa != 0 && iommu_dev::mem::load_u64(&self.memory(), gpa).is_err() {
            return Err(RequestError::EpochOutsideRam(gpa));
        }
        self.iommu.oracle().set_epoch_gpa(gpa);
        Ok(Response::ok(Vec::new()))
    }

    fn stats(&self, room: usize) -> Response {
        let all = self.counters();
        let n = all
            .len()
            .min(room.saturating_sub(size_of::<w::StatsHdr>()) / size_of::<u64>());
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
