//! The `famstream` command line. All messages and exit codes are decided here.

use clap::{Parser, Subcommand};
use famstream::gguf::GgufFile;
use famstream::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "famstream", version, about = "Constant-memory streaming LLM runtime (TransformerFAM on ggml)")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a GGUF file holds: architecture, hyperparameters, tokenizer, FAM settings, tensors.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Leave out the per-tensor table (text output).
        #[arg(long)]
        no_tensors: bool,
    },
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Inspect { file, json, no_tensors } => {
            let g = GgufFile::open(&file)?;
            let r = famstream::inspect::report(&g)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON values serialize"));
            } else {
                print!("{}", famstream::inspect::render_text(&r, !no_tensors));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("famstream: error: {e}");
            ExitCode::FAILURE
        }
    }
}
