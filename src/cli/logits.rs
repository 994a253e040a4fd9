//! `famstream logits`: write the logits of every position as an f32 .npy array [n_tokens, n_vocab].

use super::common::*;
use clap::Args;
use famstream::state::Logits;
use famstream::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    pub prompt: Option<String>,
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Output .npy file.
    #[arg(long = "out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: LogitsArgs) -> Result<()> {
    let LogitsArgs {
        model,
        prompt,
        file,
        out,
        memory,
        ..
    } = args;
    let text = read_text(prompt, file)?;
    let rt = model.load()?;
    let tokens = rt.tokenizer.encode(&text, true, true);
    if tokens.is_empty() {
        return Err(Error::Invalid("the text has no tokens".into()));
    }
    let mut eng = rt.engine()?;
    let mut stream = memory.state(&rt, &eng, model.ctx(&rt))?;
    let logits = stream.feed(&mut eng, &tokens, Logits::All)?;
    memory.save(&rt, &stream)?;
    famstream::npy::write_f32(&out, &[tokens.len(), rt.model.hp.n_vocab], &logits)?;
    eprintln!(
        "wrote {} x {} logits to {}",
        tokens.len(),
        rt.model.hp.n_vocab,
        out.display()
    );
    Ok(())
}
