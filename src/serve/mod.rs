//! `famstream serve`: an OpenAI-compatible HTTP server.
//!
//! Brief overview. HTTP threads parse and validate requests, then hand *jobs* to one compute
//! worker, which owns the engine and every live stream state, through a bounded queue (full:
//! 503). The worker sends generated text back piece by piece on a channel; the HTTP thread
//! writes it as server-sent events or collects it. A client that disconnects closes the channel,
//! and the worker cancels its generation at the next token.
//!
//! Sessions: a request that names a `session` (or `user`) continues that conversation's FAM
//! state, so the client sends only the new turn. At most `max_states` states are live; the least
//! recently used one is saved to the sessions directory (a snapshot) and reloaded when needed,
//! so memory stays bounded and nothing is lost.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /health`.
//!
//! Keys: with an API key set, every endpoint but `/health` needs `Authorization: Bearer KEY`
//! (else 401); a server that would listen beyond loopback without a key is refused unless the
//! user says `--insecure` ([`check_exposure`]).

use crate::error::{Error, Result};
use crate::runtime::{GenerateOptions, Runtime, TokenLogprob};
use crate::settings::FamSettings;
use crate::state::{FamState, Logits};
use serde_json::{json, Value as Json};
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

mod request;
mod response;
use request::*;
use response::*;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Live stream states kept in memory (sessions beyond it are saved to disk).
    pub max_states: usize,
    /// Requests waiting for the worker at most; beyond: 503.
    pub max_queue: usize,
    /// Largest request body accepted (bytes); beyond: 413.
    pub max_body: usize,
    /// Largest prompt accepted (tokens); beyond: 413.
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` accepted.
    pub max_new_tokens: usize,
    pub memory: FamSettings,
    /// Context length for the `full` policy.
    pub n_ctx: usize,
    pub sessions_dir: PathBuf,
    pub model_name: String,
    /// HTTP handler threads.
    pub http_threads: usize,
    /// The key clients must send as `Authorization: Bearer KEY` (all endpoints but `/health`).
    pub api_key: Option<String>,
}

/// Whether `host` only accepts connections from this machine.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// A server reachable from the network without a key would run anyone's prompts: refused unless
/// `insecure`, naming the fix.
pub fn check_exposure(host: &str, api_key: Option<&str>, insecure: bool) -> Result<()> {
    if api_key.is_none() && !insecure && !is_loopback(host) {
        return Err(Error::Invalid(format!(
            "--host {host} accepts connections from other machines: set an API key (--api-key \
             KEY or FAMSTREAM_API_KEY), or pass --insecure to serve without one"
        )));
    }
    Ok(())
}

/// Whether the request carries the key (`Authorization: Bearer KEY`), compared in constant time.
pub(super) fn authorized(req: &tiny_http::Request, key: &str) -> bool {
    let Some(h) = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
    else {
        return false;
    };
    let Some(given) = h.value.as_str().strip_prefix("Bearer ") else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A validated request, ready for the worker.
pub(super) struct Job {
    /// Text to feed (already rendered with the chat template).
    pub(super) prompt: String,
    pub(super) session: Option<String>,
    pub(super) gen: GenerateOptions,
    /// Choices to generate (`n`), each from a fresh state with seed + index.
    pub(super) n: usize,
    /// The tools the reply may call (by name): a reply that is a call becomes `tool_calls`.
    pub(super) tools: Vec<String>,
    /// Pieces of output, then one final event.
    pub(super) out: SyncSender<Event>,
}

pub(super) enum Event {
    /// Text, and its tokens' log-probabilities when asked for (chat's per-token entries,
    /// [`response::logprob_entries`]).
    Piece(String, Vec<Json>),
    /// The end of one choice when more follow (`n` > 1; the last ends with `Done`).
    Choice {
        finish_reason: &'static str,
        completion_tokens: usize,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// One per completion token when the request asked for logprobs.
        logprobs: Vec<TokenLogprob>,
        /// The stream's memory after the reply (`famstream` field of the response).
        memory: Json,
    },
    Failed(String),
}

/// Most choices (`n`) one request may ask for: each is a full generation on the one worker.
pub(super) const MAX_CHOICES: usize = 8;

/// An HTTP error: status and message.
pub(super) struct HttpError(u16, String);

pub(super) fn error_body(status: u16, msg: &str) -> String {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json!({"error": {"message": msg, "type": kind, "code": status}}).to_string()
}

pub(super) fn json_response(
    status: u16,
    body: String,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let h = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header");
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(h)
}

/// Run the server until the process is stopped. `ready` is called with the bound address.
pub fn serve(
    rt: Arc<Runtime>,
    opts: ServeOptions,
    ready: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let server = tiny_http::Server::http((opts.host.as_str(), opts.port)).map_err(|e| {
        Error::Invalid(format!("cannot listen on {}:{}: {e}", opts.host, opts.port))
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| Error::Invalid("not an IP listener".into()))?;
    std::fs::create_dir_all(&opts.sessions_dir)
        .map_err(|e| Error::io(&opts.sessions_dir, "create", e))?;
    let (jobs, rx) = mpsc::sync_channel::<Job>(opts.max_queue);
    let worker_rt = rt.clone();
    let worker_opts = opts.clone();
    std::thread::spawn(move || worker(worker_rt, worker_opts, rx));
    ready(addr);
    let server = Arc::new(server);
    let mut handles = Vec::new();
    for _ in 0..opts.http_threads.max(1) {
        let (server, rt, opts, jobs) = (server.clone(), rt.clone(), opts.clone(), jobs.clone());
        handles.push(std::thread::spawn(move || {
            for req in server.incoming_requests() {
                handle(&rt, &opts, &jobs, req);
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

pub(super) fn handle(
    rt: &Runtime,
    opts: &ServeOptions,
    jobs: &SyncSender<Job>,
    mut req: tiny_http::Request,
) {
    let method = req.method().clone();
    let url = req.url().split('?').next().unwrap_or("").to_string();
    if let Some(key) = &opts.api_key {
        // The chat page is static (no model access); it asks for the key and sends it.
        if url != "/health" && url != "/" && !authorized(&req, key) {
            let _ = drain(&mut req);
            let www = tiny_http::Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..])
                .expect("static header");
            let msg = "missing or wrong API key (send Authorization: Bearer KEY)";
            let _ = req.respond(json_response(401, error_body(401, msg)).with_header(www));
            return;
        }
    }
    let r = match (method, url.as_str()) {
        (tiny_http::Method::Get, "/") => Ok(chat_page()),
        (tiny_http::Method::Get, "/health") => Ok(json_response(200, json!({"status": "ok"}).to_string())),
        (tiny_http::Method::Get, "/v1/models") => Ok(json_response(
            200,
            json!({"object": "list", "data": [{"id": opts.model_name, "object": "model", "owned_by": "famstream"}]}).to_string(),
        )),
        (tiny_http::Method::Post, "/v1/chat/completions") => return completion(rt, opts, jobs, req, true),
        (tiny_http::Method::Post, "/v1/completions") => return completion(rt, opts, jobs, req, false),
        (_, "/health" | "/v1/models" | "/v1/chat/completions" | "/v1/completions") => Err(HttpError(405, "method not allowed".into())),
        _ => Err(HttpError(404, format!("no endpoint {url}"))),
    };
    let resp = r.unwrap_or_else(|HttpError(s, m)| json_response(s, error_body(s, &m)));
    let _ = drain(&mut req);
    let _ = req.respond(resp);
}

/// The built-in chat page: one static file, compiled into the binary (no build step).
const CHAT_PAGE: &str = include_str!("chat.html");

fn chat_page() -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let h = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/html; charset=utf-8"[..])
        .expect("static header");
    tiny_http::Response::from_string(CHAT_PAGE).with_header(h)
}

pub(super) fn drain(req: &mut tiny_http::Request) -> std::io::Result<()> {
    std::io::copy(&mut req.as_reader().take(1 << 20), &mut std::io::sink()).map(|_| ())
}

/// The compute worker: owns the engine and the live states.
pub(super) fn worker(rt: Arc<Runtime>, opts: ServeOptions, jobs: Receiver<Job>) {
    let mut eng = match rt.engine() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("famstream serve: cannot start the engine: {e}");
            return;
        }
    };
    // Live sessions, most recently used last.
    let mut live: Vec<(String, FamState)> = Vec::new();
    for job in jobs {
        let r = run_job(&rt, &opts, &mut eng, &mut live, &job);
        let ev = match r {
            Ok(ev) => ev,
            Err(e) => Event::Failed(e.to_string()),
        };
        let _ = job.out.send(ev);
    }
}

pub(super) fn run_job(
    rt: &Runtime,
    opts: &ServeOptions,
    eng: &mut crate::engine::Engine,
    live: &mut Vec<(String, FamState)>,
    job: &Job,
) -> Result<Event> {
    let mut state = match &job.session {
        Some(name) => match live.iter().position(|(n, _)| n == name) {
            Some(i) => live.remove(i).1,
            None => {
                let path = opts.sessions_dir.join(format!("{name}.famsnap"));
                if path.exists() {
                    FamState::load(&path, &rt.model, eng.backend(), Some(&opts.memory))?.0
                } else {
                    rt.new_state(eng, opts.memory, opts.n_ctx)?
                }
            }
        },
        None => rt.new_state(eng, opts.memory, opts.n_ctx)?,
    };
    let tokens = rt.encode_chat(&job.prompt, state.n_past() == 0);
    // `n` > 1 (never with a session): every choice but the last from its own fresh state
    for i in 1..job.n {
        let mut gen = job.gen.clone();
        gen.sampler.seed = job.gen.sampler.seed.wrapping_add(i as u64);
        let mut fresh = rt.new_state(eng, opts.memory, opts.n_ctx)?;
        let st = rt.generate(eng, &mut fresh, &tokens, &gen, |piece| {
            job.out
                .send(Event::Piece(piece.to_string(), vec![]))
                .is_ok()
        })?;
        let _ = job.out.send(Event::Choice {
            finish_reason: openai_finish(st.finish_reason),
            completion_tokens: st.generated_tokens,
            logprobs: st.logprobs,
        });
    }
    let stats = rt.generate_with_logprobs(eng, &mut state, &tokens, &job.gen, |piece, lps| {
        let lps = response::logprob_entries(rt, lps);
        job.out.send(Event::Piece(piece.to_string(), lps)).is_ok()
    });
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            // A failed feed may leave the state half-updated: do not keep it.
            return Err(e);
        }
    };
    let memory = json!({
        "session": job.session, "policy": state.settings.policy.as_str(),
        "tokens_streamed": state.n_past(), "state_bytes": state.state_bytes(),
        "settings": state.settings.to_json(),
    });
    if let Some(name) = &job.session {
        // Close the assistant turn so the next request continues a well-formed conversation.
        let end = rt
            .tokenizer
            .encode(rt.chat.end_of_assistant_turn(), false, true);
        state.feed(eng, &end, Logits::None)?;
        state.save(
            opts.sessions_dir.join(format!("{name}.famsnap")),
            &rt.model,
            Json::Null,
        )?;
        live.push((name.clone(), state));
        // Bounded memory: drop the least recently used live states (they are saved on disk).
        while live.len() > opts.max_states.max(1) {
            live.remove(0);
        }
    }
    Ok(Event::Done {
        finish_reason: openai_finish(stats.finish_reason),
        prompt_tokens: tokens.len(),
        completion_tokens: stats.generated_tokens,
        logprobs: stats.logprobs,
        memory,
    })
}
