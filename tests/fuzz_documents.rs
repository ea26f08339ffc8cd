//! LSP document edits, fuzzed (driven by `ghostline-fuzz`): sequences of `didChange` edits with
//! out-of-range and reversed ranges, positions inside multi-byte characters and between the
//! halves of a UTF-16 surrogate pair, CR / LF / CRLF mixes, empty, whole-text and huge edits,
//! in both position encodings, through `Documents` (rope, syntax trees, snapshots). Every edit
//! is checked against a plain `String` model of the LSP rules, written independently here.

use ghostline::document::{Position, PositionEncoding};
use ghostline::documents::Documents;
use ghostline::trigger::Multiline;
use ghostline_fuzz::Bytes;

/// The reference: lines end at `\n`, `\r\n` or `\r`; a character past a line's end is its end
/// (before the terminator); a line past the last is the text's end; an offset inside a
/// character (UTF-8) or between surrogates (UTF-16) is that character's start.
fn char_index(text: &[char], pos: Position, enc: PositionEncoding) -> usize {
    let mut line = 0u32;
    let mut i = 0;
    while line < pos.line {
        match text.get(i) {
            None => return text.len(),
            Some('\n') => line += 1,
            Some('\r') if text.get(i + 1) == Some(&'\n') => {
                i += 1;
                line += 1;
            }
            Some('\r') => line += 1,
            _ => {}
        }
        i += 1;
    }
    let mut units = 0usize;
    while let Some(&c) = text.get(i) {
        if c == '\n' || c == '\r' {
            break;
        }
        let w = match enc {
            PositionEncoding::Utf8 => c.len_utf8(),
            PositionEncoding::Utf16 => c.len_utf16(),
        };
        if units + w > pos.character as usize {
            break;
        }
        units += w;
        i += 1;
    }
    i
}

const PIECES: &[&str] = &[
    "",
    "\n",
    "\r\n",
    "\r",
    "\n\r",
    "é",
    "😀",
    "a😀b",
    "\u{2028}",
    "\u{feff}",
    "\0",
    "fn main() {\n    let x = 1;\n}\n",
    "def f(x):\r\n    return x\r\n",
    "\"unterminated",
    "/* comment",
    "    ",
    "\t",
    "}}}}",
    "((((",
];

const URI: &str = "file:///fuzz/doc.rs";

/// How big an input's documents may grow: `huge` is the most repetitions of one piece in a huge
/// edit; an input stops after `MAX_STEPS` edit steps, or after the step that takes its document
/// past `max_chars` (that step still checked).
struct Limits {
    huge: usize,
    max_chars: usize,
}

/// Plain text: huge edits of up to about 120 KB, documents to 32 Ki characters.
const TEXT: Limits = Limits { huge: 4096, max_chars: 32 << 10 };
/// With syntax trees every step reparses, and what makes that slow is tree-sitter's error
/// recovery on long runs of garbage (`}}}}`, `((((` thousands of times): huge edits of up to
/// about 8 KB, documents to 4 Ki characters. The text target covers the large sizes.
const TREES: Limits = Limits { huge: 256, max_chars: 4 << 10 };
const MAX_STEPS: usize = 24;

fn text_of(b: &mut Bytes, huge: usize) -> String {
    match b.u8() % 4 {
        0 => PIECES[b.u8() as usize % PIECES.len()].to_string(),
        1 => {
            // One piece many times; now and then a huge edit.
            let p = PIECES[b.u8() as usize % PIECES.len()];
            let times = if b.u8() < 8 { 1 + b.u16() as usize % huge } else { 1 + b.u8() as usize % 16 };
            p.repeat(times)
        }
        2 => {
            let n = b.u8() as usize % 32;
            String::from_utf8_lossy(b.take(n)).into_owned()
        }
        _ => {
            let a = PIECES[b.u8() as usize % PIECES.len()];
            let c = PIECES[b.u8() as usize % PIECES.len()];
            format!("{a}{c}")
        }
    }
}

fn position(b: &mut Bytes) -> Position {
    // Mostly near the text, sometimes far past it.
    let line = if b.u8() < 16 { b.u16() as u32 * 1000 } else { b.u8() as u32 % 12 };
    let character = if b.u8() < 16 { u32::MAX - b.u8() as u32 } else { b.u8() as u32 % 40 };
    Position::new(line, character)
}

const SEEDS: &[&[u8]] = &[
    b"\x00\x00\x03\x01\x02\x03\x04\x05\x06\x07\x08\x09",
    b"\x01\x02\x05\x10\x02\x03\x11\x00\x04\x01\x01\x06\x07\x00\x00\x00\x03\x02\x01\x00\x01",
    b"\x02\x20\x00\x00\x00\x00\x00\x00\x00\x00\x01\x05\xff\xff\x00\x00\x00\x00\x00",
];

/// One input: a document opened in one of `languages`, then edit steps, each checked.
fn edit_session(data: &[u8], languages: &[&str], lim: &Limits) {
    let mut b = Bytes::new(data);
    let docs = Documents::default();
    let enc = if b.u8().is_multiple_of(2) { PositionEncoding::Utf16 } else { PositionEncoding::Utf8 };
    docs.set_encoding(enc);
    let initial = text_of(&mut b, lim.huge);
    docs.open(URI, languages[b.u8() as usize % languages.len()], 1, &initial);
    let mut model: Vec<char> = initial.chars().collect();
    let mut version = 1;
    let mut steps = 0;
    while !b.is_empty() && steps < MAX_STEPS && (steps == 0 || model.len() <= lim.max_chars) {
        steps += 1;
        let whole = b.u8().is_multiple_of(16);
        let edits: Vec<(Option<(Position, Position)>, String)> = (0..1 + b.u8() % 3)
            .map(|_| {
                let range = (!whole).then(|| (position(&mut b), position(&mut b)));
                (range, text_of(&mut b, lim.huge))
            })
            .collect();
        for (range, text) in &edits {
            let (start, end) = match range {
                Some((a, c)) => {
                    let (a, c) = (char_index(&model, *a, enc), char_index(&model, *c, enc));
                    (a.min(c), a.max(c))
                }
                None => (0, model.len()),
            };
            model.splice(start..end, text.chars());
        }
        version += 1;
        docs.change(URI, version, &edits).expect("the document is open");
        let expected: String = model.iter().collect();
        assert_eq!(docs.text(URI).as_deref(), Some(expected.as_str()), "after edits {edits:?}");
        // A request anywhere snapshots without panicking, at the position the model says.
        let pos = position(&mut b);
        let snap = docs.snapshot(URI, pos, Multiline::Auto, true).expect("open");
        assert_eq!(snap.cursor, char_index(&model, pos, enc), "cursor of {pos:?}");
        let back = snap.doc.position(snap.cursor, enc);
        assert_eq!(snap.doc.char_index(back, enc), snap.cursor, "{pos:?} -> {back:?}");
    }
}

/// Documents with syntax trees (Rust, Python) and without: every edit reparses the document,
/// so its documents stay smaller ([`TREES`]).
#[test]
fn fuzz_document_edits() {
    ghostline_fuzz::run("document_edits", SEEDS, &[], 100, |data| {
        edit_session(data, &["rust", "python", "plaintext"], &TREES)
    });
}

/// The same sessions on plain-text documents (no tree): the rope, the position rules of both
/// encodings, snapshots and the trigger's decision, at the rate that millions of inputs need.
/// Its corpus is `document_edits`'s, so a regression found by either is replayed by both.
#[test]
fn fuzz_document_text_edits() {
    let mut seeds: Vec<Vec<u8>> = ghostline_fuzz::corpus("document_edits").into_iter().map(|(_, b)| b).collect();
    seeds.extend(SEEDS.iter().map(|s| s.to_vec()));
    let seeds: Vec<&[u8]> = seeds.iter().map(|s| s.as_slice()).collect();
    ghostline_fuzz::run("document_text_edits", &seeds, &[], 100, |data| edit_session(data, &["plaintext"], &TEXT));
}
