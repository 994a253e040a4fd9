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
    /// A file other than a GGUF (a snapshot, a checkpoint) that is corrupt or does not fit the
    /// model, input or settings it is used with.
    File { path: PathBuf, what: String },
    /// An internal invariant does not hold: a bug in famstream, not the user's doing.
    Internal(String),
}

/// What kind of problem an [`Error`] is, for the user: each has its own exit code.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorKind {
    /// Arguments, prompts, requests or settings that cannot be used (exit code 2, as for
    /// arguments the parser refuses).
    Usage,
    /// A model, adapter, snapshot or other input file that is corrupt or does not fit the rest
    /// (exit code 3).
    BadFile,
    /// A valid file or request for something famstream does not implement (exit code 4).
    Unsupported,
    /// The operating system refused a read or write (exit code 5).
    Io,
    /// A bug in famstream (exit code 70, sysexits' EX_SOFTWARE); the message asks for a report.
    Internal,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::BadFile => 3,
            ErrorKind::Unsupported => 4,
            ErrorKind::Io => 5,
            ErrorKind::Internal => 70,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Gguf { .. }
            | Error::Metadata { .. }
            | Error::Tensor { .. }
            | Error::Tokenizer(_)
            | Error::Adapter { .. }
            | Error::File { .. } => ErrorKind::BadFile,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Invalid(_) => ErrorKind::Usage,
            // ggml refusing a graph or buffer we built is ours to fix (or the machine's memory)
            Error::Ggml(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }
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
    pub fn file(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
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
            Error::File { path, what } => write!(f, "{}: {what}", path.display()),
            Error::Internal(s) => write!(
                f,
                "internal error (a bug in famstream; please report it with the command that \
                 caused it): {s}"
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_exit_code_and_bugs_say_so() {
        let cases = [
            (Error::Invalid("x".into()), ErrorKind::Usage, 2),
            (Error::metadata("k", "x"), ErrorKind::BadFile, 3),
            (Error::file("/a", "x"), ErrorKind::BadFile, 3),
            (Error::Unsupported("x".into()), ErrorKind::Unsupported, 4),
            (
                Error::io("/a", "read", std::io::Error::other("x")),
                ErrorKind::Io,
                5,
            ),
            (Error::Internal("x".into()), ErrorKind::Internal, 70),
        ];
        for (e, kind, code) in cases {
            assert_eq!((e.kind(), e.kind().exit_code()), (kind, code), "{e}");
        }
        assert!(Error::Internal("slots".into())
            .to_string()
            .contains("a bug in famstream"));
    }
}
