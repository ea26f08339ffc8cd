//! Neovim (headless, Debian's 0.7.2 or later) with `editors/nvim`, the real `ghostline` LSP and a
//! real ghostline-server on loopback: type in insert mode, wait for the ghost text, then accept it
//! with Tab, accept one word with Alt-w, or dismiss it; check the buffer and the server's store.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/lsp_client.rs"]
mod lsp_client;
use lsp_client::{server_binary, start_server, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ghostline");
const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";

fn nvim(addr: &str, mode: &str) -> Value {
    let dir = temp_dir("nvim");
    let file = dir.join("sizes.py");
    std::fs::write(&file, PY).unwrap();
    let out = dir.join("result.json");
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("nvim")
        .args([
            "--headless",
            "-u",
            "NONE",
            "-i",
            "NONE",
            "--cmd",
            &format!("set rtp+={root}/editors/nvim"),
            "-c",
            &format!("luafile {root}/tests/nvim/accept.lua"),
        ])
        .env("HOME", &dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("GHOSTLINE_CACHE_DIR", dir.join("cache"))
        .env("GHOSTLINE_BIN", BIN)
        .env("GHOSTLINE_SERVER_URL", format!("http://{addr}"))
        .env("GHOSTLINE_TEST_FILE", &file)
        .env("GHOSTLINE_TEST_LINE", "7")
        .env("GHOSTLINE_TEST_TYPE", "len(")
        .env("GHOSTLINE_TEST_MODE", mode)
        .env("GHOSTLINE_TEST_OUT", &out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run nvim (tests/run installs Debian's neovim)");
    assert!(status.success(), "nvim: {status}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("no result from nvim: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v.get("error").is_none(), "{v}");
    v
}

fn stat(addr: &str, field: &str) -> u64 {
    lsp_client::server_stat(addr, field)
}

fn wait_stat(addr: &str, field: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stat(addr, field) < want {
        assert!(Instant::now() < deadline, "{field} never reached {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn neovim_shows_ghost_text_and_accepts_dismisses_and_partially_accepts() {
    let data = temp_dir("nvim-data");
    let (_server, addr) = start_server(server_binary(BIN), &["--threads", "2", "--data-dir", data.to_str().unwrap()]);

    let v = nvim(&addr, "full");
    let (before, after, sug) =
        (v["line_before"].as_str().unwrap(), v["line_after"].as_str().unwrap(), v["suggestion"].as_str().unwrap());
    assert!(!sug.is_empty(), "{v}");
    assert_eq!(before, "        size = len(");
    assert_eq!(after, format!("{before}{sug}"), "Tab inserts the suggestion: {v}");
    wait_stat(&addr, "accepted", 1);

    let v = nvim(&addr, "dismiss");
    assert_eq!(v["line_after"], v["line_before"], "dismiss leaves the text: {v}");
    assert_eq!(v["extmarks_after"], 0);

    let v = nvim(&addr, "word");
    let (before, after, sug) =
        (v["line_before"].as_str().unwrap(), v["line_after"].as_str().unwrap(), v["suggestion"].as_str().unwrap());
    let word = &after[before.len()..];
    assert!(!word.is_empty() && sug.starts_with(word), "a word of {sug:?}, got {word:?}");
    wait_stat(&addr, "partially_accepted", 1);
    assert_eq!(stat(&addr, "accepted"), 1);
}
