//! The timing model of adaptive triggering: how long an automatic request waits after a
//! keystroke before it is sent, from the typist's rhythm (the recent gaps between keystrokes of
//! the document), the server's measured time to the first line (and the load its growth shows)
//! and what the cursor's context predicts (a pause is likely after `:`, `)`, an Enter; unlikely
//! at the end of a half-typed word).
//!
//! A request is sent either early (a short wait after a keystroke whose context has, in this
//! typist's own history, been followed by a pause long enough to show an answer), or once the
//! next keystroke is overdue: at the shortest wait after which an answer sent then is more
//! likely than not to be on screen before the next keystroke. Requests that could not be shown
//! before the next keystroke is likely are not sent: the next keystroke supersedes them while
//! they wait.
//!
//! Pure: no clock, no IO. Times are milliseconds on the caller's clock, so tests script them.

use std::collections::VecDeque;

use ropey::Rope;

use crate::trigger::is_word_char;

/// Gaps between keystrokes kept per document.
const HISTORY: usize = 32;
/// Gaps kept per context class (for the chance that a pause follows it).
const CLASS_HISTORY: usize = 24;
/// A longer gap is stored as this (the typist left; how long does not matter).
const GAP_CAP_MS: u64 = 5000;
/// Fewer gaps than this: the typist's rhythm is not known yet.
const MIN_GAPS: usize = 6;
/// The wait while the rhythm is not known.
const COLD_WAIT_MS: u64 = 120;
/// The bounds of every adaptive wait.
const MIN_WAIT_MS: u64 = 40;
const MAX_WAIT_MS: u64 = 600;
/// The wait of an early request: short, so that a change the editor sends right after the
/// keystroke (an auto-closed pair, a second cursor) supersedes it.
pub const EARLY_WAIT_MS: u64 = 25;
/// How long an answer must stay on screen before the next keystroke to be of use.
const LINGER_MS: u64 = 100;
/// The time to the first line assumed before the server has answered once.
const DEFAULT_FIRST_LINE_MS: f64 = 150.0;
/// The smallest time to first line that load is measured against.
const LOAD_FLOOR_MS: f64 = 50.0;
/// Weight of the class prior, in observations.
const PRIOR_WEIGHT: f64 = 4.0;
/// The chance of a useful pause above which a request is sent early (on an idle server).
const EARLY_THRESHOLD: f64 = 0.4;

/// What the cursor's context says about the keystroke that led there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// After a block opener (`:`, `{`).
    Opener,
    /// After a closer (`)`, `]`, `}`, `;`).
    Closer,
    /// At the start of a line (after an Enter and its indentation).
    LineStart,
    /// After an operator or separator (`=`, `,`, `(`, `+`, ...), with or without a space.
    Operator,
    /// After a completed word and a space.
    AfterWord,
    /// At the end of a word being typed.
    InWord,
    Other,
}

impl Context {
    pub const ALL: [Context; 7] = [
        Context::Opener,
        Context::Closer,
        Context::LineStart,
        Context::Operator,
        Context::AfterWord,
        Context::InWord,
        Context::Other,
    ];

    fn index(self) -> usize {
        Context::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Context::Opener => "opener",
            Context::Closer => "closer",
            Context::LineStart => "line_start",
            Context::Operator => "operator",
            Context::AfterWord => "after_word",
            Context::InWord => "in_word",
            Context::Other => "other",
        }
    }

    /// The chance that a pause follows, before this typist has shown theirs.
    fn prior(self) -> f64 {
        match self {
            Context::Opener => 0.6,
            Context::Closer => 0.45,
            Context::LineStart => 0.45,
            Context::Operator => 0.3,
            Context::AfterWord => 0.2,
            Context::InWord => 0.06,
            Context::Other => 0.12,
        }
    }

    /// The context of a cursor from the text of its line before it.
    pub fn classify(before: &str) -> Context {
        let Some(last) = before.chars().next_back() else { return Context::LineStart };
        if last == ' ' || last == '\t' {
            return match before.trim_end().chars().last() {
                None => Context::LineStart,
                Some(c) if is_word_char(c) => Context::AfterWord,
                Some(c) => Self::of_symbol(c),
            };
        }
        if is_word_char(last) {
            return Context::InWord;
        }
        Self::of_symbol(last)
    }

    fn of_symbol(c: char) -> Context {
        match c {
            ':' | '{' => Context::Opener,
            ')' | ']' | '}' | ';' => Context::Closer,
            '=' | ',' | '(' | '[' | '+' | '-' | '*' | '/' | '%' | '<' | '>' | '!' | '&' | '|' | '^' => {
                Context::Operator
            }
            _ => Context::Other,
        }
    }

    /// The context at char index `cursor` of `rope` (reads at most the 64 characters before it).
    pub fn at(rope: &Rope, cursor: usize) -> Context {
        let cursor = cursor.min(rope.len_chars());
        let line_start = rope.line_to_char(rope.char_to_line(cursor));
        let from = line_start.max(cursor.saturating_sub(64));
        let before: String = rope.slice(from..cursor).chars().collect();
        // A cut line that is all blanks may still have code before the cut.
        if from > line_start && before.trim().is_empty() {
            return Context::Other;
        }
        Context::classify(&before)
    }
}

/// The server's pace as the language server measures it: the time from sending a request to
/// having its first line, smoothed, and the best seen (its growth over the best is load).
#[derive(Debug, Clone, Default)]
pub struct ServerPace {
    smoothed_ms: Option<f64>,
    best_ms: Option<f64>,
}

impl ServerPace {
    /// A request's first line arrived `ms` after it was sent.
    pub fn observe(&mut self, ms: f64) {
        let ms = ms.max(0.0);
        self.smoothed_ms = Some(match self.smoothed_ms {
            Some(s) => 0.7 * s + 0.3 * ms,
            None => ms,
        });
        self.best_ms = Some(self.best_ms.map_or(ms, |b| b.min(ms)));
    }

    /// The expected time to the first line.
    pub fn first_line_ms(&self) -> f64 {
        self.smoothed_ms.unwrap_or(DEFAULT_FIRST_LINE_MS)
    }

    /// How loaded the server looks, 0 (as fast as ever) to 1 (three times its best or slower).
    /// Growth is measured against at least `LOAD_FLOOR_MS`, so a server that answers in a few
    /// milliseconds does not look loaded when it takes a few more.
    pub fn load(&self) -> f64 {
        match (self.smoothed_ms, self.best_ms) {
            (Some(s), Some(b)) => ((s - b) / b.max(LOAD_FLOOR_MS) / 2.0).clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    /// The chance of a useful pause above which a request is sent early: higher on a loaded
    /// server, where a request that is not shown costs more.
    pub fn early_threshold(&self) -> f64 {
        EARLY_THRESHOLD + 0.3 * self.load()
    }
}

/// How often a pause followed each context, per typist (all documents).
#[derive(Debug, Clone, Default)]
pub struct Habits {
    /// The gaps that followed a keystroke of each context class.
    after: [VecDeque<u64>; 7],
}

impl Habits {
    fn observe(&mut self, ctx: Context, gap_ms: u64) {
        let q = &mut self.after[ctx.index()];
        if q.len() == CLASS_HISTORY {
            q.pop_front();
        }
        q.push_back(gap_ms.min(GAP_CAP_MS));
    }

    /// The chance that the gap after a keystroke in `ctx` is longer than `ms` (the class prior
    /// weighted as `PRIOR_WEIGHT` observations, then what this typist did).
    pub fn chance_longer(&self, ctx: Context, ms: u64) -> f64 {
        let q = &self.after[ctx.index()];
        let longer = q.iter().filter(|g| **g > ms).count() as f64;
        (longer + ctx.prior() * PRIOR_WEIGHT) / (q.len() as f64 + PRIOR_WEIGHT)
    }
}

/// One document's recent keystrokes.
#[derive(Debug, Clone, Default)]
pub struct Rhythm {
    last: Option<(u64, Context)>,
    gaps: VecDeque<u64>,
}

impl Rhythm {
    /// A keystroke at `at_ms` left the cursor in `ctx`.
    pub fn key(&mut self, at_ms: u64, ctx: Context, habits: &mut Habits) {
        if let Some((t, prev)) = self.last {
            let gap = at_ms.saturating_sub(t).min(GAP_CAP_MS);
            habits.observe(prev, gap);
            if self.gaps.len() == HISTORY {
                self.gaps.pop_front();
            }
            self.gaps.push_back(gap);
        }
        self.last = Some((at_ms, ctx));
    }

    /// The median gap between keystrokes, once known.
    pub fn typical_gap_ms(&self) -> Option<u64> {
        if self.gaps.len() < MIN_GAPS {
            return None;
        }
        let mut g: Vec<u64> = self.gaps.iter().copied().collect();
        g.sort_unstable();
        Some(g[g.len() / 2])
    }

    /// How long an answer must stay on screen before the next keystroke to be of use: a
    /// moment, and at least the typist's usual gap (a flash between two keystrokes is not a
    /// suggestion read).
    pub fn linger_ms(&self) -> u64 {
        let mut g: Vec<u64> = self.gaps.iter().copied().collect();
        g.sort_unstable();
        g.get(g.len() / 2).copied().unwrap_or(0).max(LINGER_MS)
    }

    /// The shortest wait `w` after which an answer sent then (on screen `first_line_ms` later)
    /// is more likely than not to stay there `linger_ms` before the next keystroke, going by the
    /// recent gaps: of the gaps longer than `w`, more than half are longer than
    /// `w + first_line_ms + linger_ms`. With no gap longer than `w` the next keystroke is
    /// overdue by the whole history.
    pub fn overdue_ms(&self, first_line_ms: f64) -> u64 {
        if self.gaps.len() < MIN_GAPS {
            return COLD_WAIT_MS;
        }
        let mut sorted: Vec<u64> = self.gaps.iter().copied().collect();
        sorted.sort_unstable();
        let need = first_line_ms.max(0.0).round() as u64 + self.linger_ms();
        let candidates = std::iter::once(MIN_WAIT_MS).chain(sorted.iter().map(|g| g + 1));
        for w in candidates.filter(|w| *w >= MIN_WAIT_MS) {
            let longer = sorted.iter().filter(|g| **g > w).count();
            let long_enough = sorted.iter().filter(|g| **g > w + need).count();
            if longer == 0 || 2 * long_enough > longer {
                return w.min(MAX_WAIT_MS);
            }
        }
        MAX_WAIT_MS
    }
}

/// When an automatic request at a keystroke is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// The wait after the keystroke; a newer keystroke during it means no request.
    pub wait_ms: u64,
    /// Sent early, on the context's promise of a pause.
    pub early: bool,
    /// The chance of a useful pause the context gave.
    pub pause_chance: f64,
}

/// The plan for a request at a cursor in `ctx`, `since_key_ms` after the document's last
/// keystroke (the wait left is what remains of the plan's wait).
pub fn plan(rhythm: &Rhythm, habits: &Habits, server: &ServerPace, ctx: Context) -> Plan {
    let first_line = server.first_line_ms();
    // A pause is of use when the answer arrives and stays a moment before the next keystroke.
    let useful = EARLY_WAIT_MS + first_line.round() as u64 + rhythm.linger_ms();
    let pause_chance = habits.chance_longer(ctx, useful);
    let overdue = rhythm.overdue_ms(first_line);
    if pause_chance >= server.early_threshold() && EARLY_WAIT_MS < overdue {
        return Plan { wait_ms: EARLY_WAIT_MS, early: true, pause_chance };
    }
    Plan { wait_ms: overdue, early: false, pause_chance }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rhythm and habits after keystrokes at the given gaps, each leaving the cursor in `ctx`.
    fn typed(gaps: &[u64], ctx: Context) -> (Rhythm, Habits) {
        let keys: Vec<(Context, u64)> = gaps.iter().map(|g| (ctx, *g)).collect();
        script(&keys)
    }

    /// Keystrokes each leaving the cursor in a context, followed by a gap.
    fn script(keys: &[(Context, u64)]) -> (Rhythm, Habits) {
        let (mut r, mut h) = (Rhythm::default(), Habits::default());
        let mut t = 1000;
        for (ctx, gap) in keys {
            r.key(t, *ctx, &mut h);
            t += gap;
        }
        if let Some((ctx, _)) = keys.last() {
            r.key(t, *ctx, &mut h);
        }
        (r, h)
    }

    /// `n` times: a keystroke in `ctx` followed by `gap`, then three mid-word keystrokes at 120.
    fn among_words(n: usize, ctx: Context, gap: impl Fn(usize) -> u64) -> (Rhythm, Habits) {
        let keys: Vec<(Context, u64)> = (0..n)
            .flat_map(|i| [(ctx, gap(i)), (Context::InWord, 120), (Context::InWord, 120), (Context::InWord, 120)])
            .collect();
        script(&keys)
    }

    fn server(first_line_ms: f64) -> ServerPace {
        let mut s = ServerPace::default();
        s.observe(first_line_ms);
        s
    }

    #[test]
    fn contexts_from_the_line_before_the_cursor() {
        let cases: &[(&str, Context)] = &[
            ("", Context::LineStart),
            ("    ", Context::LineStart),
            ("def f(x):", Context::Opener),
            ("fn main() {", Context::Opener),
            ("    total = len(x)", Context::Closer),
            ("    x = f(a);", Context::Closer),
            ("    x =", Context::Operator),
            ("    x = ", Context::Operator),
            ("f(a, ", Context::Operator),
            ("    return ", Context::AfterWord),
            ("    retu", Context::InWord),
            ("    x = 1", Context::InWord),
            ("    s = \"", Context::Other),
        ];
        for (before, want) in cases {
            assert_eq!(Context::classify(before), *want, "{before:?}");
        }
        let rope = Rope::from_str("def f(x):\n    y = \n");
        assert_eq!(Context::at(&rope, 9), Context::Opener);
        assert_eq!(Context::at(&rope, 15), Context::InWord);
        assert_eq!(Context::at(&rope, 18), Context::Operator);
        assert_eq!(Context::at(&rope, 10), Context::LineStart);
        assert_eq!(Context::at(&rope, 999), Context::LineStart, "past the end: clamped");
    }

    #[test]
    fn the_overdue_wait_follows_the_typists_rhythm_and_the_servers_pace() {
        // (gaps typed, server's first line ms, overdue wait wanted)
        let steady_120 = [120; 12];
        let jitter_120 = [110, 125, 118, 131, 122, 115, 128, 120, 135, 117, 124, 119];
        let with_pauses = [120, 120, 120, 720, 120, 120, 120, 120, 720, 120, 120, 120];
        let slow = [250, 240, 260, 255, 245, 250, 252, 248];
        let hesitant = [120, 200, 120, 210, 120, 190, 120, 205, 120, 900];
        let thinking = [120, 120, 400, 120, 120, 400, 120, 120, 400, 120, 120, 400];
        let cases: &[(&[u64], f64, u64)] = &[
            (&[120, 120], 100.0, COLD_WAIT_MS),
            (&steady_120, 100.0, 121),
            (&jitter_120, 100.0, 136),
            (&with_pauses, 100.0, 121),
            (&slow, 100.0, 261),
            // Hesitations of ~200 ms: an answer sent just after the fast gaps would lose to them.
            (&hesitant, 100.0, 211),
            // Pauses of 400 ms: long enough for a fast server's answer, not for a slow one's.
            (&thinking, 100.0, 121),
            (&thinking, 350.0, 401),
            // A server slower than any pause: wait out the whole history, bounded.
            (&with_pauses, 900.0, MAX_WAIT_MS),
            (&[50; 10], 100.0, 51),
            (&[10; 10], 100.0, MIN_WAIT_MS),
        ];
        for (gaps, first_line, want) in cases {
            let (r, _) = typed(gaps, Context::InWord);
            assert_eq!(r.overdue_ms(*first_line), *want, "{gaps:?} at {first_line} ms");
        }
    }

    #[test]
    fn a_context_that_this_typist_pauses_after_is_asked_early() {
        let s = server(100.0);
        // No history: the priors decide (opener yes, the end of a word no).
        let (r, h) = typed(&[], Context::Other);
        assert!(plan(&r, &h, &s, Context::Opener).early);
        assert!(plan(&r, &h, &s, Context::Closer).early);
        assert!(!plan(&r, &h, &s, Context::InWord).early);
        assert_eq!(plan(&r, &h, &s, Context::InWord).wait_ms, COLD_WAIT_MS);
        // A typist who never pauses after a `)` (calls mid-line): no early request there.
        let (r, h) = typed(&[120; 16], Context::Closer);
        let p = plan(&r, &h, &s, Context::Closer);
        assert!(!p.early, "{p:?}");
        assert_eq!(p.wait_ms, 121);
        // A typist who pauses after each word and a space: asked early there, despite the prior.
        let (r, h) = among_words(8, Context::AfterWord, |_| 900);
        assert!(plan(&r, &h, &s, Context::AfterWord).early);
        // Pauses too short for this server's answer are no pauses for the plan.
        let (r, h) = among_words(8, Context::AfterWord, |_| 400);
        assert!(plan(&r, &h, &s, Context::AfterWord).early);
        assert!(!plan(&r, &h, &server(400.0), Context::AfterWord).early);
    }

    #[test]
    fn a_loaded_server_raises_the_bar_for_early_requests() {
        let mut s = server(100.0);
        assert_eq!(s.load(), 0.0);
        // Closers followed by a pause half the time: early on an idle server only.
        let (r, h) = among_words(16, Context::Closer, |i| if i % 2 == 0 { 120 } else { 800 });
        assert!(plan(&r, &h, &s, Context::Closer).early);
        for _ in 0..10 {
            s.observe(300.0);
        }
        assert!(s.load() > 0.9, "{}", s.load());
        assert!(!plan(&r, &h, &s, Context::Closer).early);
        assert!(s.first_line_ms() > 290.0);
        // A server answering in 2 ms, then in 9: not loaded.
        let mut fast = server(2.0);
        for _ in 0..10 {
            fast.observe(9.0);
        }
        assert!(fast.load() < 0.1, "{}", fast.load());
    }

    #[test]
    fn long_absences_count_as_one_long_gap() {
        let (r, h) = typed(&[120, 120, 120, 120, 120, 3_600_000], Context::Opener);
        assert_eq!(r.gaps.back(), Some(&GAP_CAP_MS));
        assert_eq!(r.typical_gap_ms(), Some(120));
        assert!(h.chance_longer(Context::Opener, 500) < 1.0);
        // The clock going backwards (a caller's bug) is a zero gap, not a panic.
        let (mut r, mut h) = typed(&[120; 8], Context::Other);
        r.key(0, Context::Other, &mut h);
        assert_eq!(r.gaps.back(), Some(&0));
    }
}
