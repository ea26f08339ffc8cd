//! `--model hf:…` and `--model ollama:…` through the real binary: the hub path against a local
//! HTTP server laid out as the hub's resolve URLs (what an `HF_ENDPOINT` mirror serves), the
//! Ollama path against a directory in Ollama's layout. Nothing leaves loopback.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{bin, TempDir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request the mirror saw: the path and the `Range` header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// A hub mirror on loopback serving `files` (repository path -> bytes) at
/// `/{repo}/resolve/{revision}/{file}`, with the headers the hub sends (`etag`, `x-repo-commit`,
/// `Content-Range` for ranged requests). With `cut_first` set, the first full download of that
/// file stops after half its bytes, as a dropped connection does.
struct Mirror {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mirror {
    fn start(repo: &str, files: HashMap<String, Vec<u8>>, cut_first: Option<&str>) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let files = Arc::new(files);
        let prefix = format!("/{repo}/resolve/");
        let cut = Arc::new(Mutex::new(cut_first.map(str::to_string)));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (files, prefix, seen, cut) = (files.clone(), prefix.clone(), s2.clone(), cut.clone());
                std::thread::spawn(move || serve(conn, &files, &prefix, &seen, &cut));
            }
        });
        Mirror { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut conn: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    prefix: &str,
    seen: &Mutex<Vec<Seen>>,
    cut: &Mutex<Option<String>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
            }
        }
        seen.lock().unwrap().push(Seen { path: path.clone(), range: range.clone() });
        // /{repo}/resolve/{revision}/{file}
        let file = path.strip_prefix(prefix).and_then(|r| r.split_once('/')).map(|(_, f)| f.to_string());
        let Some(body) = file.as_ref().and_then(|f| files.get(f)) else {
            let _ =
                conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nx-error-code: EntryNotFound\r\n\r\n");
            continue;
        };
        let start: usize = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let end = match range.as_deref() {
            Some("bytes=0-0") => 0,
            _ => body.len().saturating_sub(1),
        };
        let start = start.min(body.len());
        let part = &body[start..=end.max(start).min(body.len().saturating_sub(1))];
        let etag = format!("\"{:016x}\"", digest(body));
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\netag: {etag}\r\nx-repo-commit: {COMMIT}\r\n\r\n",
            part.len(),
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let cut_now = end > 0 && {
            let mut c = cut.lock().unwrap();
            if c.as_deref() == file.as_deref() {
                *c = None;
                true
            } else {
                false
            }
        };
        if cut_now {
            let _ = conn.write_all(&part[..part.len() / 2]);
            let _ = conn.flush();
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        let _ = conn.write_all(part);
    }
}

fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ x as u64).wrapping_mul(0x100000001b3))
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ghostline-tiny")
}

fn bundled_files() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        files.insert(f.to_string(), std::fs::read(bundled().join(f)).unwrap());
    }
    files
}

fn generate(model: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = bin();
    c.args(["generate", "--model", model, "--prompt", "def add(a, b):\n    return", "--max-tokens", "8"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.env_remove("HF_TOKEN").output().unwrap()
}

#[test]
fn a_hub_model_downloads_into_the_hub_cache_resumes_a_cut_download_and_then_works_offline() {
    let home = TempDir::new("hf-home");
    let mirror = Mirror::start("ghostline/tiny", bundled_files(), Some("model.safetensors"));
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", mirror.url.as_str())];

    let out = generate("hf:ghostline/tiny", &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty(), "no completion: {stderr}");

    // The files sit in the hub's cache layout, byte for byte.
    let snap = home.path().join("hub/models--ghostline--tiny/snapshots").join(COMMIT);
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), bundled_files()["model.safetensors"]);
    // The cut download went on from where it stopped instead of starting over.
    let resumed = mirror.seen().iter().any(|s| {
        s.path.ends_with("/model.safetensors")
            && s.range.as_deref().is_some_and(|r| r != "bytes=0-0" && r != "bytes=0-" && r.starts_with("bytes="))
    });
    assert!(resumed, "no ranged resume request: {:?}", mirror.seen());

    // Cached: a second run needs no mirror at all.
    let offline = [("HF_HOME", home.arg()), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    let out = generate("hf:ghostline/tiny", &offline);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // And `models` lists it.
    let out =
        bin().arg("models").env("HF_HOME", home.arg()).env("OLLAMA_MODELS", home.path().join("none")).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("hf:ghostline/tiny@"), "{listed}");
}

#[test]
fn a_hub_model_that_is_missing_or_unreachable_is_a_clear_error() {
    let home = TempDir::new("hf-home");
    let mirror = Mirror::start("ghostline/tiny", bundled_files(), None);
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", mirror.url.as_str())];
    let out = generate("hf:ghostline/absent", &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("hf:ghostline/absent") && stderr.contains("no such file or repository"), "{stderr}");

    let down = [("HF_HOME", home.arg()), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    let out = generate("hf:ghostline/tiny", &down);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("could not reach the hub") && stderr.contains("HF_ENDPOINT"), "{stderr}");

    // A repository of GGUF files needs the file named.
    let mut files = bundled_files();
    files.remove("model.safetensors");
    let gguf_only = Mirror::start("ghostline/gguf-only", files, None);
    let env = [("HF_HOME", home.arg()), ("HF_ENDPOINT", gguf_only.url.as_str())];
    let out = generate("hf:ghostline/gguf-only", &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("hf:ghostline/gguf-only/FILE.gguf"), "{stderr}");
}

/// Ollama's layout: `manifests/registry.ollama.ai/library/NAME/TAG` names the model layer,
/// `blobs/sha256-HEX` holds it.
fn ollama_layout(dir: &Path, name: &str, tag: &str, gguf: &Path) {
    let hex = format!("{:064x}", digest(name.as_bytes()));
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink(gguf, blobs.join(format!("sha256-{hex}"))).unwrap();
    let m = dir.join("manifests/registry.ollama.ai/library").join(name);
    std::fs::create_dir_all(&m).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": 1},
            {"mediaType": "application/vnd.ollama.image.license", "digest": format!("sha256:{}", "0".repeat(64)), "size": 1}
        ]
    });
    std::fs::write(m.join(tag), manifest.to_string()).unwrap();
}

#[test]
fn an_ollama_model_opens_its_gguf_blob() {
    let Some(gguf) = std::env::var_os("GHOSTLINE_SMOLLM2_GGUF").map(PathBuf::from).filter(|p| p.is_file()) else {
        eprintln!("skipped: GHOSTLINE_SMOLLM2_GGUF is not set (tests/run fetches the SmolLM2 GGUF file)");
        return;
    };
    let dir = TempDir::new("ollama");
    ollama_layout(dir.path(), "smollm2", "135m", &gguf);
    let out =
        bin().arg("models").env("OLLAMA_MODELS", dir.arg()).env("HF_HOME", dir.path().join("hf")).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("ollama:smollm2:135m"), "{listed}");

    let out = generate("ollama:smollm2:135m", &[("OLLAMA_MODELS", dir.arg())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty(), "{stderr}");

    let out = generate("ollama:smollm2:7b", &[("OLLAMA_MODELS", dir.arg())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ollama pull smollm2:7b"), "{stderr}");
}
