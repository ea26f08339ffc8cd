//! VS Code (code-server 4.100.3, i.e. VS Code 1.100.3, in headless Chromium through
//! playwright-core) with the packaged ghostline extension, the real LSP and a real server: type
//! in a Python file, see ghost text, accept it with Tab, and find the acceptance in the server's
//! store. It needs code-server, playwright-core, Chromium and the .vsix, which `tests/editor-tools`
//! installs and packages, so it is ignored in a plain `cargo test`; tests/run runs it with
//! GHOSTLINE_EDITOR_TOOLS (the folder code-server and playwright-core are installed in) and
//! GHOSTLINE_VSIX (the packaged extension) set, and `-- --ignored`. By hand:
//! `eval "$(tests/editor-tools)"; export GHOSTLINE_EDITOR_TOOLS GHOSTLINE_VSIX;
//! cargo test -p ghostline --test editor_vscode -- --ignored`.
//!
//! The run leaves a screenshot of the ghost text in `target/tmp/vscode-ghost-text.png`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/lsp_client.rs"]
mod lsp_client;
use lsp_client::{server_binary, start_server, temp_dir, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_ghostline");
const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";

fn accepted(addr: &str) -> u64 {
    lsp_client::server_stat(addr, "accepted")
}

#[test]
#[ignore = "needs code-server, playwright-core, Chromium and the .vsix (see the file's header)"]
fn vscode_shows_ghost_text_and_tab_accepts_it() {
    let tools = std::path::PathBuf::from(
        std::env::var("GHOSTLINE_EDITOR_TOOLS")
            .expect("GHOSTLINE_EDITOR_TOOLS: the folder tests/run installs code-server into"),
    );
    let vsix = std::env::var("GHOSTLINE_VSIX").expect("GHOSTLINE_VSIX: the packaged extension");
    let code_server = tools.join("node_modules/.bin/code-server");
    let data = temp_dir("vscode-data");
    let (_server, addr) = start_server(server_binary(BIN), &["--threads", "2", "--data-dir", data.to_str().unwrap()]);

    let home = temp_dir("vscode-home");
    let (ud, ed, ws) = (home.join("user-data"), home.join("extensions"), home.join("workspace"));
    std::fs::create_dir_all(ud.join("User")).unwrap();
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("sizes.py"), PY).unwrap();
    // The LSP's log goes to a file the failure message can show.
    let wrapper = home.join("ghostline-logged");
    let log = home.join("ghostline.log");
    std::fs::write(&wrapper, format!("#!/bin/sh\nGHOSTLINE_LOG=trace exec '{BIN}' \"$@\" 2>>'{}'\n", log.display()))
        .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().unwrap();
    let settings = serde_json::json!({
        "ghostline.path": wrapper, "ghostline.serverUrl": format!("http://{addr}"), "ghostline.debounceMs": 30,
        "editor.inlineSuggest.enabled": true, "editor.autoClosingBrackets": "never", "workbench.startupEditor": "none", "security.workspace.trust.enabled": false,
        "extensions.autoUpdate": false, "telemetry.telemetryLevel": "off", "editor.quickSuggestions": {"other": false, "comments": false, "strings": false},
    });
    std::fs::write(ud.join("User/settings.json"), settings.to_string()).unwrap();
    let common = |c: &mut Command| {
        c.env("HOME", &home)
            .env("GHOSTLINE_CACHE_DIR", home.join("cache"))
            .arg("--user-data-dir")
            .arg(&ud)
            .arg("--extensions-dir")
            .arg(&ed);
    };
    let mut install = Command::new(&code_server);
    common(&mut install);
    let st = install.arg("--install-extension").arg(&vsix).stdout(Stdio::null()).status().expect("run code-server");
    assert!(st.success(), "installing the .vsix: {st}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut serve = Command::new(&code_server);
    common(&mut serve);
    serve
        .args([
            "--bind-addr",
            &format!("127.0.0.1:{port}"),
            "--auth",
            "none",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
        ])
        .arg(&ws)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _cs = Proc(serve.spawn().expect("start code-server"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "code-server did not listen");
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = Command::new("node")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vscode/drive.js"))
        .env("PLAYWRIGHT_CORE", tools.join("node_modules/playwright-core"))
        .env("CODE_SERVER_URL", format!("http://127.0.0.1:{port}/?folder={}", ws.display()))
        .env("GHOSTLINE_TEST_FILE_NAME", "sizes.py")
        // The ghost text as it was shown (or the page at a failure): an artifact of the run.
        .env("GHOSTLINE_SCREENSHOT", concat!(env!("CARGO_TARGET_TMPDIR"), "/vscode-ghost-text.png"))
        .output()
        .expect("run node");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    let lsp_log = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: String =
        lsp_log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        report.get("error").is_none(),
        "{report}; the server answered {} completions; LSP log:\n{tail}",
        lsp_client::served(&addr)
    );
    let ghost = report["ghost"].as_str().unwrap_or("").trim().to_string();
    assert!(!ghost.is_empty(), "{report}");
    let saved = std::fs::read_to_string(ws.join("sizes.py")).unwrap();
    let line = saved.lines().nth(6).unwrap();
    assert!(
        line.starts_with("        size = len(") && line.len() > "        size = len(".len(),
        "Tab inserted the suggestion: {line:?} ({report})"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted(&addr) < 1 {
        assert!(Instant::now() < deadline, "the acceptance never reached the server ({report})");
        std::thread::sleep(Duration::from_millis(300));
    }
}
