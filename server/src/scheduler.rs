//! The engine loop: one thread owns the model, the KV pool, the prefix cache and every running
//! sequence. Each step runs the next token of every decoding sequence and chunks of waiting
//! prompts in one batched forward (continuous batching with chunked prefill), then streams the
//! new text to each request's channel. HTTP handlers only submit requests and read events.
//!
//! Request lifecycle: queued → admitted (prefix blocks looked up) → prefilling (chunks) →
//! decoding (n candidates forked from the prompt) → finished | cancelled. A request whose
//! event receiver is gone (client disconnected) is freed at the next step; a newer request with
//! the same (user, path) cancels the older one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use ghostline_api::FinishReason;
use ghostline_engine::{
    Backend, BatchItem, KvPool, Logits, Pick, Picker, SamplingParams, SeqKv, StopMatcher, StreamDecoder, Tokenizer,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::prefix_cache::PrefixCache;

/// One completion request, already templated into token ids.
pub struct Request {
    pub prompt: Vec<u32>,
    pub n: usize,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub stop_ids: Vec<u32>,
    /// Token healing: the text taken off the prompt's end, which the first token must begin
    /// with (and which is cut from the completion).
    pub heal: Option<crate::fim::Heal>,
    /// (user, path): a newer request with the same key cancels this one.
    pub supersede_key: Option<(String, String)>,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
}

/// What the scheduler reports about a request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text {
        index: u32,
        text: String,
    },
    /// One candidate ended.
    Done {
        index: u32,
        finish: FinishReason,
    },
    /// All candidates ended; always the last event.
    Finished(Summary),
    /// The request failed (nothing more follows).
    Error(String),
}

/// Usage and timings of a finished request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_batch_tokens: 512, max_running: 64, max_queue: 256, prefix_cache: true }
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    QueueFull,
    Stopped,
}

/// The handle HTTP handlers use.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::Sender<Request>,
    pending: Arc<AtomicUsize>,
    max_queue: usize,
}

impl Scheduler {
    /// Starts the engine thread, which runs `backend` (CPU or CUDA: the loop is the same).
    pub fn start(backend: Arc<Backend>, tok: Arc<Tokenizer>, pool: KvPool, config: SchedulerConfig) -> Scheduler {
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let max_queue = config.max_queue;
        let p = pending.clone();
        std::thread::Builder::new()
            .name("ghostline-engine".into())
            .spawn(move || {
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
                };
                lp.run();
            })
            .expect("spawning the engine thread");
        Scheduler { tx, pending, max_queue }
    }

    /// Queues a request; its events arrive on `req.events`.
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        if self.pending.load(Ordering::Relaxed) >= self.max_queue {
            return Err(SubmitError::QueueFull);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        self.tx.send(req).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            SubmitError::Stopped
        })
    }
}

struct Cand {
    kv: SeqKv,
    picker: Picker,
    decoder: StreamDecoder,
    /// What is left to cut of the healed text at the completion's start.
    heal_left: String,
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
}

fn ms(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
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
            self.drop_abandoned();
            self.admit();
            self.step();
            self.reap();
            metrics::gauge!("ghostline_queue_depth").set(self.waiting.len() as f64);
            metrics::gauge!("ghostline_active_sequences")
                .set(self.running.iter().map(|g| g.req.n).sum::<usize>() as f64);
            metrics::gauge!("ghostline_kv_blocks_used").set(self.pool.used_blocks() as f64);
            metrics::gauge!("ghostline_prefix_cache_blocks").set(self.cache.len() as f64);
        }
    }

    fn arrive(&mut self, req: Request) {
        if let Some(key) = &req.supersede_key {
            for g in self.running.iter_mut().filter(|g| !g.finished && g.req.supersede_key.as_ref() == Some(key)) {
                metrics::counter!("ghostline_cancelled_total", "reason" => "superseded").increment(1);
                Self::finish_all(&mut self.pool, g, FinishReason::Cancelled);
            }
            let mut kept = VecDeque::new();
            for w in self.waiting.drain(..) {
                if w.supersede_key.as_ref() == Some(key) {
                    metrics::counter!("ghostline_cancelled_total", "reason" => "superseded").increment(1);
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    for i in 0..w.n {
                        let _ = w.events.send(Event::Done { index: i as u32, finish: FinishReason::Cancelled });
                    }
                    let now = Instant::now();
                    let _ = w.events.send(Event::Finished(Summary {
                        prompt_tokens: w.prompt.len(),
                        queue_ms: ms(w.submitted, now),
                        total_ms: ms(w.submitted, now),
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

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.pool.shape().block_size)
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(req) = self.waiting.front() else { break };
            let bs = self.pool.shape().block_size;
            // Reuse whole cached blocks, but always leave at least one prompt token to compute.
            let max_blocks = req.prompt.len().saturating_sub(1) / bs;
            let hit = if self.config.prefix_cache { self.cache.lookup(&req.prompt, max_blocks) } else { Vec::new() };
            // Room for the uncached prompt plus the first blocks of each candidate.
            let need = self.blocks_for(req.prompt.len()) - hit.len() + req.n;
            if need > self.pool.free_blocks() + self.cache.evictable(&self.pool) {
                if self.running.is_empty() {
                    // Nothing will free memory: this request can never run.
                    let req = self.waiting.pop_front().expect("front exists");
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    let _ = req.events.send(Event::Error(format!(
                        "the prompt needs {need} KV blocks but the KV cache holds {}; raise kv_memory_mb",
                        self.pool.max_blocks()
                    )));
                    continue;
                }
                break;
            }
            let req = self.waiting.pop_front().expect("front exists");
            self.pending.fetch_sub(1, Ordering::Relaxed);
            for &b in &hit {
                self.pool.retain_block(b);
            }
            let cached = hit.len() * bs;
            let base = SeqKv { blocks: hit, len: cached };
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

    /// Makes sure `need` blocks are free, evicting cached prefixes if necessary.
    fn make_room(&mut self, need: usize) -> bool {
        if self.pool.free_blocks() < need {
            self.cache.evict(&mut self.pool, need);
        }
        self.pool.free_blocks() >= need
    }

    fn step(&mut self) {
        // Plan: every decoding candidate's next token, then prefill chunks in arrival order.
        enum Slot {
            Decode(usize, usize),
            Prefill(usize, usize, usize),
        }
        let mut plan: Vec<Slot> = Vec::new();
        let mut budget = self.config.max_batch_tokens.max(1);
        let mut reserved = 0;
        for gi in 0..self.running.len() {
            let ncands = self.running[gi].cands.len();
            for ci in 0..ncands {
                let c = &self.running[gi].cands[ci];
                if c.done || c.next.is_none() {
                    continue;
                }
                let need = self.pool.blocks_needed(&c.kv, c.kv.len + 1);
                if !self.make_room(reserved + need) {
                    // Out of KV memory mid-generation: end this candidate where it is.
                    let g = &mut self.running[gi];
                    Self::finish_cand(&mut self.pool, g, ci, FinishReason::Length);
                    continue;
                }
                reserved += need;
                plan.push(Slot::Decode(gi, ci));
                budget = budget.saturating_sub(1);
            }
        }
        for gi in 0..self.running.len() {
            let g = &self.running[gi];
            if g.finished || !g.prefilling() || budget == 0 {
                continue;
            }
            let len = (g.req.prompt.len() - g.prefilled).min(budget);
            let need = self.pool.blocks_needed(&g.base, g.prefilled + len);
            let from = g.prefilled;
            if !self.make_room(reserved + need) {
                continue;
            }
            reserved += need;
            budget -= len;
            plan.push(Slot::Prefill(gi, from, len));
        }
        if plan.is_empty() {
            return;
        }
        metrics::histogram!("ghostline_batch_size").record(plan.len() as f64);

        // Split borrows: pull the sequences out, run the forward, put them back.
        let mut seqs: Vec<SeqKv> = Vec::with_capacity(plan.len());
        let mut toks: Vec<Vec<u32>> = Vec::with_capacity(plan.len());
        let mut modes = Vec::with_capacity(plan.len());
        for s in &plan {
            match *s {
                Slot::Decode(gi, ci) => {
                    let c = &mut self.running[gi].cands[ci];
                    seqs.push(std::mem::take(&mut c.kv));
                    toks.push(vec![c.next.take().expect("planned")]);
                    modes.push(Logits::Last);
                }
                Slot::Prefill(gi, from, len) => {
                    let g = &mut self.running[gi];
                    seqs.push(std::mem::take(&mut g.base));
                    toks.push(g.req.prompt[from..from + len].to_vec());
                    let last = from + len == g.req.prompt.len();
                    modes.push(if last { Logits::Last } else { Logits::None });
                }
            }
        }
        // One token per decode slot; a finished prefill picks one per candidate, whose
        // choosers are made here (candidate i's seed is the request's plus i).
        let mut fresh: Vec<(usize, Vec<Picker>)> = Vec::new();
        for (k, s) in plan.iter().enumerate() {
            if let Slot::Prefill(gi, _, _) = *s {
                if modes[k] == Logits::Last {
                    let g = &self.running[gi];
                    let pickers = (0..g.req.n)
                        .map(|i| {
                            let mut sp = g.req.sampling.clone();
                            sp.seed = sp.seed.map(|s| s.wrapping_add(i as u64));
                            let mut picker = Picker::new(sp);
                            if let Some(h) = &g.req.heal {
                                picker.restrict_next(h.allowed.clone());
                            }
                            picker
                        })
                        .collect();
                    fresh.push((k, pickers));
                }
            }
        }
        let mut first_pick = Vec::with_capacity(plan.len() + 1);
        let result = {
            let mut items: Vec<BatchItem> = seqs
                .iter_mut()
                .zip(&toks)
                .zip(&modes)
                .map(|((kv, t), &m)| BatchItem { kv, tokens: t, logits: m })
                .collect();
            let mut cand_pickers: HashMap<(usize, usize), &mut Picker> = self
                .running
                .iter_mut()
                .enumerate()
                .flat_map(|(gi, g)| g.cands.iter_mut().enumerate().map(move |(ci, c)| ((gi, ci), &mut c.picker)))
                .collect();
            let mut picks: Vec<Pick> = Vec::with_capacity(plan.len());
            let mut fresh_iter = fresh.iter_mut().peekable();
            for (k, s) in plan.iter().enumerate() {
                first_pick.push(picks.len());
                match *s {
                    Slot::Decode(gi, ci) => {
                        if let Some(p) = cand_pickers.remove(&(gi, ci)) {
                            picks.push(Pick { item: k, picker: p });
                        }
                    }
                    Slot::Prefill(..) => {
                        if fresh_iter.peek().is_some_and(|(fk, _)| *fk == k) {
                            let (_, pickers) = fresh_iter.next().expect("peeked");
                            picks.extend(pickers.iter_mut().map(|p| Pick { item: k, picker: p }));
                        }
                    }
                }
            }
            first_pick.push(picks.len());
            self.backend.step(&mut self.pool, &mut items, &mut picks)
        };
        let now = Instant::now();
        let tokens = match result {
            Ok(t) => t,
            Err(e) => {
                // Should not happen (room was made above); fail the requests involved, not the server.
                tracing::error!("forward failed: {e}");
                for (s, kv) in plan.iter().zip(seqs.iter_mut()) {
                    let gi = match *s {
                        Slot::Decode(gi, _) | Slot::Prefill(gi, _, _) => gi,
                    };
                    self.pool.release(kv);
                    let g = &mut self.running[gi];
                    if !g.finished {
                        let _ = g.req.events.send(Event::Error(format!("inference failed: {e}")));
                        Self::finish_all(&mut self.pool, g, FinishReason::Cancelled);
                    }
                }
                return;
            }
        };
        let mut fresh = fresh.into_iter();
        for (k, (s, kv)) in plan.iter().zip(seqs).enumerate() {
            // The tokens picked for this slot, one per candidate.
            let picked = &tokens[first_pick[k]..first_pick[k + 1]];
            match *s {
                Slot::Decode(gi, ci) => {
                    self.running[gi].cands[ci].kv = kv;
                    if let Some(&tok) = picked.first() {
                        self.take(gi, ci, tok, now);
                    }
                }
                Slot::Prefill(gi, from, len) => {
                    let g = &mut self.running[gi];
                    g.base = kv;
                    g.prefilled = from + len;
                    if g.prefilled < g.req.prompt.len() {
                        continue;
                    }
                    g.prefill_done = Some(now);
                    if self.config.prefix_cache {
                        self.cache.insert(&mut self.pool, &g.req.prompt, &g.base.blocks);
                    }
                    let base = std::mem::take(&mut g.base);
                    let n = g.req.n;
                    let pickers = fresh.next().map(|(_, p)| p).unwrap_or_default();
                    for (i, picker) in pickers.into_iter().enumerate() {
                        let kv = if i + 1 == n { base.clone() } else { self.pool.fork(&base, base.len) };
                        g.cands.push(Cand {
                            kv,
                            picker,
                            decoder: StreamDecoder::new(&g.req.prompt),
                            heal_left: g.req.heal.as_ref().map(|h| h.text.clone()).unwrap_or_default(),
                            stops: StopMatcher::new(&g.req.stop),
                            generated: 0,
                            next: None,
                            done: false,
                        });
                    }
                    for (ci, &tok) in picked.iter().enumerate() {
                        self.take(gi, ci, tok, now);
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
        if g.req.stop_ids.contains(&tok) {
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
        if !c.heal_left.is_empty() {
            piece = cut_healed(&mut c.heal_left, piece);
        }
        let (out, hit) = c.stops.push(&piece);
        let at_limit = c.generated >= g.req.max_tokens;
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
            for i in 0..g.req.n {
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
            let s = g.req.submitted;
            let summary = Summary {
                prompt_tokens: g.req.prompt.len(),
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

/// Cuts what is left of the healed text (already in the editor) off the start of a piece.
fn cut_healed(left: &mut String, piece: String) -> String {
    if let Some(rest) = piece.strip_prefix(left.as_str()) {
        left.clear();
        rest.to_string()
    } else if let Some(more) = left.strip_prefix(piece.as_str()) {
        *left = more.to_string();
        String::new()
    } else {
        // Not what the first token was held to (cannot happen with a healed first token).
        left.clear();
        piece
    }
}
