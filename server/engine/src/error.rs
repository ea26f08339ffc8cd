//! The engine's error type: every failure names the file or input and the problem.

use std::path::PathBuf;

/// Errors from loading a checkpoint or running the model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: tokenizer does not load: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "KV cache is full: {needed} more blocks needed, {free} free (raise the KV memory budget or shorten the prompt)"
    )]
    KvFull { needed: usize, free: usize },
    #[error("sequence of {len} tokens exceeds the model's context of {max} tokens")]
    ContextOverflow { len: usize, max: usize },
    /// The GPU backend failed: no driver or CUDA library, a kernel that does not compile, out
    /// of device memory, a device that stopped.
    #[error("GPU: {0}")]
    Device(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}
