//! An open document: its text in a rope, edited incrementally, with exact conversion between
//! LSP positions (line + UTF-8 bytes or UTF-16 code units) and offsets in the text.
//!
//! LSP lines end at `\n`, `\r\n` or `\r`; a character offset past the end of a line means the
//! end of that line (before its terminator), and a line past the end means the end of the text.

use ropey::Rope;

/// How the client counts characters in a line (negotiated at initialize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionEncoding {
    Utf8,
    Utf16,
}

/// A zero-based line and character offset, as LSP sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: u32,
    pub character: u32,
}

impl Position {
    pub fn new(line: u32, character: u32) -> Self {
        Position { line, character }
    }
}

/// What an edit changed, in the byte offsets and (row, byte column) points a syntax tree
/// needs to update itself incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextEdit {
    pub start_byte: usize,
    pub old_end_byte: usize,
    pub new_end_byte: usize,
    pub start_point: (usize, usize),
    pub old_end_point: (usize, usize),
    pub new_end_point: (usize, usize),
}

/// An open document.
#[derive(Debug, Clone)]
pub struct Document {
    rope: Rope,
    pub version: i32,
    pub language: String,
}

impl Document {
    pub fn new(text: &str, version: i32, language: impl Into<String>) -> Self {
        Document { rope: Rope::from_str(text), version, language: language.into() }
    }

    pub fn text(&self) -> String {
        self.rope.to_string()
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    pub fn len_bytes(&self) -> usize {
        self.rope.len_bytes()
    }

    /// Chars of line `line` without its terminator.
    fn line_content_chars(&self, line: usize) -> usize {
        let l = self.rope.line(line);
        let mut n = l.len_chars();
        if n > 0 && l.char(n - 1) == '\n' {
            n -= 1;
        }
        if n > 0 && l.char(n - 1) == '\r' {
            n -= 1;
        }
        n
    }

    /// The char index of an LSP position, clamped as LSP prescribes.
    pub fn char_index(&self, pos: Position, enc: PositionEncoding) -> usize {
        let line = pos.line as usize;
        if line >= self.rope.len_lines() {
            return self.rope.len_chars();
        }
        let start = self.rope.line_to_char(line);
        let content = self.line_content_chars(line);
        let slice = self.rope.slice(start..start + content);
        let want = pos.character as usize;
        let within = match enc {
            PositionEncoding::Utf8 => {
                let b = want.min(slice.len_bytes());
                slice.byte_to_char(b)
            }
            PositionEncoding::Utf16 => {
                let u = want.min(slice.len_utf16_cu());
                slice.utf16_cu_to_char(u)
            }
        };
        start + within
    }

    /// The byte offset of an LSP position.
    pub fn byte_offset(&self, pos: Position, enc: PositionEncoding) -> usize {
        self.rope.char_to_byte(self.char_index(pos, enc))
    }

    /// The LSP position of a char index.
    pub fn position(&self, char_idx: usize, enc: PositionEncoding) -> Position {
        let char_idx = char_idx.min(self.rope.len_chars());
        let line = self.rope.char_to_line(char_idx);
        let start = self.rope.line_to_char(line);
        let slice = self.rope.slice(start..char_idx);
        let character = match enc {
            PositionEncoding::Utf8 => slice.len_bytes(),
            PositionEncoding::Utf16 => slice.len_utf16_cu(),
        };
        Position { line: line as u32, character: character as u32 }
    }

    fn point(&self, byte: usize) -> (usize, usize) {
        let line = self.rope.byte_to_line(byte);
        (line, byte - self.rope.line_to_byte(line))
    }

    /// Applies one `contentChanges` entry: a range and its replacement, or (no range) the whole
    /// text. Returns what changed, for the syntax tree.
    pub fn apply(&mut self, range: Option<(Position, Position)>, text: &str, enc: PositionEncoding) -> TextEdit {
        let (start, end) = match range {
            Some((a, b)) => {
                let (a, b) = (self.char_index(a, enc), self.char_index(b, enc));
                (a.min(b), a.max(b))
            }
            None => (0, self.rope.len_chars()),
        };
        let start_byte = self.rope.char_to_byte(start);
        let old_end_byte = self.rope.char_to_byte(end);
        let start_point = self.point(start_byte);
        let old_end_point = self.point(old_end_byte);
        self.rope.remove(start..end);
        self.rope.insert(start, text);
        let new_end_byte = start_byte + text.len();
        TextEdit {
            start_byte,
            old_end_byte,
            new_end_byte,
            start_point,
            old_end_point,
            new_end_point: self.point(new_end_byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PositionEncoding::{Utf16, Utf8};
    use super::*;

    #[test]
    fn astral_characters_count_two_utf16_units_and_four_bytes() {
        let d = Document::new("a😀b\n", 1, "python");
        assert_eq!(d.char_index(Position::new(0, 3), Utf16), 2); // after the emoji
        assert_eq!(d.char_index(Position::new(0, 5), Utf8), 2);
        assert_eq!(d.position(2, Utf16), Position::new(0, 3));
        assert_eq!(d.position(2, Utf8), Position::new(0, 5));
        assert_eq!(d.byte_offset(Position::new(0, 4), Utf16), 6); // after 'b'
    }

    #[test]
    fn positions_past_a_line_clamp_before_its_terminator() {
        let d = Document::new("ab\r\ncd\rx\n", 1, "rust");
        assert_eq!(d.char_index(Position::new(0, 99), Utf16), 2);
        assert_eq!(d.char_index(Position::new(1, 99), Utf16), 6); // "\r" alone ends line 1
        assert_eq!(d.char_index(Position::new(2, 0), Utf16), 7);
        assert_eq!(d.char_index(Position::new(9, 0), Utf16), d.rope().len_chars());
        assert_eq!(d.position(5, Utf8), Position::new(1, 1));
    }

    #[test]
    fn incremental_edits_equal_applying_them_to_a_string() {
        let mut d = Document::new("fn main() {\r\n    let x = 1;\r\n}\r\n", 1, "rust");
        let e = d.apply(Some((Position::new(1, 12), Position::new(1, 13))), "42", Utf16);
        assert_eq!(d.text(), "fn main() {\r\n    let x = 42;\r\n}\r\n");
        assert_eq!((e.start_byte, e.old_end_byte, e.new_end_byte), (25, 26, 27));
        assert_eq!((e.start_point, e.new_end_point), ((1, 12), (1, 14)));
        d.apply(Some((Position::new(2, 0), Position::new(2, 0))), "    // 😀 done\r\n", Utf16);
        d.apply(Some((Position::new(2, 9), Position::new(2, 14))), "ok", Utf16);
        assert_eq!(d.text(), "fn main() {\r\n    let x = 42;\r\n    // 😀ok\r\n}\r\n");
        let e = d.apply(None, "x", Utf8);
        assert_eq!((d.text().as_str(), e.start_byte, e.new_end_byte), ("x", 0, 1));
    }

    #[test]
    fn reversed_and_out_of_range_edits_do_not_panic() {
        let mut d = Document::new("abc", 1, "text");
        d.apply(Some((Position::new(0, 2), Position::new(0, 1))), "X", Utf8);
        assert_eq!(d.text(), "aXc");
        d.apply(Some((Position::new(5, 5), Position::new(9, 9))), "!", Utf16);
        assert_eq!(d.text(), "aXc!");
        // A UTF-8 offset inside a multi-byte character lands on that character's start.
        let d = Document::new("é", 1, "text");
        assert_eq!(d.char_index(Position::new(0, 1), Utf8), 0);
    }
}
