//! The `famstream` command line: parsing and dispatch live in [`cli`] (one file per command);
//! every message and exit code is decided there and here.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("famstream: error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}
