//! The library's front door: load a model with its tokenizer and chat template, open streams,
//! generate text. This is what the CLI uses and what an embedding program would use.
//!
//! ```no_run
//! use famstream::runtime::{Runtime, LoadOptions, GenerateOptions};
//! let rt = Runtime::load("model.gguf", &LoadOptions::default())?;
//! let mut eng = rt.engine()?;
//! let mut stream = rt.new_stream(&eng, 2048)?;
//! let prompt = rt.tokenizer.encode("Once upon a time", true, false);
//! rt.generate(&mut eng, &mut stream, &prompt, &GenerateOptions::default(), |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! # Ok::<(), famstream::Error>(())
//! ```

use crate::chat::ChatTemplate;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ggml::Backend;
use crate::gguf::{Array, GgufFile, Value};
use crate::model::Model;
use crate::sample::{Sampler, SamplerConfig};
use crate::settings::FamSettings;
use crate::state::{FamState, Logits};
use crate::tokenizer::{StreamDecoder, Tokenizer, Vocab};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute threads (default: all cores).
    pub threads: usize,
    /// ggml device (`auto`, `cpu`, `vulkan`, `metal`, `cuda` or a device name such as
    /// `Vulkan0`; see [`crate::ggml::select_device`]); `None` = CPU.
    pub device: Option<String>,
    /// Let ggml's CPU backend repack matmul weights into its faster interleaved layout where it
    /// has one (Q4_0, Q4_K, IQ4_NL on AVX2/NEON; a copy of those weights in memory). `false`
    /// keeps every weight zero-copy in the file's map.
    pub repack: bool,
    /// Copy Q4_1 matmul weights to Q8_0 at load on the CPU (see [`Model::load_opts`]): prompts
    /// read about 2x faster on x86, for a second copy of those weights in memory and a small
    /// change in the numbers (the default SmolLM2 file: perplexity +0.3%). Off by default.
    pub q8_copy: bool,
    /// A LoRA adapter (GGUF, see [`crate::adapter`]) to apply to the model.
    pub adapter: Option<std::path::PathBuf>,
    /// A Jinja chat template to use instead of the file's `tokenizer.chat_template` (as
    /// llama-server's `--chat-template-file`); one minijinja cannot run is an error.
    pub chat_template: Option<String>,
    /// Show kept tokens to every attention head, ignoring `fam.kept_heads` (see
    /// [`crate::kept_heads`]).
    pub kept_heads_all: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: default_threads(),
            device: None,
            repack: true,
            q8_copy: false,
            adapter: None,
            chat_template: None,
            kept_heads_all: false,
        }
    }
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A loaded model with everything needed to talk to it. Immutable; share it between streams.
pub struct Runtime {
    pub model: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub chat: ChatTemplate,
    threads: usize,
    /// The vocabulary prepared for structured output, made at its first use.
    grammar: std::sync::OnceLock<crate::grammar::GrammarEnv>,
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop when the output ends with any of these.
    pub stop: Vec<String>,
    /// Record each generated token's log-probability under the model (before sampling's
    /// transforms) and those of the `n` most likely tokens at that step (`Some(n)`).
    pub logprobs: Option<usize>,
    /// Constrain the reply to this structure (JSON object or schema).
    pub structure: Option<crate::grammar::Structure>,
}

/// A generated token's log-probability and the most likely alternatives at its step.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// (token, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    /// From one step's logits: log-softmax (in f64) at `token` and at the `top` most likely.
    pub fn from_logits(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
        let log_z = crate::perplexity::log_sum_exp(logits);
        let lp = |t: usize| (logits[t] as f64 - log_z) as f32;
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        let top = top.min(ids.len());
        if top > 0 {
            ids.select_nth_unstable_by(top - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        }
        let mut best: Vec<usize> = ids[..top].to_vec();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        TokenLogprob {
            token,
            logprob: lp(token as usize),
            top: best.into_iter().map(|t| (t as u32, lp(t))).collect(),
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            logprobs: None,
            structure: None,
        }
    }
}

/// Why generation ended, and how fast it was.
#[derive(Clone, Debug, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub prompt_secs: f64,
    pub generated_tokens: usize,
    pub generate_secs: f64,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    pub text: String,
    /// "eos", "stop", "length" or "cancelled".
    pub finish_reason: &'static str,
    /// One per generated token when [`GenerateOptions::logprobs`] asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

impl GenerateStats {
    pub fn prompt_tps(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_secs.max(1e-9)
    }
    pub fn generate_tps(&self) -> f64 {
        self.generated_tokens as f64 / self.generate_secs.max(1e-9)
    }
}

/// Read the tokenizer description from `tokenizer.ggml.*`.
pub fn vocab_from_gguf(g: &GgufFile) -> Result<Vocab> {
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    let strings = |k: &str| -> Result<Vec<String>> {
        match g.opt_array(&key(k))? {
            None => Ok(Vec::new()),
            Some(Array::String(v)) => Ok(v.clone()),
            Some(a) => Err(Error::metadata(
                &key(k),
                format!(
                    "expected an array of strings, found {}",
                    Value::Array(a.clone()).type_description()
                ),
            )),
        }
    };
    let tokens = strings("tokens")?;
    if tokens.is_empty() {
        return Err(Error::metadata(
            &key("tokens"),
            "missing or empty: the file has no vocabulary",
        ));
    }
    let scores = match g.opt_array(&key("scores"))? {
        None => Vec::new(),
        Some(Array::F32(v)) => v.clone(),
        Some(_) => return Err(Error::metadata(&key("scores"), "expected an array of f32")),
    };
    let token_types = match g.opt_array(&key("token_type"))? {
        None => Vec::new(),
        Some(Array::I32(v)) => v.clone(),
        Some(Array::U32(v)) => v.iter().map(|&x| x as i32).collect(),
        Some(_) => {
            return Err(Error::metadata(
                &key("token_type"),
                "expected an array of i32",
            ))
        }
    };
    let model = g.str(&key("model"))?.to_string();
    // SentencePiece vocabularies add BOS unless told otherwise (llama.cpp and transformers agree).
    let add_bos_default = model == "llama";
    Ok(Vocab {
        model,
        pre: g.opt_str(&key("pre"))?.map(str::to_string),
        tokens,
        scores,
        token_types,
        merges: strings("merges")?,
        bos: g.opt_u32(&key("bos_token_id"))?,
        eos: g.opt_u32(&key("eos_token_id"))?,
        unk: g.opt_u32(&key("unknown_token_id"))?,
        pad: g.opt_u32(&key("padding_token_id"))?,
        add_bos: g
            .opt_bool(&key("add_bos_token"))?
            .unwrap_or(add_bos_default),
        add_eos: g.opt_bool(&key("add_eos_token"))?.unwrap_or(false),
        add_space_prefix: g.opt_bool(&key("add_space_prefix"))?,
    })
}

/// The tokenizer a GGUF describes. A SentencePiece vocabulary prefixes `▁` as sentencepiece and
/// llama.cpp do, and as the Hugging Face tokenizers of Llama 2 and Phi-3 do (every text, also
/// one that starts with a space: `tests/tokenizer_vocabs.rs`).
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let options = crate::tokenizer::TokenizerOptions {
        space_prefix: crate::tokenizer::SpacePrefix::SentencePiece,
    };
    Tokenizer::from_vocab_with(vocab_from_gguf(g)?, options)
        .map_err(|e| Error::Tokenizer(e.to_string()))
}

impl Runtime {
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Runtime> {
        let backend = Self::backend(opts.device.as_deref(), opts.threads)?;
        let mut model = Model::load_opts(path, &backend, opts.repack, opts.q8_copy)?;
        if let Some(a) = &opts.adapter {
            model.attach_adapter(a, &backend)?;
        }
        if opts.kept_heads_all {
            model.clear_kept_heads();
        }
        let tokenizer = tokenizer_from_gguf(&model.gguf)?;
        if tokenizer.n_vocab() != model.hp.n_vocab {
            return Err(Error::metadata(
                "tokenizer.ggml.tokens",
                format!(
                    "{} tokens but the model's vocabulary has {}",
                    tokenizer.n_vocab(),
                    model.hp.n_vocab
                ),
            ));
        }
        let text_of = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i))
                .unwrap_or_default()
                .to_string()
        };
        let own = match &opts.chat_template {
            Some(t) => Some(t.as_str()),
            None => model.gguf.opt_str("tokenizer.chat_template")?,
        };
        let (chat, unusable) =
            ChatTemplate::for_model(own, &text_of(tokenizer.bos()), &text_of(tokenizer.eos()));
        if let (Some(why), Some(_)) = (&unusable, &opts.chat_template) {
            return Err(Error::Invalid(format!(
                "the given chat template cannot be used: {why}"
            )));
        }
        if let Some(why) = unusable {
            eprintln!(
                "warning: the model's chat template cannot be used ({why}); using {}",
                chat.describe()
            );
        }
        Ok(Runtime {
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            chat,
            threads: opts.threads,
            grammar: std::sync::OnceLock::new(),
        })
    }

    fn backend(device: Option<&str>, threads: usize) -> Result<Backend> {
        match device {
            None => Backend::cpu(threads),
            Some(d) => Backend::by_device_name(d, threads),
        }
    }

    /// A compute engine on the model's device (one per thread that computes).
    pub fn engine(&self) -> Result<Engine> {
        let dev = self.model.device();
        let backend = if dev == "CPU" {
            Backend::cpu(self.threads)?
        } else {
            Backend::by_device_name(dev, self.threads)?
        };
        Engine::new(self.model.clone(), backend)
    }

    /// A new stream with room for `n_ctx` tokens of full attention.
    pub fn new_stream(&self, eng: &Engine, n_ctx: usize) -> Result<FamState> {
        FamState::full(&self.model, eng.backend(), n_ctx)
    }

    /// A new stream with the given memory settings (`n_ctx` bounds the `full` policy only).
    /// Tokens of chat-template text. The template prints the special tokens it wants (parsed,
    /// not added), as transformers' `apply_chat_template` does; a conversation's start still
    /// gets the BOS the vocabulary asks for when the template printed none.
    pub fn encode_chat(&self, text: &str, start: bool) -> Vec<u32> {
        let mut ids = self.tokenizer.encode(text, false, true);
        if start && self.tokenizer.add_bos() {
            if let Some(b) = self.tokenizer.bos() {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        ids
    }

    /// The vocabulary prepared for structured output (built at the first call: it walks the
    /// whole vocabulary).
    pub fn grammar_env(&self) -> Result<&crate::grammar::GrammarEnv> {
        if let Some(g) = self.grammar.get() {
            return Ok(g);
        }
        let g = crate::grammar::GrammarEnv::new(self.tokenizer.clone())?;
        Ok(self.grammar.get_or_init(|| g))
    }

    pub fn new_state(&self, eng: &Engine, settings: FamSettings, n_ctx: usize) -> Result<FamState> {
        let (seed, bos) = FamState::seed_tokens_for(&self.tokenizer, settings.fam_len as usize);
        FamState::new(&self.model, eng.backend(), settings, n_ctx, seed, bos)
    }

    /// What produced a result, for JSON reports: famstream's version and commit, the model
    /// file and its fingerprint (which covers an attached adapter).
    pub fn provenance(&self) -> serde_json::Value {
        serde_json::json!({
            "famstream": env!("CARGO_PKG_VERSION"),
            "commit": crate::COMMIT,
            "model": self.model.gguf.path().display().to_string(),
            "model_fingerprint": format!("{:016x}", self.model.fingerprint()),
        })
    }

    /// Feed `prompt` (may be empty if the stream already ends where generation starts, given
    /// the last logits), then sample up to `max_tokens`, calling `on_piece` with each piece of
    /// valid UTF-8 text; `on_piece` returning false cancels.
    pub fn generate(
        &self,
        eng: &mut Engine,
        stream: &mut FamState,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&str) -> bool,
    ) -> Result<GenerateStats> {
        self.generate_with_logprobs(eng, stream, prompt, opts, |piece, _| on_piece(piece))
    }

    /// [`Runtime::generate`], and each piece comes with the log-probabilities of the tokens
    /// that made it (empty unless `opts.logprobs`; a token that completes no character yet is
    /// reported with the next piece), as a streaming server sends them.
    pub fn generate_with_logprobs(
        &self,
        eng: &mut Engine,
        stream: &mut FamState,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_piece: impl FnMut(&str, &[TokenLogprob]) -> bool,
    ) -> Result<GenerateStats> {
        if prompt.is_empty() {
            return Err(Error::Invalid("empty prompt".into()));
        }
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len(),
            finish_reason: "length",
            ..Default::default()
        };
        let mut sampler = Sampler::new(opts.sampler.clone());
        for &t in prompt {
            sampler.accept(t);
        }
        let mut constraint = match &opts.structure {
            Some(s) => Some(self.grammar_env()?.constraint(s)?),
            None => None,
        };
        let t0 = Instant::now();
        let mut logits = stream.feed(eng, prompt, Logits::Last)?;
        stats.prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut dec = StreamDecoder::new();
        // log-probabilities already sent with a piece
        let mut sent = 0;
        while stats.generated_tokens < opts.max_tokens {
            // Log-probabilities are the model's, before a constraint masks anything.
            let raw = match (&constraint, opts.logprobs) {
                (Some(_), Some(_)) => Some(logits.clone()),
                _ => None,
            };
            if let Some(c) = constraint.as_mut() {
                c.mask(&mut logits)?;
            }
            let tok = sampler.sample(&logits);
            if self.tokenizer.is_eog(tok) {
                stats.finish_reason = "eos";
                break;
            }
            if let Some(c) = constraint.as_mut() {
                c.accept(tok)?;
            }
            sampler.accept_generated(tok);
            if let Some(n) = opts.logprobs {
                let l = raw.as_deref().unwrap_or(&logits);
                stats.logprobs.push(TokenLogprob::from_logits(l, tok, n));
            }
            stats.tokens.push(tok);
            stats.generated_tokens += 1;
            let piece = dec.push(&self.tokenizer, tok);
            stats.text.push_str(&piece);
            let stop_hit = opts
                .stop
                .iter()
                .find(|s| !s.is_empty() && stats.text.ends_with(s.as_str()))
                .cloned();
            if let Some(s) = stop_hit {
                // Do not show the stop string itself.
                let keep = piece.len().saturating_sub(s.len());
                if keep > 0 && !on_piece(&piece[..keep], &stats.logprobs[sent..]) {
                    stats.finish_reason = "cancelled";
                }
                stats.text.truncate(stats.text.len() - s.len());
                if stats.finish_reason != "cancelled" {
                    stats.finish_reason = "stop";
                }
                // The stop token was sampled but is still fed so the stream stays consistent.
                stream.feed(eng, &[tok], Logits::None)?;
                break;
            }
            if !piece.is_empty() && !on_piece(&piece, &stats.logprobs[sent..]) {
                stats.finish_reason = "cancelled";
                stream.feed(eng, &[tok], Logits::None)?;
                break;
            }
            if !piece.is_empty() {
                sent = stats.logprobs.len();
            }
            logits = stream.feed(eng, &[tok], Logits::Last)?;
        }
        stats.generate_secs = t1.elapsed().as_secs_f64();
        Ok(stats)
    }
}

#[cfg(test)]
mod logprob_tests {
    use super::TokenLogprob;

    #[test]
    fn logprobs_are_the_log_softmax_and_the_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        let want = |i: usize| ((logits[i] as f64).exp() / z).ln() as f32;
        let l = TokenLogprob::from_logits(&logits, 2, 3);
        assert!((l.logprob - want(2)).abs() < 1e-6);
        let ids: Vec<u32> = l.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 2, 0]);
        for (t, lp) in &l.top {
            assert!((lp - want(*t as usize)).abs() < 1e-6);
        }
        // more alternatives than the vocabulary: all of it
        assert_eq!(TokenLogprob::from_logits(&logits, 0, 10).top.len(), 4);
    }
}
