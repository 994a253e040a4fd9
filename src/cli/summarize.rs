//! `famstream summarize`: summarize a transcript or document of any length (or answer a question about it).

use super::common::*;
use clap::Args;
use famstream::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text: a file (plain, `Name: text` lines, .srt/.vtt) or - for stdin. May be
    /// omitted with --load-state (ask about what the saved state has read).
    pub input: Option<PathBuf>,
    /// Only read the text and save the state (needs --save-state); ask later with
    /// --load-state.
    #[arg(long = "ingest-only")]
    pub ingest_only: bool,
    /// Ask this question instead of requesting a summary.
    #[arg(long)]
    pub ask: Option<String>,
    /// Let the model write running notes into the stream every N input tokens (0: off).
    #[arg(long = "notes-every", default_value_t = 0)]
    pub notes_every: usize,
    /// Tokens per note at most (default: 96 with --method notes, 48 for the running notes
    /// of --method stream).
    #[arg(long = "notes-tokens")]
    pub notes_tokens: Option<usize>,
    /// How the text reaches the answer. `notes` (default): the model writes notes on each
    /// chunk that fits the window, kept outside the window (merged when over
    /// --notes-budget), and answers from the notes and the last chunk, so every part of the
    /// text reaches the answer. `stream`: the whole text through one stream, then the
    /// request; the answer sees the window and the memory policy's memory only.
    #[arg(long, default_value = "notes")]
    pub method: String,
    /// Tokens per chunk with --method notes (0: what fits the window next to the notes).
    #[arg(long = "chunk-tokens", default_value_t = 0)]
    pub chunk_tokens: usize,
    /// Read each chunk (--method notes) with a band of N tokens: a chunk's token attends to
    /// the notes and the N latest tokens of the chunk, while the request and the note being
    /// written still attend to every token of the chunk. Faster note steps (attention is
    /// most of their cost at a 4k window; a 39k-token transcript 191 -> 130 s with
    /// --q8-copy), each token read with less context; 0: off (every token sees the whole step).
    /// Default: 512.
    #[arg(long = "prefill-band")]
    pub prefill_band: Option<usize>,
    /// All notes together at most this many tokens (--method notes); beyond, the two
    /// oldest notes are merged by the model.
    #[arg(long = "notes-budget", default_value_t = 768)]
    pub notes_budget: usize,
    /// Quotes for the answer (--method notes): the passages of the whole text that best match
    /// --ask and --focus (BM25 over words), at most N tokens, verbatim after the last chunk,
    /// next to the request; 0: none. Reserved in every chunk's window when there is a question.
    /// Default: an eighth of the window, at most 512.
    #[arg(long = "quotes")]
    pub quotes: Option<usize>,
    /// Write the notes as a timeline (token offset or subtitle time, note) to FILE:
    /// Markdown, or JSON with --json (--method notes).
    #[arg(long = "notes-out")]
    pub notes_out: Option<PathBuf>,
    /// With --notes-out: write JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Save the notes after every step to FILE and resume from it when it exists (same
    /// input and settings): a recording of hours summarized across runs (--method notes). A
    /// question (--ask, --focus) reserves room for quotes in every chunk, so a summary's
    /// checkpoint does not serve a question's run, nor the other way round.
    #[arg(long = "checkpoint")]
    pub checkpoint: Option<PathBuf>,
    /// No progress bar or statistics on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Something to look for, stated before the text (repeatable; e.g. the questions you
    /// will --ask).
    #[arg(long = "focus")]
    pub focus: Vec<String>,
    /// Instead of generating, print the mean log-probability (nats/token) of this answer
    /// after the request, as JSON (for evaluations).
    #[arg(long = "score-answer")]
    pub score_answer: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: SummarizeArgs) -> Result<()> {
    let SummarizeArgs {
        mut model,
        input,
        ingest_only,
        ask,
        notes_every,
        notes_tokens,
        method,
        chunk_tokens,
        prefill_band,
        notes_budget,
        quotes,
        notes_out,
        json,
        checkpoint,
        quiet,
        focus,
        score_answer,
        sample,
        memory,
        ..
    } = args;
    // Long prompts: the default model's Q4_1 weights read them twice as fast as Q8_0 copies.
    model.q8_default = true;
    let notes_method = match method.as_str() {
        "notes" => true,
        "stream" => false,
        m => {
            return Err(Error::Invalid(format!(
                "unknown --method `{m}` (one of: notes, stream)"
            )))
        }
    };
    if notes_method {
        // Read from the file in passes, never held whole (famstream::notes::Source).
        let source = match input.as_deref() {
            None => return Err(Error::Invalid("give a file (or - for stdin)".into())),
            Some(p) if p.as_os_str() == "-" => famstream::notes::Source::from_stdin()?,
            Some(p) => famstream::notes::Source::open(p)?,
        };
        let given = [
            (ingest_only, "--ingest-only"),
            (memory.load_state.is_some(), "--load-state"),
            (memory.save_state.is_some(), "--save-state"),
            (notes_every > 0, "--notes-every"),
        ];
        if let Some((_, flag)) = given.iter().find(|(on, _)| *on) {
            return Err(Error::Invalid(format!(
                "{flag} belongs to --method stream; --method notes resumes with --checkpoint"
            )));
        }
        if quotes.is_some() && ask.is_none() && focus.is_empty() {
            return Err(Error::Invalid(
                "--quotes needs --ask or --focus (the quotes are the passages that match them)"
                    .into(),
            ));
        }
        let answer = sample.options()?;
        let rt = model.load()?;
        let mut eng = rt.engine()?;
        let mut state = memory.state(&rt, &eng, model.ctx(&rt))?;
        let nopts = famstream::notes::NotesOptions {
            chunk_tokens,
            note_tokens: notes_tokens.unwrap_or(96),
            notes_budget,
            focus,
            quotes_budget: quotes,
            band: prefill_band.unwrap_or(famstream::notes::DEFAULT_BAND),
        };
        let pb = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            famstream::util::progress(0, "chunks")
        };
        let t0 = std::time::Instant::now();
        let reading = famstream::notes::read(
            &rt,
            &mut eng,
            &mut state,
            &source,
            &nopts,
            ask.as_deref(),
            checkpoint.as_deref(),
            |_, pr, chunks| {
                pb.set_length(chunks.len().saturating_sub(1) as u64);
                pb.set_position(pr.done as u64);
                let read = chunks.get(pr.done).map_or(0, |c| c.start_token);
                pb.set_message(format!(
                    "{} notes ({} tokens, {} merges), {:.0} input tok/s",
                    pr.notes.len(),
                    pr.notes_tokens(),
                    pr.merges,
                    read as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                ));
            },
        )?;
        pb.finish_and_clear();
        let (total, pr) = (reading.total_tokens(), &reading.progress);
        if !quiet {
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "read {total} tokens in {} chunks: {} notes ({} tokens, {} merges, {} \
                     tokens written) in {secs:.1}s ({:.1} input tok/s); {} quotes ({} tokens)",
                reading.chunks.len(),
                pr.notes.len(),
                pr.notes_tokens(),
                pr.merges,
                pr.written_tokens,
                total as f64 / secs.max(1e-9),
                reading.quotes.len(),
                reading.quotes.iter().map(|q| q.n_tokens).sum::<usize>()
            );
        }
        if let Some(p) = &notes_out {
            let body = if json {
                let j = famstream::notes::timeline_json(&pr.notes);
                serde_json::to_string_pretty(&j).unwrap_or_default() + "\n"
            } else {
                famstream::notes::timeline_markdown(&pr.notes)
            };
            famstream::notes::write_atomic(p, body.as_bytes())?;
        }
        let request = famstream::summarize::request(ask.as_deref());
        let request = request.as_str();
        if let Some(reply) = &score_answer {
            let (lp, n) = famstream::notes::score_answer(
                &rt, &mut eng, &mut state, &reading, request, reply,
            )?;
            print_json(&serde_json::json!({
                "answer": reply, "mean_logprob": lp, "answer_tokens": n,
                "tokens_read": total, "method": "notes", "notes": pr.notes.len(),
                "quotes": reading.quotes.len(),
            }));
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        let stats = famstream::notes::answer(
            &rt,
            &mut eng,
            &mut state,
            &reading,
            request,
            &answer,
            |piece| write_piece(&mut out, piece),
        )?;
        let _ = writeln!(out);
        if !quiet {
            eprintln!(
                "answer: {} tokens, {:.1} tok/s; state {} MiB, peak RSS {} MiB",
                stats.generated_tokens,
                stats.generate_tps(),
                state.state_bytes() >> 20,
                famstream::util::peak_rss_bytes().unwrap_or(0) >> 20
            );
        }
        return Ok(());
    }
    let text = match &input {
        None if memory.load_state.is_some() => None,
        None => {
            return Err(Error::Invalid(
                "give a file (or - for stdin), or --load-state".into(),
            ))
        }
        Some(p) => Some(read_text_input(p)?),
    };
    if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(Error::Invalid("the input is empty".into()));
    }
    let notes_tokens = notes_tokens.unwrap_or(48);
    if chunk_tokens > 0
        || notes_out.is_some()
        || checkpoint.is_some()
        || json
        || quotes.is_some()
        || prefill_band.is_some()
    {
        return Err(Error::Invalid(
            "--chunk-tokens, --notes-out, --json, --checkpoint, --quotes and --prefill-band \
             belong to --method notes"
                .into(),
        ));
    }
    if ingest_only && (memory.save_state.is_none() || text.is_none()) {
        return Err(Error::Invalid(
            "--ingest-only needs an input and --save-state".into(),
        ));
    }
    let answer = sample.options()?;
    let rt = model.load()?;
    let mut eng = rt.engine()?;
    let mut state = memory.state(&rt, &eng, model.ctx(&rt))?;
    let opts = famstream::summarize::SummarizeOptions {
        question: ask,
        notes_every,
        notes_tokens,
        focus,
        answer,
    };
    let pb = famstream::util::progress(0, "tokens");
    let t0 = std::time::Instant::now();
    if let Some(text) = &text {
        famstream::summarize::ingest(&rt, &mut eng, &mut state, text, &opts, |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        })?;
    }
    pb.finish_and_clear();
    let read_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "read {} tokens in {:.1}s ({:.1} tok/s), state {} MiB",
        state.n_past(),
        read_secs,
        state.n_past() as f64 / read_secs.max(1e-9),
        state.state_bytes() >> 20
    );
    if ingest_only {
        return memory.save(&rt, &state);
    }
    if let Some(reply) = &score_answer {
        let (lp, n) = famstream::summarize::score_answer(&rt, &mut eng, &mut state, &opts, reply)?;
        print_json(&serde_json::json!({
            "answer": reply, "mean_logprob": lp, "answer_tokens": n,
            "tokens_read": state.n_past(),
        }));
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let stats = famstream::summarize::answer(&rt, &mut eng, &mut state, &opts, |piece| {
        write_piece(&mut out, piece)
    })?;
    let _ = writeln!(out);
    memory.save(&rt, &state)?;
    eprintln!(
        "answer: {} tokens, {:.1} tok/s",
        stats.generated_tokens,
        stats.generate_tps()
    );
    Ok(())
}
