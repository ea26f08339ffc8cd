//! The data directory's disk fills up under a running server (a 4 MiB tmpfs, mounted for the
//! test; skipped with a message where mounting is not allowed): telemetry answers 503 and
//! stores nothing of the refused batch, completions are still served, the database stays
//! intact, and telemetry is stored again once space returns.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Launch, TempDir};
use serde_json::{json, Value};

/// A size-limited tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system that holds `dir` to the last byte with one file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 4096];
    while f.write_all(&block).is_ok() {}
    for _ in 0..4096 {
        if f.write_all(&[0]).is_err() {
            break;
        }
    }
    let _ = f.flush();
    path
}

fn batch(tag: &str, n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|i| {
            json!({"event_id": format!("{tag}-{i}-{}", "x".repeat(100)), "completion_id": format!("cmpl-{tag}-{i}"),
                   "choice_index": 0, "kind": "shown", "shown_ms": 100, "editor": "nvim", "language": "python"})
        })
        .collect();
    json!({ "events": events })
}

#[test]
fn a_full_disk_refuses_telemetry_with_503_keeps_the_database_intact_and_recovers() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount permission)");
        return;
    };
    let data = fs.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let s = Launch::new("qwen2-tied-bf16").data_dir(&data).start();
    assert_eq!(s.telemetry(&batch("before", 5)).0, 202);
    let filler = fill(fs.path());
    let (status, v) = s.telemetry(&batch("full", 1000));
    assert_eq!(status, 503, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing of this batch was acknowledged"), "{v}");
    // Completions do not need the disk.
    let v = s.complete(json!({"prompt": "def f(x):\n", "suffix": "\n", "max_tokens": 4}));
    assert!(v["choices"][0]["text"].is_string());
    std::fs::remove_file(&filler).unwrap();
    let (status, v) = s.telemetry(&batch("after", 200));
    assert_eq!(status, 202, "{v}");
    drop(s);
    let db = rusqlite::Connection::open(data.join("ghostline.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let count = |tag: &str| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM telemetry_events WHERE completion_id LIKE ?1",
            [format!("cmpl-{tag}-%")],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!((count("before"), count("full"), count("after")), (5, 0, 200));
}
