//! `famstream inspect`: show what a GGUF file holds: architecture, hyperparameters, tokenizer, FAM settings, tensors.

use super::common::*;
use clap::Args;
use famstream::gguf::GgufFile;
use famstream::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Leave out the per-tensor table (text output).
    #[arg(long)]
    pub no_tensors: bool,
    /// A LoRA adapter to check against FILE (a model) and show: rank, alpha, targets, FAM
    /// settings, base fingerprint.
    #[arg(long = "adapter")]
    pub adapter: Option<PathBuf>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let InspectArgs {
        file,
        json,
        no_tensors,
        adapter,
        ..
    } = args;
    let g = GgufFile::open(&file)?;
    let mut r = famstream::inspect::report(&g)?;
    if let Some(a) = &adapter {
        famstream::inspect::add_adapter(&mut r, &g, a)?;
    }
    if json {
        print_json(&r);
    } else {
        print!("{}", famstream::inspect::render_text(&r, !no_tensors));
    }
    Ok(())
}
