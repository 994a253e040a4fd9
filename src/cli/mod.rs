//! The command line: `Cli` and its `Command`s, one file per command (its arguments, its
//! printing; the work is the library's), and the arguments several commands share (`common`).

pub mod bench;
pub mod chat;
mod common;
pub mod convert;
pub mod inspect;
pub mod logits;
pub mod passkey;
pub mod perplexity;
pub mod recall;
pub mod run;
pub mod serve;
pub mod summarize;

use clap::{Parser, Subcommand};
use famstream::Result;

#[derive(Parser)]
#[command(
    name = "famstream",
    version,
    about = "Constant-memory streaming LLM runtime (TransformerFAM on ggml)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer, FAM settings, tensors.
    Inspect(inspect::InspectArgs),
    /// Convert a Hugging Face checkpoint directory or a GGUF file into a (quantized) GGUF.
    Convert(convert::ConvertArgs),
    /// Generate text from a prompt, streamed to stdout; speed goes to stderr.
    Run(run::RunArgs),
    /// Summarize a transcript or document of any length (or answer a question about it).
    Summarize(summarize::SummarizeArgs),
    /// An OpenAI-compatible HTTP server (chat/completions, completions, models, health).
    Serve(serve::ServeArgs),
    /// Prompt-processing and generation speed (tokens/s), like llama-bench's pp/tg.
    Bench(bench::BenchArgs),
    /// Interactive chat in the terminal (type /exit to leave, /reset to start over).
    Chat(chat::ChatArgs),
    /// Write the logits of every position as an f32 .npy array [n_tokens, n_vocab].
    Logits(logits::LogitsArgs),
    /// Perplexity of a text file, scored in windows of --ctx tokens (as llama-perplexity).
    Perplexity(perplexity::PerplexityArgs),
    /// Passkey retrieval: a key near the start, N filler tokens, the question at the end.
    Passkey(passkey::PasskeyArgs),
    /// Recall of planted facts at distances of k windows (cases made by tools/recall_bench.py):
    /// exact-match answers and the answer's log-likelihood per k, with 95% intervals.
    Recall(recall::RecallArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Run(a) => run::run(a),
        Command::Summarize(a) => summarize::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Passkey(a) => passkey::run(a),
        Command::Recall(a) => recall::run(a),
    }
}
