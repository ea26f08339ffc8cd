//! The client's byte stream, re-framed before tower-lsp-server reads it.
//!
//! tower-lsp-server ends the session at the first message its codec cannot decode (tokio-util's
//! `FramedRead` stops after a decoder error): a body that is not UTF-8 or not JSON, a JSON
//! string with a lone surrogate escape (`"\ud800"`: VS Code's `JSON.stringify` writes one for a
//! lone surrogate in a document, which typing or pasting can leave), a header other than
//! `Content-Length` spelt exactly so, or more than two header lines. One such message and the
//! editor loses completions until it restarts the server. So the bytes pass through `Framer`
//! first, which hands the codec only messages it decodes:
//!
//! - headers: lines ending in `\r\n` or `\n`, names in any case, `Content-Length` required;
//!   garbage before a header block and header blocks without a usable length are skipped up to
//!   the next `Content-Length` (a warning each);
//! - bodies: invalid UTF-8 becomes U+FFFD, and so does each lone surrogate escape (one UTF-16
//!   unit for one, so UTF-16 positions stay exact);
//! - a body that is still not a JSON-RPC message is dropped with a warning, unless it is a
//!   request with an id: that becomes a `ghostline/invalidMessage` request with the same id,
//!   which the server answers with an "invalid request" error naming the problem;
//! - a body announced longer than `MAX_BODY` is skipped as it arrives (nothing buffered).
//!
//! Each message goes on with one canonical header, `Content-Length: N\r\n\r\n`.

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower_lsp_server::jsonrpc::{Request, Response};

/// The method an undecodable request with an id becomes; answered with an error.
pub const INVALID_METHOD: &str = "ghostline/invalidMessage";
/// Longest body kept (a larger announced body is skipped).
pub const MAX_BODY: usize = 256 << 20;
/// Longest header block looked for before the bytes count as garbage.
const MAX_HEADER: usize = 8 << 10;

/// What tower-lsp-server's codec decodes (its own `Message` is private).
#[derive(Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
enum Message {
    Response(Response),
    Request(Request),
}

/// Splits a byte stream into LSP message bodies, resynchronising after garbage.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of an oversize body still to skip.
    skipping: usize,
    /// The body length of the header block already taken off `buf`.
    body_len: Option<usize>,
}

/// One message from the client, ready for the codec, or what was dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A body the codec decodes (canonical JSON-RPC).
    Message(Vec<u8>),
    /// Bytes dropped, and why (for the log).
    Dropped(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle))
}

impl Framer {
    /// Adds bytes read from the client.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping > 0 {
            let n = self.skipping.min(bytes.len());
            self.skipping -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes waiting for the rest of their message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(len) = self.body_len {
                if self.buf.len() < len {
                    return None;
                }
                self.body_len = None;
                let body: Vec<u8> = self.buf.drain(..len).collect();
                return Some(sanitize(&body));
            }
            if self.buf.is_empty() {
                return None;
            }
            let Some((end, after)) = header_end(&self.buf) else {
                if self.buf.len() > MAX_HEADER {
                    self.skip_to_next_header();
                    return Some(Frame::Dropped(format!("more than {MAX_HEADER} bytes without a header's end")));
                }
                return None;
            };
            let header = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            match content_length(&header) {
                Ok(len) if len > MAX_BODY => {
                    self.buf.drain(..after);
                    let have = self.buf.len().min(len);
                    self.buf.drain(..have);
                    self.skipping = len - have;
                    return Some(Frame::Dropped(format!("a body of {len} bytes (at most {MAX_BODY})")));
                }
                Ok(len) => {
                    self.buf.drain(..after);
                    self.body_len = Some(len);
                }
                Err(e) => {
                    self.skip_to_next_header();
                    return Some(Frame::Dropped(e));
                }
            }
        }
    }

    /// Drops bytes up to the next `Content-Length` after the first byte (keeping a tail that
    /// may be the start of one).
    fn skip_to_next_header(&mut self) {
        const NAME: &[u8] = b"content-length";
        let cut = match find(&self.buf[1.min(self.buf.len())..], NAME) {
            Some(at) => at + 1,
            None => self.buf.len().saturating_sub(NAME.len() - 1).max(1),
        };
        self.buf.drain(..cut.min(self.buf.len()));
    }
}

/// Where the header block ends (the empty line) and where its body starts.
fn header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let limit = buf.len().min(MAX_HEADER);
    let mut i = 0;
    while i < limit {
        if buf[i] == b'\n' {
            let next = &buf[i + 1..];
            if next.starts_with(b"\n") {
                return Some((i, i + 2));
            }
            if next.starts_with(b"\r\n") {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn content_length(header: &str) -> Result<usize, String> {
    let mut len = None;
    for line in header.split('\n').map(|l| l.trim_end_matches('\r')) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a header line without a colon: {:?}", line.chars().take(80).collect::<String>()));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(n) => len = Some(n),
                Err(_) => return Err(format!("a Content-Length that is no length: {:?}", value.trim())),
            }
        }
    }
    len.ok_or_else(|| "a header block without Content-Length".to_string())
}

/// Lone surrogate escapes in JSON strings replaced by `\ufffd` (a pair stays a pair).
pub fn replace_lone_surrogates(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains("\\u") && !json.contains("\\U") {
        return json.into();
    }
    let b = json.as_bytes();
    let hex4 = |at: usize| -> Option<u16> {
        let s = json.get(at..at + 4)?;
        if s.bytes().all(|c| c.is_ascii_hexdigit()) {
            u16::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    // The code unit of a `\uXXXX` escape at `at`, if there is one.
    let escape = |at: usize| -> Option<u16> {
        if b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u') {
            hex4(at + 2)
        } else {
            None
        }
    };
    let mut out = String::with_capacity(json.len());
    let mut copied = 0;
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match escape(i) {
                Some(hi @ 0xD800..=0xDBFF) if matches!(escape(i + 6), Some(0xDC00..=0xDFFF)) => {
                    let _ = hi;
                    i += 12;
                }
                Some(0xD800..=0xDFFF) => {
                    out.push_str(&json[copied..i]);
                    out.push_str("\\ufffd");
                    i += 6;
                    copied = i;
                }
                // Any other escape is two bytes (a `\u` one's hex digits are plain bytes).
                _ => i += 2,
            },
            _ => i += 1,
        }
    }
    if copied == 0 {
        return json.into();
    }
    out.push_str(&json[copied.min(json.len())..]);
    out.into()
}

/// A body as the codec will decode it, or why it is dropped.
fn sanitize(body: &[u8]) -> Frame {
    let text = String::from_utf8_lossy(body);
    let text = replace_lone_surrogates(&text);
    let err = match serde_json::from_str::<Message>(&text) {
        Ok(_) => return Frame::Message(text.into_owned().into_bytes()),
        Err(e) => e,
    };
    // A request with an id still gets an answer: an error, through the server.
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&text) {
        let id = o.get("id").filter(|id| id.is_string() || id.as_i64().is_some());
        if let (Some(id), true) = (id, o.contains_key("method")) {
            let msg = json!({"jsonrpc": "2.0", "id": id, "method": INVALID_METHOD,
                "params": {"error": format!("ghostline could not read this request: {err}")}});
            return Frame::Message(msg.to_string().into_bytes());
        }
    }
    Frame::Dropped(format!("a message that is no JSON-RPC message ({err})"))
}

/// Copies the client's stream from `input` to `output` as `Framer` re-frames it, until `input`
/// ends or `output` is closed.
pub async fn pump<I: AsyncRead + Unpin, O: AsyncWrite + Unpin>(mut input: I, mut output: O) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match input.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framer.push(&buf[..n]);
        while let Some(frame) = framer.next_frame() {
            match frame {
                Frame::Message(body) => {
                    let head = format!("Content-Length: {}\r\n\r\n", body.len());
                    if output.write_all(head.as_bytes()).await.is_err() || output.write_all(&body).await.is_err() {
                        return;
                    }
                }
                Frame::Dropped(why) => tracing::warn!("ignored from the client: {why}"),
            }
        }
        if output.flush().await.is_err() {
            return;
        }
    }
    let _ = output.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut f = Framer::default();
        f.push(input);
        std::iter::from_fn(|| f.next_frame()).collect()
    }

    fn msg(body: &str) -> Frame {
        Frame::Message(body.as_bytes().to_vec())
    }

    const EXIT: &str = r#"{"jsonrpc":"2.0","method":"exit"}"#;

    #[test]
    fn well_formed_messages_pass_in_any_header_spelling() {
        let a = format!("Content-Length: {}\r\n\r\n{EXIT}", EXIT.len());
        let b = format!(
            "content-length:{}\nContent-Type: application/vscode-jsonrpc; charset=utf-8\nX-A: 1\n\n{EXIT}",
            EXIT.len()
        );
        assert_eq!(frames(format!("{a}{b}").as_bytes()), vec![msg(EXIT), msg(EXIT)]);
    }

    #[test]
    fn garbage_and_bad_headers_are_skipped_to_the_next_message() {
        let good = format!("Content-Length: {}\r\n\r\n{EXIT}", EXIT.len());
        for bad in ["foobar", "Content-Length: foobar\r\n\r\n", "Content-Type: x\r\n\r\n", "Content-Lengthy\r\n\r\n"] {
            let got = frames(format!("{bad}{good}").as_bytes());
            assert_eq!(got.last(), Some(&msg(EXIT)), "{bad:?}: {got:?}");
            assert!(got[..got.len() - 1].iter().all(|f| matches!(f, Frame::Dropped(_))), "{bad:?}: {got:?}");
        }
    }

    #[test]
    fn lone_surrogates_and_invalid_utf8_become_replacement_characters() {
        assert_eq!(replace_lone_surrogates(r#"{"t":"a\ud800b"}"#), r#"{"t":"a\ufffdb"}"#);
        assert_eq!(replace_lone_surrogates(r#"{"t":"\uDC00\ud83d"}"#), r#"{"t":"\ufffd\ufffd"}"#);
        // A pair stays; an escaped backslash before `u` is no escape; keys are strings too.
        for kept in [r#"{"t":"\ud83d\ude00"}"#, r#"{"t":"\\ud800"}"#, r#"{"a":"\\","b":"\u00e9"}"#] {
            assert_eq!(replace_lone_surrogates(kept), kept);
        }
        assert_eq!(replace_lone_surrogates(r#"{"\udfff":1}"#), r#"{"\ufffd":1}"#);
        let body = b"{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"t\":\"\xff\xfe\\ud800\"}}";
        let f = frames(&[format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(), body].concat());
        assert_eq!(
            f,
            vec![msg("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"t\":\"\u{fffd}\u{fffd}\\ufffd\"}}")]
        );
    }

    #[test]
    fn an_unreadable_request_with_an_id_becomes_an_error_request_and_others_are_dropped() {
        let frame = |b: &str| frames(format!("Content-Length: {}\r\n\r\n{b}", b.len()).as_bytes());
        let f = frame(r#"{"jsonrpc":"1.0","id":7,"method":"initialize"}"#);
        let Frame::Message(m) = &f[0] else { panic!("{f:?}") };
        let v: Value = serde_json::from_slice(m).unwrap();
        assert_eq!((v["id"].clone(), v["method"].clone()), (json!(7), json!(INVALID_METHOD)));
        assert!(matches!(frame("{not json")[0], Frame::Dropped(_)));
        assert!(matches!(frame("[1, 2]")[0], Frame::Dropped(_)));
        // An empty body is no message either.
        assert!(matches!(frame("")[0], Frame::Dropped(_)));
    }

    #[test]
    fn partial_input_waits_and_an_oversize_body_is_skipped_without_buffering() {
        let mut f = Framer::default();
        let whole = format!("Content-Length: {}\r\n\r\n{EXIT}", EXIT.len());
        for b in whole.as_bytes() {
            assert_eq!(f.next_frame(), None);
            f.push(&[*b]);
        }
        assert_eq!(f.next_frame(), Some(msg(EXIT)));
        f.push(format!("Content-Length: {}\r\n\r\n", MAX_BODY + 10).as_bytes());
        assert!(matches!(f.next_frame(), Some(Frame::Dropped(_))));
        f.push(&[b'x'; 10]);
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..MAX_BODY >> 20 {
            f.push(&chunk);
        }
        assert_eq!(f.pending(), 0);
        f.push(whole.as_bytes());
        assert_eq!(f.next_frame(), Some(msg(EXIT)));
    }
}
