//! [`Port`]: a device thread's own path to the IOMMU and memory, with its
//! ATC hit/miss tally added to the shared counters in batches.

use std::sync::atomic::Ordering;

use super::access::{Access, Buf};
use super::types::{AccessError, AccessFlags, AccessReport};
use super::Iommu;
use crate::ats::AtsCompletion;
use crate::mem::Ram;

impl Iommu {
    /// A device's own path to the IOMMU and memory, for a thread that makes
    /// many accesses: it keeps the memory map until the frontend changes it.
    pub fn port(&self) -> Port<'_> {
        Port {
            iommu: self,
            gen: self.mem_gen.load(Ordering::Acquire),
            mem: Ram::new(self.memory().into_inner()),
            tally: Tally::default(),
        }
    }
}

/// ATC hits and misses per endpoint, kept locally and added to the shared
/// counters in batches (one atomic add per batch, not per access).
#[derive(Debug, Default)]
pub(super) struct Tally {
    counts: Vec<(u32, u32)>,
    pending: u32,
}

impl Tally {
    const BATCH: u32 = 1024;

    pub(super) fn add(&mut self, idx: usize, rep: &AccessReport) {
        if self.counts.len() <= idx {
            self.counts.resize(idx + 1, (0, 0));
        }
        let c = &mut self.counts[idx];
        c.0 += rep.atc_hits;
        c.1 += rep.atc_misses;
        self.pending += 1;
    }

    fn flush_if_due(&mut self, iommu: &Iommu) {
        if self.pending >= Self::BATCH {
            self.flush(iommu);
        }
    }

    pub(super) fn flush(&mut self, iommu: &Iommu) {
        for (ep, c) in iommu.endpoints.iter().zip(self.counts.iter_mut()) {
            ep.gate.count(c.0, c.1);
            *c = (0, 0);
        }
        self.pending = 0;
    }
}

/// See [`Iommu::port`]. ATC hit/miss counters reach `Iommu::counters` in
/// batches of 1024 accesses and when the port is dropped.
#[derive(Debug)]
pub struct Port<'a> {
    iommu: &'a Iommu,
    gen: u64,
    mem: Ram,
    tally: Tally,
}

impl Drop for Port<'_> {
    fn drop(&mut self) {
        self.tally.flush(self.iommu);
    }
}

impl Port<'_> {
    fn refresh(&mut self) {
        let gen = self.iommu.mem_gen.load(Ordering::Acquire);
        if gen != self.gen {
            self.mem = Ram::new(self.iommu.memory().into_inner());
            self.gen = gen;
        }
    }

    /// As [`Iommu::ats_translate`].
    pub fn ats_translate(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
    ) -> Result<AtsCompletion, AccessError> {
        self.refresh();
        let a = Access::new(devid, pasid, va, flags);
        self.iommu.ats_translate_in(&self.mem, &a)
    }

    /// As [`Iommu::dma_read`].
    pub fn dma_read(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: &mut [u8],
    ) -> Result<AccessReport, AccessError> {
        self.dma(devid, pasid, va, flags, Buf::Read(buf))
    }

    /// As [`Iommu::dma_write`].
    pub fn dma_write(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        data: &[u8],
    ) -> Result<AccessReport, AccessError> {
        self.dma(devid, pasid, va, flags, Buf::Write(data))
    }

    fn dma(
        &mut self,
        devid: u16,
        pasid: u32,
        va: u64,
        flags: AccessFlags,
        buf: Buf<'_>,
    ) -> Result<AccessReport, AccessError> {
        let iommu = self.iommu;
        self.refresh();
        let a = Access::new(devid, pasid, va, flags);
        let r = iommu.dma(&self.mem, &a, buf, &mut self.tally);
        self.tally.flush_if_due(iommu);
        r
    }
}
