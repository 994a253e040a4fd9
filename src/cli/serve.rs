//! `famstream serve`: an OpenAI-compatible HTTP server (chat/completions, completions, models, health).

use super::common::*;
use clap::Args;
use famstream::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Live stream states kept in memory; older sessions are saved to disk.
    #[arg(long = "max-states", default_value_t = 4)]
    pub max_states: usize,
    /// Requests waiting for compute at most (beyond: 503).
    #[arg(long = "max-queue", default_value_t = 64)]
    pub max_queue: usize,
    /// Largest request body in bytes (beyond: 413).
    #[arg(long = "max-body", default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Largest prompt in tokens (beyond: 413).
    #[arg(long = "max-prompt-tokens", default_value_t = 1 << 20)]
    pub max_prompt_tokens: usize,
    /// Where session snapshots live.
    #[arg(long = "sessions-dir")]
    pub sessions_dir: Option<PathBuf>,
    /// Clients must send `Authorization: Bearer KEY` (every endpoint but /health).
    #[arg(long = "api-key", env = "FAMSTREAM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow a non-loopback --host without an API key.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs {
        model,
        host,
        port,
        max_states,
        max_queue,
        max_body,
        max_prompt_tokens,
        sessions_dir,
        api_key,
        insecure,
        memory,
        ..
    } = args;
    memory.refuse_unused("serve", false, Some("sessions are saved by name"))?;
    let api_key = api_key.filter(|k| !k.is_empty());
    famstream::serve::check_exposure(&host, api_key.as_deref(), insecure)?;
    let rt = std::sync::Arc::new(model.load()?);
    let settings = memory.settings(&rt)?;
    let sessions_dir = match sessions_dir {
        Some(d) => d,
        None => default_sessions_dir()?,
    };
    let opts = famstream::serve::ServeOptions {
        host,
        port,
        max_states,
        max_queue,
        max_body,
        max_prompt_tokens,
        max_new_tokens: 8192,
        memory: settings,
        n_ctx: model.ctx(&rt),
        sessions_dir,
        model_name: model
            .path()?
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        http_threads: 32,
        api_key,
    };
    famstream::serve::serve(rt, opts, |addr| {
        println!("famstream serving on http://{addr}");
        let _ = std::io::stdout().flush();
    })
}
