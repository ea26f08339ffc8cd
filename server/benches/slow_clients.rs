//! Normal requests' latency while slow clients hold connections open: the real server on
//! loopback, `SLOW` connections that each sent half their headers and stopped (kept open for
//! the whole phase: the header timeout is set past it), and `REQUESTS` sequential normal
//! requests (a one-token engine completion with the caches off, and `/health`), in phases that
//! alternate idle and loaded three times, so that the ratio compares figures of one run.
//!
//!   cargo bench -p ghostline-server --bench slow_clients [-- SLOW REQUESTS]
//!
//! Prints p50 / p99 / max per phase and the loaded / idle p99 ratio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path) -> (Server, String) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/qwen2-tied-bf16");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ghostline-server"))
        .env("GHOSTLINE_LOG", "error")
        .args(["serve", "--addr", "127.0.0.1:0", "--threads", "1", "--cache-mb", "0", "--typeahead-entries", "0"])
        .args(["--header-timeout-secs", "600", "--max-connections", "4096", "--model"])
        .arg(model)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting ghostline-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    (Server(child), addr)
}

/// One request on a fresh connection (as a new editor would), to the end of its answer.
fn request(addr: &str, completion: bool) -> Duration {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    if completion {
        let body = r#"{"prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 1, "temperature": 0}"#;
        write!(
            c,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    } else {
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    }
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let slow_n = args.first().copied().unwrap_or(1000);
    let requests = args.get(1).copied().unwrap_or(300);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let data = std::env::temp_dir().join(format!("ghostline-slow-clients-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let (_server, addr) = start(&data);
    println!("# {cpu}, {} cores; {slow_n} slow connections; {requests} requests per kind and phase", num_cores());
    // Warm up the engine and the connection path.
    for _ in 0..20 {
        request(&addr, true);
    }
    println!("phase   kind        p50_ms  p99_ms  max_ms");
    let mut p99 = [Vec::new(), Vec::new()];
    for round in 0..6 {
        let loaded = round % 2 == 1;
        let slow: Vec<TcpStream> = if loaded {
            (0..slow_n)
                .map(|_| {
                    let mut c = TcpStream::connect(&addr).unwrap();
                    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty").unwrap();
                    c
                })
                .collect()
        } else {
            Vec::new()
        };
        for (k, completion) in [(0, true), (1, false)] {
            let mut times: Vec<Duration> = (0..requests).map(|_| request(&addr, completion)).collect();
            times.sort();
            let (p50, p99v, max) = (percentile(&times, 0.5), percentile(&times, 0.99), times[times.len() - 1]);
            println!(
                "{:<7} {:<11} {:>6.2} {:>7.2} {:>7.2}",
                if loaded { "loaded" } else { "idle" },
                if completion { "completion" } else { "health" },
                ms(p50),
                ms(p99v),
                ms(max)
            );
            if k == 0 {
                p99[loaded as usize].push(ms(p99v));
            }
        }
        // The slow connections were held (not cut) through the phase.
        for c in &slow {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let open = matches!((&*c).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            assert!(open, "a slow connection was closed during the phase");
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "completion p99: idle {:.2} ms, loaded {:.2} ms (mean of 3 phases each): loaded / idle = {:.2}",
        mean(&p99[0]),
        mean(&p99[1]),
        mean(&p99[1]) / mean(&p99[0])
    );
    let _ = std::fs::remove_dir_all(&data);
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
