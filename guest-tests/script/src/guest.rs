//! The real device as an execution backend: a private page table bound to
//! the script's PASID through `/dev/amdvi` (amdvi_pt.c), the daemon's
//! endpoints for the device threads, its oracle and audit.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use amdvi_sim::script::Script;
use amdvi_sim::{Backend, BackendError, DmaResult};
use iommu_dev::oracle::{Rule, Source};
use iommu_dev::{AccessError, AtsCompletion, Command, Finding};

use crate::uapi::{self, Access, Info, Oracle, PtCreate, PtInv, PtPage, PtPte};

/// Oracle counts of a run: R1..R4 per access, stale entries by the audit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub accesses: u64,
    pub r: [u64; 4],
    pub stale: u64,
}

/// `/dev/amdvi` with a private page table for one script.
#[derive(Debug)]
pub struct Guest {
    path: String,
    file: Option<File>,
    pasid: u32,
    /// The script's device ids; device i runs on endpoint index i.
    script_devids: Vec<u16>,
    npages: usize,
    pas: Vec<u64>,
    pub levels: u32,
    /// The daemon's device ids of the endpoints used.
    pub devids: Vec<u16>,
    pub counts: Counts,
    /// The first failed ioctl, if any (the run is then not judged).
    pub error: Option<String>,
}

fn ioctl<T>(f: &File, req: u64, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct whose
    // size is the one encoded in `req` (see uapi.rs), and the kernel only
    // reads and writes that many bytes of it.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Guest {
    /// Open the device, check it can run `s`, and set up its initial state.
    pub fn open(path: &str, s: &Script) -> Result<Guest, String> {
        if !s.faults.is_empty() {
            return Err("the script declares fault rules; the daemon's come from its configuration (run it with --config)".into());
        }
        let mut g = Guest {
            path: path.to_string(),
            file: None,
            pasid: s.pasid,
            script_devids: s.devices.iter().map(|d| d.devid).collect(),
            npages: s.pages.len(),
            pas: Vec::new(),
            levels: 0,
            devids: Vec::new(),
            counts: Counts::default(),
            error: None,
        };
        g.setup()?;
        Ok(g)
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("device open")
    }

    fn setup(&mut self) -> Result<(), String> {
        // Closing the old file unbinds its table and flushes the PASID.
        self.file = None;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path))?;
        // SAFETY: Info is plain old data (integers and arrays): all zeroes is valid.
        let mut info: Info = unsafe { std::mem::zeroed() };
        ioctl(&f, uapi::IOC_INFO, &mut info, "INFO")?;
        let n = self.script_devids.len();
        if (info.num_endpoints as usize) < n {
            return Err(format!(
                "the script has {n} devices, the daemon {} endpoints",
                info.num_endpoints
            ));
        }
        self.devids = info.endpoint_devid[..n].to_vec();
        let mut pc = PtCreate {
            pasid: self.pasid,
            endpoint_mask: (1u32 << n) - 1,
            ..Default::default()
        };
        ioctl(&f, uapi::IOC_PT_CREATE, &mut pc, "PT_CREATE")?;
        self.levels = pc.levels;
        self.file = Some(f);
        self.pas.clear();
        for _ in 0..self.npages {
            let mut p = PtPage {
                op: uapi::PT_PAGE_ALLOC,
                ..Default::default()
            };
            ioctl(self.file(), uapi::IOC_PT_PAGE, &mut p, "PT_PAGE alloc")?;
            self.pas.push(p.pa);
        }
        // Findings of earlier users are not ours.
        self.oracle_read()?;
        self.counts = Counts::default();
        Ok(())
    }

    fn fail<T: Default>(&mut self, r: Result<T, String>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                if self.error.is_none() {
                    self.error = Some(e);
                }
                T::default()
            }
        }
    }

    fn page_io(&mut self, op: u32, page: usize, off: u64, buf: &mut [u8]) {
        let mut p = PtPage {
            op,
            index: page as u32,
            offset: off as u32,
            len: buf.len() as u32,
            buf: buf.as_mut_ptr() as u64,
            pa: 0,
        };
        let r = ioctl(self.file(), uapi::IOC_PT_PAGE, &mut p, "PT_PAGE");
        self.fail(r);
    }

    fn read_page(&mut self, page: usize) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        self.page_io(uapi::PT_PAGE_READ, page, 0, &mut b);
        b
    }

    fn word(&self, pa: u64) -> Option<(usize, u64)> {
        self.page_of(pa).map(|p| (p, pa & 0xff8))
    }

    fn oracle_read(&mut self) -> Result<Vec<uapi::Finding>, String> {
        let mut recs = vec![uapi::Finding::default(); uapi::ORACLE_RECORDS as usize];
        let mut o = Oracle {
            flags: uapi::ORACLE_CLEAR,
            records: recs.as_mut_ptr() as u64,
            max_records: uapi::ORACLE_RECORDS,
            ..Default::default()
        };
        ioctl(self.file(), uapi::IOC_ORACLE_READ, &mut o, "ORACLE_READ")?;
        if o.status != uapi::S_OK {
            return Err(format!("ORACLE_READ: device status {}", o.status));
        }
        recs.truncate(o.nrecords as usize);
        Ok(recs)
    }

    fn endpoint(&mut self, dev: usize, op: u8, va: u64, buf: &mut [u8]) -> Result<Access, String> {
        let mut a = Access {
            endpoint: dev as u32,
            pasid: self.pasid,
            va,
            buf: if buf.is_empty() {
                0
            } else {
                buf.as_mut_ptr() as u64
            },
            len: buf.len() as u32,
            op,
            flags: uapi::ACC_NO_PRI,
            ..Default::default()
        };
        ioctl(self.file(), uapi::IOC_ACCESS, &mut a, "ACCESS")?;
        Ok(a)
    }

    fn outcome(
        &mut self,
        a: Result<Access, String>,
        va: u64,
    ) -> Result<AtsCompletion, AccessError> {
        match a {
            Ok(a) if a.status == uapi::S_OK => Ok(AtsCompletion::decode(a.ats)),
            Ok(a) if a.status == uapi::S_TRANSLATION_FAULT => Err(AccessError::Fault { va }),
            Ok(a) => {
                self.fail::<()>(Err(format!(
                    "ENDPOINT at {va:#x}: device status {}",
                    a.status
                )));
                Err(AccessError::Device { va })
            }
            Err(e) => {
                self.fail::<()>(Err(e));
                Err(AccessError::Device { va })
            }
        }
    }
}

fn finding(f: &uapi::Finding) -> Option<Finding> {
    let rule = match f.rule {
        1 => Rule::StalePage,
        2 => Rule::StaleWrite,
        3 => Rule::AfterUnmap,
        4 => Rule::WriteWithoutDirty,
        5 => Rule::Stale,
        _ => return None,
    };
    let source = match f.source {
        1 => Source::Atc,
        2 => Source::Iotlb,
        _ => Source::WalkCache,
    };
    Some(Finding {
        rule,
        devid: f.devid,
        source,
        pasid: f.pasid,
        write: f.write != 0,
        va: f.va,
        cached_pa: f.cached_pa,
        current_pte: f.current_pte,
        seq: f.seq,
        epoch: f.epoch,
    })
}

impl Backend for Guest {
    fn reset(&mut self) -> Result<(), BackendError> {
        self.setup().map_err(BackendError::Device)
    }

    fn pte(&mut self, va: u64) -> u64 {
        let mut p = PtPte {
            op: uapi::PT_PTE_GET,
            va,
            ..Default::default()
        };
        let r = ioctl(self.file(), uapi::IOC_PT_PTE, &mut p, "PT_PTE get");
        self.fail(r);
        p.value
    }

    fn set_pte(&mut self, va: u64, pte: u64) {
        let mut p = PtPte {
            op: uapi::PT_PTE_SET,
            va,
            value: pte,
            ..Default::default()
        };
        let r = ioctl(self.file(), uapi::IOC_PT_PTE, &mut p, "PT_PTE set");
        self.fail(r);
    }

    fn page_pa(&self, page: usize) -> u64 {
        self.pas[page]
    }

    fn page_of(&self, pa: u64) -> Option<usize> {
        self.pas.iter().position(|&p| p == pa & !0xfff)
    }

    fn load(&mut self, pa: u64) -> u64 {
        let Some((page, off)) = self.word(pa) else {
            self.fail::<()>(Err(format!(
                "CPU load from {pa:#x}: not a page of the script"
            )));
            return 0;
        };
        let mut b = [0u8; 8];
        self.page_io(uapi::PT_PAGE_READ, page, off, &mut b);
        u64::from_le_bytes(b)
    }

    fn store(&mut self, pa: u64, v: u64) {
        let Some((page, off)) = self.word(pa) else {
            self.fail::<()>(Err(format!(
                "CPU store to {pa:#x}: not a page of the script"
            )));
            return;
        };
        let mut b = v.to_le_bytes();
        self.page_io(uapi::PT_PAGE_WRITE, page, off, &mut b);
    }

    fn fill(&mut self, page: usize, v: u64) {
        let mut b: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), 512)
            .flatten()
            .collect();
        self.page_io(uapi::PT_PAGE_WRITE, page, 0, &mut b);
    }

    fn copy(&mut self, from: usize, to: usize) {
        let mut b = self.read_page(from);
        self.page_io(uapi::PT_PAGE_WRITE, to, 0, &mut b);
    }

    fn identical(&mut self, a: usize, b: usize) -> bool {
        self.read_page(a) == self.read_page(b)
    }

    fn execute(&mut self, cmd: &Command) -> Result<Option<usize>, BackendError> {
        let (flags, pasid, mask, range) = match *cmd {
            Command::InvalidateIommuPages { pasid, range, .. } => {
                (uapi::INV_IOMMU, pasid, 0, range)
            }
            Command::InvalidateIotlbPages {
                devid,
                pasid,
                range,
                ..
            } => {
                let i = self
                    .script_devids
                    .iter()
                    .position(|&d| d == devid)
                    .ok_or_else(|| {
                        BackendError::Device(format!("no device with devid {devid:#x}"))
                    })?;
                (uapi::INV_IOTLB, pasid, 1u32 << i, range)
            }
            Command::CompletionWait { .. } => {
                (uapi::INV_WAIT, self.pasid, 0, iommu_dev::SRange::EVERYTHING)
            }
            other => {
                return Err(BackendError::Device(format!(
                    "{other:?}: not an ordering-script command"
                )))
            }
        };
        let (addr, s) = range.encode();
        let mut inv = PtInv {
            flags,
            pasid,
            endpoint_mask: mask,
            s: u32::from(s),
            addr,
        };
        ioctl(self.file(), uapi::IOC_PT_INV, &mut inv, "PT_INV").map_err(BackendError::Device)?;
        Ok(None)
    }

    fn translate(&mut self, dev: usize, va: u64) -> Result<AtsCompletion, AccessError> {
        self.counts.accesses += 1;
        let a = self.endpoint(dev, uapi::OP_TRANSLATE, va, &mut []);
        match self.outcome(a, va) {
            // A fault is an R=W=0 completion, as the model's.
            Err(AccessError::Fault { .. }) => Ok(AtsCompletion::fault(12)),
            r => r,
        }
    }

    fn access(&mut self, dev: usize, va: u64, write: Option<u64>) -> DmaResult {
        self.counts.accesses += 1;
        let mut b = write.unwrap_or(0).to_le_bytes();
        let op = if write.is_some() {
            uapi::OP_WRITE
        } else {
            uapi::OP_READ
        };
        let a = self.endpoint(dev, op, va, &mut b);
        let c = self.outcome(a, va)?;
        Ok((c, u64::from_le_bytes(b)))
    }

    fn oracle(&mut self) -> Vec<Finding> {
        let r = self.oracle_read();
        let recs = self.fail(r);
        let out: Vec<Finding> = recs
            .iter()
            .filter(|f| f.pasid == self.pasid)
            .filter_map(finding)
            .collect();
        for f in &out {
            if let 1..=4 = f.rule as u32 {
                self.counts.r[f.rule as usize - 1] += 1;
            }
        }
        out
    }

    fn audit(&mut self, pasid: u32) -> Result<Vec<Finding>, BackendError> {
        let mut recs = vec![uapi::Finding::default(); 16];
        let mut o = Oracle {
            pasid,
            va: 0,
            len: u64::MAX,
            records: recs.as_mut_ptr() as u64,
            max_records: 16,
            ..Default::default()
        };
        ioctl(self.file(), uapi::IOC_ORACLE_AUDIT, &mut o, "ORACLE_AUDIT")
            .map_err(BackendError::Device)?;
        if o.status != uapi::S_OK {
            return Err(BackendError::Device(format!(
                "ORACLE_AUDIT: device status {}",
                o.status
            )));
        }
        self.counts.stale += o.count[4];
        recs.truncate(o.nrecords as usize);
        Ok(recs.iter().filter_map(finding).collect())
    }
}
