//! Structured output: generation constrained to a JSON schema (or any JSON object) by
//! llguidance, the grammar engine llama.cpp and mistral.rs use. Before each sampled token the
//! constraint masks every token that cannot continue a valid reply; after it, the token is fed
//! to the constraint. So every reply that ends (by the grammar's end, not by `max_tokens`)
//! parses and matches its schema, whatever the model.
//!
//! llguidance sees the vocabulary as byte strings in a token trie ([`GrammarEnv`], built once
//! per model from famstream's tokenizer: each token's bytes, control tokens marked as special)
//! and tokenizes grammar literals with famstream's own tokenizer.

use crate::error::{Error, Result};
use crate::tokenizer::{token_type, Tokenizer};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use std::sync::Arc;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// What a reply must be.
#[derive(Clone, Debug, PartialEq)]
pub enum Structure {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON matching this schema (`{"type": "json_schema", ...}`, `run --json-schema`).
    JsonSchema(serde_json::Value),
}

/// famstream's tokenizer as llguidance's tokenizer environment.
struct Env {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode(&String::from_utf8_lossy(s), false, false)
    }
}

/// A model's vocabulary prepared for constraints (walks the whole vocabulary once: build it
/// once per model and share it).
pub struct GrammarEnv {
    factory: ParserFactory,
    /// The last schemas compiled (the server compiles a request's schema to refuse a bad one
    /// with a 400, then the worker needs it again; clients repeat their schemas): each use
    /// gets a deep copy of the compiled parser.
    compiled: std::sync::Mutex<Vec<(String, llguidance::TokenParser)>>,
}

/// How many compiled schemas [`GrammarEnv`] keeps.
const COMPILED_KEPT: usize = 8;

impl GrammarEnv {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<GrammarEnv> {
        let n = tokenizer.n_vocab();
        let eos = tokenizer
            .eos()
            .or_else(|| tokenizer.eog_ids().first().copied())
            .ok_or_else(|| Error::Unsupported("structured output needs an end token".into()))?;
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                let special = matches!(
                    tokenizer.token_type(id),
                    Some(token_type::CONTROL | token_type::UNKNOWN | token_type::UNUSED)
                );
                if special || bytes.is_empty() {
                    // llguidance's marker for tokens that never stand for text
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token_text(id).unwrap_or("").as_bytes());
                    w
                } else {
                    bytes.to_vec()
                }
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, eos);
        info.tok_bos = tokenizer.bos();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer });
        let factory = ParserFactory::new_simple(&env)
            .map_err(|e| Error::Internal(format!("grammar engine: {e}")))?;
        Ok(GrammarEnv {
            factory,
            compiled: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A fresh constraint for one reply; a schema llguidance cannot compile is refused, naming
    /// the problem.
    pub fn constraint(&self, s: &Structure) -> Result<Constraint> {
        let mut schema = match s {
            Structure::JsonObject => serde_json::json!({"type": "object"}),
            Structure::JsonSchema(schema) => schema.clone(),
        };
        // One layout, Python's `json.dumps` one (`, ` and `: `, no other whitespace): with
        // llguidance's default, free whitespace, a small model can pad a reply with newlines
        // until max_tokens (5 of 200 replies did). A schema's own `x-guidance` takes precedence.
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(|| {
                serde_json::json!({
                    "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "
                })
            });
        }
        let key = schema.to_string();
        // a poisoned lock only means another thread panicked mid-push: the list is still valid
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        let parser = match compiled.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let hit = compiled.remove(i);
                let parser = hit.1.deep_clone();
                compiled.push(hit);
                parser
            }
            None => {
                let grammar = TopLevelGrammar::from_json_schema(schema);
                let parser = self
                    .factory
                    .create_parser(grammar)
                    .map_err(|e| Error::Invalid(format!("JSON schema: {e}")))?;
                if compiled.len() >= COMPILED_KEPT {
                    compiled.remove(0);
                }
                compiled.push((key, parser.deep_clone()));
                parser
            }
        };
        drop(compiled);
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Invalid(format!("JSON schema: {e}")));
        }
        Ok(Constraint { matcher })
    }
}

/// The state of one constrained reply.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Set every logit the grammar forbids next to -inf.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| Error::Internal(format!("grammar: {e}")))?;
        for (t, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(t as TokenId) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Feed the sampled token.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher
            .consume_token(token)
            .map_err(|e| Error::Internal(format!("grammar: {e}")))
    }

    /// The reply is complete: the grammar allows nothing but its end.
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped()
    }
}
