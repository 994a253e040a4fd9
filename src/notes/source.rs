//! The input of a notes run, read from its file in passes and never held whole.
//!
//! A transcript of any length is summarized in the same memory: the file is checked once
//! (not binary, UTF-8, some text) while its fingerprint is computed, then read line by line:
//! once to cut it into chunks ([`chunks`], which keep byte ranges, not text), once per
//! step for that step's chunk, and twice for the quotes. Standard input is spooled to a
//! temporary file first ([`Source::from_stdin`]), removed when the source is dropped.

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One line of input, with the subtitle time it belongs to (.srt/.vtt) if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub time: Option<String>,
    pub text: String,
}

/// Lines of a transcript: plain text and `Name: text` turns pass through; subtitles lose cue
/// numbers and timestamp lines, and each text line keeps its cue's start time.
pub fn prepare_lines(raw: &str) -> Vec<Line> {
    let subtitles = raw.lines().any(|l| l.contains("-->")) || raw.starts_with("WEBVTT");
    let mut time = None;
    raw.lines()
        .filter_map(|l| prepare_line(l, subtitles, &mut time))
        .collect()
}

/// One raw line (its line ending is dropped) as [`prepare_lines`] keeps it, or `None` (blank
/// lines; in subtitles also cue numbers and timestamp lines, whose start time goes to `time`).
pub fn prepare_line(raw: &str, subtitles: bool, time: &mut Option<String>) -> Option<Line> {
    let t = raw.trim();
    if subtitles {
        if let Some((start, _)) = t.split_once("-->") {
            *time = Some(start.trim().to_string());
            return None;
        }
        if t == "WEBVTT" || t.chars().all(|c| c.is_ascii_digit()) {
            return None; // (blank lines too: all of no characters are digits)
        }
    } else if t.is_empty() {
        return None;
    }
    Some(Line {
        time: time.clone(),
        text: t.to_string(),
    })
}

/// A piece of the input that fits one step. It holds where its lines are, not their text:
/// [`Chunk::text`] reads them again, so the input is never held whole.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// Token offset of the chunk's first token in the whole input.
    pub start_token: usize,
    /// The subtitle time of its first line.
    pub start_time: Option<String>,
    pub n_tokens: usize,
    /// The bytes of the input its lines start in.
    pub bytes: std::ops::Range<u64>,
    /// Tokens [a, b) of its one line, when a line longer than a chunk is cut by tokens.
    pub part: Option<(usize, usize)>,
}

impl Chunk {
    /// The chunk's text: its lines, each ending in a newline (or its part of one long line).
    pub fn text(&self, rt: &Runtime, input: &(impl Lines + ?Sized)) -> Result<String> {
        let mut s = String::new();
        input.lines_in(self.bytes.clone(), &mut |_, l| {
            s.push_str(&l.text);
            s.push('\n');
        })?;
        if let Some((a, b)) = self.part {
            let ids = rt.tokenizer.encode(&s, false, false);
            return Ok(rt
                .tokenizer
                .decode(&ids[a.min(ids.len())..b.min(ids.len())]));
        }
        Ok(s)
    }
}

/// Cut the input into chunks of at most `max_tokens` tokens, at line boundaries (a longer line
/// is cut by tokens). Lines are read and tokenized one at a time, so neither the text nor its
/// tokens are held.
pub fn chunks(
    rt: &Runtime,
    input: &(impl Lines + ?Sized),
    max_tokens: usize,
) -> Result<Vec<Chunk>> {
    let tok = &rt.tokenizer;
    let max_tokens = max_tokens.max(16);
    let mut out: Vec<Chunk> = Vec::new();
    let mut cur: Option<Chunk> = None;
    let mut offset = 0usize;
    input.each_line(&mut |bytes, line| {
        let ids = tok.encode(&format!("{}\n", line.text), false, false);
        if ids.len() > max_tokens {
            out.extend(cur.take());
            for (k, part) in ids.chunks(max_tokens).enumerate() {
                let a = k * max_tokens;
                out.push(Chunk {
                    start_token: offset,
                    start_time: line.time.clone(),
                    n_tokens: part.len(),
                    bytes: bytes.clone(),
                    part: Some((a, a + part.len())),
                });
                offset += part.len();
            }
            return;
        }
        if cur
            .as_ref()
            .is_some_and(|c| c.n_tokens + ids.len() > max_tokens)
        {
            out.extend(cur.take());
        }
        let c = cur.get_or_insert_with(|| Chunk {
            start_token: offset,
            start_time: line.time.clone(),
            n_tokens: 0,
            bytes: bytes.start..bytes.start,
            part: None,
        });
        c.bytes.end = bytes.end;
        c.n_tokens += ids.len();
        offset += ids.len();
    })?;
    out.extend(cur);
    Ok(out)
}

/// Something that yields the input's prepared lines in order, each with the byte range it
/// came from: a [`Source`] file, or lines already in memory (tests, small inputs).
pub trait Lines {
    /// Calls `f` with each line that starts in `bytes`, and its byte range.
    fn lines_in(
        &self,
        bytes: std::ops::Range<u64>,
        f: &mut dyn FnMut(std::ops::Range<u64>, &Line),
    ) -> Result<()>;

    /// Calls `f` with every line.
    fn each_line(&self, f: &mut dyn FnMut(std::ops::Range<u64>, &Line)) -> Result<()> {
        self.lines_in(0..u64::MAX, f)
    }
}

/// In memory, a line's range is its text and one newline, counted from the first line.
impl Lines for [Line] {
    fn lines_in(
        &self,
        bytes: std::ops::Range<u64>,
        f: &mut dyn FnMut(std::ops::Range<u64>, &Line),
    ) -> Result<()> {
        let mut at = 0u64;
        for l in self {
            let end = at + l.text.len() as u64 + 1;
            if bytes.contains(&at) {
                f(at..end, l);
            }
            at = end;
        }
        Ok(())
    }
}

/// `bytes` (found at `offset` of the input called `name`) as text: an error naming the input and
/// the offset for a NUL byte (a binary file) or bytes that are not UTF-8. Shared by every
/// command that reads a text input.
pub fn text_of<'a>(name: &str, bytes: &'a [u8], offset: u64) -> Result<&'a str> {
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::Invalid(format!(
            "{name} looks binary (a NUL byte at offset {}): give a text file",
            offset + i as u64
        )));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{name} is not UTF-8 text (invalid byte at offset {}): convert it first, e.g. with \
             iconv",
            offset + e.valid_up_to() as u64
        ))
    })
}

/// A checked text file (see the module docs).
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    /// What errors call it (`<stdin>` for spooled standard input).
    name: String,
    subtitles: bool,
    fingerprint: String,
    /// Remove the file on drop (spooled standard input).
    temporary: bool,
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Source {
    /// Open and check `path`: a missing file, a binary file (a NUL byte), text that is not
    /// UTF-8 and a file with no text get errors that name it.
    pub fn open(path: &Path) -> Result<Source> {
        Self::unchecked(path.to_path_buf(), path.display().to_string(), false).checked()
    }

    /// Standard input, spooled to a temporary file so that it can be read in passes.
    pub fn from_stdin() -> Result<Source> {
        let path = std::env::temp_dir().join(format!(
            "famstream-stdin-{}-{}.txt",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, "create", e))?;
        // from here the file is removed on every path out (the source owns it)
        let src = Self::unchecked(path, "<stdin>".into(), true);
        std::io::copy(&mut std::io::stdin().lock(), &mut f)
            .map_err(|e| Error::io("<stdin>", "read", e))?;
        drop(f);
        src.checked()
    }

    fn unchecked(path: PathBuf, name: String, temporary: bool) -> Source {
        Source {
            path,
            name,
            subtitles: false,
            fingerprint: String::new(),
            temporary,
        }
    }

    /// One pass over the file: the checks of [`Source::open`], the fingerprint, and whether it
    /// is subtitles.
    fn checked(mut self) -> Result<Source> {
        let f = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, "read", e))?;
        let mut r = BufReader::new(f);
        let mut h = crate::util::Fnv64::new();
        let (mut offset, mut has_text, mut first) = (0u64, false, true);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            if n == 0 {
                break;
            }
            let line = text_of(&self.name, &buf, offset)?;
            h.write(&buf);
            has_text |= !line.trim().is_empty();
            self.subtitles |= line.contains("-->") || (first && line.starts_with("WEBVTT"));
            first = false;
            offset += n as u64;
        }
        if !has_text {
            return Err(Error::Invalid(format!("{}: the input is empty", self.name)));
        }
        self.fingerprint = format!("{:016x}", h.finish());
        Ok(self)
    }

    /// A fingerprint of the file's bytes (checkpoints are for one input).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The prepared lines (see [`prepare_lines`]) that start in bytes [from, to), each
    /// with its byte range, in order; `time` is the subtitle time in force at `from`.
    pub fn read_lines(
        &self,
        from: u64,
        to: u64,
        mut time: Option<String>,
        f: &mut dyn FnMut(std::ops::Range<u64>, &Line),
    ) -> Result<()> {
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, "read", e))?;
        file.seek(SeekFrom::Start(from))
            .map_err(|e| Error::io(&self.path, "read", e))?;
        let mut r = BufReader::new(file.take(to.saturating_sub(from)));
        let (mut at, mut raw) = (from, String::new());
        loop {
            raw.clear();
            let n = r
                .read_line(&mut raw)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            if n == 0 {
                return Ok(());
            }
            let range = at..at + n as u64;
            at += n as u64;
            if let Some(line) = prepare_line(&raw, self.subtitles, &mut time) {
                f(range, &line);
            }
        }
    }
}

impl Lines for Source {
    fn lines_in(
        &self,
        bytes: std::ops::Range<u64>,
        f: &mut dyn FnMut(std::ops::Range<u64>, &Line),
    ) -> Result<()> {
        self.read_lines(bytes.start, bytes.end, None, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("famstream-source-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn lines_come_back_with_their_byte_ranges_and_cue_times() {
        let srt = b"1\r\n00:00:01,000 --> 00:00:02,000\r\nAlice: Hello.\r\n\r\n2\r\n00:01:03,000 --> 00:01:04,500\r\nBob: Hi.\r\n";
        let p = file("a.srt", srt);
        let src = Source::open(&p).unwrap();
        let mut got = Vec::new();
        src.each_line(&mut |r, l| got.push((r, l.clone()))).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.text, "Alice: Hello.");
        assert_eq!(got[0].1.time.as_deref(), Some("00:00:01,000"));
        assert_eq!(
            &srt[got[1].0.start as usize..got[1].0.end as usize],
            b"Bob: Hi.\r\n"
        );
        // a part read from a byte offset, with the time in force there
        let mut part = Vec::new();
        src.read_lines(got[1].0.start, u64::MAX, Some("t".into()), &mut |_, l| {
            part.push(l.clone())
        })
        .unwrap();
        assert_eq!(part.len(), 1);
        assert_eq!(part[0].text, "Bob: Hi.");
        assert_eq!(part[0].time.as_deref(), Some("t"));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        for (name, bytes, want) in [
            ("e.txt", &b" \n\n"[..], "empty"),
            ("b.bin", &b"GG\nUF\x00"[..], "NUL byte at offset 5"),
            ("l.txt", &b"ok\nCaf\xe9\n"[..], "invalid byte at offset 6"),
        ] {
            let p = file(name, bytes);
            let err = Source::open(&p).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(name), "{err}");
            std::fs::remove_file(p).unwrap();
        }
        let err = Source::open(Path::new("/nonexistent/x.txt")).unwrap_err();
        assert!(err.to_string().contains("x.txt"), "{err}");
    }

    #[test]
    fn subtitle_lines_keep_their_cue_times() {
        let srt = "1\r\n00:00:01,000 --> 00:00:02,000\r\nAlice: Hello.\r\n\r\n2\r\n00:01:03,000 --> 00:01:04,500\r\nBob: Hi, 42 people came.\r\nAlice: Good.\r\n";
        let l = prepare_lines(srt);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].time.as_deref(), Some("00:00:01,000"));
        assert_eq!(l[0].text, "Alice: Hello.");
        assert_eq!(l[1].time.as_deref(), Some("00:01:03,000"));
        assert_eq!(l[2].time.as_deref(), Some("00:01:03,000"));
        assert_eq!(l[2].text, "Alice: Good.");
        let plain = prepare_lines("Alice: 1\n\n2\n");
        assert_eq!(plain.len(), 2, "numbers-only lines stay in plain text");
        assert!(plain.iter().all(|l| l.time.is_none()));
    }
}
