//! The IOMMU side of a translation: the DTE lookup through the DTE cache,
//! the IOTLB and walk-cache lookup, the GCR3 and guest table walk with A/D
//! updates, and the cache fill that an overtaking invalidation suppresses.

use std::sync::atomic::Ordering;

use super::access::Access;
use super::types::{inc, AccessError, TraceEvent};
use super::Iommu;
use crate::cache::{Tag, TlbEntry};
use crate::dte::{gcr3_lookup, Dte, DteInfo, Gcr3Fault};
use crate::event::{flag, Event};
use crate::fault::{apply_delay, FaultAction, FaultPoint};
use crate::mem::Mem;
use crate::regs::{control, PASID_BITS};
use crate::walker::{self, AdUpdate, Dirty, Perms, Request, Start, Translation, WalkFault};

/// Outcome of the IOMMU side of an ATS translation request.
pub(super) enum Xlate {
    Ok(TlbEntry),
    /// Translation fault: R=W=0 to the device.
    Fault,
}

/// A table read of the walk failed (outside guest RAM, or an injected
/// `walk_read` failure); PAGE_TAB_HARDWARE_ERROR has been logged and the
/// device sees a completer abort, not a translation fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TableReadFailed;

impl Iommu {
    /// The DTE of the requester (cached, or read and checked); a failure has
    /// been logged as the event hardware would write. Every request the
    /// endpoints make carries a PASID, so events name it with GN=1, and
    /// the request's address (§5.3).
    pub(super) fn dte(
        &self,
        mem: &Mem,
        a: &Access,
        ats: bool,
        write: bool,
    ) -> Result<DteInfo, AccessError> {
        let Access {
            devid, pasid, va, ..
        } = *a;
        let regs = *self.regs.read().unwrap();
        let Some(dt) = regs
            .devtab
            .filter(|_| regs.control & control::IOMMU_EN != 0)
        else {
            return Err(AccessError::NotReady);
        };
        if let Some(d) = self.dte_cache.lock().unwrap().get(devid) {
            return Ok(d);
        }
        let tr = if ats { flag::TR } else { 0 };
        let rw = if write { flag::RW } else { 0 };
        if u32::from(devid) >= dt.entries {
            // No DTE to index: the request is handled as through a DTE
            // with V=0 (§7.1, §9), never cached.
            return Ok(DteInfo::default());
        }
        let gen = self.gen.load(Ordering::Acquire);
        let raw = match Dte::read(mem, dt.base, devid) {
            Ok(d) => d,
            Err(e) => {
                self.log_event(Event::dev_tab_hw_error(devid, tr, e.gpa));
                return Err(AccessError::Device { va });
            }
        };
        match raw.decode(self.cfg.five_level, regs.control & control::EPH_EN != 0) {
            Ok(info) => {
                let mut c = self.dte_cache.lock().unwrap();
                if self.gen.load(Ordering::Acquire) == gen {
                    c.insert(devid, info);
                }
                Ok(info)
            }
            Err(err) => {
                log::warn!("device {devid:#06x}: illegal DTE: {err}");
                // §5.3: DeviceID, PASID with GN, RW, TR, RZ and the address
                // of the request that found the DTE illegal.
                self.log_event(Event::illegal_dte(
                    devid,
                    pasid,
                    flag::GN | flag::RZ | tr | rw,
                    va,
                ));
                Err(AccessError::Device { va })
            }
        }
    }

    /// The IOMMU side of a translation for (devid, PASID): IOTLB, walk cache,
    /// GCR3 and the guest table walk with A/D updates. Faults that hardware
    /// reports are logged here.
    pub(super) fn translate(
        &self,
        mem: &Mem,
        a: &Access,
        dte: &DteInfo,
        req: Request,
        dirty: Dirty,
        ats: bool,
    ) -> Result<Xlate, TableReadFailed> {
        let (devid, pasid, va) = (a.devid, a.pasid, a.va);
        let rw = if req.write { flag::RW } else { 0 };
        let flags_base =
            flag::GN | if ats { flag::TR } else { 0 } | if req.privileged { 0 } else { flag::US };
        // No GCR3 entry: a not-present fault. ATS answers R=W=0 without an
        // event; untranslated DMA logs IO_PAGE_FAULT (GN=1, PASID) unless
        // DTE.SA (§2, §3.5).
        let no_gcr3 = || {
            if !ats && !dte.sa {
                self.log_event(Event::io_page_fault(devid, pasid, flags_base | rw, va));
            }
            Ok(Xlate::Fault)
        };
        // A PASID beyond what the GCR3 table's levels index has no entry.
        if pasid >> (9 * (u32::from(dte.glx) + 1)) != 0 {
            return no_gcr3();
        }
        let tag = Tag {
            domain_id: dte.domain_id,
            pasid,
        };
        let wants_dirty = |e: &TlbEntry| match dirty {
            Dirty::Never => true,
            Dirty::OnWrite => !req.write || e.dirty,
            Dirty::IfWritable => !e.perms.write || e.dirty,
        };
        if let Some(e) = self.iotlb.lock().unwrap().lookup(tag, va) {
            if e.perms.allow(&req) && wants_dirty(&e) {
                inc(&self.stats.iotlb_hits);
                return Ok(Xlate::Ok(e));
            }
        }
        inc(&self.stats.iotlb_misses);
        let levels = if dte.five_level { 5 } else { 4 };
        let gen = self.gen.load(Ordering::Acquire);
        if let Some(FaultAction::Fail) = apply_delay(self.faults.check(
            FaultPoint::WalkRead,
            Some(devid),
            Some(pasid),
        )) {
            self.log_event(Event::page_tab_hw_error(
                devid,
                pasid,
                flags_base,
                dte.gcr3_root,
            ));
            return Err(TableReadFailed);
        }
        let cached = self.pwc.lock().unwrap().lookup(tag, va, levels);
        let start = match cached {
            Some(s) => {
                inc(&self.stats.pwc_hits);
                s
            }
            None => match gcr3_lookup(mem, dte.gcr3_root, dte.glx, pasid) {
                Ok(cr3) => Start {
                    level: levels,
                    table: cr3 & !0xfff & ((1 << 52) - 1),
                    perms: Perms::ALL,
                },
                Err(Gcr3Fault::NotValid) => return no_gcr3(),
                Err(Gcr3Fault::Reserved { .. }) => {
                    self.log_event(Event::io_page_fault(
                        devid,
                        pasid,
                        flags_base | flag::RZ,
                        va,
                    ));
                    return Ok(Xlate::Fault);
                }
                Err(Gcr3Fault::Memory(gpa)) => {
                    self.log_event(Event::page_tab_hw_error(devid, pasid, flags_base, gpa));
                    return Err(TableReadFailed);
                }
            },
        };
        inc(&self.stats.walks);
        let r = walker::walk_from(mem, start, levels, va, req, AdUpdate::Update(dirty));
        self.trace(TraceEvent::Walk {
            devid,
            pasid,
            va,
            result: r.map(|t| (t.pa(va), t.size_log2)),
        });
        let nx = if req.exec { flag::NX } else { 0 };
        match r {
            Ok(t) => {
                self.fill(a, tag, gen, start.perms, &t);
                Ok(Xlate::Ok(TlbEntry::from(&t)))
            }
            Err(WalkFault::Memory { gpa }) => {
                self.log_event(Event::page_tab_hw_error(devid, pasid, flags_base | rw, gpa));
                Err(TableReadFailed)
            }
            Err(WalkFault::Reserved { .. }) => {
                self.log_event(Event::io_page_fault(
                    devid,
                    pasid,
                    flags_base | rw | nx | flag::RZ | flag::PR,
                    va,
                ));
                Ok(Xlate::Fault)
            }
            Err(f) => {
                if !ats && !dte.sa {
                    let pr = if f.present() { flag::PR | flag::PE } else { 0 };
                    self.log_event(Event::io_page_fault(
                        devid,
                        pasid,
                        flags_base | rw | nx | pr,
                        va,
                    ));
                }
                Ok(Xlate::Fault)
            }
        }
    }

    fn fill(&self, a: &Access, tag: Tag, gen: u64, start_perms: Perms, t: &Translation) {
        let Access {
            devid, pasid, va, ..
        } = *a;
        if apply_delay(
            self.faults
                .check(FaultPoint::IotlbFill, Some(devid), Some(pasid)),
        )
        .is_some()
        {
            return;
        }
        let mut iotlb = self.iotlb.lock().unwrap();
        if self.gen.load(Ordering::Acquire) != gen {
            return;
        }
        iotlb.insert(tag, TlbEntry::from(t));
        drop(iotlb);
        let mut pwc = self.pwc.lock().unwrap();
        if self.gen.load(Ordering::Acquire) == gen {
            pwc.insert_walk(tag, va, start_perms, t.uppers());
        }
    }

    pub(super) fn check_pasid(pasid: u32) -> Result<(), AccessError> {
        if pasid >> PASID_BITS != 0 {
            return Err(AccessError::PasidRange(pasid));
        }
        Ok(())
    }
}
