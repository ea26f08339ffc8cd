//! The engine's thread pool: fork-join over task indices with a hand-off of microseconds.
//!
//! A decode step of a small model is a few dozen parallel regions of 10-50 µs each, so the
//! cost of starting and joining a region matters as much as the kernels. Workers spin on an
//! epoch counter for a short while after each region (so the next region of the same forward
//! reaches them in well under a microsecond), then sleep on a condition variable (so an idle
//! server costs no CPU). The calling thread takes tasks too.
//!
//! A region's task indices are cut into one contiguous span per thread. Each thread that
//! joins takes the tasks of its own span in order, front to back, then helps with what is left
//! of the others' spans, taking from their backs. Neighbouring tasks of a product read
//! neighbouring weight rows, so each thread streams one contiguous piece of each matrix, which
//! the hardware prefetchers follow (tasks dealt out alternately from one shared counter made
//! two threads slower at batch-1 decode than one thread doing them all), and a thread that is
//! late or descheduled still costs the others only its unfinished tasks. A region waits only
//! for the workers that actually joined it: when the caller has taken the last task it closes
//! the region, and a worker that wakes up after that skips it instead of holding it up.
//!
//! One region runs at a time; a call made while another is running (from another thread, or
//! from inside a task) runs its tasks inline on the calling thread.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

struct Job {
    f: Option<*const Task<'static>>,
}

/// Keeps a value on a cache line (pair) of its own, so that threads writing one counter do not
/// take the line of another away from the threads reading it.
#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    /// `epoch << 1 | open`: which region was published last, and whether it still takes workers.
    state: Padded<AtomicU64>,
    job: UnsafeCell<Job>,
    /// Per span, the tasks not taken yet: `front << 32 | back`, the span's owner taking from
    /// the front, helpers from the back.
    spans: Box<[Padded<AtomicU64>]>,
    /// Span numbers handed to the workers joining the current region (the caller has span 0).
    joined: Padded<AtomicUsize>,
    /// Workers inside a region (between joining it and leaving it).
    active: Padded<AtomicUsize>,
    panicked: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written only by the thread holding `ThreadPool::caller`, between regions:
// after it closed the last region and saw `active == 0`. A worker reads it only after joining
// (`active` incremented) and then seeing the region open, so never while it is written (the
// close / join handshake is sequentially consistent: see `run` and `worker`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of worker threads plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    caller: Mutex<()>,
    workers: usize,
}

impl ThreadPool {
    /// A pool that runs regions on `threads` threads (the caller and `threads - 1` workers).
    pub fn new(threads: usize) -> ThreadPool {
        let workers = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(0)),
            job: UnsafeCell::new(Job { f: None }),
            spans: (0..=workers).map(|_| Padded(AtomicU64::new(0))).collect(),
            joined: Padded(AtomicUsize::new(1)),
            active: Padded(AtomicUsize::new(0)),
            panicked: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        for i in 0..workers {
            let s = shared.clone();
            thread::Builder::new()
                .name(format!("ghostline-engine-{i}"))
                .spawn(move || worker(&s))
                .expect("spawning an engine thread");
        }
        ThreadPool { shared, caller: Mutex::new(()), workers }
    }

    /// Threads a region runs on.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(i)` for every `i < tasks`, spread over the pool; returns when all are done.
    /// A panic in a task is re-raised here after every thread has left the region.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        // (Span bounds are kept in 32 bits.)
        let guard = if self.workers == 0 || tasks == 1 || tasks > u32::MAX as usize {
            None
        } else {
            self.caller.try_lock().ok()
        };
        let Some(_guard) = guard else {
            (0..tasks).for_each(f);
            return;
        };
        let s = &*self.shared;
        // SAFETY: no worker is inside a region (the last `run` closed its region and waited
        // for `active == 0`), and the lifetime is erased only for the duration of this call,
        // which closes the region and waits for every worker that joined it before returning
        // or unwinding.
        unsafe {
            let f: *const Task<'_> = f;
            *s.job.get() = Job { f: Some(std::mem::transmute::<*const Task<'_>, *const Task<'static>>(f)) };
        }
        let spans = s.spans.len();
        for (k, span) in s.spans.iter().enumerate() {
            let (lo, hi) = (k * tasks / spans, (k + 1) * tasks / spans);
            span.0.store((lo as u64) << 32 | hi as u64, Ordering::Relaxed);
        }
        s.joined.0.store(1, Ordering::Relaxed);
        let epoch = (s.state.0.load(Ordering::Relaxed) >> 1) + 1;
        s.state.0.store(epoch << 1 | 1, Ordering::SeqCst);
        if *s.sleepers.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, 0)));
        // Every task is taken: close the region, then wait for the workers inside it.
        s.state.0.store(epoch << 1, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.active.0.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("an engine task panicked on a worker thread");
        }
    }

    /// Splits `out` into chunks of `chunk` elements (the last may be shorter) and runs
    /// `f(chunk_index, chunk)` for each, in parallel.
    pub fn for_chunks<T: Send>(&self, out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
        let chunk = chunk.max(1);
        let len = out.len();
        let base = SendPtr(out.as_mut_ptr());
        self.run(len.div_ceil(chunk), &|c| {
            let lo = c * chunk;
            let hi = (lo + chunk).min(len);
            // SAFETY: chunk c covers lo..hi of `out`, disjoint from every other chunk, and `out`
            // stays mutably borrowed for the whole region.
            let part = unsafe { std::slice::from_raw_parts_mut(base.at(lo), hi - lo) };
            f(c, part);
        });
    }

    /// `(0..tasks).map(f)` in parallel, results in order.
    pub fn map<R: Send>(&self, tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
        let mut out: Vec<Option<R>> = (0..tasks).map(|_| None).collect();
        self.for_chunks(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
        out.into_iter().map(|r| r.expect("every task ran")).collect()
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let epoch = (self.shared.state.0.load(Ordering::Relaxed) >> 1) + 1;
        self.shared.state.0.store(epoch << 1, Ordering::SeqCst);
        let _g = self.shared.sleepers.lock();
        self.shared.wake.notify_all();
    }
}

/// A buffer's start, shared with a region's tasks, which each write their own disjoint part.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: used only to hand disjoint parts of one buffer to the tasks of a region.
unsafe impl<T: Send> Sync for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// # Safety: as `pointer::add`.
    pub(crate) unsafe fn at(&self, i: usize) -> *mut T {
        self.0.add(i)
    }
}

/// Runs the tasks of span `own` from its front, then what is left of the other spans from
/// their backs (so that their owners keep streaming forward, undisturbed, meanwhile).
fn take_tasks(s: &Shared, f: &Task<'_>, own: usize) {
    let n = s.spans.len();
    for k in 0..n {
        let span = &s.spans[(own + k) % n].0;
        let from_front = k == 0;
        let mut cur = span.load(Ordering::Relaxed);
        loop {
            let (front, back) = (cur >> 32, cur & 0xffff_ffff);
            if front >= back {
                break;
            }
            let (next, i) = if from_front { (cur + (1 << 32), front) } else { (cur - 1, back - 1) };
            match span.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    f(i as usize);
                    cur = span.load(Ordering::Relaxed);
                }
                Err(now) => cur = now,
            }
        }
    }
}

fn worker(s: &Shared) {
    // The last region this worker saw (0: none yet; the first region is epoch 1).
    let mut seen = 0;
    loop {
        // Wait for a region newer than `seen`: spin a little, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let st = s.state.0.load(Ordering::Acquire);
            if st >> 1 != seen {
                break st >> 1;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                let mut sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while s.state.0.load(Ordering::Acquire) >> 1 == seen {
                    sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Join, then check that the region is still open: if the caller closed it meanwhile,
        // it may already be gone (and its `f` with it), so leave without touching the job.
        s.active.0.fetch_add(1, Ordering::SeqCst);
        if s.state.0.load(Ordering::SeqCst) == epoch << 1 | 1 {
            // SAFETY: the region is open and we are counted in `active`, so the caller keeps
            // `job` and `f` alive and unchanged until we leave.
            let f = unsafe { (*s.job.get()).f.map(|f| &*f) };
            let own = s.joined.0.fetch_add(1, Ordering::Relaxed) % s.spans.len();
            if let Some(f) = f {
                if catch_unwind(AssertUnwindSafe(|| take_tasks(s, f, own))).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
        }
        s.active.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once() {
        let p = ThreadPool::new(3);
        for tasks in [0, 1, 2, 3, 4, 5, 7, 100, 1001] {
            let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            p.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "tasks {tasks}");
        }
    }

    #[test]
    fn many_short_regions_on_more_threads_than_cores() {
        // Workers often arrive after the caller has taken every task and closed the region;
        // they must skip it without touching its (by then dropped) closure.
        let p = ThreadPool::new(6);
        let total = AtomicU32::new(0);
        for r in 0..5000u32 {
            let local = vec![1u32; 1 + (r % 5) as usize];
            p.run(local.len(), &|i| {
                total.fetch_add(local[i], Ordering::Relaxed);
            });
        }
        let want: u32 = (0..5000u32).map(|r| 1 + r % 5).sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn chunks_and_map_cover_their_inputs() {
        let p = ThreadPool::new(2);
        let mut v = vec![0usize; 103];
        p.for_chunks(&mut v, 10, |c, part| part.iter_mut().enumerate().for_each(|(j, x)| *x = c * 10 + j));
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
        assert_eq!(p.map(5, |i| i * i), vec![0, 1, 4, 9, 16]);
    }

    #[test]
    fn regions_after_sleeping_and_nested_regions_still_run() {
        let p = ThreadPool::new(2);
        thread::sleep(SPIN * 5);
        let n = AtomicU32::new(0);
        p.run(8, &|_| {
            // A region inside a task runs inline.
            p.run(3, &|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(n.load(Ordering::Relaxed), 24);
    }

    #[test]
    fn a_panicking_task_is_reraised_and_the_pool_stays_usable() {
        let p = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            p.run(16, &|i| {
                if i == 9 {
                    panic!("task 9");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicU32::new(0);
        p.run(16, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }
}
