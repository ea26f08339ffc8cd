//! The engine loop: one thread owns the model, the KV pool, the prefix cache and every running
//! sequence. Each step runs the next token of every decoding sequence and chunks of waiting
//! prompts in one batched forward (continuous batching with chunked prefill), then streams the
//! new text to each request's channel. It implements `Inference`: the HTTP side only submits jobs and reads events.
//!
//! Request lifecycle: queued → admitted (prefix blocks looked up) → prefilling (chunks) →
//! decoding (n candidates forked from the prompt) → finished | cancelled. A request whose
//! event receiver is gone (client disconnected) is freed at the next step; a newer request with
//! the same (user, path) cancels the older one.
//!
//! Supervision: a step whose forward fails or panics fails the requests in that step alone
//! (their KV blocks released) and is counted in `ghostline_engine_faults_total`; a panic
//! anywhere else in the loop fails every request the loop holds and the loop goes on with a
//! clean slate. After `MAX_CONSECUTIVE_FAULTS` faults with no good step between them the engine
//! is declared failed (`Health::engine_failed`): `/ready` turns 503 and the process exits.

mod fault;
mod plan;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use ghostline_api::FinishReason;
use ghostline_engine::{
    Backend, BatchItem, EngineError, KvPool, Logits, Pick, Picker, SeqKv, StopMatcher, StreamDecoder, Tokenizer,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::health::Health;
use crate::inference::{Event, Events, Inference, Job, SubmitError, Summary};
use crate::prefix_cache::{Hit, PrefixCache};
pub use fault::FaultInjection;
use plan::{Admission, DecodeNeed, PrefillNeed, Slot, StepPlan};

/// Faults in a row (no good step between them) after which the engine is declared failed.
const MAX_CONSECUTIVE_FAULTS: u32 = 3;

/// A job and where its events go.
struct Request {
    job: Job,
    events: UnboundedSender<Event>,
}

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens computed per step at most (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Requests running at once at most.
    pub max_running: usize,
    /// Requests waiting at most; beyond it submissions are refused (503).
    pub max_queue: usize,
    /// Index full prompt blocks for reuse by later requests.
    pub prefix_cache: bool,
    /// Faults to inject (tests only; `FaultInjection::None` in service).
    pub faults: FaultInjection,
}

/// The handle the HTTP side holds (as `dyn Inference`).
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::Sender<Request>,
    pending: Arc<AtomicUsize>,
    max_queue: usize,
}

impl Scheduler {
    /// Starts the engine thread, which runs `backend` (CPU or CUDA: the loop is the same).
    pub fn start(
        backend: Arc<Backend>,
        tok: Arc<Tokenizer>,
        pool: KvPool,
        config: SchedulerConfig,
        health: Arc<Health>,
    ) -> std::io::Result<Scheduler> {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let max_queue = config.max_queue;
        let p = pending.clone();
        std::thread::Builder::new().name("ghostline-engine".into()).spawn(move || {
            let _watch = EngineWatch(health.clone());
            let block_size = pool.shape().block_size;
            let mut lp = Loop {
                backend,
                tok,
                pool,
                cache: PrefixCache::new(block_size),
                config,
                rx,
                pending: p,
                waiting: VecDeque::new(),
                running: Vec::new(),
                health,
                steps: 0,
                faults_in_a_row: 0,
            };
            lp.run();
        })?;
        Ok(Scheduler { tx, pending, max_queue })
    }
}

/// Marks the engine failed when the engine thread dies of a panic that escaped supervision (a
/// clean end, once every handle is dropped, is not a failure).
struct EngineWatch(Arc<Health>);

impl Drop for EngineWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.engine_failed("the engine thread panicked".into());
        }
    }
}

impl Inference for Scheduler {
    /// Queues a job; refused when the queue is full.
    fn submit(&self, job: Job) -> Result<Events, SubmitError> {
        if self.pending.load(Ordering::Relaxed) >= self.max_queue {
            return Err(SubmitError::QueueFull);
        }
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Request { job, events }).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped
        })?;
        Ok(rx)
    }
}

struct Cand {
    kv: SeqKv,
    picker: Picker,
    decoder: StreamDecoder,
    /// What is left to cut of the job's lead at the output's start.
    lead_left: String,
    stops: StopMatcher,
    generated: usize,
    next: Option<u32>,
    done: bool,
}

struct Group {
    req: Request,
    /// The prompt's sequence until prefill ends; then candidate 0's.
    base: SeqKv,
    prefilled: usize,
    cached_tokens: usize,
    cands: Vec<Cand>,
    admitted: Instant,
    prefill_done: Option<Instant>,
    first_token: Option<Instant>,
    completion_tokens: usize,
    finished: bool,
}

impl Group {
    fn prefilling(&self) -> bool {
        self.cands.is_empty()
    }
    fn job(&self) -> &Job {
        &self.req.job
    }
}

struct Loop {
    backend: Arc<Backend>,
    tok: Arc<Tokenizer>,
    pool: KvPool,
    cache: PrefixCache,
    config: SchedulerConfig,
    rx: mpsc::Receiver<Request>,
    pending: Arc<AtomicUsize>,
    waiting: VecDeque<Request>,
    running: Vec<Group>,
    health: Arc<Health>,
    /// Batched steps run so far (fault injection counts them).
    steps: u64,
    /// Faults since the last good step.
    faults_in_a_row: u32,
}

/// Why a step's forward did not give tokens.
enum StepFault {
    Error(EngineError),
    Panic(String),
}

impl StepFault {
    fn kind(&self) -> &'static str {
        match self {
            StepFault::Error(_) => "error",
            StepFault::Panic(_) => "panic",
        }
    }
}

impl std::fmt::Display for StepFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepFault::Error(e) => write!(f, "{e}"),
            StepFault::Panic(m) => write!(f, "the engine panicked: {m}"),
        }
    }
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn ms(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

/// The sequences, token ids and logits wanted of one step's slots, in slot order, and the
/// choosers of the candidates that a finished prefill starts.
struct Batch {
    seqs: Vec<SeqKv>,
    tokens: Vec<Vec<u32>>,
    logits: Vec<Logits>,
    /// Per finishing prefill slot: its candidates' pickers (candidate i's seed is the job's plus i).
    fresh: Vec<(usize, Vec<Picker>)>,
}

impl Loop {
    fn run(&mut self) {
        loop {
            // Block only when there is nothing to do.
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(r) => self.arrive(r),
                    Err(_) => return,
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.arrive(r);
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.turn())) {
                // Outside a forward: which requests the state of is sound is unknown, so all go.
                let why = panic_message(p.as_ref());
                tracing::error!("the engine loop panicked: {why}");
                self.fault("panic");
                self.fail_everything(&format!("inference failed: the engine panicked ({why}); retry"));
            }
            if self.faults_in_a_row >= MAX_CONSECUTIVE_FAULTS {
                let why = format!("{} engine faults in a row", self.faults_in_a_row);
                tracing::error!("{why}: the engine stops");
                self.fail_everything(&format!("inference failed: {why}; this server is stopping"));
                self.health.engine_failed(why);
                return;
            }
            metrics::gauge!("ghostline_queue_depth").set(self.waiting.len() as f64);
            metrics::gauge!("ghostline_active_sequences")
                .set(self.running.iter().map(|g| g.job().n).sum::<usize>() as f64);
            metrics::gauge!("ghostline_kv_blocks_used").set(self.pool.used_blocks() as f64);
            // What sequences hold: the blocks in use less those only the prefix cache keeps.
            // Zero once every request has ended, whatever the cache holds.
            metrics::gauge!("ghostline_kv_blocks_held")
                .set(self.pool.used_blocks().saturating_sub(self.cache.evictable(&self.pool)) as f64);
            metrics::gauge!("ghostline_prefix_cache_blocks").set(self.cache.len() as f64);
        }
    }

    /// One turn of the loop: cancellations, admission, a step, the finished requests.
    fn turn(&mut self) {
        self.drop_abandoned();
        self.admit();
        self.step();
        self.reap();
    }

    fn fault(&mut self, kind: &'static str) {
        metrics::counter!("ghostline_engine_faults_total", "kind" => kind).increment(1);
        self.faults_in_a_row += 1;
    }

    /// Fails every running and waiting request with `message` and releases their KV blocks
    /// (the prefix cache's too: a block it indexes may be one a panic left half-written).
    fn fail_everything(&mut self, message: &str) {
        for mut g in self.running.drain(..) {
            if !g.finished {
                let _ = g.req.events.send(Event::Error(message.to_string()));
            }
            self.pool.release(&mut g.base);
            for c in g.cands.iter_mut() {
                self.pool.release(&mut c.kv);
            }
        }
        for w in self.waiting.drain(..) {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            let _ = w.events.send(Event::Error(message.to_string()));
        }
        // Sequences a panic left in flight hold blocks nobody can name any more: with no
        // request left, every block is free again, and the prefix cache starts empty.
        self.cache = PrefixCache::new(self.pool.shape().block_size);
        self.pool.reclaim_all();
    }

    fn arrive(&mut self, req: Request) {
        if let Some(key) = &req.job.supersede_key {
            for g in self.running.iter_mut().filter(|g| !g.finished && g.job().supersede_key.as_ref() == Some(key)) {
                metrics::counter!("ghostline_cancelled_total", "reason" => "superseded").increment(1);
                Self::finish_all(&mut self.pool, g, FinishReason::Cancelled);
            }
            let mut kept = VecDeque::new();
            for w in self.waiting.drain(..) {
                if w.job.supersede_key.as_ref() == Some(key) {
                    metrics::counter!("ghostline_cancelled_total", "reason" => "superseded").increment(1);
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    for i in 0..w.job.n {
                        let _ = w.events.send(Event::Done { index: i as u32, finish: FinishReason::Cancelled });
                    }
                    let now = Instant::now();
                    let _ = w.events.send(Event::Finished(Summary {
                        prompt_tokens: w.job.prompt.len(),
                        queue_ms: ms(w.job.submitted, now),
                        total_ms: ms(w.job.submitted, now),
                        ..Summary::default()
                    }));
                } else {
                    kept.push_back(w);
                }
            }
            self.waiting = kept;
        }
        self.waiting.push_back(req);
    }

    /// Frees requests whose client has gone away.
    fn drop_abandoned(&mut self) {
        for g in self.running.iter_mut().filter(|g| !g.finished && g.req.events.is_closed()) {
            metrics::counter!("ghostline_cancelled_total", "reason" => "disconnected").increment(1);
            Self::finish_all(&mut self.pool, g, FinishReason::Cancelled);
        }
        let before = self.waiting.len();
        self.waiting.retain(|r| !r.events.is_closed());
        self.pending.fetch_sub(before - self.waiting.len(), Ordering::Relaxed);
    }

    /// KV blocks that are free or that evicting cached prefixes would free.
    fn room(&self) -> usize {
        self.pool.free_blocks() + self.cache.evictable(&self.pool)
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(req) = self.waiting.front() else { break };
            let prompt = &req.job.prompt;
            let bs = self.pool.shape().block_size;
            // Reuse cached tokens, but always leave at least one prompt token to compute.
            let hit = if self.config.prefix_cache {
                self.cache.lookup(prompt, prompt.len().saturating_sub(1))
            } else {
                Hit::default()
            };
            // Room for the uncached prompt plus the first blocks of each candidate (a partly
            // reused block is copied before it is written, so it counts as uncached).
            let need = prompt.len().div_ceil(bs) - hit.tokens / bs + req.job.n;
            let decision = plan::admission(need, self.room(), self.running.is_empty());
            if decision == Admission::Wait {
                break;
            }
            let Some(req) = self.waiting.pop_front() else { break };
            self.pending.fetch_sub(1, Ordering::Relaxed);
            if decision == Admission::Refuse {
                let _ = req.events.send(Event::Error(format!(
                    "the prompt needs {need} KV blocks but the KV cache holds {}; raise kv_memory_mb",
                    self.pool.max_blocks()
                )));
                continue;
            }
            for &b in &hit.blocks {
                self.pool.retain_block(b);
            }
            let cached = hit.tokens;
            let base = SeqKv { blocks: hit.blocks, len: cached };
            self.running.push(Group {
                req,
                base,
                prefilled: cached,
                cached_tokens: cached,
                cands: Vec::new(),
                admitted: Instant::now(),
                prefill_done: None,
                first_token: None,
                completion_tokens: 0,
                finished: false,
            });
        }
    }

    /// What this step runs: the facts of every running sequence, handed to the planner.
    fn plan(&self) -> StepPlan {
        let mut decodes = Vec::new();
        let mut prefills = Vec::new();
        for (gi, g) in self.running.iter().enumerate() {
            if g.finished {
                continue;
            }
            if g.prefilling() {
                prefills.push(PrefillNeed { group: gi, from: g.prefilled, left: g.job().prompt.len() - g.prefilled });
                continue;
            }
            for (ci, c) in g.cands.iter().enumerate() {
                if c.done || c.next.is_none() {
                    continue;
                }
                let frees = c.kv.blocks.iter().filter(|&&b| self.pool.ref_count(b) == 1).count();
                decodes.push(DecodeNeed {
                    group: gi,
                    cand: ci,
                    blocks: self.pool.blocks_needed(&c.kv, c.kv.len + 1),
                    frees,
                });
            }
        }
        let running = &self.running;
        plan::plan_step(&decodes, &prefills, self.config.max_batch_tokens, self.room(), |i, new_len| {
            self.pool.blocks_needed(&running[prefills[i].group].base, new_len)
        })
    }

    fn step(&mut self) {
        let plan = self.plan();
        for &(gi, ci) in &plan.out_of_room {
            // Out of KV memory mid-generation: the candidate ends where it is.
            Self::finish_cand(&mut self.pool, &mut self.running[gi], ci, FinishReason::Length);
        }
        if plan.slots.is_empty() {
            return;
        }
        if self.pool.free_blocks() < plan.blocks {
            self.cache.evict(&mut self.pool, plan.blocks);
        }
        metrics::histogram!("ghostline_batch_size").record(plan.slots.len() as f64);
        let mut batch = self.gather(&plan.slots);
        match self.forward(&plan.slots, &mut batch) {
            Ok((tokens, first_pick)) => {
                self.faults_in_a_row = 0;
                self.accept(&plan.slots, batch, &tokens, &first_pick)
            }
            Err(e) => {
                self.fault(e.kind());
                self.fail(&plan.slots, batch, &e)
            }
        }
    }

    /// Takes the slots' sequences out of their groups (split borrows: they go back in
    /// `accept`), with the tokens each computes.
    fn gather(&mut self, slots: &[Slot]) -> Batch {
        let mut b = Batch {
            seqs: Vec::with_capacity(slots.len()),
            tokens: Vec::with_capacity(slots.len()),
            logits: Vec::with_capacity(slots.len()),
            fresh: Vec::new(),
        };
        for (k, s) in slots.iter().enumerate() {
            match *s {
                Slot::Decode { group, cand } => {
                    let c = &mut self.running[group].cands[cand];
                    b.seqs.push(std::mem::take(&mut c.kv));
                    b.tokens.push(c.next.take().into_iter().collect());
                    b.logits.push(Logits::Last);
                }
                Slot::Prefill { group, from, len } => {
                    let g = &mut self.running[group];
                    b.seqs.push(std::mem::take(&mut g.base));
                    b.tokens.push(g.req.job.prompt[from..from + len].to_vec());
                    let last = from + len == g.req.job.prompt.len();
                    b.logits.push(if last { Logits::Last } else { Logits::None });
                    if last {
                        let job = &g.req.job;
                        let pickers = (0..job.n)
                            .map(|i| {
                                let mut sp = job.sampling.clone();
                                sp.seed = sp.seed.map(|s| s.wrapping_add(i as u64));
                                let mut picker = Picker::new(sp);
                                if let Some(allowed) = &job.first_tokens {
                                    picker.restrict_next(allowed.clone());
                                }
                                picker
                            })
                            .collect();
                        b.fresh.push((k, pickers));
                    }
                }
            }
        }
        b
    }

    /// Runs the batched forward: one token per decode slot, one per candidate of a finished
    /// prefill. Returns the tokens and, per slot, where its tokens start (one past the end last).
    fn forward(&mut self, slots: &[Slot], b: &mut Batch) -> Result<(Vec<u32>, Vec<usize>), StepFault> {
        let mut first_pick = Vec::with_capacity(slots.len() + 1);
        let mut items: Vec<BatchItem> = b
            .seqs
            .iter_mut()
            .zip(&b.tokens)
            .zip(&b.logits)
            .map(|((kv, t), &m)| BatchItem { kv, tokens: t, logits: m })
            .collect();
        let mut cand_pickers: HashMap<(usize, usize), &mut Picker> = self
            .running
            .iter_mut()
            .enumerate()
            .flat_map(|(gi, g)| g.cands.iter_mut().enumerate().map(move |(ci, c)| ((gi, ci), &mut c.picker)))
            .collect();
        let mut picks: Vec<Pick> = Vec::with_capacity(slots.len());
        let mut fresh = b.fresh.iter_mut().peekable();
        for (k, s) in slots.iter().enumerate() {
            first_pick.push(picks.len());
            match *s {
                Slot::Decode { group, cand } => {
                    if let Some(p) = cand_pickers.remove(&(group, cand)) {
                        picks.push(Pick { item: k, picker: p });
                    }
                }
                Slot::Prefill { .. } => {
                    if let Some((_, pickers)) = fresh.next_if(|(fk, _)| *fk == k) {
                        picks.extend(pickers.iter_mut().map(|p| Pick { item: k, picker: p }));
                    }
                }
            }
        }
        first_pick.push(picks.len());
        self.steps += 1;
        let (backend, pool, faults, step) = (&self.backend, &mut self.pool, &self.config.faults, self.steps);
        // A panic in the forward (a kernel, the device, a worker thread's task) fails this step.
        let tokens = catch_unwind(AssertUnwindSafe(|| {
            faults.before_step(step)?;
            backend.step(pool, &mut items, &mut picks)
        }))
        .map_err(|p| StepFault::Panic(panic_message(p.as_ref())))?
        .map_err(StepFault::Error)?;
        Ok((tokens, first_pick))
    }

    /// A failed forward (an engine error or a panic) fails the requests involved, not the
    /// server: their sequences' KV blocks go back to the pool.
    fn fail(&mut self, slots: &[Slot], mut b: Batch, e: &StepFault) {
        tracing::error!("forward failed: {e}");
        for (s, kv) in slots.iter().zip(b.seqs.iter_mut()) {
            self.pool.release(kv);
            let g = &mut self.running[s.group()];
            if !g.finished {
                let _ = g.req.events.send(Event::Error(format!("inference failed: {e}")));
                Self::finish_all(&mut self.pool, g, FinishReason::Cancelled);
            }
        }
    }

    /// Puts the sequences back and hands each slot its tokens: a decode's next token, or the
    /// first token of each candidate a finished prefill starts.
    fn accept(&mut self, slots: &[Slot], b: Batch, tokens: &[u32], first_pick: &[usize]) {
        let now = Instant::now();
        let mut fresh = b.fresh.into_iter();
        for (k, (s, kv)) in slots.iter().zip(b.seqs).enumerate() {
            let picked = tokens.get(first_pick[k]..first_pick[k + 1]).unwrap_or_default();
            match *s {
                Slot::Decode { group, cand } => {
                    self.running[group].cands[cand].kv = kv;
                    if let Some(&tok) = picked.first() {
                        self.take(group, cand, tok, now);
                    }
                }
                Slot::Prefill { group, from, len } => {
                    let g = &mut self.running[group];
                    g.base = kv;
                    g.prefilled = from + len;
                    if g.prefilled < g.req.job.prompt.len() {
                        continue;
                    }
                    g.prefill_done = Some(now);
                    if self.config.prefix_cache {
                        self.cache.insert(&mut self.pool, &g.req.job.prompt, &g.base.blocks);
                    }
                    let base = std::mem::take(&mut g.base);
                    let n = g.req.job.n;
                    let pickers = fresh.next().map(|(_, p)| p).unwrap_or_default();
                    for (i, picker) in pickers.into_iter().enumerate() {
                        let kv = if i + 1 == n { base.clone() } else { self.pool.fork(&base, base.len) };
                        g.cands.push(Cand {
                            kv,
                            picker,
                            decoder: StreamDecoder::new(&g.req.job.prompt),
                            lead_left: g.req.job.lead.clone(),
                            stops: StopMatcher::new(&g.req.job.stop),
                            generated: 0,
                            next: None,
                            done: false,
                        });
                    }
                    for (ci, &tok) in picked.iter().enumerate() {
                        self.take(group, ci, tok, now);
                    }
                }
            }
        }
    }

    /// Takes a candidate's next token and streams the text it completes.
    fn take(&mut self, gi: usize, ci: usize, tok: u32, now: Instant) {
        let g = &mut self.running[gi];
        if g.finished || g.cands[ci].done {
            return;
        }
        if g.req.job.stop_ids.contains(&tok) {
            let c = &mut g.cands[ci];
            let (tail, _) = c.stops.finish_with(&c.decoder.flush(&self.tok).unwrap_or_default());
            Self::send_text(g, ci, tail, now);
            Self::finish_cand(&mut self.pool, g, ci, FinishReason::Stop);
            return;
        }
        g.completion_tokens += 1;
        let c = &mut g.cands[ci];
        c.generated += 1;
        let mut piece = c.decoder.push(&self.tok, tok).unwrap_or_default();
        if !c.lead_left.is_empty() {
            piece = cut_lead(&mut c.lead_left, piece);
        }
        let (out, hit) = c.stops.push(&piece);
        let at_limit = c.generated >= g.req.job.max_tokens;
        let mut text = out;
        let mut hit = hit;
        if !hit && at_limit {
            let (tail, hit_in_tail) = c.stops.finish_with(&c.decoder.flush(&self.tok).unwrap_or_default());
            text.push_str(&tail);
            hit = hit_in_tail;
        }
        c.next = Some(tok);
        Self::send_text(g, ci, text, now);
        if hit {
            Self::finish_cand(&mut self.pool, g, ci, FinishReason::Stop);
        } else if at_limit {
            Self::finish_cand(&mut self.pool, g, ci, FinishReason::Length);
        }
    }

    fn send_text(g: &mut Group, ci: usize, text: String, now: Instant) {
        if text.is_empty() {
            return;
        }
        if g.first_token.is_none() {
            g.first_token = Some(now);
        }
        let _ = g.req.events.send(Event::Text { index: ci as u32, text });
    }

    fn finish_cand(pool: &mut KvPool, g: &mut Group, ci: usize, finish: FinishReason) {
        let c = &mut g.cands[ci];
        if c.done {
            return;
        }
        c.done = true;
        c.next = None;
        pool.release(&mut c.kv);
        let _ = g.req.events.send(Event::Done { index: ci as u32, finish });
    }

    fn finish_all(pool: &mut KvPool, g: &mut Group, finish: FinishReason) {
        if g.prefilling() {
            pool.release(&mut g.base);
            for i in 0..g.req.job.n {
                let _ = g.req.events.send(Event::Done { index: i as u32, finish });
            }
            g.cands.clear();
            g.finished = true;
            return;
        }
        for ci in 0..g.cands.len() {
            Self::finish_cand(pool, g, ci, finish);
        }
    }

    /// Sends the summary of every request whose candidates have all ended and drops it.
    fn reap(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            let g = &mut self.running[i];
            let done = g.finished || (!g.prefilling() && g.cands.iter().all(|c| c.done));
            if !done {
                i += 1;
                continue;
            }
            let mut g = self.running.swap_remove(i);
            self.pool.release(&mut g.base);
            for c in g.cands.iter_mut() {
                self.pool.release(&mut c.kv);
            }
            let s = g.req.job.submitted;
            let summary = Summary {
                prompt_tokens: g.req.job.prompt.len(),
                cached_tokens: g.cached_tokens,
                completion_tokens: g.completion_tokens,
                queue_ms: ms(s, g.admitted),
                prefill_ms: g.prefill_done.map_or(0.0, |p| ms(g.admitted, p)),
                ttft_ms: g.first_token.map_or(0.0, |f| ms(s, f)),
                total_ms: ms(s, now),
            };
            let _ = g.req.events.send(Event::Finished(summary));
        }
    }
}

/// Cuts what is left of the lead (text the client already has) off the start of a piece.
pub(crate) fn cut_lead(left: &mut String, piece: String) -> String {
    if let Some(rest) = piece.strip_prefix(left.as_str()) {
        left.clear();
        rest.to_string()
    } else if let Some(more) = left.strip_prefix(piece.as_str()) {
        *left = more.to_string();
        String::new()
    } else {
        // Not what the first token was held to (cannot happen with a restricted first token).
        left.clear();
        piece
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_is_cut_across_pieces_once() {
        let mut left = " os".to_string();
        assert_eq!(cut_lead(&mut left, " o".into()), "");
        assert_eq!(left, "s");
        assert_eq!(cut_lead(&mut left, "s.path".into()), ".path");
        assert!(left.is_empty());
        let mut left = "=".to_string();
        assert_eq!(cut_lead(&mut left, "x".into()), "x", "not the lead: kept whole");
    }
}
