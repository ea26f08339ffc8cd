//! `ghostline`: the language server that runs beside the editor.
//!
//! It speaks LSP on stdio and asks ghostline-server for suggestions (see DESIGN.md, "LSP
//! contract"). This first version only answers `--version` and `--help`.

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") | Some("-V") => println!("ghostline {}", env!("CARGO_PKG_VERSION")),
        _ => {
            println!("ghostline {}: the ghostline language server", env!("CARGO_PKG_VERSION"));
            println!("The LSP over stdio is not available in this build yet; see README.md.");
        }
    }
    Ok(())
}
