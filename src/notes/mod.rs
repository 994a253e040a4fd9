//! Summaries that cover every token of the input: notes kept outside the window.
//!
//! Streaming a whole transcript and then asking (the [`crate::summarize`] layout) leaves the
//! answer with what the window and the memory still hold: on an un-tuned model, the last few
//! thousand tokens. Here the model keeps *notes*, bounded text held by the program, not by the
//! attention window:
//!
//! ```text
//! for each chunk c_1 .. c_{n-1}  (a chunk fits the window together with the notes):
//!     fresh stream <- [the notes so far, chunk c_i, instruction]      (the memory policy applies;
//!                     each chunk token sees the notes and the `band` latest chunk tokens)
//!     note_i       <- the model's notes on c_i (greedy, at most `note_tokens`)
//!     notes        += (c_i's start: token offset, subtitle time), note_i
//!     while notes exceed `notes_budget` tokens: the two oldest entries are merged by the model
//!                                               into one of at most `note_tokens` (map-reduce)
//! quotes <- the passages of the whole input that best match the question    (see [`quotes`])
//! answer <- [instruction, the notes, the last chunk c_n, the quotes, the request]
//! ```
//! Every token is read with the notes of all before it, and the note is written over every token
//! of its chunk (the band narrows only how chunk tokens read each other: a 4k-token step costs
//! about what a `band`-token window does, [`crate::slots::PrefillBand`]); the answer sees the notes, the last
//! chunk and the quotes verbatim. Quotes need a question (`--ask`) or `--focus`; they do not
//! depend on the model, which matters on a small one whose notes drop facts. Memory is
//! constant: one fixed-size state (reset per step), notes bounded by `notes_budget` tokens,
//! quotes by `quotes_budget`, one chunk's text at a time, read again from the input file
//! ([`Source`]: the chunks are byte ranges), and the allocator's free memory handed back after
//! every step. A run can be
//! checkpointed after each step ([`Progress`], plain JSON, [`timeline`]); prompts live in
//! [`Prompts`] (plain text without a template).

pub mod quotes;
pub mod source;
pub mod timeline;

pub use quotes::Quote;
pub use source::{chunks, prepare_line, prepare_lines, Chunk, Line, Lines, Source};
pub use timeline::{timeline_json, timeline_markdown};

use crate::chat::Message;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::runtime::{GenerateOptions, GenerateStats, Runtime};
use crate::sample::SamplerConfig;
use crate::settings::MemoryPolicy;
use crate::slots::PrefillBand;
use crate::state::FamState;

/// Tokens kept free in every step for the template, the instruction and the request.
const PROMPT_OVERHEAD: usize = 160;
/// Chunk tokens each chunk token reads in a note step by default ([`NotesOptions::band`]):
/// measured on a 39k-token transcript, the same coverage by position as no band, 1.5x faster.
pub const DEFAULT_BAND: usize = 512;
/// The largest default quotes budget (a 4096-token window's eighth): room for a dozen passages.
pub const DEFAULT_QUOTES: usize = 512;

/// Tokens a step's prompt may fill: every token stays visible ((M+1)*B for the windowed
/// policies, n_ctx for `full`).
fn window(state: &FamState) -> usize {
    let s = state.settings;
    if s.policy == MemoryPolicy::Full {
        state.n_ctx()
    } else {
        (s.mem_blocks as usize + 1) * s.block_size as usize
    }
}

/// One entry of the notes timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// Token offset where the part it covers starts.
    pub start_token: usize,
    pub start_time: Option<String>,
    /// Chunks it covers (merged notes cover several).
    pub chunks: usize,
    pub text: String,
    pub n_tokens: usize,
}

/// Where a run stands: what a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Chunks noted so far (the next step reads chunk `done`).
    pub done: usize,
    pub notes: Vec<Note>,
    /// Merge steps so far.
    pub merges: usize,
    /// Tokens the model wrote (notes and merges).
    pub written_tokens: usize,
}

impl Progress {
    pub fn notes_tokens(&self) -> usize {
        self.notes.iter().map(|n| n.n_tokens).sum()
    }
}

/// The texts of every step, in one place.
pub struct Prompts;

impl Prompts {
    const NOTE: &'static str = "List the facts stated in the part above: every name, number, \
place, date and decision, one short line each, with the speaker who said it (SPEAKER: fact). \
Do not repeat the earlier notes.";
    const MERGE: &'static str = "Combine these notes into one shorter note. Keep every name, \
number, place, date and decision.";

    fn notes_block(notes: &[Note]) -> String {
        if notes.is_empty() {
            return "(none yet)\n".into();
        }
        notes
            .iter()
            .map(|n| quotes::quote_line(&n.start_time, n.text.trim()))
            .collect()
    }

    /// The note step's request for chunk `i` (1-based).
    pub fn note(notes: &[Note], chunk: &Chunk, text: &str, i: usize, focus: &[String]) -> String {
        Self::note_marked(notes, chunk, text, i, focus).0
    }

    /// [`Self::note`], and the byte range of the chunk's text in it.
    pub fn note_marked(
        notes: &[Note],
        chunk: &Chunk,
        text: &str,
        i: usize,
        focus: &[String],
    ) -> (String, std::ops::Range<usize>) {
        let from = chunk
            .start_time
            .as_ref()
            .map(|t| format!(" (from {t})"))
            .unwrap_or_default();
        let look_for = if focus.is_empty() {
            String::new()
        } else {
            format!(" Look for: {}.", focus.join("; "))
        };
        let head = format!(
            "Notes on the earlier parts of a transcript:\n{}\nPart {i} of the transcript{from}:\n",
            Self::notes_block(notes),
        );
        let body = text.trim_end();
        let range = head.len()..head.len() + body.len();
        let s = format!("{head}{body}\n\n{}{look_for}", Self::NOTE);
        (s, range)
    }

    pub fn merge(a: &Note, b: &Note) -> String {
        format!(
            "{}\n\n- {}\n- {}",
            Self::MERGE,
            a.text.trim(),
            b.text.trim()
        )
    }

    /// The final request: the notes, the last part verbatim, the quotes, then the summary
    /// request or the question.
    pub fn answer(notes: &[Note], quotes: &[Quote], last: &str, request: &str) -> String {
        let mut s = format!(
            "Notes on a transcript, in order:\n{}",
            Self::notes_block(notes)
        );
        if !last.is_empty() {
            s.push_str(&format!(
                "\nThe last part of the transcript:\n{}\n",
                last.trim_end()
            ));
        }
        // the quotes last, next to the request: a small model copies from what is near
        if !quotes.is_empty() {
            s.push_str("\nLines of the transcript that match the question:\n");
            for q in quotes {
                s.push_str(&quotes::quote_line(&q.time, &q.text));
            }
        }
        s.push('\n');
        s.push_str(request);
        s
    }
}

/// Settings of a notes run.
#[derive(Clone, Debug)]
pub struct NotesOptions {
    /// Tokens per chunk (0: as many as fit the stream's window with the notes).
    pub chunk_tokens: usize,
    /// Tokens per note at most.
    pub note_tokens: usize,
    /// Tokens of all notes together at most (beyond: the oldest are merged).
    pub notes_budget: usize,
    /// What to look for, named in every note request.
    pub focus: Vec<String>,
    /// Tokens of quotes (passages matching the question or the focus) in the answer's prompt
    /// at most; reserved in every chunk's window so that the answer fits it too. `None`: an
    /// eighth of the window, at most [`DEFAULT_QUOTES`].
    pub quotes_budget: Option<usize>,
    /// Read each chunk with a band of this many tokens (0: off): a chunk token attends to the
    /// notes, the prompt before the chunk and the `band` latest chunk tokens, while the request
    /// after the chunk and the note being written attend to every token
    /// ([`crate::slots::PrefillBand`]). Cheaper prompts: attention is most of a note step's
    /// cost at a 4k window.
    pub band: usize,
}

impl Default for NotesOptions {
    fn default() -> Self {
        NotesOptions {
            chunk_tokens: 0,
            note_tokens: 96,
            notes_budget: 768,
            focus: Vec::new(),
            quotes_budget: None,
            band: DEFAULT_BAND,
        }
    }
}

impl NotesOptions {
    /// The chunk size for a stream: what fits its window (every token of a step's prompt and
    /// its note stay visible: (M+1)*B for the windowed policies, n_ctx for `full`) after the
    /// notes, the note being written, the quotes for `query` and the prompt's own text. A
    /// given `chunk_tokens` must fit too.
    pub fn chunk_tokens_for(&self, state: &FamState, query: &str) -> Result<usize> {
        let window = window(state);
        let quotes = self.quotes_budget_for(state, query);
        let fixed = self.notes_budget + self.note_tokens + quotes + PROMPT_OVERHEAD;
        let fit = window.saturating_sub(fixed);
        if self.chunk_tokens > fit {
            return Err(Error::Invalid(format!(
                "--chunk-tokens {} does not fit the window ({window} tokens) next to the notes \
                 ({} + {} tokens), the quotes ({quotes}) and the prompt: at most {fit}",
                self.chunk_tokens, self.notes_budget, self.note_tokens
            )));
        }
        if self.chunk_tokens > 0 {
            return Ok(self.chunk_tokens);
        }
        if fit < 64 {
            return Err(Error::Invalid(format!(
                "the window ({window} tokens) leaves no room for a chunk next to the notes \
                 ({} + {} tokens), the quotes ({}) and the prompt: use a larger \
                 --block/--mem-blocks or a smaller --notes-budget/--notes-tokens/--quotes",
                self.notes_budget, self.note_tokens, quotes
            )));
        }
        Ok(fit)
    }

    /// The quotes budget for `state`'s window; 0 when `query` (the question and the focus) has
    /// no content words, so a plain summary keeps whole chunks.
    pub fn quotes_budget_for(&self, state: &FamState, query: &str) -> usize {
        if !quotes::has_terms(query) {
            return 0;
        }
        self.quotes_budget
            .unwrap_or((window(state) / 8).min(DEFAULT_QUOTES))
    }

    fn validate(&self) -> Result<()> {
        if self.note_tokens == 0 || self.notes_budget < 2 * self.note_tokens {
            return Err(Error::Invalid(format!(
                "--notes-budget ({}) must hold at least two notes of --notes-tokens ({})",
                self.notes_budget, self.note_tokens
            )));
        }
        Ok(())
    }
}

/// What one step did, for progress reports and tests.
#[derive(Clone, Debug)]
pub enum Step {
    /// Chunk `index` was read and noted.
    Noted { index: usize, prompt_tokens: usize },
    /// Two notes were merged into one.
    Merged { notes_tokens: usize },
}

/// One user turn in a fresh stream, then greedy generation (at most `max_tokens`).
fn ask(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    content: &str,
    opts: &GenerateOptions,
) -> Result<GenerateStats> {
    state.reset();
    let ids = turn_tokens(rt, content);
    rt.generate(eng, state, &ids, opts, |_| true)
}

/// [`ask`] with the rows of `content[part]` read in a band of `width` tokens
/// ([`PrefillBand`]; `width` 0: no band).
fn ask_banded(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    content: &str,
    part: std::ops::Range<usize>,
    width: usize,
    opts: &GenerateOptions,
) -> Result<GenerateStats> {
    if width == 0 {
        return ask(rt, eng, state, content, opts);
    }
    state.reset();
    let (ids, rows) = turn_tokens_marked(rt, content, part);
    if rows.len() > width {
        state.set_prefill_band(Some(PrefillBand {
            from: rows.start as i64,
            to: rows.end as i64,
            width: width as i64,
        }));
    }
    let r = rt.generate(eng, state, &ids, opts, |_| true);
    state.set_prefill_band(None);
    r
}

/// The user turn around `content` (chat template, or plain text with an `Answer:` cue when the
/// file has no template) as text, and where `content` starts in it (`None` when the template
/// changes the content, e.g. trims it).
fn turn_text(rt: &Runtime, content: &str) -> (String, Option<usize>) {
    if has_template(rt) {
        let render = |c: &str| {
            let mut t = rt.chat.render_turn(&Message::new("user", c), true);
            t.push_str(rt.chat.generation_prompt());
            t
        };
        let text = render(content);
        // Rendered again with a marker in place of the content, to find where it goes.
        const MARK: &str = "\u{1}famstream-content\u{1}";
        let marked = render(MARK);
        let at = marked
            .find(MARK)
            .filter(|_| marked.replacen(MARK, content, 1) == text);
        (text, at)
    } else {
        (format!("{content}\n\nAnswer:\n"), Some(0))
    }
}

/// A user turn with `content` and the generation prompt, in the model's chat template; plain
/// text with an `Answer:` cue when the file has no template.
fn turn_tokens(rt: &Runtime, content: &str) -> Vec<u32> {
    encode_turn(rt, &turn_text(rt, content).0, true)
}

fn encode_turn(rt: &Runtime, text: &str, start: bool) -> Vec<u32> {
    if has_template(rt) {
        rt.encode_chat(text, start)
    } else {
        rt.tokenizer.encode(text, start, true)
    }
}

/// [`turn_tokens`], and the token rows that hold `content[part]`: the tokens of the text before
/// it and after it, counted on their own (a token that straddles a boundary may be counted on
/// either side; a row or two off only moves the band's edge).
fn turn_tokens_marked(
    rt: &Runtime,
    content: &str,
    part: std::ops::Range<usize>,
) -> (Vec<u32>, std::ops::Range<usize>) {
    let (t, at) = turn_text(rt, content);
    let ids = encode_turn(rt, &t, true);
    let Some(at) = at else {
        return (ids, 0..0); // no band
    };
    let before = encode_turn(rt, &t[..at + part.start], true).len();
    let after = encode_turn(rt, &t[at + part.end..], false).len();
    let end = ids.len().saturating_sub(after).max(before);
    (ids, before..end)
}

/// Whether the model file has a chat template (else the prompts are plain text).
pub fn has_template(rt: &Runtime) -> bool {
    matches!(
        rt.model.gguf.opt_str("tokenizer.chat_template"),
        Ok(Some(_))
    )
}

/// Greedy notes with llama.cpp's common repeat penalty (1.3 over 64 tokens): without it the
/// 135M model's notes repeat one line until the budget is spent.
fn greedy(max_tokens: usize) -> GenerateOptions {
    let sampler = SamplerConfig {
        repeat_penalty: 1.3,
        repeat_last_n: 64,
        ..SamplerConfig::greedy()
    };
    GenerateOptions {
        max_tokens,
        sampler,
        ..GenerateOptions::default()
    }
}

/// Run the note steps over `chunks[progress.done .. len-1]` (the last chunk is kept for the
/// answer), merging when over budget. `on_step` sees every step and may save a checkpoint.
pub fn take_notes(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    input: &(impl Lines + ?Sized),
    chunks: &[Chunk],
    opts: &NotesOptions,
    progress: &mut Progress,
    mut on_step: impl FnMut(&Step, &Progress) -> Result<()>,
) -> Result<()> {
    opts.validate()?;
    let tok = &rt.tokenizer;
    let n_note = chunks.len().saturating_sub(1);
    while progress.done < n_note {
        let i = progress.done;
        let c = &chunks[i];
        let (prompt, part) =
            Prompts::note_marked(&progress.notes, c, &c.text(rt, input)?, i + 1, &opts.focus);
        let r = ask_banded(
            rt,
            eng,
            state,
            &prompt,
            part,
            opts.band,
            &greedy(opts.note_tokens),
        )?;
        let text = r.text.trim().to_string();
        progress.written_tokens += r.generated_tokens;
        progress.notes.push(Note {
            start_token: c.start_token,
            start_time: c.start_time.clone(),
            chunks: 1,
            n_tokens: tok.encode(&text, false, false).len(),
            text,
        });
        progress.done += 1;
        on_step(
            &Step::Noted {
                index: i,
                prompt_tokens: r.prompt_tokens,
            },
            progress,
        )?;
        while progress.notes_tokens() > opts.notes_budget && progress.notes.len() >= 2 {
            let (a, b) = (progress.notes[0].clone(), progress.notes[1].clone());
            let r = ask(
                rt,
                eng,
                state,
                &Prompts::merge(&a, &b),
                &greedy(opts.note_tokens),
            )?;
            let text = r.text.trim().to_string();
            progress.written_tokens += r.generated_tokens;
            let merged = Note {
                start_token: a.start_token,
                start_time: a.start_time.clone(),
                chunks: a.chunks + b.chunks,
                n_tokens: tok.encode(&text, false, false).len(),
                text,
            };
            progress.notes.splice(0..2, [merged]);
            progress.merges += 1;
            on_step(
                &Step::Merged {
                    notes_tokens: progress.notes_tokens(),
                },
                progress,
            )?;
        }
    }
    Ok(())
}

/// What a run has read: the chunks, the finished notes and the quotes for the question.
#[derive(Clone, Debug)]
pub struct Reading {
    pub chunks: Vec<Chunk>,
    pub progress: Progress,
    pub quotes: Vec<Quote>,
    /// The last chunk's text (the answer reads it verbatim).
    pub last: String,
}

impl Reading {
    /// Tokens of the whole input.
    pub fn total_tokens(&self) -> usize {
        self.chunks.last().map_or(0, |c| c.start_token + c.n_tokens)
    }

    /// The final step's prompt: [instruction, notes, last chunk, quotes, request] as one user
    /// turn (the answer reads it in a fresh stream).
    pub fn answer_prompt(&self, rt: &Runtime, request: &str) -> Vec<u32> {
        let p = Prompts::answer(&self.progress.notes, &self.quotes, &self.last, request);
        turn_tokens(rt, &p)
    }
}

/// The final step: [instruction, notes, last chunk, quotes, request] in a fresh stream.
pub fn answer(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    reading: &Reading,
    request: &str,
    opts: &GenerateOptions,
    on_piece: impl FnMut(&str) -> bool,
) -> Result<GenerateStats> {
    state.reset();
    let ids = reading.answer_prompt(rt, request);
    rt.generate(eng, state, &ids, opts, on_piece)
}

/// Score `reply` after the final request instead of generating (mean log-probability per token,
/// teacher forced), as `summarize --score-answer` does for the stream-then-ask layout.
pub fn score_answer(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    reading: &Reading,
    request: &str,
    reply: &str,
) -> Result<(f64, usize)> {
    state.reset();
    let ids = reading.answer_prompt(rt, request);
    crate::summarize::score_reply(rt, eng, state, &ids, reply)
}

/// Write `bytes` to `path` atomically (temporary file, then rename): an interrupted run never
/// leaves a partial file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut f = crate::gguf::AtomicFile::create(path)?;
    std::io::Write::write_all(f.writer(), bytes).map_err(|e| Error::io(path, "write", e))?;
    f.commit()
}

/// The whole notes pipeline over `input`: chunking for `state`'s window, the note and merge
/// steps (resumed from `checkpoint` when it exists for the same input and settings, and saved
/// there after every step), then the quotes that match `question` and the focus. The answer is
/// [`answer`] or [`score_answer`].
#[allow(clippy::too_many_arguments)]
pub fn read(
    rt: &Runtime,
    eng: &mut Engine,
    state: &mut FamState,
    input: &Source,
    opts: &NotesOptions,
    question: Option<&str>,
    checkpoint: Option<&std::path::Path>,
    mut on_step: impl FnMut(&Step, &Progress, &[Chunk]),
) -> Result<Reading> {
    opts.validate()?;
    let query = question
        .into_iter()
        .chain(opts.focus.iter().map(String::as_str));
    let query = query.collect::<Vec<_>>().join("\n");
    let chunk_tokens = opts.chunk_tokens_for(state, &query)?;
    let chunks = chunks(rt, input, chunk_tokens)?;
    if chunks.is_empty() {
        return Err(Error::Invalid("the input has no text".into()));
    }
    let mut settings = serde_json::json!({
        "chunk_tokens": chunk_tokens, "note_tokens": opts.note_tokens,
        "notes_budget": opts.notes_budget, "memory": format!("{:?}", state.settings),
    });
    if opts.band > 0 {
        settings["prefill_band"] = opts.band.into(); // absent when off: older checkpoints resume
    }
    let fp = input.fingerprint();
    let mut progress = Progress::default();
    if let Some(p) = checkpoint.filter(|p| p.exists()) {
        let raw = std::fs::read_to_string(p).map_err(|e| Error::io(p, "read", e))?;
        let v: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|e| Error::file(p, format!("not a notes checkpoint ({e})")))?;
        progress =
            Progress::from_json(&v, fp, &settings).map_err(|e| Error::file(p, e.to_string()))?;
    }
    take_notes(
        rt,
        eng,
        state,
        input,
        &chunks,
        opts,
        &mut progress,
        |step, pr| {
            if let Some(p) = checkpoint {
                let j = pr.to_json(fp, &settings);
                write_atomic(
                    p,
                    serde_json::to_string_pretty(&j)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
            }
            on_step(step, pr, &chunks);
            crate::util::release_free_memory();
            Ok(())
        },
    )?;
    let quotes = quotes::select(input, &query, opts.quotes_budget_for(state, &query), |s| {
        rt.tokenizer.encode(s, false, false).len()
    })?;
    let last = chunks
        .last()
        .map_or(Ok(String::new()), |c| c.text(rt, input))?;
    Ok(Reading {
        chunks,
        progress,
        quotes,
        last,
    })
}
