//! Raw TCP clients of the server: what a slow, stalled or hostile client does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Server;

pub fn connect(s: &Server) -> TcpStream {
    let addr = s.base.strip_prefix("http://").unwrap();
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

/// Reads until the server closes the connection (or 30 s pass); what it sent and when it closed.
pub fn read_until_closed(c: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("the server kept the connection open for {:?}: {e}", t.elapsed()),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

pub fn status_of(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line: {response:?}"))
}

/// A connection whose `POST /v1/completions` handler is waiting for a body of `len` bytes:
/// hyper sends `100 Continue` when the handler starts reading it, which this waits for. The
/// server's key, when it has one, goes in `Authorization`.
pub fn awaiting_body(s: &Server, len: usize) -> TcpStream {
    let mut c = connect(s);
    let auth = s.key.as_ref().map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed before 100 Continue");
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&interim));
    c
}
