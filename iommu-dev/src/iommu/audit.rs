//! The coherence oracle's check of each translated access, and the audit of
//! every cached translation against the tables in memory.

use super::access::Access;
use super::types::{AccessError, TraceEvent};
use super::Iommu;
use crate::dte::{gcr3_lookup, Dte};
use crate::mem::{self, Mem};
use crate::oracle::{classify, Finding, Rule, Source};
use crate::walker::{self, AdUpdate, Perms, Request};

impl Iommu {
    /// The current leaf for (devid, PASID, va) read without side effects:
    /// (page PA, writable, dirty, entry); None when not mapped now.
    fn current_leaf(
        &self,
        mem: &Mem,
        devid: u16,
        pasid: u32,
        va: u64,
    ) -> Option<(u64, Perms, bool, u64)> {
        let regs = *self.regs.read().unwrap();
        let dt = regs.devtab?;
        let dte = Dte::read(mem, dt.base, devid)
            .ok()?
            .decode(self.cfg.five_level, true)
            .ok()?;
        let cr3 = gcr3_lookup(mem, dte.gcr3_root, dte.glx, pasid).ok()?;
        let levels = if dte.five_level { 5 } else { 4 };
        let any = Request {
            write: false,
            exec: false,
            privileged: true,
        };
        let t = walker::walk(mem, cr3, levels, va, any, AdUpdate::ReadOnly).ok()?;
        Some((t.pa(va) & !0xfff, t.perms, t.dirty, t.leaf))
    }

    fn epoch(&self, mem: &Mem) -> u64 {
        match self.oracle.epoch_gpa() {
            0 => 0,
            gpa => mem::load_u64(mem, gpa).unwrap_or(0),
        }
    }

    pub(super) fn oracle_check(&self, mem: &Mem, a: &Access, write: bool, pa: u64, source: Source) {
        let Access {
            devid, pasid, va, ..
        } = *a;
        let cur = self.current_leaf(mem, devid, pasid, va);
        let Some(rule) = classify(
            pa & !0xfff,
            write,
            cur.map(|(p, perms, d, e)| (p, perms.write, d, e)),
        ) else {
            return;
        };
        let f = Finding {
            rule,
            devid,
            source,
            pasid,
            write,
            va,
            cached_pa: pa,
            current_pte: cur.map_or(0, |c| c.3),
            seq: self.oracle.next_seq(),
            epoch: self.epoch(mem),
        };
        self.trace(TraceEvent::Finding(f));
        self.oracle.record(f);
    }

    /// Audit: every cached translation of `pasid` overlapping `[va, va+len)`
    /// in the ATCs, the IOTLB and the walk cache must agree with the tables
    /// in memory now. Returns the disagreements (at most `max`) and their count.
    pub fn audit(
        &self,
        pasid: u32,
        va: u64,
        len: u64,
        max: usize,
    ) -> Result<(Vec<Finding>, u64), AccessError> {
        Self::check_pasid(pasid)?;
        let mem = self.memory();
        let end = va.saturating_add(len);
        let mut out = Vec::new();
        let mut count = 0u64;
        let epoch = self.epoch(&mem);
        let mut report = |f: Finding| {
            count += 1;
            if out.len() < max {
                let f = Finding {
                    seq: self.oracle.next_seq(),
                    epoch,
                    ..f
                };
                self.trace(TraceEvent::Finding(f));
                out.push(f);
            }
        };
        let stale =
            |devid: u16, source: Source, va: u64, cached_pa: u64, current_pte: u64| Finding {
                rule: Rule::Stale,
                devid,
                source,
                pasid,
                write: false,
                va,
                cached_pa,
                current_pte,
                seq: 0,
                epoch: 0,
            };
        // Check a cached leaf (page by page inside the audited range).
        let check_leaf =
            |devid_for_tables: u16, base: u64, size_log2: u8, pa_base: u64, w: bool, user: bool| {
                let lo = base.max(va & !0xfff);
                let hi = (base + ((1u64 << size_log2) - 1)).min(end.saturating_sub(1));
                let mut bad = Vec::new();
                let mut p = lo & !0xfff;
                while p <= hi {
                    let cached = pa_base + (p - base);
                    match self.current_leaf(&mem, devid_for_tables, pasid, p) {
                        None => bad.push((p, cached, 0)),
                        Some((pa, perms, dirty, e)) => {
                            if pa != cached
                                || (w && (!perms.write || !dirty))
                                || (user && !perms.user)
                            {
                                bad.push((p, cached, e));
                            }
                        }
                    }
                    p = match p.checked_add(0x1000) {
                        Some(n) => n,
                        None => break,
                    };
                }
                bad
            };
        // Each cache stays locked while its entries are checked (for the ATC
        // the read side, which an invalidation waits for): an entry reported
        // was still cached when its PTE was read.
        for ep in &self.endpoints {
            let st = ep.gate.read();
            for e in st.atc.entries(pasid, va, len) {
                let c = e.completion;
                for (p, cached, pte) in check_leaf(
                    ep.devid,
                    e.va_base,
                    c.size_log2,
                    c.pa_base,
                    c.w,
                    !c.privileged,
                ) {
                    report(stale(ep.devid, Source::Atc, p, cached, pte));
                }
            }
        }
        // IOTLB and walk cache: tables come from an endpoint whose DTE has the domain.
        let regs = *self.regs.read().unwrap();
        let domain_dev = |domain: u16| {
            let dt = regs.devtab?;
            self.endpoints
                .iter()
                .find(|ep| {
                    Dte::read(&mem, dt.base, ep.devid)
                        .ok()
                        .and_then(|d| d.decode(self.cfg.five_level, true).ok())
                        .is_some_and(|d| d.domain_id == domain)
                })
                .map(|ep| ep.devid)
        };
        let tlb = self.iotlb.lock().unwrap();
        for (tag, e) in tlb.entries(pasid, va, len) {
            match domain_dev(tag.domain_id) {
                Some(dev) => {
                    for (p, cached, pte) in check_leaf(
                        dev,
                        e.va_base,
                        e.size_log2,
                        e.pa_base,
                        e.perms.write && e.dirty,
                        e.perms.user,
                    ) {
                        report(stale(0xffff, Source::Iotlb, p, cached, pte));
                    }
                }
                None => report(stale(0xffff, Source::Iotlb, e.va_base, e.pa_base, 0)),
            }
        }
        drop(tlb);
        let pwc = self.pwc.lock().unwrap();
        for (_, base, e) in pwc.entries(pasid, va, len) {
            let now = mem::load_u64(&mem, e.entry.gpa).unwrap_or(0);
            let ignore = walker::PTE_A | walker::PTE_D;
            if (now & !ignore) != (e.entry.value & !ignore) {
                report(stale(
                    0xffff,
                    Source::WalkCache,
                    base.max(va),
                    e.next_table,
                    now,
                ));
            }
        }
        Ok((out, count))
    }
}
