//! Safety filters: secrets are redacted from what the model reads, and completions that carry a
//! secret or a blocklisted pattern are dropped.
//!
//! Redaction runs on prompt, suffix and context snippets before anything else sees them (the
//! caches, the logs, the engine), replacing each secret with `<REDACTED>`. The output check runs
//! on each candidate's text; a hit drops the candidate (`finish_reason: "content_filter"`), and
//! it is never cached. Both count in /metrics: `ghostline_redactions_total{kind}` and
//! `ghostline_filtered_completions_total{reason}`.
//!
//! Default secret patterns (kind: what it finds):
//! - `private_key`: PEM private key blocks (`-----BEGIN … PRIVATE KEY-----` to its END line,
//!   or to the end of the text when the END line is not there)
//! - `aws_access_key`: AWS access key ids (`AKIA…`, `ASIA…`)
//! - `github_token`: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` tokens and `github_pat_…`
//! - `slack_token`: `xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-` tokens
//! - `stripe_key`: `sk_live_`, `sk_test_`, `rk_live_`, `rk_test_` keys
//! - `jwt`: three base64url parts, the first two starting `eyJ`
//! - `password_assignment`: the quoted value assigned to a name containing password, passwd,
//!   pwd, secret, token, api_key / apikey, access_key, private_key or client_secret
//! - `high_entropy_assignment`: a quoted value of 20+ characters from a base64/hex alphabet with
//!   letters and digits and at least 3.5 bits of entropy per character, assigned to any name
//!
//! `--secret-pattern REGEX` adds patterns (kind `custom`); `--blocklist REGEX` adds output-only
//! patterns; `--redact-secrets false` turns the secret filters off (the blocklist stays).

use anyhow::Context;
use ghostline_api::FinishReason;
use regex::Regex;

pub const PLACEHOLDER: &str = "<REDACTED>";

/// How much streamed text is held back for the output check: nothing (no filters), the word
/// being written (the default patterns, none of which spans a space outside a string literal
/// or a PEM header line), or the line being written (custom patterns and blocklists).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Hold {
    Nothing,
    Words,
    Lines,
}

/// How much of a match is replaced.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Span {
    Whole,
    /// Only the named group `v` (the value of an assignment).
    Value,
}

struct Pattern {
    kind: &'static str,
    re: Regex,
    span: Span,
    /// Extra test on the replaced part.
    entropy_check: bool,
}

pub struct Filters {
    secrets: Vec<Pattern>,
    blocklist: Vec<Regex>,
}

const DEFAULTS: &[(&str, &str, Span, bool)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
        Span::Whole,
        false,
    ),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", Span::Whole, false),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", Span::Whole, false),
    ("slack_token", r"\bxox[baprs]-[A-Za-z0-9-]{10,}", Span::Whole, false),
    ("stripe_key", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", Span::Whole, false),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", Span::Whole, false),
    (
        "password_assignment",
        r#"(?i)[A-Za-z0-9_]*(?:password|passwd|pwd|secret|token|api_?key|access_?key|private_?key|client_?secret)[A-Za-z0-9_]*["']?\s*(?::=|=|:)\s*["'](?P<v>[^"'\n]{3,})["']"#,
        Span::Value,
        false,
    ),
    (
        "high_entropy_assignment",
        r#"[A-Za-z_][A-Za-z0-9_]*["']?\s*(?::=|=|:)\s*["'](?P<v>[A-Za-z0-9+/=_\-]{20,})["']"#,
        Span::Value,
        true,
    ),
];

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n).map(|p| -p * p.log2()).sum()
}

fn looks_random(v: &str) -> bool {
    v.bytes().any(|b| b.is_ascii_digit()) && v.bytes().any(|b| b.is_ascii_alphabetic()) && entropy(v) >= 3.5
}

impl Filters {
    /// The default secret patterns (unless `redact` is false), plus extra ones and a blocklist.
    pub fn new(redact: bool, extra_secrets: &[String], blocklist: &[String]) -> anyhow::Result<Filters> {
        let mut secrets = Vec::new();
        if redact {
            for &(kind, re, span, entropy_check) in DEFAULTS {
                secrets.push(Pattern { kind, re: Regex::new(re).context(kind)?, span, entropy_check });
            }
        }
        for p in extra_secrets {
            let re =
                Regex::new(p).with_context(|| format!("--secret-pattern {p:?} is not a valid regular expression"))?;
            secrets.push(Pattern { kind: "custom", re, span: Span::Whole, entropy_check: false });
        }
        let blocklist = blocklist
            .iter()
            .map(|p| Regex::new(p).with_context(|| format!("--blocklist {p:?} is not a valid regular expression")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Filters { secrets, blocklist })
    }

    /// How much streamed text must wait for the output check (see `safe_point`).
    pub fn hold(&self) -> Hold {
        if !self.blocklist.is_empty() || self.secrets.iter().any(|p| p.kind == "custom") {
            Hold::Lines
        } else if self.secrets.is_empty() {
            Hold::Nothing
        } else {
            Hold::Words
        }
    }

    /// `text` with every secret replaced by the placeholder, and the kinds found.
    pub fn redact(&self, text: &str) -> (String, Vec<&'static str>) {
        let mut out = text.to_string();
        let mut kinds = Vec::new();
        for p in &self.secrets {
            if !p.re.is_match(&out) {
                continue;
            }
            let mut next = String::with_capacity(out.len());
            let mut last = 0;
            for c in p.re.captures_iter(&out) {
                let m = match p.span {
                    Span::Whole => c.get(0),
                    Span::Value => c.name("v"),
                };
                let Some(m) = m else { continue };
                if (p.entropy_check && !looks_random(m.as_str())) || m.as_str() == PLACEHOLDER {
                    continue;
                }
                next.push_str(&out[last..m.start()]);
                next.push_str(PLACEHOLDER);
                last = m.end();
                kinds.push(p.kind);
            }
            next.push_str(&out[last..]);
            out = next;
        }
        (out, kinds)
    }

    /// Why a completion must be dropped, if it must.
    pub fn check_output(&self, text: &str) -> Option<&'static str> {
        let (_, kinds) = self.redact(text);
        if let Some(k) = kinds.first() {
            return Some(k);
        }
        self.blocklist.iter().any(|re| re.is_match(text)).then_some("blocklist")
    }

    /// Redacts in place, counting what was found.
    pub fn redact_in_place(&self, text: &mut String) {
        if self.secrets.is_empty() {
            return;
        }
        let (out, kinds) = self.redact(text);
        for k in &kinds {
            metrics::counter!("ghostline_redactions_total", "kind" => *k).increment(1);
        }
        if !kinds.is_empty() {
            *text = out;
        }
    }
}

/// One candidate's text on its way out. With output filters on, text is held back until the
/// output check can vouch for it (see `safe_point`), and every release re-checks the
/// candidate's text so far, so a secret that spans several chunks is never half sent.
#[derive(Default)]
pub struct Outgoing {
    pub sent: String,
    pub held: String,
    pub finish: Option<FinishReason>,
    pub blocked: bool,
}

/// How much of `held` may go out now. `Words`: all but the word being written, or, inside an
/// open string literal or a `-----` line (a PEM header), all but the line being written; no
/// default secret pattern can then be cut in two. `Lines`: whole lines only, since custom
/// patterns may span anything within a line.
fn safe_point(sent: &str, held: &str, hold: Hold) -> usize {
    let line_start = held.rfind('\n').map_or(0, |i| i + 1);
    let line = &held[line_start..];
    match hold {
        Hold::Nothing => held.len(),
        Hold::Lines => line_start,
        Hold::Words => {
            // The line being written, with what of it was already sent.
            let sent_line = if line_start == 0 { sent.rsplit('\n').next().unwrap_or("") } else { "" };
            let quotes = |s: &str| s.chars().filter(|c| matches!(c, '"' | '\'' | '`')).count();
            if (quotes(sent_line) + quotes(line)) % 2 == 1 || sent_line.contains("-----") || line.contains("-----") {
                return line_start;
            }
            match line.char_indices().rev().find(|(_, c)| c.is_whitespace()) {
                Some((i, c)) => line_start + i + c.len_utf8(),
                None => line_start,
            }
        }
    }
}

impl Outgoing {
    /// Takes new text; returns what may be sent now. `blocked` is the output check.
    pub fn push(&mut self, blocked: &dyn Fn(&str) -> bool, text: &str, hold: Hold) -> Option<String> {
        if self.blocked {
            return None;
        }
        self.held.push_str(text);
        let upto = safe_point(&self.sent, &self.held, hold);
        if upto == 0 {
            return None;
        }
        self.release(blocked, upto)
    }

    /// Sends whatever is held (the candidate has ended).
    pub fn flush(&mut self, blocked: &dyn Fn(&str) -> bool) -> Option<String> {
        if self.blocked {
            return None;
        }
        self.release(blocked, self.held.len())
    }

    fn release(&mut self, blocked: &dyn Fn(&str) -> bool, upto: usize) -> Option<String> {
        let candidate = format!("{}{}", self.sent, &self.held[..upto]);
        if blocked(&candidate) {
            self.blocked = true;
            self.held.clear();
            return None;
        }
        let out: String = self.held.drain(..upto).collect();
        self.sent.push_str(&out);
        (!out.is_empty()).then_some(out)
    }

    pub fn finish_reason(&self) -> Option<FinishReason> {
        if self.blocked {
            Some(FinishReason::ContentFilter)
        } else {
            self.finish
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input and the expected redaction side by side.
    const CASES: &[(&str, &str)] = &[
        (
            "key = '''\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----\n'''\n",
            "key = '''\n<REDACTED>\n'''\n",
        ),
        ("pem = \"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk", "pem = \"<REDACTED>"),
        ("aws_id = AKIAIOSFODNN7EXAMPLE\n", "aws_id = <REDACTED>\n"),
        ("t = ghp_0123456789abcdefghijABCDEFGHIJ012345", "t = <REDACTED>"),
        ("SLACK=xoxb-1234567890-abcdefghij", "SLACK=<REDACTED>"),
        ("stripe.api_key = sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe.api_key = <REDACTED>"),
        (
            "auth: eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "auth: <REDACTED>",
        ),
        ("password = \"hunter2\"", "password = \"<REDACTED>\""),
        ("DB_PASSWORD: 'correct horse'", "DB_PASSWORD: '<REDACTED>'"),
        ("\"client_secret\": \"abc123xyz\"", "\"client_secret\": \"<REDACTED>\""),
        ("conn := \"Zx8fQ2mL9vR4tY7wK1pB3nC6\"", "conn := \"<REDACTED>\""),
        // Not secrets: ordinary code stays as it is.
        ("password = input()", "password = input()"),
        ("name = \"aaaaaaaaaaaaaaaaaaaaaaaa\"", "name = \"aaaaaaaaaaaaaaaaaaaaaaaa\""),
        ("path = \"src/components/button_view.rs\"", "path = \"src/components/button_view.rs\""),
        ("def token_count(s):\n    return len(s)", "def token_count(s):\n    return len(s)"),
    ];

    #[test]
    fn secrets_are_redacted_and_code_is_left_alone() {
        let f = Filters::new(true, &[], &[]).unwrap();
        for (input, want) in CASES {
            assert_eq!(f.redact(input).0, *want, "input: {input:?}");
        }
    }

    #[test]
    fn outputs_with_secrets_or_blocklisted_text_are_dropped() {
        let f = Filters::new(true, &[], &["(?i)copyright \\d{4} acme".into()]).unwrap();
        assert_eq!(f.check_output("let k = \"AKIAIOSFODNN7EXAMPLE\";"), Some("aws_access_key"));
        assert_eq!(f.check_output("-----BEGIN PRIVATE KEY-----"), Some("private_key"));
        assert_eq!(f.check_output("// Copyright 2024 ACME"), Some("blocklist"));
        assert_eq!(f.check_output("return a + b"), None);
        let off = Filters::new(false, &["internal\\.corp".into()], &[]).unwrap();
        assert_eq!(off.redact("password = \"x1y2z3\" at internal.corp").0, "password = \"x1y2z3\" at <REDACTED>");
        assert!(Filters::new(true, &["(".into()], &[]).err().unwrap().to_string().contains("--secret-pattern"));
    }

    /// Streams `chunks` through the default filters; returns what went out and whether the
    /// candidate was dropped.
    fn stream(chunks: &[&str]) -> (Vec<String>, bool) {
        let f = Filters::new(true, &[], &[]).unwrap();
        let check = |t: &str| f.check_output(t).is_some();
        let mut o = Outgoing::default();
        let mut out: Vec<String> = chunks.iter().filter_map(|c| o.push(&check, c, f.hold())).collect();
        out.extend(o.flush(&check));
        (out, o.blocked)
    }

    #[test]
    fn ordinary_code_streams_word_by_word() {
        assert_eq!(
            stream(&["return", " a", " +", " b"]),
            (vec!["return ".into(), "a ".into(), "+ ".into(), "b".into()], false)
        );
        assert_eq!(
            stream(&["x = 'it", "s'", " + y"]).0,
            vec!["x = ", "'its' + ", "y"],
            "a string literal goes out closed"
        );
    }

    #[test]
    fn no_part_of_a_secret_is_streamed() {
        for chunks in [
            &["key = AKIA", "IOSFODNN7", "EXAMPLE\n"][..],
            &["password = \"hun", "ter2 is", " fine\"\n"],
            &["-----BEGIN", " RSA PRIVATE", " KEY-----\nMIIE"],
            &["t = ghp_0123456789", "abcdefghijABCDEFGHIJ012345 ", "x"],
        ] {
            let (out, blocked) = stream(chunks);
            assert!(blocked, "{chunks:?}");
            let sent = out.concat();
            for piece in ["AKIA", "hun", "BEGIN", "ghp_"] {
                assert!(!sent.contains(piece), "{piece} went out: {sent:?}");
            }
        }
    }
}
