//! The `ghostline` language server's library: pure document state first (positions, edits),
//! protocol plumbing on top.
//!
//! Invariant: `document` does no IO and knows nothing of LSP transport; it is tested alone.

pub mod context;
pub mod document;
pub mod syntax;
