//! Replies: running a completion through the worker, JSON bodies and server-sent events.

use super::*;
use crate::runtime::{Runtime, TokenLogprob};
use serde_json::{json, Value as Json};
use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender};

pub(super) fn completion(
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
    let tools = job.tools.clone();
    let sse_tools = tools.clone();
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
            tools: sse_tools,
            held: String::new(),
            held_lp: Vec::new(),
            plain: false,
            offset: 0,
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
        let entries = logprob_entries(rt, lps);
        let choice = if chat {
            let lp = want_logprobs.then(|| json!({ "content": entries }));
            let i = choices.len();
            match tool_calls(&content, &tools) {
                Some(calls) => {
                    let calls: Vec<Json> = calls
                        .into_iter()
                        .enumerate()
                        .map(|(j, f)| json!({"id": call_id(created, 8 * i + j), "type": "function", "function": f}))
                        .collect();
                    json!({"index": i, "message": {"role": "assistant", "content": null, "tool_calls": calls}, "logprobs": lp, "finish_reason": "tool_calls"})
                }
                None => {
                    json!({"index": i, "message": {"role": "assistant", "content": content}, "logprobs": lp, "finish_reason": finish})
                }
            }
        } else {
            let lp = want_logprobs.then(|| legacy_logprobs(&entries, 0));
            json!({"index": choices.len(), "text": content, "logprobs": lp, "finish_reason": finish})
        };
        choices.push(choice);
        completion_total += tokens;
        completion_total
    };
    let resp = loop {
        match rx.recv() {
            Ok(Event::Piece(p, _)) => text.push_str(&p),
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
                memory,
            }) => {
                let total = end_choice(&mut text, finish_reason, completion_tokens, &logprobs);
                let usage = usage_json(prompt_tokens, total);
                let object = if chat {
                    "chat.completion"
                } else {
                    "text_completion"
                };
                break json_response(200, json!({"id": id, "object": object, "created": created, "model": model, "choices": choices, "usage": usage, "famstream": memory}).to_string());
            }
            Ok(Event::Failed(m)) => break json_response(400, error_body(400, &m)),
            Err(_) => break json_response(500, error_body(500, "the compute worker stopped")),
        }
    };
    let _ = req.respond(resp);
}

/// OpenAI's `usage` object.
pub(super) fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Json {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// The entries of OpenAI's chat `logprobs.content`: per token its text, log-probability, UTF-8
/// bytes and the most likely alternatives.
pub(super) fn logprob_entries(rt: &Runtime, lps: &[TokenLogprob]) -> Vec<Json> {
    let entry = |t: u32, lp: f32| {
        let bytes = rt.tokenizer.token_bytes(t);
        json!({"token": String::from_utf8_lossy(bytes), "logprob": lp, "bytes": bytes})
    };
    lps.iter()
        .map(|l| {
            let mut e = entry(l.token, l.logprob);
            e["top_logprobs"] = l.top.iter().map(|&(t, lp)| entry(t, lp)).collect();
            e
        })
        .collect()
}

/// The completions endpoint's (legacy) `logprobs` object from chat entries: `tokens`,
/// `token_logprobs`, `top_logprobs` (token text to log-probability) and `text_offset` (the
/// token's start in the completion text, in characters, from `offset`).
pub(super) fn legacy_logprobs(entries: &[Json], mut offset: usize) -> Json {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    for e in entries {
        let t = e["token"].as_str().unwrap_or("");
        tokens.push(json!(t));
        lps.push(e["logprob"].clone());
        let mut top = serde_json::Map::new();
        for a in e["top_logprobs"].as_array().into_iter().flatten() {
            let k = a["token"].as_str().unwrap_or("").to_string();
            top.entry(k).or_insert(a["logprob"].clone());
        }
        tops.push(Json::Object(top));
        offsets.push(json!(offset));
        offset += t.chars().count();
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// Server-sent events, produced lazily from the worker's channel.
pub(super) struct Sse {
    pub(super) rx: Receiver<Event>,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) done: bool,
    pub(super) include_usage: bool,
    pub(super) chat: bool,
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    /// Tools the reply may call: while the reply so far could be a call, it is held back
    /// (`held`, with its log-probabilities), and sent as `tool_calls` if it is one at the end.
    pub(super) tools: Vec<String>,
    pub(super) held: String,
    pub(super) held_lp: Vec<Json>,
    /// The reply is plain text (not a call): send as it comes.
    pub(super) plain: bool,
    /// Characters sent so far (the completions' `text_offset`).
    pub(super) offset: usize,
}

impl Sse {
    /// One event carrying `choices` and the `extra` top-level fields (`usage` for the last
    /// event of include_usage, `famstream` for the last chunk).
    fn event(&self, choices: Json, extra: Option<(&str, Json)>) -> String {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut j = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if let Some((k, v)) = extra {
            j[k] = v;
        }
        format!("data: {j}\n\n")
    }

    fn chunk(
        &self,
        text: Option<&str>,
        finish: Option<&str>,
        extra: Option<(&str, Json)>,
    ) -> String {
        self.chunk_lp(text, &[], finish, extra)
    }

    /// A chunk of text with its tokens' log-probabilities (none: no `logprobs` field).
    fn chunk_lp(
        &self,
        text: Option<&str>,
        lps: &[Json],
        finish: Option<&str>,
        extra: Option<(&str, Json)>,
    ) -> String {
        let mut choice = if self.chat {
            json!({"index": 0, "delta": text.map_or(json!({}), |t| json!({"content": t})), "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish})
        };
        if !lps.is_empty() {
            choice["logprobs"] = if self.chat {
                json!({ "content": lps })
            } else {
                legacy_logprobs(lps, self.offset)
            };
        }
        self.event(json!([choice]), extra)
    }

    /// A piece of the reply: sent, or held back while it could still become a tool call.
    fn piece(&mut self, p: &str, lps: Vec<Json>) -> String {
        if self.plain || !self.chat || self.tools.is_empty() {
            let c = self.chunk_lp(Some(p), &lps, None, None);
            self.offset += p.chars().count();
            return c;
        }
        self.held.push_str(p);
        self.held_lp.extend(lps);
        if could_be_call(&self.held) {
            return String::new();
        }
        self.plain = true;
        self.flush()
    }

    /// Send what was held back as text.
    fn flush(&mut self) -> String {
        if self.held.is_empty() {
            return String::new();
        }
        let held = std::mem::take(&mut self.held);
        let lps = std::mem::take(&mut self.held_lp);
        let c = self.chunk_lp(Some(&held), &lps, None, None);
        self.offset += held.chars().count();
        c
    }

    /// The end of a reply that held back a call: the call as `tool_calls` deltas (name and id
    /// first, then the arguments, as OpenAI streams them), or the held text after all.
    fn end_held(&mut self, finish: &'static str) -> (String, &'static str) {
        let Some(calls) = tool_calls(&self.held, &self.tools) else {
            return (self.flush(), finish);
        };
        let lps = std::mem::take(&mut self.held_lp);
        self.held.clear();
        let mut out = String::new();
        for (j, f) in calls.iter().enumerate() {
            let id = call_id(self.created, j);
            let head = json!({"index": j, "id": id, "type": "function", "function": {"name": f["name"], "arguments": ""}});
            let mut delta = json!({"tool_calls": [head]});
            if j == 0 {
                delta["role"] = json!("assistant");
                delta["content"] = Json::Null;
            }
            let mut first = json!({"index": 0, "delta": delta, "finish_reason": null});
            if j == 0 && !lps.is_empty() {
                first["logprobs"] = json!({ "content": lps });
            }
            out.push_str(&self.event(json!([first]), None));
            let args = json!({"index": 0, "delta": {"tool_calls": [{"index": j, "function": {"arguments": f["arguments"]}}]}, "finish_reason": null});
            out.push_str(&self.event(json!([args]), None));
        }
        (out, "tool_calls")
    }
}

/// The id of a reply's `j`-th call: 9 letters and digits (Mistral's template requires that),
/// from the reply's creation time so that calls of one conversation differ.
fn call_id(created: u64, j: usize) -> String {
    format!("call{:05x}", (created as usize + j) & 0xfffff)
}

/// Whether a reply so far may still turn out to be a tool call in one of the forms
/// [`tool_calls`] reads (JSON, `<tool_call>` tags, Mistral's `[TOOL_CALLS]`).
fn could_be_call(text: &str) -> bool {
    let t = text.trim_start();
    let array = t.strip_prefix('[').map(str::trim_start);
    t.is_empty()
        || t.starts_with('{')
        || array.is_some_and(|a| a.is_empty() || a.starts_with('{'))
        || ["<tool_call>", "[TOOL_CALLS]"]
            .iter()
            .any(|tag| t.starts_with(tag) || tag.starts_with(t))
}

impl Read for Sse {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let next = match self.rx.recv() {
                Ok(Event::Piece(p, lps)) => self.piece(&p, lps),
                // `n` > 1 is refused with `stream`, so a stream has one choice
                Ok(Event::Choice { .. }) => String::new(),
                Ok(Event::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    memory,
                    ..
                }) => {
                    self.done = true;
                    let (held, finish_reason) = self.end_held(finish_reason);
                    let usage = if self.include_usage {
                        let u = usage_json(prompt_tokens, completion_tokens);
                        self.event(json!([]), Some(("usage", u)))
                    } else {
                        String::new()
                    };
                    // the last chunk also says what the stream now holds (`famstream`)
                    let last = self.chunk(None, Some(finish_reason), Some(("famstream", memory)));
                    format!("{held}{last}{usage}data: [DONE]\n\n")
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
pub(super) fn openai_finish(ours: &str) -> &'static str {
    if ours == "length" {
        "length"
    } else {
        "stop"
    }
}

/// A reply that is a call (or calls) of `tools`, in the forms models write them: a JSON object
/// `{"name": ..., "arguments": {...}}` (`"parameters"` in Llama 3's words), an array of them,
/// one or more `<tool_call>...</tool_call>` blocks (Qwen, Hermes), or `[TOOL_CALLS]` and an
/// array (Mistral). Each becomes OpenAI's `function` object with the arguments as JSON text.
/// `None` when the reply is anything else, or names a function not in `tools`.
pub(super) fn tool_calls(reply: &str, tools: &[String]) -> Option<Vec<Json>> {
    if tools.is_empty() {
        return None;
    }
    let t = reply.trim();
    let t = t.strip_prefix("[TOOL_CALLS]").unwrap_or(t).trim();
    let mut values = Vec::new();
    if t.starts_with("<tool_call>") {
        let mut rest = t;
        while !rest.is_empty() {
            let body = rest.strip_prefix("<tool_call>")?;
            let end = body.find("</tool_call>")?;
            values.push(serde_json::from_str::<Json>(body[..end].trim()).ok()?);
            rest = body[end + "</tool_call>".len()..].trim_start();
        }
    } else {
        match serde_json::from_str::<Json>(t).ok()? {
            Json::Array(a) if !a.is_empty() => values = a,
            v @ Json::Object(_) => values.push(v),
            _ => return None,
        }
    }
    values
        .iter()
        .map(|v| {
            let name = v["name"]
                .as_str()
                .filter(|n| tools.iter().any(|t| t == n))?;
            let args = match (&v["arguments"], &v["parameters"]) {
                (a @ Json::Object(_), _) | (Json::Null, a @ Json::Object(_)) => a.to_string(),
                (Json::String(s), _)
                    if serde_json::from_str::<Json>(s).is_ok_and(|a| a.is_object()) =>
                {
                    s.clone()
                }
                _ => return None,
            };
            Some(json!({"name": name, "arguments": args}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "add".into()]
    }

    #[test]
    fn calls_are_read_in_every_form_models_write() {
        let one = |r: &str| tool_calls(r, &names()).map(|c| (c.len(), c[0].clone()));
        let want = json!({"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"});
        for reply in [
            r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#,
            r#" {"name": "get_weather", "parameters": {"city": "Oslo"}} "#,
            r#"{"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
            r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]"#,
        ] {
            assert_eq!(one(reply), Some((1, want.clone())), "{reply}");
        }
        let two = "<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1}}</tool_call>\n\
                   <tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>";
        let c = tool_calls(two, &names()).unwrap();
        assert_eq!(
            (c.len(), &c[0]["name"], &c[1]["name"]),
            (2, &json!("add"), &json!("get_weather"))
        );
        for not_a_call in [
            "The weather is fine.",
            r#"{"name": "unknown", "arguments": {}}"#,
            r#"{"name": "add", "arguments": 3}"#,
            "<tool_call>{\"name\": \"add\", \"arguments\": {}}</tool_call> and some text",
            "<tool_call>{\"name\": \"add\", \"arguments\": {}}",
            "[]",
        ] {
            assert_eq!(tool_calls(not_a_call, &names()), None, "{not_a_call}");
        }
        assert_eq!(tool_calls(r#"{"name": "add", "arguments": {}}"#, &[]), None);
    }

    #[test]
    fn a_reply_is_held_back_only_while_it_can_be_a_call() {
        for maybe in ["", "  ", "{\"na", "<tool", "<tool_call>{", "[TOOL", "[{"] {
            assert!(could_be_call(maybe), "{maybe:?}");
        }
        for text in ["Hello", " The", "<b>", "[1] see"] {
            assert!(!could_be_call(text), "{text:?}");
        }
    }

    #[test]
    fn legacy_logprobs_have_offsets_and_top_maps() {
        let e = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "top_logprobs": [{"token": t, "logprob": lp}, {"token": "x", "logprob": -3.0}]});
        let j = legacy_logprobs(&[e("Hé", -0.5), e("llo", -0.25)], 4);
        assert_eq!(j["tokens"], json!(["Hé", "llo"]));
        assert_eq!(j["token_logprobs"], json!([-0.5, -0.25]));
        assert_eq!(j["text_offset"], json!([4, 6]), "offsets count characters");
        assert_eq!(j["top_logprobs"][1], json!({"llo": -0.25, "x": -3.0}));
    }
}
