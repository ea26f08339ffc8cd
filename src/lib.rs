//! The `ghostline` language server's library: pure document state first (positions, edits,
//! trees, windows, trigger and post-processing rules), then the keystroke path (`suggest` over
//! its owners `documents`, `link`, `reuse` and `telemetry`, asking a `source`), then the
//! transports on top (`lsp`, and `cli` for `ghostline complete`).
//!
//! Invariant: `document` does no IO and knows nothing of LSP transport; it is tested alone.

pub mod cache;
pub mod cli;
pub mod client;
pub mod context;
pub mod document;
pub mod documents;
pub mod framing;
pub mod lang;
pub mod link;
pub mod lsp;
pub mod pacer;
pub mod pacing;
pub mod postprocess;
pub mod reuse;
pub mod settings;
pub mod snippets;
pub mod source;
pub mod suggest;
pub mod syntax;
pub mod telemetry;
pub mod trigger;
pub mod wait;
