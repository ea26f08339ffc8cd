//! Helix is not packaged for Debian 12, so this is an LSP session scripted the way Helix
//! behaves (clientInfo "helix", menu-only: completion requests on trigger characters and on idle,
//! items applied through their textEdit as one didChange), against the real `ghostline` and a
//! real ghostline-server: the item must insert exactly the suggestion, and the server must record
//! the inferred acceptance.

use std::time::{Duration, Instant};

use serde_json::json;

#[path = "support/lsp_client.rs"]
mod lsp_client;
use lsp_client::{server_binary, start_server, temp_dir, Lsp};

const BIN: &str = env!("CARGO_BIN_EXE_ghostline");
const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";
const URI: &str = "file:///project/sizes.py";

fn accepted(addr: &str) -> u64 {
    lsp_client::server_stat(addr, "accepted")
}

#[test]
fn helix_menu_items_insert_exactly_the_suggestion_and_acceptance_is_inferred() {
    let data = temp_dir("helix-data");
    let (_server, addr) = start_server(server_binary(BIN), &["--threads", "2", "--data-dir", data.to_str().unwrap()]);
    let mut lsp = Lsp::start(BIN, &format!("http://{addr}"));
    let init = lsp.request(
        "initialize",
        json!({"processId": null, "rootUri": null, "clientInfo": {"name": "helix", "version": "25.07"},
               "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-32", "utf-16"]}, "textDocument": {"completion": {"completionItem": {"snippetSupport": true}}}},
               "initializationOptions": {"debounceMs": 0, "requestTimeoutMs": 30000}}),
    );
    lsp.notify("initialized", json!({}));
    let triggers: Vec<String> =
        serde_json::from_value(init["capabilities"]["completionProvider"]["triggerCharacters"].clone()).unwrap();
    assert!(triggers.contains(&"(".to_string()) && triggers.contains(&".".to_string()));
    lsp.open(URI, "python", PY);

    // Typing `len(`: Helix asks on the trigger character.
    let mut version = 1;
    let mut col = 15;
    for c in "len(".chars() {
        version += 1;
        lsp.insert(URI, version, 6, col, &c.to_string());
        col += 1;
    }
    let r = lsp.request("textDocument/completion", json!({"textDocument": {"uri": URI}, "position": {"line": 6, "character": col}, "context": {"triggerKind": 2, "triggerCharacter": "("}}));
    assert_eq!(r["isIncomplete"], true);
    let item = r["items"][0].clone();
    let edit = item["textEdit"].clone();
    assert_eq!(edit["range"]["start"], json!({"line": 6, "character": col}), "nothing to replace after `(`: {item}");
    let new_text = edit["newText"].as_str().unwrap().to_string();
    assert!(!new_text.is_empty());
    assert_eq!(item["label"].as_str().unwrap(), new_text.lines().next().unwrap().trim());

    // Helix applies the item's textEdit as one change.
    version += 1;
    lsp.notify("textDocument/didChange", json!({"textDocument": {"uri": URI, "version": version}, "contentChanges": [{"range": edit["range"], "text": new_text}]}));
    // Then keeps typing elsewhere; the acceptance is inferred from the edit and sent.
    version += 1;
    lsp.insert(URI, version, 0, 0, "#");
    let r = lsp.request("shutdown", json!(null));
    assert!(r.is_null());
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted(&addr) < 1 {
        assert!(Instant::now() < deadline, "the inferred acceptance never reached the server");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(accepted(&addr), 1);
}
