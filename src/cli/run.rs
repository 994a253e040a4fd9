//! `famstream run`: generate text from a prompt, streamed to stdout; speed goes to stderr.

use super::common::*;
use clap::Args;
use famstream::chat::Message;
use famstream::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Wrap the prompt as a user turn of the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Constrain the output to JSON matching the JSON schema in FILE (constrained decoding:
    /// every output that ends is valid).
    #[arg(long = "json-schema", value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: RunArgs) -> Result<()> {
    let RunArgs {
        model,
        prompt,
        file,
        chat,
        json_schema,
        sample,
        memory,
        ..
    } = args;
    let text = read_text(prompt, file)?;
    let mut opts = sample.options()?;
    if let Some(p) = &json_schema {
        let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, "read", e))?;
        let schema: serde_json::Value = serde_json::from_str(&s)
            .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", p.display())))?;
        opts.structure = Some(famstream::grammar::Structure::JsonSchema(schema));
    }
    let rt = model.load()?;
    let tokens = if chat {
        rt.encode_chat(&rt.chat.render(&[Message::new("user", &text)], true), true)
    } else {
        rt.tokenizer.encode(&text, true, true)
    };
    let mut eng = rt.engine()?;
    let mut stream = memory.state(&rt, &eng, model.ctx(&rt))?;
    let mut out = std::io::stdout().lock();
    let stats = rt.generate(&mut eng, &mut stream, &tokens, &opts, |piece| {
        write_piece(&mut out, piece)
    })?;
    let _ = writeln!(out);
    memory.save(&rt, &stream)?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | stop: {}",
        stats.prompt_tokens,
        stats.prompt_tps(),
        stats.generated_tokens,
        stats.generate_tps(),
        stats.finish_reason
    );
    Ok(())
}
