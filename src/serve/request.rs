//! Requests: parsing, the OpenAI fields (honoured or refused by name), `response_format`.

use super::*;
use crate::chat::Message;
use crate::runtime::{GenerateOptions, Runtime};
use crate::sample::SamplerConfig;
use serde_json::{json, Value as Json};
use std::io::Read;
use std::sync::mpsc::{self, Receiver};

/// Read, parse and validate a completion request.
pub(super) fn parse(
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
    let tools = if chat { parse_tools(obj)? } else { None };
    let prompt = if chat {
        let msgs = obj
            .get("messages")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("messages", "an array of {role, content}"))?;
        if msgs.is_empty() {
            return Err(bad("messages", "a non-empty array"));
        }
        // `list`: as described to a template without tools (an earlier call shown as the JSON
        // the model wrote); `native`: as a template that renders tools takes it.
        let (mut list, mut native) = (Vec::new(), Vec::new());
        for m in msgs {
            let role = m["role"]
                .as_str()
                .filter(|r| matches!(*r, "system" | "user" | "assistant" | "tool"))
                .ok_or_else(|| bad("messages[].role", "system, user, assistant or tool"))?;
            let calls = match &m["tool_calls"] {
                Json::Array(calls) if role == "assistant" && !calls.is_empty() => Some(calls),
                _ => None,
            };
            let content = match (&m["content"], calls) {
                (Json::String(s), _) => s.clone(),
                (Json::Null, Some(_)) => String::new(),
                _ => return Err(bad("messages[].content", "a string")),
            };
            let mut msg = Message::new(role, &content);
            msg.tool_call_id = m["tool_call_id"].as_str().map(str::to_string);
            let mut shown = msg.clone();
            if let Some(calls) = calls {
                for c in calls {
                    if !c["function"]["name"].is_string() {
                        return Err(bad(
                            "messages[].tool_calls[]",
                            "{\"type\": \"function\", \"function\": {\"name\", \"arguments\"}}",
                        ));
                    }
                }
                msg.tool_calls = Some(Json::Array(calls.clone()));
                let text: Vec<String> = calls
                    .iter()
                    .map(|c| {
                        let f = &c["function"];
                        let args: Json = f["arguments"]
                            .as_str()
                            .and_then(|a| serde_json::from_str(a).ok())
                            .unwrap_or(Json::Null);
                        json!({"name": f["name"], "arguments": args}).to_string()
                    })
                    .collect();
                if shown.content.is_empty() {
                    shown.content = text.join("\n");
                }
            }
            native.push(msg);
            list.push(shown);
        }
        // A new conversation starts with the template's first-turn text; a session continues.
        let first = session.as_ref().is_none_or(|s| !session_exists(opts, s));
        // Tools in the model's own words when its template renders them (a new conversation:
        // a session's tools were described when it began).
        let native_text = match (&tools, first) {
            (Some(_), true) => rt
                .chat
                .render_with_tools(&native, obj.get("tools").unwrap_or(&Json::Null)),
            _ => None,
        };
        match native_text {
            Some(text) => text,
            None => {
                if let Some(t) = &tools {
                    tools_prompt(&mut list, t);
                }
                let mut text: String = if first {
                    rt.chat.render_opening(&list)
                } else {
                    list.iter().map(|m| rt.chat.render_turn(m, false)).collect()
                };
                text.push_str(rt.chat.generation_prompt());
                text
            }
        }
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
    // chat: `logprobs` true and `top_logprobs` 0-20; completions: `logprobs` 0-5 (the number
    // of alternatives)
    let logprobs = match obj.get("logprobs") {
        Some(Json::Bool(true)) if chat => {
            let n = num("top_logprobs")?.unwrap_or(0.0);
            if !(0.0..=20.0).contains(&n) || n.fract() != 0.0 {
                return Err(bad("top_logprobs", "an integer from 0 to 20"));
            }
            Some(n as usize)
        }
        None | Some(Json::Null) | Some(Json::Bool(false)) if chat => {
            if num("top_logprobs")?.is_some_and(|n| n != 0.0) {
                return Err(bad("logprobs", "true when `top_logprobs` is given"));
            }
            None
        }
        Some(_) if chat => return Err(bad("logprobs", "a boolean")),
        None | Some(Json::Null) => None,
        Some(v) => match v.as_f64() {
            Some(n) if (0.0..=5.0).contains(&n) && n.fract() == 0.0 => Some(n as usize),
            _ => return Err(bad("logprobs", "an integer from 0 to 5 (completions)")),
        },
    };
    let penalty = |k: &str| -> std::result::Result<f32, HttpError> {
        match num(k)? {
            None => Ok(0.0),
            Some(v) if (-2.0..=2.0).contains(&v) => Ok(v as f32),
            Some(_) => Err(bad(k, "a number from -2 to 2")),
        }
    };
    let (presence_penalty, frequency_penalty) =
        (penalty("presence_penalty")?, penalty("frequency_penalty")?);
    // llama-server's extension: the CLI's repetition penalty over the last 64 tokens, prompt
    // included (1.0 = off; default 1.1, which keeps the 135M model out of digit loops in
    // sampled JSON). With 1.0, temperature 0 is greedy on the logits `logprobs` reports.
    let repeat_penalty = match num("repeat_penalty")? {
        None => defaults.repeat_penalty,
        Some(v) if v > 0.0 && v.is_finite() => v as f32,
        Some(_) => return Err(bad("repeat_penalty", "a number above 0 (1 = off)")),
    };
    let logit_bias = match obj.get("logit_bias") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(o)) => {
            let want = || {
                bad(
                    "logit_bias",
                    &format!(
                        "an object of token ids (0 to {}) to numbers from -100 to 100",
                        rt.tokenizer.n_vocab().saturating_sub(1)
                    ),
                )
            };
            let mut v = Vec::new();
            for (id, b) in o {
                let id: u32 = id.parse().map_err(|_| want())?;
                let b = b.as_f64().filter(|b| (-100.0..=100.0).contains(b));
                match b {
                    Some(b) if (id as usize) < rt.tokenizer.n_vocab() => v.push((id, b as f32)),
                    _ => return Err(want()),
                }
            }
            v
        }
        Some(_) => return Err(bad("logit_bias", "an object of token ids to numbers")),
    };
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
    let mut structure = response_format(obj.get("response_format"))?;
    if let Some(t) = &tools {
        if structure.is_some() {
            return Err(HttpError(
                400,
                "`response_format` and `tools` together".into(),
            ));
        }
        structure = t.structure();
    }
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
            presence_penalty,
            frequency_penalty,
            repeat_penalty,
            logit_bias,
            ..defaults
        },
        stop,
        logprobs,
        structure,
    };
    let tools = tools.map(|t| t.names()).unwrap_or_default();
    let (tx, rx) = mpsc::sync_channel(64);
    Ok((
        Job {
            prompt,
            session,
            gen,
            n,
            tools,
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
pub(super) struct Streaming {
    /// As server-sent events.
    pub(super) stream: bool,
    /// `stream_options.include_usage`: a last event with the token counts.
    pub(super) include_usage: bool,
}

/// Request fields that are accepted: those honoured (`honoured`), and those of features not
/// implemented, accepted only with the value that asks for nothing (`inert`). Any other field,
/// or a non-inert value, is refused with a 400 naming it: nothing a client asks for is silently
/// ignored.
pub(super) fn check_fields(
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
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "logit_bias",
        "logprobs",
    ];
    let input = if chat { "messages" } else { "prompt" };
    for (k, v) in obj {
        let chat_only = chat && k == "top_logprobs";
        if HONOURED.contains(&k.as_str()) || k == input || chat_only {
            continue;
        }
        let inert = match k.as_str() {
            "best_of" => v.is_null() || v.as_f64() == Some(1.0),
            "top_logprobs" => v.is_null() || v.as_f64() == Some(0.0),
            "functions" => v.is_null() || v.as_array().is_some_and(|a| a.is_empty()),
            "function_call" => v.is_null() || v == "none",
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
pub(super) fn response_format(
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

pub(super) fn session_exists(opts: &ServeOptions, name: &str) -> bool {
    opts.sessions_dir.join(format!("{name}.famsnap")).exists()
}

/// The request's `tools` and `tool_choice`: what the reply may call and whether it must.
pub(super) struct Tools {
    /// (name, description, parameters schema), in the request's order.
    functions: Vec<(String, String, Json)>,
    /// `required`, or one named function: the reply is a call, by constrained decoding.
    forced: Option<Option<String>>,
}

impl Tools {
    pub(super) fn names(&self) -> Vec<String> {
        self.functions.iter().map(|f| f.0.clone()).collect()
    }

    /// The schema of a call `{"name": ..., "arguments": {...}}` when the reply must be one.
    pub(super) fn structure(&self) -> Option<crate::grammar::Structure> {
        let forced = self.forced.as_ref()?;
        let call = |(name, _, params): &(String, String, Json)| {
            json!({"type": "object", "properties": {"name": {"const": name}, "arguments": params},
                   "required": ["name", "arguments"], "additionalProperties": false})
        };
        let schema = match forced {
            Some(name) => call(self.functions.iter().find(|f| &f.0 == name)?),
            None => json!({"anyOf": self.functions.iter().map(call).collect::<Vec<_>>()}),
        };
        Some(crate::grammar::Structure::JsonSchema(schema))
    }
}

/// `tools` (functions with a name, an optional description and a JSON-schema `parameters`)
/// and `tool_choice` (`none`, `auto`, `required`, or one function by name). `None`: no tools
/// in play (absent, empty, or `tool_choice: none`).
fn parse_tools(
    obj: &serde_json::Map<String, Json>,
) -> std::result::Result<Option<Tools>, HttpError> {
    let bad = |k: &str, want: &str| HttpError(400, format!("`{k}` must be {want}"));
    let choice = obj.get("tool_choice").filter(|c| !c.is_null());
    let no_tools = || match choice {
        None => Ok(None),
        Some(c) if c == "none" || c == "auto" => Ok(None),
        Some(c) => Err(HttpError(
            400,
            format!("`tool_choice` = {c} without `tools`"),
        )),
    };
    let list = match obj.get("tools") {
        None | Some(Json::Null) => return no_tools(),
        Some(Json::Array(a)) if a.is_empty() => return no_tools(),
        Some(Json::Array(a)) => a,
        Some(_) => return Err(bad("tools", "an array of functions")),
    };
    let mut functions = Vec::new();
    for t in list {
        let f = &t["function"];
        let name = f["name"]
            .as_str()
            .filter(|n| t["type"] == "function" && !n.is_empty())
            .ok_or_else(|| {
                bad(
                    "tools[]",
                    "{\"type\": \"function\", \"function\": {\"name\", ...}}",
                )
            })?;
        let params = match &f["parameters"] {
            Json::Null => json!({"type": "object"}),
            p @ Json::Object(_) => p.clone(),
            _ => return Err(bad("tools[].function.parameters", "a JSON schema object")),
        };
        let desc = f["description"].as_str().unwrap_or("").to_string();
        functions.push((name.to_string(), desc, params));
    }
    let forced = match obj.get("tool_choice") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s == "auto" => None,
        Some(Json::String(s)) if s == "none" => return Ok(None),
        Some(Json::String(s)) if s == "required" => Some(None),
        Some(v) => {
            let name = v["function"]["name"]
                .as_str()
                .filter(|_| v["type"] == "function")
                .ok_or_else(|| bad("tool_choice", "none, auto, required or {\"type\": \"function\", \"function\": {\"name\"}}"))?;
            if !functions.iter().any(|f| f.0 == name) {
                return Err(HttpError(
                    400,
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                ));
            }
            Some(Some(name.to_string()))
        }
    };
    Ok(Some(Tools { functions, forced }))
}

/// Tell the model about the tools: a system message (added, or appended to the first one) that
/// lists them and the form of a call. Every chat template renders a system message; templates'
/// own tool syntaxes differ, and a call is parsed (or, when required, constrained) in this form.
fn tools_prompt(list: &mut Vec<Message>, t: &Tools) {
    let specs: Vec<Json> = t
        .functions
        .iter()
        .map(|(n, d, p)| json!({"name": n, "description": d, "parameters": p}))
        .collect();
    let text = format!(
        "You can call these functions:\n{}\nTo call one, reply with only a JSON object: \
         {{\"name\": <function name>, \"arguments\": {{...}}}}.",
        serde_json::to_string(&specs).unwrap_or_default()
    );
    match list.first_mut() {
        Some(m) if m.role == "system" => m.content = format!("{}\n\n{text}", m.content),
        _ => list.insert(0, Message::new("system", &text)),
    }
}
