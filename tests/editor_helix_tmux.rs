//! The real Helix (`hx`) in a tmux pane, with ghostline as its language server and a real
//! ghostline-server: typing in insert mode brings ghostline's item into the completion menu,
//! Tab and Enter insert it, `:w` saves it, and the server records the acceptance that the
//! language server infers. `tests/editor_helix.rs` is the fast, scripted unit of the same
//! behaviour. Helix is not a Debian package: the test finds `hx` as `$GHOSTLINE_HELIX`, else
//! `../shared/tools/hx` beside the repository, and says so when it skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/lsp_client.rs"]
mod lsp_client;
use lsp_client::{server_binary, server_stat, start_server, temp_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ghostline");
const PY: &str = "import os\n\n\ndef total_size(paths):\n    sizes = []\n    for p in paths:\n        size = \n        sizes.append(size)\n    return sum(sizes)\n";

fn helix() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GHOSTLINE_HELIX").map(PathBuf::from) {
        return p.is_file().then_some(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/hx");
    p.is_file().then_some(p)
}

/// One tmux server of our own (its socket in the test's directory), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "hx"];
        a.extend_from_slice(keys);
        self.run(&a);
        std::thread::sleep(Duration::from_millis(300));
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "hx"])
    }
    /// Waits until the screen shows `what`; the screen is in the panic message otherwise.
    fn wait_for(&self, what: impl Fn(&str) -> bool, desc: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if what(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{desc} never showed; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(&self.socket).arg("kill-server").output();
    }
}

#[test]
fn real_helix_shows_the_item_in_its_menu_inserts_it_and_the_acceptance_is_recorded() {
    let Some(hx) = helix() else {
        eprintln!("skipped: no Helix binary (set GHOSTLINE_HELIX, or put hx in ../shared/tools beside the repository)");
        return;
    };
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (tests/run installs it)");
        return;
    }
    let data = temp_dir("hx-data");
    let (_server, addr) = start_server(server_binary(BIN), &["--threads", "2", "--data-dir", data.to_str().unwrap()]);

    // Helix reads its language servers from $HOME/.config/helix; the file is the one
    // editors/helix/languages.toml documents, pointed at this build and this server.
    let home = temp_dir("hx-home");
    let cfg = home.join(".config/helix");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("languages.toml"),
        format!(
            "[language-server.ghostline]\ncommand = {BIN:?}\nconfig = {{ serverUrl = \"http://{addr}\", debounceMs = 0, multiline = \"auto\", requestTimeoutMs = 20000 }}\n\n[[language]]\nname = \"python\"\nlanguage-servers = [\"ghostline\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        "[editor]\ncompletion-timeout = 250\ncompletion-trigger-len = 1\nidle-timeout = 250\n",
    )
    .unwrap();
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let file = project.join("sizes.py");
    std::fs::write(&file, PY).unwrap();

    let tmux = Tmux { socket: home.join("tmux.sock") };
    // The language server's spool (telemetry waiting for the server) lives in this home too.
    let cmd = format!(
        "cd {} && env -u GHOSTLINE_CACHE_DIR HOME={h} XDG_CACHE_HOME={h}/.cache {} sizes.py",
        project.display(),
        hx.display(),
        h = home.display()
    );
    tmux.run(&["new-session", "-d", "-s", "hx", "-x", "120", "-y", "30", &cmd]);
    tmux.wait_for(|s| s.contains("sizes.py"), "Helix with sizes.py", 20);

    // Line 7 is `        size = `: append, type `l`, and wait for ghostline's item.
    tmux.keys(&["7gg"]);
    tmux.keys(&["A"]);
    tmux.keys(&["l"]);
    // The menu draws over the lines below the cursor: an item, then its kind (`text`).
    let menu = tmux.wait_for(|s| s.lines().any(|l| l.trim_end().ends_with(" text")), "ghostline's menu item", 30);
    tmux.keys(&["Tab"]);
    tmux.keys(&["Enter"]);
    tmux.keys(&["Escape"]);
    tmux.keys(&[":w", "Enter"]);
    tmux.wait_for(|s| !s.contains("[+]"), "the saved buffer", 10);

    let saved = std::fs::read_to_string(&file).unwrap();
    let line = saved.lines().nth(6).unwrap_or_default().to_string();
    assert!(
        line.starts_with("        size = l") && line.len() > "        size = l".len(),
        "not inserted: {line:?}\n{menu}"
    );
    // Nothing else of the file moved.
    let rest: Vec<&str> = saved.lines().enumerate().filter(|(i, _)| *i != 6).map(|(_, l)| l).collect();
    let before: Vec<&str> = PY.lines().enumerate().filter(|(i, _)| *i != 6).map(|(_, l)| l).collect();
    assert_eq!(rest, before);

    // The acceptance is inferred from the edit that inserted the item and reaches the server's
    // store within the language server's batch interval, while Helix is still open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_stat(&addr, "accepted") < 1 {
        assert!(
            Instant::now() < deadline,
            "the acceptance never reached the server (line {line:?}; shown {}, rejected {})",
            server_stat(&addr, "shown"),
            server_stat(&addr, "rejected")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tmux.keys(&[":q", "Enter"]);
    assert_eq!(server_stat(&addr, "accepted"), 1);
}
