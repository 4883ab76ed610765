//! Endpoint accesses: ATS translation requests, DMA through the ATC (or
//! untranslated through the IOTLB), and PRI page requests.

use super::port::Tally;
use super::translate::{TableReadFailed, Xlate};
use super::types::{
    inc, AccessError, AccessFlags, AccessReport, Endpoint, PermissionMiss, TraceEvent,
};
use super::Iommu;
use crate::ats::{AtsCompletion, PRG_INVALID, PRG_SUCCESS};
use crate::cache::Tag;
use crate::event::{self, flag, Event, PprEntry};
use crate::fault::{apply_delay, FaultAction, FaultPoint};
use crate::mem::{Mem, Ram};
use crate::oracle::Source;
use crate::regs::control;
use crate::srange::SRange;
use crate::walker::{Dirty, Request};

/// How often one access retranslates (page requests, overtaking invalidations).
const MAX_RETRANSLATIONS: u32 = 8;

/// What one access is about: the requesting device, its PASID, the VA
/// (of the page at hand) and the device-side flags.
#[derive(Debug, Clone, Copy)]
pub(super) struct Access {
    pub(super) devid: u16,
    pub(super) pasid: u32,
    pub(super) va: u64,
    pub(super) flags: AccessFlags,
}

impl Access {
    pub(super) fn new(devid: u16, pasid: u32, va: u64, flags: AccessFlags) -> Self {
        Access {
            devid,
            pasid,
            va,
            flags,
        }
    }
}

impl Iommu {
    /// An ATS translation request from `devid` (§8.5 steps 1-2): what the
    /// IOMMU answers. Faults are R=W=0 completions, not errors.
    fn ats_request(&self, mem: &Mem, a: &Access) -> Result<AtsCompletion, AccessError> {
        let Access {
            devid,
            pasid,
            va,
            flags,
        } = *a;
        inc(&self.stats.ats_requests);
        let dte = self.dte(mem, a, true, false)?;
        let gt_en = self.control() & control::GT_EN != 0;
        if !dte.v || !dte.tv || !dte.iotlb || !dte.gv || !gt_en {
            let kind = if gt_en {
                event::IDR_TRANSLATION_NOT_ALLOWED
            } else {
                event::IDR_TRANSLATION_DISABLED
            };
            self.log_event(Event::invalid_device_request(
                devid,
                pasid,
                flag::TR | flag::GN,
                kind,
                va,
            ));
            return Err(AccessError::Device { va });
        }
        let req = Request {
            write: false,
            exec: flags.exec,
            privileged: flags.privileged,
        };
        let dirty = if flags.no_write {
            Dirty::Never
        } else {
            Dirty::IfWritable
        };
        let c = match self.translate(mem, a, &dte, req, dirty, true) {
            Err(TableReadFailed) => return Err(AccessError::Device { va }),
            Ok(Xlate::Fault) => {
                inc(&self.stats.ats_faults);
                AtsCompletion::fault(12)
            }
            Ok(Xlate::Ok(e)) => AtsCompletion {
                r: true,
                w: e.perms.write && !flags.no_write,
                u: false,
                exe: flags.exec && !e.perms.nx,
                privileged: flags.privileged,
                global: false,
                pa_base: e.pa_base,
                size_log2: e.size_log2,
            },
        };
        self.trace(TraceEvent::AtsRequest {
            devid,
            pasid,
            va,
            completion: c,
        });
        Ok(c)
    }

    /// The atc_fill point: drop skips the fill; delay stores it late (an
    /// invalidation meanwhile still suppresses it through the gate's
    /// generation).
    fn atc_fill_allowed(&self, devid: u16, pasid: u32) -> bool {
        apply_delay(
            self.faults
                .check(FaultPoint::AtcFill, Some(devid), Some(pasid)),
        )
        .is_none()
    }

    fn endpoint_checked(&self, devid: u16, pasid: u32) -> Result<&Endpoint, AccessError> {
        Self::check_pasid(pasid)?;
        self.endpoint(devid).ok_or(AccessError::NoEndpoint(devid))
    }

    /// ENDPOINT TRANSLATE: a translation request whose successful completion
    /// the endpoint stores in its ATC.
    pub fn ats_translate(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        let a = Access::new(devid, pasid, va, flags);
        self.ats_translate_in(&self.memory(), &a)
    }

    pub(super) fn ats_translate_in(
        &self,
        mem: &Mem,
        a: &Access,
    ) -> Result<AtsCompletion, AccessError> {
        let Access {
            devid, pasid, va, ..
        } = *a;
        let ep = self.endpoint_checked(devid, pasid)?;
        let gen = ep.gate.read().gen;
        let c = self.ats_request(mem, a)?;
        if !c.is_fault() && self.atc_fill_allowed(devid, pasid) {
            ep.gate.fill(gen, pasid, va & !0xfff, c);
        }
        Ok(c)
    }

    /// Endpoint DMA read through the ATC.
    pub fn dma_read(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut [u8],
    ) -> Result<AccessReport, AccessError> {
        let mut tally = Tally::default();
        let a = Access::new(devid, pasid, va, flags);
        let r = self.dma(
            &Ram::new(self.memory().into_inner()),
            &a,
            Buf::Read(buf),
            &mut tally,
        );
        tally.flush(self);
        r
    }

    /// Endpoint DMA write through the ATC.
    pub fn dma_write(
        &self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        data: &[u8],
    ) -> Result<AccessReport, AccessError> {
        let mut tally = Tally::default();
        let a = Access::new(devid, pasid, va, flags);
        let r = self.dma(
            &Ram::new(self.memory().into_inner()),
            &a,
            Buf::Write(data),
            &mut tally,
        );
        tally.flush(self);
        r
    }

    pub(super) fn dma(
        &self,
        mem: &Ram,
        a: &Access,
        mut buf: Buf<'_>,
        tally: &mut Tally,
    ) -> Result<AccessReport, AccessError> {
        let Access {
            devid,
            pasid,
            va,
            flags,
        } = *a;
        let flags = AccessFlags {
            no_write: flags.no_write && !buf.is_write(),
            ..flags
        };
        Self::check_pasid(pasid)?;
        let idx = self
            .endpoints
            .iter()
            .position(|e| e.devid == devid)
            .ok_or(AccessError::NoEndpoint(devid))?;
        let ep = &self.endpoints[idx];
        let mut rep = AccessReport::default();
        let len = buf.len();
        let mut done = 0usize;
        while done < len {
            let cur = va.wrapping_add(done as u64);
            let n = (0x1000 - (cur & 0xfff) as usize).min(len - done);
            let page = Access::new(devid, pasid, cur, flags);
            let r = self.access_page(mem, ep, &page, &mut buf.range(done, n), &mut rep);
            if r.is_err() {
                tally.add(idx, &rep);
            }
            r?;
            done += n;
        }
        tally.add(idx, &rep);
        Ok(rep)
    }

    fn access_page(
        &self,
        mem: &Ram,
        ep: &Endpoint,
        a: &Access,
        buf: &mut Buf<'_>,
        rep: &mut AccessReport,
    ) -> Result<(), AccessError> {
        let Access {
            pasid, va, flags, ..
        } = *a;
        let write = buf.is_write();
        if flags.untranslated {
            return self.untranslated_access(mem, a, buf, rep);
        }
        let mut rounds = 0;
        loop {
            // Hit: the data moves while the ATC's read side is held, so an
            // invalidation of this entry waits for the access (§8.3).
            let gen = {
                let st = ep.gate.read();
                if let Some(e) = st
                    .atc
                    .lookup(pasid, va)
                    .filter(|e| e.completion.allows(write))
                {
                    rep.atc_hits += 1;
                    rep.completion = e.completion;
                    return self.move_data(mem, a, e.pa(va), Source::Atc, buf);
                }
                if flags.atc_only {
                    return Err(AccessError::AtcMiss { va });
                }
                st.gen
            };
            rep.atc_misses += 1;
            let c = self.ats_request(mem, a)?;
            rep.completion = c;
            if c.allows(write) {
                if self.atc_fill_allowed(ep.devid, pasid) {
                    ep.gate.fill(gen, pasid, va, c);
                }
                // Use the completion unless an invalidation overtook it.
                let st = ep.gate.read();
                if st.gen == gen {
                    let pa = c.pa_base | (va & ((1u64 << c.size_log2) - 1));
                    return self.move_data(mem, a, pa, Source::Atc, buf);
                }
                rounds += 1;
                if rounds > MAX_RETRANSLATIONS {
                    return Err(AccessError::Fault { va });
                }
                continue;
            }
            rounds += 1;
            if flags.no_pri || rounds > MAX_RETRANSLATIONS {
                return Err(AccessError::Fault { va });
            }
            rep.page_requests += 1;
            match self.page_request(mem, ep, a, write)? {
                PRG_SUCCESS => continue,
                _ => return Err(AccessError::Fault { va }),
            }
        }
    }

    /// The translated access itself, with the oracle's check while it is in flight.
    fn move_data(
        &self,
        mem: &Ram,
        a: &Access,
        pa: u64,
        source: Source,
        buf: &mut Buf<'_>,
    ) -> Result<(), AccessError> {
        let write = buf.is_write();
        match buf {
            Buf::Read(b) => mem.read(pa, b)?,
            Buf::Write(d) => mem.write(pa, d)?,
        }
        if self.oracle.enabled() {
            self.oracle_check(mem, a, write, pa, source);
        }
        Ok(())
    }

    fn untranslated_access(
        &self,
        mem: &Ram,
        a: &Access,
        buf: &mut Buf<'_>,
        rep: &mut AccessReport,
    ) -> Result<(), AccessError> {
        let Access {
            devid,
            pasid,
            va,
            flags,
        } = *a;
        let write = buf.is_write();
        let dte = self.dte(mem, a, false, write)?;
        if !dte.v || !dte.tv || !dte.gv || self.control() & control::GT_EN == 0 {
            // No guest translation for PASID-tagged DMA: target abort.
            self.log_event(Event::io_page_fault(
                devid,
                pasid,
                flag::GN | if write { flag::RW } else { 0 },
                va,
            ));
            return Err(AccessError::Device { va });
        }
        let req = Request {
            write,
            exec: flags.exec,
            privileged: flags.privileged,
        };
        match self.translate(mem, a, &dte, req, Dirty::OnWrite, false) {
            Err(TableReadFailed) => Err(AccessError::Device { va }),
            Ok(Xlate::Fault) => Err(AccessError::Fault { va }),
            Ok(Xlate::Ok(e)) => {
                let pa = e.pa_base | (va & ((1u64 << e.size_log2) - 1));
                rep.completion = AtsCompletion {
                    r: true,
                    w: e.perms.write,
                    pa_base: e.pa_base,
                    size_log2: e.size_log2,
                    ..Default::default()
                };
                self.move_data(mem, a, pa, Source::Iotlb, buf)
            }
        }
    }

    /// PRI: post a page request and wait for its PRG response (§8.4).
    fn page_request(
        &self,
        mem: &Mem,
        ep: &Endpoint,
        a: &Access,
        write: bool,
    ) -> Result<u8, AccessError> {
        let Access {
            pasid, va, flags, ..
        } = *a;
        let prgi = {
            let mut st = ep.pri.state.lock().unwrap();
            if st.stopped {
                return Err(AccessError::Fault { va });
            }
            st.alloc().ok_or(AccessError::Fault { va })?
        };
        inc(&self.stats.page_requests);
        self.trace(TraceEvent::PageRequest {
            devid: ep.devid,
            pasid,
            va,
            prgi,
            write,
        });
        let entry = PprEntry {
            devid: ep.devid,
            pasid,
            tag: prgi | event::PPR_TAG_LAST,
            flags: event::ppr_flag::GN
                | event::ppr_flag::READ
                | if write { event::ppr_flag::WRITE } else { 0 }
                | if flags.exec { event::ppr_flag::EXEC } else { 0 }
                | if flags.privileged {
                    0
                } else {
                    event::ppr_flag::US
                },
            addr: va & !0xfff,
        };
        let ctl = self.control();
        let dte = self.dte(mem, a, true, write);
        let dte_ppr_ok = dte
            .as_ref()
            .is_ok_and(|d| d.ppr || ctl & control::EPH_EN == 0);
        if let (Ok(d), PermissionMiss::Rewalk) = (&dte, self.cfg.ats_permission_miss) {
            // The page request is the device's fault report: as an x86 TLB
            // drops the entry of a faulting address (SDM 4.10.4.1), the
            // IOMMU drops its IOTLB entry for the page, so the translation
            // request after PRI Success walks the tables and sees a
            // permission the kernel raised without invalidating.
            let tag = Tag {
                domain_id: d.domain_id,
                pasid,
            };
            self.iotlb
                .lock()
                .unwrap()
                .invalidate(tag, &SRange::aligned(va, 12));
        }
        let dropped = apply_delay(self.faults.check(
            FaultPoint::PriRequest,
            Some(ep.devid),
            Some(pasid),
        )) == Some(FaultAction::Drop);
        if ctl & control::PPR_LOG_EN == 0 || ctl & control::PPR_EN == 0 || !dte_ppr_ok {
            // PRI not accepted: INVALID_PPR_REQUEST in the PPR-like layout
            // (§5.3, §9) and an Invalid Request answer from the IOMMU itself.
            self.log_entry(entry.encode_invalid());
            ep.pri.respond(prgi, PRG_INVALID);
        } else if !dropped {
            self.ppr.push(entry.encode());
        }
        match ep.pri.wait(prgi, self.cfg.pri_timeout) {
            Some(code) => Ok(code),
            None => Err(AccessError::PriTimeout { va }),
        }
    }
}

pub(super) enum Buf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buf<'_> {
    /// The `n` bytes at `off`: the part of the buffer one page takes.
    fn range(&mut self, off: usize, n: usize) -> Buf<'_> {
        match self {
            Buf::Read(b) => Buf::Read(&mut b[off..off + n]),
            Buf::Write(d) => Buf::Write(&d[off..off + n]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Buf::Read(b) => b.len(),
            Buf::Write(d) => d.len(),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self, Buf::Write(_))
    }
}
