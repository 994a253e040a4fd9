//! The library's one error type. Every variant carries the context a user needs to act on it
//! (which file, key, tensor, expected vs. got). Only the CLI turns errors into messages and exit
//! codes.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in famstream.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation on `path` failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// A GGUF file is malformed. `at` is the byte offset where the problem was found.
    Gguf {
        path: PathBuf,
        at: u64,
        what: String,
    },
    /// A metadata key is missing or has the wrong type.
    Metadata { key: String, what: String },
    /// A tensor is missing or has the wrong type/shape.
    Tensor { name: String, what: String },
    /// A model or architecture that famstream does not support.
    Unsupported(String),
    /// A tokenizer could not be built or used.
    Tokenizer(String),
    /// ggml refused something (graph build, allocation, backend).
    Ggml(String),
    /// Invalid user input (arguments, prompt, settings).
    Invalid(String),
    /// A LoRA adapter file that cannot be applied to the model it was given with: `what` names
    /// the key or tensor and what is wrong with it.
    Adapter { path: PathBuf, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
    pub fn metadata(key: &str, what: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.to_string(),
            what: what.into(),
        }
    }
    pub fn adapter(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Adapter {
            path: path.into(),
            what: what.into(),
        }
    }
    pub fn tensor(name: &str, what: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.to_string(),
            what: what.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, op, source } => write!(f, "cannot {op} {}: {source}", path.display()),
            Error::Gguf { path, at, what } => {
                write!(f, "{}: invalid GGUF at byte {at}: {what}", path.display())
            }
            Error::Metadata { key, what } => write!(f, "metadata key `{key}`: {what}"),
            Error::Tensor { name, what } => write!(f, "tensor `{name}`: {what}"),
            Error::Unsupported(s) => write!(f, "unsupported: {s}"),
            Error::Tokenizer(s) => write!(f, "tokenizer: {s}"),
            Error::Ggml(s) => write!(f, "ggml: {s}"),
            Error::Invalid(s) => write!(f, "{s}"),
            Error::Adapter { path, what } => write!(f, "adapter {}: {what}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
