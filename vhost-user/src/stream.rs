//! STREAM_START / STREAM_STOP: background access engines, one thread each,
//! driving an endpoint through the model until stopped, until their
//! duration ends, or until the device is reset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use iommu_dev::iommu::MappedLeaf;
use iommu_dev::{AccessError, AccessFlags, Iommu};

/// What a stream does, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub devid: u16,
    pub flags: AccessFlags,
    pub pasid: u32,
    pub va: u64,
    pub len: u64,
    pub stride: u32,
    pub weights: [u8; 3],
    pub rate: u32,
    pub duration_ms: u32,
    pub write_value: u64,
    /// Follow mode: aim at what the PASID maps now (`va`/`len` a window,
    /// `len` 0 the whole user half), not at `[va, va + len)` in strides.
    pub follow: bool,
}

/// Leaves a follow-mode stream keeps at most.
pub const FOLLOW_MAX_LEAVES: usize = 65536;
/// A follow-mode stream re-reads the tables after this many accesses...
const FOLLOW_REFRESH_ACCESSES: u32 = 256;
/// ... or this long, whichever comes first.
const FOLLOW_REFRESH: Duration = Duration::from_millis(20);

/// What a follow-mode stream aims at: the PASID's present user leaves,
/// as of the last look.
struct Follow {
    leaves: Vec<MappedLeaf>,
    looked: Option<Instant>,
    since: u32,
}

impl Follow {
    fn new() -> Self {
        Follow {
            leaves: Vec::new(),
            looked: None,
            since: 0,
        }
    }

    /// The next address, or None while the PASID maps nothing.
    fn next(&mut self, iommu: &Iommu, p: &StreamParams, rng: &mut u64) -> Option<u64> {
        let due = self.looked.is_none_or(|t| t.elapsed() >= FOLLOW_REFRESH)
            || self.since >= FOLLOW_REFRESH_ACCESSES;
        if due {
            let end = p.va.saturating_add(p.len);
            self.leaves = iommu.mapped_leaves(p.devid, p.pasid, FOLLOW_MAX_LEAVES);
            if p.len != 0 {
                self.leaves
                    .retain(|l| l.va < end && l.va + (1u64 << l.size_log2) > p.va);
            }
            self.looked = Some(Instant::now());
            self.since = 0;
        }
        if self.leaves.is_empty() {
            return None;
        }
        self.since += 1;
        let r = next_rand(rng);
        let leaf = self.leaves[(r % self.leaves.len() as u64) as usize];
        let words = 1u64 << (leaf.size_log2 - 3);
        let mut va = leaf.va + ((r >> 20) % words) * 8;
        if p.len != 0 {
            va = va.clamp(p.va & !7, p.va.saturating_add(p.len).saturating_sub(8) & !7);
        }
        Some(va)
    }
}

/// Live counters of one stream.
#[derive(Debug, Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub translations: AtomicU64,
    pub faults: AtomicU64,
    pub page_requests: AtomicU64,
    pub atc_hits: AtomicU64,
    pub atc_misses: AtomicU64,
    pub errors: AtomicU64,
    pub elapsed_us: AtomicU64,
    pub running: AtomicBool,
}

/// A copy of a stream's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub reads: u64,
    pub writes: u64,
    pub translations: u64,
    pub faults: u64,
    pub page_requests: u64,
    pub atc_hits: u64,
    pub atc_misses: u64,
    pub errors: u64,
    pub elapsed_us: u64,
    pub running: bool,
}

impl Counters {
    pub fn snapshot(&self, started: Instant) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let running = self.running.load(Ordering::Acquire);
        Snapshot {
            reads: g(&self.reads),
            writes: g(&self.writes),
            translations: g(&self.translations),
            faults: g(&self.faults),
            page_requests: g(&self.page_requests),
            atc_hits: g(&self.atc_hits),
            atc_misses: g(&self.atc_misses),
            errors: g(&self.errors),
            elapsed_us: if running {
                started.elapsed().as_micros() as u64
            } else {
                g(&self.elapsed_us)
            },
            running,
        }
    }
}

#[derive(Debug)]
struct Stream {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    started: Instant,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    fn finish(mut self) -> Snapshot {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.counters.snapshot(self.started)
    }
}

/// Why a stream could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("too many streams")]
    TooMany,
    #[error("cannot start the stream's thread")]
    Spawn,
}

/// The streams of one device.
#[derive(Debug)]
pub struct Streams {
    max: u32,
    inner: Mutex<(u32, HashMap<u32, Stream>)>,
    /// Accesses done by all streams (for the daemon's statistics).
    pub accesses: Arc<AtomicU64>,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Streams {
    pub fn new(max: u32) -> Self {
        Streams {
            max,
            inner: Mutex::new((0, HashMap::new())),
            accesses: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Start a stream; at most `max` streams exist until released.
    pub fn start(&self, iommu: Arc<Iommu>, p: StreamParams) -> Result<u32, StartError> {
        let mut g = self.inner.lock().unwrap();
        if g.1.len() >= self.max as usize {
            return Err(StartError::TooMany);
        }
        g.0 = g.0.wrapping_add(1).max(1);
        while g.1.contains_key(&g.0) {
            g.0 = g.0.wrapping_add(1).max(1);
        }
        let id = g.0;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        counters.running.store(true, Ordering::Release);
        let started = Instant::now();
        let (s, c, acc) = (stop.clone(), counters.clone(), self.accesses.clone());
        let thread = std::thread::Builder::new()
            .name(format!("amdvi-stream-{id}"))
            .spawn(move || run(&iommu, p, &s, &c, &acc, started))
            .map_err(|_| StartError::Spawn)?;
        g.1.insert(
            id,
            Stream {
                stop,
                counters,
                started,
                thread: Some(thread),
            },
        );
        Ok(id)
    }

    /// Counts of a stream, leaving it as it is.
    pub fn report(&self, id: u32) -> Option<Snapshot> {
        let g = self.inner.lock().unwrap();
        g.1.get(&id).map(|s| s.counters.snapshot(s.started))
    }

    /// Take a stream out of the table (release it); finish it with [`Released::finish`].
    pub fn release(&self, id: u32) -> Option<Released> {
        self.inner.lock().unwrap().1.remove(&id).map(Released)
    }

    /// Ask every stream to stop, without waiting.
    pub fn signal_all(&self) {
        for s in self.inner.lock().unwrap().1.values() {
            s.stop.store(true, Ordering::Release);
        }
    }

    /// Stop and join every stream.
    pub fn stop_all(&self) {
        let all: Vec<Stream> = self
            .inner
            .lock()
            .unwrap()
            .1
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in &all {
            s.stop.store(true, Ordering::Release);
        }
        for s in all {
            s.finish();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream taken out of the table.
#[derive(Debug)]
pub struct Released(Stream);

impl Released {
    /// Signal the stream to stop, wait for its thread, return the final counts.
    pub fn finish(self) -> Snapshot {
        self.0.finish()
    }
}

/// xorshift64*: the fixed-seed generator that picks each access's op.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn run(
    iommu: &Iommu,
    p: StreamParams,
    stop: &AtomicBool,
    c: &Counters,
    accesses: &AtomicU64,
    started: Instant,
) {
    let total: u64 = p.weights.iter().map(|&w| u64::from(w)).sum();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut offset = 0u64;
    let mut n = 0u64;
    let deadline =
        (p.duration_ms > 0).then(|| started + Duration::from_millis(p.duration_ms.into()));
    let mut buf = [0u8; 8];
    let mut follow = Follow::new();
    let mut pick_rng = 0x2545_f491_4f6c_dd1du64;
    while !stop.load(Ordering::Acquire) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if p.rate > 0 {
            // Throttle: access n happens no earlier than n / rate seconds in.
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(p.rate));
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
        }
        let va = if p.follow {
            match follow.next(iommu, &p, &mut pick_rng) {
                Some(va) => va,
                None => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
        } else {
            let va = p.va.wrapping_add(offset);
            offset += u64::from(p.stride);
            if offset + 8 > p.len {
                offset = 0;
            }
            va
        };
        let pick = next_rand(&mut rng) % total.max(1);
        let op = if pick < u64::from(p.weights[0]) {
            0
        } else if pick < u64::from(p.weights[0]) + u64::from(p.weights[1]) {
            1
        } else {
            2
        };
        let res = match op {
            0 => iommu
                .dma_read(p.devid, p.pasid, va, p.flags, &mut buf)
                .map(|r| Some((r, &c.reads))),
            1 => {
                let v = p.write_value.wrapping_add(c.writes.load(Ordering::Relaxed));
                iommu
                    .dma_write(p.devid, p.pasid, va, p.flags, &v.to_le_bytes())
                    .map(|r| Some((r, &c.writes)))
            }
            _ => iommu
                .ats_translate(p.devid, p.pasid, va, p.flags)
                .map(|comp| {
                    if comp.is_fault() {
                        inc(&c.faults);
                    } else {
                        inc(&c.translations);
                    }
                    None
                }),
        };
        n += 1;
        inc(accesses);
        match res {
            Ok(Some((rep, counter))) => {
                inc(counter);
                c.page_requests
                    .fetch_add(rep.page_requests.into(), Ordering::Relaxed);
                c.atc_hits.fetch_add(rep.atc_hits.into(), Ordering::Relaxed);
                c.atc_misses
                    .fetch_add(rep.atc_misses.into(), Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(AccessError::Fault { .. } | AccessError::PriTimeout { .. }) => inc(&c.faults),
            Err(_) => inc(&c.errors),
        }
    }
    c.elapsed_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    c.running.store(false, Ordering::Release);
}
