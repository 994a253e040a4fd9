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
            let i = choices.len();
            match tool_call(&content, &tools) {
                Some(call) => {
                    let calls =
                        json!([{"id": format!("call_{i}"), "type": "function", "function": call}]);
                    json!({"index": i, "message": {"role": "assistant", "content": null, "tool_calls": calls}, "logprobs": lp, "finish_reason": "tool_calls"})
                }
                None => {
                    json!({"index": i, "message": {"role": "assistant", "content": content}, "logprobs": lp, "finish_reason": finish})
                }
            }
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

/// OpenAI's chat `logprobs` object: per token its text, log-probability, UTF-8 bytes and the
/// most likely alternatives.
pub(super) fn logprobs_json(rt: &Runtime, lps: &[TokenLogprob]) -> Json {
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
        let choice = if self.chat {
            json!({"index": 0, "delta": text.map_or(json!({}), |t| json!({"content": t})), "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish})
        };
        self.event(json!([choice]), extra)
    }
}

impl Read for Sse {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            let next = match self.rx.recv() {
                Ok(Event::Piece(p)) => self.chunk(Some(&p), None, None),
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
                    let usage = if self.include_usage {
                        let u = usage_json(prompt_tokens, completion_tokens);
                        self.event(json!([]), Some(("usage", u)))
                    } else {
                        String::new()
                    };
                    // the last chunk also says what the stream now holds (`famstream`)
                    let last = self.chunk(None, Some(finish_reason), Some(("famstream", memory)));
                    format!("{last}{usage}data: [DONE]\n\n")
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

/// A reply that is a call of one of `tools`: `{"name": ..., "arguments": {...}}` (also inside
/// `<tool_call>` tags, as Qwen's template asks) becomes OpenAI's `function` object, with the
/// arguments as a JSON string.
pub(super) fn tool_call(reply: &str, tools: &[String]) -> Option<Json> {
    if tools.is_empty() {
        return None;
    }
    let t = reply.trim();
    let t = t
        .strip_prefix("<tool_call>")
        .and_then(|r| r.strip_suffix("</tool_call>"))
        .unwrap_or(t)
        .trim();
    let v: Json = serde_json::from_str(t).ok()?;
    let name = v["name"]
        .as_str()
        .filter(|n| tools.iter().any(|t| t == n))?;
    let args = match &v["arguments"] {
        a @ Json::Object(_) => a.to_string(),
        Json::String(s) if serde_json::from_str::<Json>(s).is_ok_and(|a| a.is_object()) => {
            s.clone()
        }
        _ => return None,
    };
    Some(json!({"name": name, "arguments": args}))
}
