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

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::runtime::{GenerateOptions, Runtime, TokenLogprob};
use crate::sample::SamplerConfig;
use crate::settings::FamSettings;
use crate::state::{FamState, Logits};
use serde_json::{json, Value as Json};
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

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
fn authorized(req: &tiny_http::Request, key: &str) -> bool {
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
struct Job {
    /// Text to feed (already rendered with the chat template).
    prompt: String,
    session: Option<String>,
    gen: GenerateOptions,
    /// Choices to generate (`n`), each from a fresh state with seed + index.
    n: usize,
    /// Pieces of output, then one final event.
    out: SyncSender<Event>,
}

enum Event {
    Piece(String),
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
    },
    Failed(String),
}

/// Most choices (`n`) one request may ask for: each is a full generation on the one worker.
const MAX_CHOICES: usize = 8;

/// An HTTP error: status and message.
struct HttpError(u16, String);

fn error_body(status: u16, msg: &str) -> String {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json!({"error": {"message": msg, "type": kind, "code": status}}).to_string()
}

fn json_response(status: u16, body: String) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
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

fn handle(rt: &Runtime, opts: &ServeOptions, jobs: &SyncSender<Job>, mut req: tiny_http::Request) {
    let method = req.method().clone();
    let url = req.url().split('?').next().unwrap_or("").to_string();
    if let Some(key) = &opts.api_key {
        if url != "/health" && !authorized(&req, key) {
            let _ = drain(&mut req);
            let www = tiny_http::Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..])
                .expect("static header");
            let msg = "missing or wrong API key (send Authorization: Bearer KEY)";
            let _ = req.respond(json_response(401, error_body(401, msg)).with_header(www));
            return;
        }
    }
    let r = match (method, url.as_str()) {
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

fn drain(req: &mut tiny_http::Request) -> std::io::Result<()> {
    std::io::copy(&mut req.as_reader().take(1 << 20), &mut std::io::sink()).map(|_| ())
}

/// Read, parse and validate a completion request.
fn parse(
    rt: &Runtime,
    opts: &ServeOptions,
    req: &mut tiny_http::Request,
    chat: bool,
) -> std::result::Result<(Job, Receiver<Event>, Streaming), HttpError> {
    if req.body_length().is_some_and(|n| n > opts.max_body) {
        return Err(HttpError(
            413,
            format!("request body over {} bytes", opts.max_body),
        ));
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(opts.max_body as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| HttpError(400, format!("cannot read the body: {e}")))?;
    if body.len() > opts.max_body {
        return Err(HttpError(
            413,
            format!("request body over {} bytes", opts.max_body),
        ));
    }
    let j: Json = serde_json::from_slice(&body)
        .map_err(|e| HttpError(400, format!("malformed JSON: {e}")))?;
    let obj = j
        .as_object()
        .ok_or_else(|| HttpError(400, "the body must be a JSON object".into()))?;
    let bad = |k: &str, want: &str| HttpError(400, format!("`{k}` must be {want}"));
    check_fields(obj, chat)?;
    let num = |k: &str| -> std::result::Result<Option<f64>, HttpError> {
        match obj.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(k, "a number")),
        }
    };
    let string = |k: &str| -> std::result::Result<Option<String>, HttpError> {
        match obj.get(k) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(k, "a string")),
        }
    };
    let stream = match obj.get("stream") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "a boolean")),
    };
    let max_tokens = num("max_tokens")?
        .or(num("max_completion_tokens")?)
        .unwrap_or(256.0);
    if !(1.0..=opts.max_new_tokens as f64).contains(&max_tokens) || max_tokens.fract() != 0.0 {
        return Err(HttpError(
            400,
            format!(
                "`max_tokens` must be an integer from 1 to {}",
                opts.max_new_tokens
            ),
        ));
    }
    let temperature = num("temperature")?.unwrap_or(0.7);
    let top_p = num("top_p")?.unwrap_or(0.95);
    let defaults = SamplerConfig::default();
    let top_k = num("top_k")?.map_or(defaults.top_k as f64, |k| k.max(0.0));
    let min_p = num("min_p")?.unwrap_or(defaults.min_p as f64);
    if top_k.fract() != 0.0 || !(0.0..=1.0).contains(&min_p) {
        return Err(HttpError(
            400,
            "`top_k` must be a non-negative integer and `min_p` in [0, 1]".into(),
        ));
    }
    let include_usage = match obj.get("stream_options") {
        None | Some(Json::Null) => false,
        Some(Json::Object(o)) => match o.get("include_usage") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(bad("stream_options.include_usage", "a boolean")),
        },
        Some(_) => return Err(bad("stream_options", "an object")),
    };
    if !(0.0..=2.0).contains(&temperature) || !(0.0..=1.0).contains(&top_p) {
        return Err(HttpError(
            400,
            "`temperature` must be in [0, 2] and `top_p` in [0, 1]".into(),
        ));
    }
    let stop = match obj.get("stop") {
        None | Some(Json::Null) => vec![],
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("stop", "a string or an array of strings"))?,
        Some(_) => return Err(bad("stop", "a string or an array of strings")),
    };
    let session = string("session")?.or(string("user")?);
    if let Some(s) = &session {
        if s.is_empty()
            || s.len() > 100
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("session", "1-100 letters, digits, - or _"));
        }
    }
    let prompt = if chat {
        let msgs = obj
            .get("messages")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("messages", "an array of {role, content}"))?;
        if msgs.is_empty() {
            return Err(bad("messages", "a non-empty array"));
        }
        let mut list = Vec::new();
        for m in msgs {
            let role = m["role"]
                .as_str()
                .filter(|r| matches!(*r, "system" | "user" | "assistant"))
                .ok_or_else(|| bad("messages[].role", "system, user or assistant"))?;
            let content = m["content"]
                .as_str()
                .ok_or_else(|| bad("messages[].content", "a string"))?;
            list.push(Message::new(role, content));
        }
        // A new conversation starts with the template's first-turn text; a session continues.
        let first = session.as_ref().is_none_or(|s| !session_exists(opts, s));
        let mut text: String = if first {
            rt.chat.render_opening(&list)
        } else {
            list.iter().map(|m| rt.chat.render_turn(m, false)).collect()
        };
        text.push_str(rt.chat.generation_prompt());
        text
    } else {
        string("prompt")?.ok_or_else(|| bad("prompt", "a string"))?
    };
    let n_prompt = rt.tokenizer.encode(&prompt, false, true).len();
    if n_prompt > opts.max_prompt_tokens {
        return Err(HttpError(
            413,
            format!(
                "prompt of {n_prompt} tokens exceeds the limit of {}",
                opts.max_prompt_tokens
            ),
        ));
    }
    // chat logprobs (`check_fields` refuses them for completions)
    let logprobs = match obj.get("logprobs") {
        Some(Json::Bool(true)) if chat => {
            let n = num("top_logprobs")?.unwrap_or(0.0);
            if !(0.0..=20.0).contains(&n) || n.fract() != 0.0 {
                return Err(bad("top_logprobs", "an integer from 0 to 20"));
            }
            Some(n as usize)
        }
        _ if chat && num("top_logprobs")?.is_some_and(|n| n != 0.0) => {
            return Err(bad("logprobs", "true when `top_logprobs` is given"))
        }
        _ => None,
    };
    if logprobs.is_some() && stream {
        return Err(HttpError(
            400,
            "`logprobs` with `stream` is not supported yet (ask without streaming)".into(),
        ));
    }
    let n = num("n")?.unwrap_or(1.0);
    if !(1.0..=MAX_CHOICES as f64).contains(&n) || n.fract() != 0.0 {
        return Err(bad("n", &format!("an integer from 1 to {MAX_CHOICES}")));
    }
    let n = n as usize;
    if n > 1 && (stream || session.is_some()) {
        return Err(HttpError(
            400,
            "`n` > 1 is not supported with `stream` or a session (one conversation, one reply)"
                .into(),
        ));
    }
    let seed = num("seed")?.map_or(0x5EED, |s| s as u64);
    let structure = response_format(obj.get("response_format"))?;
    if let Some(s) = &structure {
        // compile the schema now: a bad one is the client's 400, not the worker's failure
        rt.grammar_env()
            .and_then(|g| g.constraint(s))
            .map_err(|e| HttpError(400, format!("`response_format`: {e}")))?;
    }
    let gen = GenerateOptions {
        max_tokens: max_tokens as usize,
        sampler: SamplerConfig {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k: top_k as usize,
            min_p: min_p as f32,
            seed,
            ..defaults
        },
        stop,
        logprobs,
        structure,
    };
    let (tx, rx) = mpsc::sync_channel(64);
    Ok((
        Job {
            prompt,
            session,
            gen,
            n,
            out: tx,
        },
        rx,
        Streaming {
            stream,
            include_usage,
        },
    ))
}

/// How the reply goes out.
struct Streaming {
    /// As server-sent events.
    stream: bool,
    /// `stream_options.include_usage`: a last event with the token counts.
    include_usage: bool,
}

/// Request fields that are accepted: those honoured (`honoured`), and those of features not
/// implemented, accepted only with the value that asks for nothing (`inert`). Any other field,
/// or a non-inert value, is refused with a 400 naming it: nothing a client asks for is silently
/// ignored.
fn check_fields(
    obj: &serde_json::Map<String, Json>,
    chat: bool,
) -> std::result::Result<(), HttpError> {
    const HONOURED: &[&str] = &[
        "model",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "session",
        "user",
        "n",
        "response_format",
    ];
    let input = if chat { "messages" } else { "prompt" };
    for (k, v) in obj {
        let chat_only = chat && matches!(k.as_str(), "logprobs" | "top_logprobs");
        if HONOURED.contains(&k.as_str()) || k == input || chat_only {
            continue;
        }
        let inert = match k.as_str() {
            "best_of" => v.is_null() || v.as_f64() == Some(1.0),
            "presence_penalty" | "frequency_penalty" => v.is_null() || v.as_f64() == Some(0.0),
            "logprobs" => v.is_null() || *v == Json::Bool(false) || v.as_f64() == Some(0.0),
            "top_logprobs" => v.is_null() || v.as_f64() == Some(0.0),
            "logit_bias" => v.is_null() || v.as_object().is_some_and(|o| o.is_empty()),
            "tools" | "functions" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
            "tool_choice" | "function_call" => v.is_null() || v == "none",
            "echo" => v.is_null() || *v == Json::Bool(false),
            _ => {
                return Err(HttpError(
                    400,
                    format!("unknown field `{k}` (famstream does not implement it)"),
                ))
            }
        };
        if !inert {
            return Err(HttpError(
                400,
                format!("`{k}` = {v} is not supported by famstream yet"),
            ));
        }
    }
    Ok(())
}

/// OpenAI's `response_format`: `text` (or absent), `json_object`, or `json_schema` with its
/// `json_schema.schema`; anything else is refused, naming it.
fn response_format(
    v: Option<&Json>,
) -> std::result::Result<Option<crate::grammar::Structure>, HttpError> {
    use crate::grammar::Structure;
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Structure::JsonObject)),
        Some("json_schema") => match &v["json_schema"]["schema"] {
            s @ Json::Object(_) => Ok(Some(Structure::JsonSchema(s.clone()))),
            _ => Err(HttpError(
                400,
                "`response_format.json_schema.schema` must be a JSON schema object".into(),
            )),
        },
        _ => Err(HttpError(
            400,
            format!("`response_format` = {v}: type must be text, json_object or json_schema"),
        )),
    }
}

fn session_exists(opts: &ServeOptions, name: &str) -> bool {
    opts.sessions_dir.join(format!("{name}.famsnap")).exists()
}

fn completion(
    rt: &Runtime,
    opts: &ServeOptions,
    jobs: &SyncSender<Job>,
    mut req: tiny_http::Request,
    chat: bool,
) {
    let (
        job,
        rx,
        Streaming {
            stream,
            include_usage,
        },
    ) = match parse(rt, opts, &mut req, chat) {
        Ok(x) => x,
        Err(HttpError(s, m)) => {
            let _ = req.respond(json_response(s, error_body(s, &m)));
            return;
        }
    };
    let want_logprobs = job.gen.logprobs.is_some();
    if let Err(e) = jobs.try_send(job) {
        let msg = match e {
            mpsc::TrySendError::Full(_) => "the server is busy; retry later",
            mpsc::TrySendError::Disconnected(_) => "the compute worker has stopped",
        };
        let _ = req.respond(json_response(503, error_body(503, msg)));
        return;
    }
    let id = format!(
        "cmpl-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let model = opts.model_name.clone();
    if stream {
        let sse = Sse {
            rx,
            buf: Vec::new(),
            pos: 0,
            done: false,
            include_usage,
            chat,
            id,
            created,
            model,
        };
        let h = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/event-stream"[..])
            .expect("static header");
        let resp = tiny_http::Response::new(tiny_http::StatusCode(200), vec![h], sse, None, None);
        // A failed write (client gone) drops `sse` and its receiver: the worker cancels.
        let _ = req.respond(resp);
        return;
    }
    // Each choice's text, finish reason and logprobs; the completion tokens of all of them.
    let (mut text, mut choices, mut completion_total) = (String::new(), Vec::new(), 0);
    let mut end_choice = |text: &mut String, finish: &str, tokens: usize, lps: &[TokenLogprob]| {
        let content = std::mem::take(text);
        let choice = if chat {
            let lp = want_logprobs.then(|| logprobs_json(rt, lps));
            json!({"index": choices.len(), "message": {"role": "assistant", "content": content}, "logprobs": lp, "finish_reason": finish})
        } else {
            json!({"index": choices.len(), "text": content, "finish_reason": finish})
        };
        choices.push(choice);
        completion_total += tokens;
        completion_total
    };
    let resp = loop {
        match rx.recv() {
            Ok(Event::Piece(p)) => text.push_str(&p),
            Ok(Event::Choice {
                finish_reason,
                completion_tokens,
                logprobs,
            }) => {
                end_choice(&mut text, finish_reason, completion_tokens, &logprobs);
            }
            Ok(Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                logprobs,
            }) => {
                let total = end_choice(&mut text, finish_reason, completion_tokens, &logprobs);
                let usage = usage_json(prompt_tokens, total);
                let object = if chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                break json_response(200, json!({"id": id, "object": object, "created": created, "model": model, "choices": choices, "usage": usage}).to_string());
            }
            Ok(Event::Failed(m)) => break json_response(400, error_body(400, &m)),
            Err(_) => break json_response(500, error_body(500, "the compute worker stopped")),
        }
    };
    let _ = req.respond(resp);
}

/// OpenAI's `usage` object.
fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Json {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// OpenAI's chat `logprobs` object: per token its text, log-probability, UTF-8 bytes and the
/// most likely alternatives.
fn logprobs_json(rt: &Runtime, lps: &[TokenLogprob]) -> Json {
    let entry = |t: u32, lp: f32| {
        let bytes = rt.tokenizer.token_bytes(t);
        json!({"token": String::from_utf8_lossy(bytes), "logprob": lp, "bytes": bytes})
    };
    let content: Vec<Json> = lps
        .iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Server-sent events, produced lazily from the worker's channel.
struct Sse {
    rx: Receiver<Event>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    include_usage: bool,
    chat: bool,
    id: String,
    created: u64,
    model: String,
}

impl Sse {
    /// One event carrying `choices` (and `usage`, for the last event of include_usage).
    fn event(&self, choices: Json, usage: Option<Json>) -> String {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut j = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some(u) = usage {
            j["usage"] = u;
        }
        format!("data: {j}\n\n")
    }

    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> String {
        let choice = if self.chat {
            json!({"index": 0, "delta": text.map_or(json!({}), |t| json!({"content": t})), "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish})
        };
        self.event(json!([choice]), None)
    }
}

impl Read for Sse {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let next = match self.rx.recv() {
                Ok(Event::Piece(p)) => self.chunk(Some(&p), None),
                // `n` > 1 is refused with `stream`, so a stream has one choice
                Ok(Event::Choice { .. }) => String::new(),
                Ok(Event::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    ..
                }) => {
                    self.done = true;
                    let usage = if self.include_usage {
                        let u = usage_json(prompt_tokens, completion_tokens);
                        self.event(json!([]), Some(u))
                    } else {
                        String::new()
                    };
                    format!(
                        "{}{usage}data: [DONE]\n\n",
                        self.chunk(None, Some(finish_reason))
                    )
                }
                Ok(Event::Failed(m)) => {
                    self.done = true;
                    format!("data: {}\n\n", error_body(400, &m))
                }
                Err(_) => {
                    self.done = true;
                    String::new()
                }
            };
            self.buf = next.into_bytes();
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// OpenAI's names: "stop" (an end token or a stop string) or "length".
fn openai_finish(ours: &str) -> &'static str {
    if ours == "length" {
        "length"
    } else {
        "stop"
    }
}

/// The compute worker: owns the engine and the live states.
fn worker(rt: Arc<Runtime>, opts: ServeOptions, jobs: Receiver<Job>) {
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

fn run_job(
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
            job.out.send(Event::Piece(piece.to_string())).is_ok()
        })?;
        let _ = job.out.send(Event::Choice {
            finish_reason: openai_finish(st.finish_reason),
            completion_tokens: st.generated_tokens,
            logprobs: st.logprobs,
        });
    }
    let stats = rt.generate(eng, &mut state, &tokens, &job.gen, |piece| {
        job.out.send(Event::Piece(piece.to_string())).is_ok()
    });
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            // A failed feed may leave the state half-updated: do not keep it.
            return Err(e);
        }
    };
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
    })
}
