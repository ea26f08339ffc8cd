//! The scheduler's decisions, as pure functions of what it sees: which waiting request is
//! admitted, and what runs in one step under the token budget and the KV room (decode tokens
//! first, then prefill chunks in arrival order). The engine loop gathers the facts, asks here,
//! and carries the answer out; the tables below test the decisions alone.

/// A candidate with a token to decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeNeed {
    pub group: usize,
    pub cand: usize,
    /// KV blocks its next token needs.
    pub blocks: usize,
    /// KV blocks ending it would free (those it alone holds).
    pub frees: usize,
}

/// A prompt still being prefilled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillNeed {
    pub group: usize,
    /// Prompt tokens already in the KV cache.
    pub from: usize,
    /// Prompt tokens left to compute.
    pub left: usize,
}

/// What one step runs, per sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slot {
    Decode { group: usize, cand: usize },
    Prefill { group: usize, from: usize, len: usize },
}

impl Slot {
    pub fn group(&self) -> usize {
        match *self {
            Slot::Decode { group, .. } | Slot::Prefill { group, .. } => group,
        }
    }
}

/// The plan of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepPlan {
    pub slots: Vec<Slot>,
    /// Candidates that get no room for their next token: they end where they are (length).
    pub out_of_room: Vec<(usize, usize)>,
    /// KV blocks the slots need; made free (evicting cached prefixes) before the forward.
    pub blocks: usize,
}

/// Plans a step: every decode that has room (decodes are never held back by the token budget,
/// which they use first), then a chunk of each prefilling prompt while tokens are left, each
/// skipped when its chunk has no room. `room` is the KV blocks that are free or evictable;
/// `prefill_blocks(i, new_len)` the blocks prefill `i` needs to hold `new_len` tokens.
pub fn plan_step(
    decodes: &[DecodeNeed],
    prefills: &[PrefillNeed],
    max_tokens: usize,
    mut room: usize,
    prefill_blocks: impl Fn(usize, usize) -> usize,
) -> StepPlan {
    let mut plan = StepPlan::default();
    let mut budget = max_tokens.max(1);
    for d in decodes {
        if plan.blocks + d.blocks > room {
            plan.out_of_room.push((d.group, d.cand));
            room += d.frees;
            continue;
        }
        plan.blocks += d.blocks;
        plan.slots.push(Slot::Decode { group: d.group, cand: d.cand });
        budget = budget.saturating_sub(1);
    }
    for (i, p) in prefills.iter().enumerate() {
        if budget == 0 {
            break;
        }
        let len = p.left.min(budget);
        let need = prefill_blocks(i, p.from + len);
        if plan.blocks + need > room {
            continue;
        }
        plan.blocks += need;
        budget -= len;
        plan.slots.push(Slot::Prefill { group: p.group, from: p.from, len });
    }
    plan
}

/// What becomes of the request at the head of the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Admit,
    /// Not now: running requests will free memory.
    Wait,
    /// Never: it needs more KV blocks than can ever be free.
    Refuse,
}

/// Admits the head of the queue when its uncached prompt and the first blocks of its
/// candidates fit in `room` (free or evictable blocks); with nothing running to free more, a
/// request that does not fit never will.
pub fn admission(need: usize, room: usize, nothing_running: bool) -> Admission {
    if need <= room {
        Admission::Admit
    } else if nothing_running {
        Admission::Refuse
    } else {
        Admission::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(group: usize, cand: usize, blocks: usize) -> DecodeNeed {
        DecodeNeed { group, cand, blocks, frees: 2 }
    }
    fn p(group: usize, from: usize, left: usize) -> PrefillNeed {
        PrefillNeed { group, from, left }
    }
    /// One block per 16 tokens, none held yet.
    fn blocks_of(new_len: usize) -> usize {
        new_len.div_ceil(16)
    }

    #[test]
    fn decodes_come_first_then_prefill_chunks_fill_the_token_budget() {
        let plan = plan_step(&[d(0, 0, 0), d(0, 1, 1)], &[p(1, 0, 100), p(2, 0, 50)], 64, 100, |_, n| blocks_of(n));
        assert_eq!(
            plan.slots,
            [
                Slot::Decode { group: 0, cand: 0 },
                Slot::Decode { group: 0, cand: 1 },
                Slot::Prefill { group: 1, from: 0, len: 62 },
            ]
        );
        assert_eq!((plan.blocks, plan.out_of_room.len()), (1 + 4, 0));
    }

    #[test]
    fn the_plan_of_each_situation() {
        struct Case {
            what: &'static str,
            decodes: Vec<DecodeNeed>,
            prefills: Vec<PrefillNeed>,
            max_tokens: usize,
            room: usize,
            slots: Vec<Slot>,
            out_of_room: Vec<(usize, usize)>,
        }
        let cases = [
            Case {
                what: "nothing to do",
                decodes: vec![],
                prefills: vec![],
                max_tokens: 512,
                room: 10,
                slots: vec![],
                out_of_room: vec![],
            },
            Case {
                what: "decodes run past the token budget",
                decodes: vec![d(0, 0, 0), d(1, 0, 0), d(2, 0, 0)],
                prefills: vec![p(3, 0, 10)],
                max_tokens: 2,
                room: 10,
                slots: vec![
                    Slot::Decode { group: 0, cand: 0 },
                    Slot::Decode { group: 1, cand: 0 },
                    Slot::Decode { group: 2, cand: 0 },
                ],
                out_of_room: vec![],
            },
            Case {
                what: "a zero budget still runs one token",
                decodes: vec![],
                prefills: vec![p(0, 0, 10)],
                max_tokens: 0,
                room: 10,
                slots: vec![Slot::Prefill { group: 0, from: 0, len: 1 }],
                out_of_room: vec![],
            },
            Case {
                what: "a decode without room ends, and what it frees serves the next",
                decodes: vec![d(0, 0, 1), d(1, 0, 1), d(2, 0, 1)],
                prefills: vec![],
                max_tokens: 512,
                room: 1,
                slots: vec![Slot::Decode { group: 0, cand: 0 }, Slot::Decode { group: 2, cand: 0 }],
                out_of_room: vec![(1, 0)],
            },
            Case {
                what: "a prefill chunk without room waits; a smaller later one runs",
                decodes: vec![],
                prefills: vec![p(0, 0, 100), p(1, 32, 10)],
                max_tokens: 512,
                room: 3,
                slots: vec![Slot::Prefill { group: 1, from: 32, len: 10 }],
                out_of_room: vec![],
            },
            Case {
                what: "chunked prefill goes on from where it is",
                decodes: vec![d(0, 0, 0)],
                prefills: vec![p(1, 128, 1000)],
                max_tokens: 512,
                room: 100,
                slots: vec![Slot::Decode { group: 0, cand: 0 }, Slot::Prefill { group: 1, from: 128, len: 511 }],
                out_of_room: vec![],
            },
        ];
        for c in cases {
            let plan = plan_step(&c.decodes, &c.prefills, c.max_tokens, c.room, |i, n| {
                blocks_of(n) - blocks_of(c.prefills[i].from)
            });
            assert_eq!(plan.slots, c.slots, "{}", c.what);
            assert_eq!(plan.out_of_room, c.out_of_room, "{}", c.what);
            assert!(plan.blocks <= c.room + 2 * plan.out_of_room.len(), "{}", c.what);
        }
    }

    #[test]
    fn the_head_of_the_queue_is_admitted_waits_or_is_refused() {
        for (need, room, nothing_running, want) in [
            (3, 3, false, Admission::Admit),
            (3, 3, true, Admission::Admit),
            (0, 0, true, Admission::Admit),
            (4, 3, false, Admission::Wait),
            (4, 3, true, Admission::Refuse),
        ] {
            assert_eq!(admission(need, room, nothing_running), want, "{need} {room} {nothing_running}");
        }
    }
}
