//! Chat templates: turn a conversation into the text the model was trained on.
//!
//! A GGUF's own Jinja template (`tokenizer.chat_template`) is rendered with minijinja, in the
//! environment transformers uses (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, Python string methods): [`JinjaTemplate`]. Checked byte
//! for byte against transformers on real models' templates (tests/chat_templates.rs). Without a
//! template, or with one minijinja cannot run, a built-in family is used, recognised from the
//! template text: ChatML (`<|im_start|>`: SmolLM2, Qwen2), Llama 3 (`<|start_header_id|>`) and
//! Llama 2 (`[INST]`); unknown ones fall back to ChatML.
//!
//! Rendering is per turn, so a persistent session appends only the new turn to its stream. A
//! Jinja template renders whole conversations; one turn is the difference between a short
//! conversation with the turn and the same without it (as llama.cpp's server does).

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls, OpenAI's `tool_calls` (`[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`), for templates that render them.
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` turn's answer to this call.
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// As a template sees it (transformers' conventions): a call's `arguments` as an object,
    /// not the JSON text OpenAI sends. A turn that only calls has empty content, not null
    /// (Qwen3's template cannot take null; the others render both alike).
    fn to_template_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let mut m = json!({"role": self.role, "content": self.content});
        if let Some(Value::Array(calls)) = &self.tool_calls {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    let parsed = c["function"]["arguments"]
                        .as_str()
                        .and_then(|a| serde_json::from_str::<Value>(a).ok());
                    if let Some(args) = parsed {
                        c["function"]["arguments"] = args;
                    }
                    c
                })
                .collect();
            m["tool_calls"] = Value::Array(calls);
        }
        if let Some(id) = &self.tool_call_id {
            m["tool_call_id"] = Value::String(id.clone());
        }
        m
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// The model's own Jinja template.
    Jinja(Box<JinjaTemplate>),
    /// `<|im_start|>role\ncontent<|im_end|>\n`; some models add a default system message.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
    Llama3,
    /// `[INST] user [/INST] assistant </s>`, system folded into the first user turn.
    Llama2,
}

/// Content of probe messages, unlikely in any template's own text.
const PROBE: &str = "\u{1}famstream-probe\u{1}";

/// A model's Jinja chat template with its special-token texts, and what it renders around
/// turns (computed once, by rendering probe conversations).
#[derive(Clone, Debug)]
pub struct JinjaTemplate {
    /// The compiled template in transformers' environment, built once.
    env: std::sync::Arc<minijinja::Environment<'static>>,
    source: String,
    bos_token: String,
    eos_token: String,
    /// `date_string` for templates that print a date (tests fix it); `None`: `strftime_now`.
    date_string: Option<String>,
    generation_prompt: String,
    end_of_turn: String,
    /// What the template prints after the last turn when there is no generation prompt
    /// (Phi-3.5: its EOS); turns are rendered without it.
    conversation_end: String,
    /// The built-in family, for turns the template cannot render alone.
    fallback: Box<ChatTemplate>,
}

impl PartialEq for JinjaTemplate {
    fn eq(&self, o: &Self) -> bool {
        // the environment is made from these
        (
            &self.source,
            &self.bos_token,
            &self.eos_token,
            &self.date_string,
        ) == (&o.source, &o.bos_token, &o.eos_token, &o.date_string)
    }
}

impl Eq for JinjaTemplate {}

/// transformers' environment (`trim_blocks`, `lstrip_blocks`, Python string methods,
/// `raise_exception`, `strftime_now`, its `tojson`) with `source` compiled as "chat".
fn environment(source: &str) -> Result<minijinja::Environment<'static>, String> {
    use minijinja::{Environment, ErrorKind, Value};
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| format!("chat template syntax: {e}"))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
    env.add_filter("tojson", py_tojson);
    env.add_template_owned("chat", source.to_string())
        .map_err(|e| format!("chat template: {e}"))?;
    Ok(env)
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=...)`, keys in
/// their given order. minijinja's own filter makes the same text but escapes `<`, `>`, `&` and
/// `'` for HTML (as jinja2's does), which transformers turns off: those escapes are undone here,
/// reading escape by escape so that an escaped backslash before `u003c` stays as it is.
fn py_tojson(
    value: &minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    let html = minijinja::filters::tojson(value, indent, kwargs)?;
    let html = html.as_str().unwrap_or_default();
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        let plain = match esc.get(..6) {
            Some("\\u003c") => Some('<'),
            Some("\\u003e") => Some('>'),
            Some("\\u0026") => Some('&'),
            Some("\\u0027") => Some('\''),
            _ => None,
        };
        match plain {
            Some(c) => {
                out.push(c);
                rest = &esc[6..];
            }
            None => {
                // any other escape: copy the backslash and the character it escapes
                let n = 1 + esc[1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&esc[..n]);
                rest = &esc[n..];
            }
        }
    }
    out.push_str(rest);
    Ok(minijinja::Value::from_safe_string(out))
}

/// Today's date (UTC) in the `strftime` formats templates use (`%d %b %Y`, `%Y-%m-%d`, ...).
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let (sod, mut out, mut chars) = (secs.rem_euclid(86_400), String::new(), fmt.chars());
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl JinjaTemplate {
    /// Compile `source` and probe it. An error names what minijinja could not parse or run.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<JinjaTemplate, String> {
        Self::with_date(source, bos_token, eos_token, None)
    }

    /// [`JinjaTemplate::new`] with a fixed `date_string` (for reproducible renders).
    pub fn with_date(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        date_string: Option<&str>,
    ) -> Result<JinjaTemplate, String> {
        let mut t = JinjaTemplate {
            env: std::sync::Arc::new(environment(source)?),
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            date_string: date_string.map(str::to_string),
            generation_prompt: String::new(),
            end_of_turn: String::new(),
            conversation_end: String::new(),
            fallback: Box::new(ChatTemplate::detect(Some(source))),
        };
        let user = [Message::new("user", PROBE)];
        let with = t.render(&user, true)?;
        let without = t.render(&user, false)?;
        // with = turns + generation prompt, without = turns + conversation end (usually
        // nothing). Where both end in special tokens, the common prefix may run into one
        // ("<|" of "<|assistant|>" and "<|endoftext|>"): back off to that token's start.
        let after_probe = without
            .rfind(PROBE)
            .ok_or("a user turn's content is not rendered")?
            + PROBE.len();
        let mut split = with
            .bytes()
            .zip(without.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        if split < without.len() {
            if let Some(lt) = without[..split].rfind('<').filter(|&i| i >= after_probe) {
                split = lt;
            }
        }
        if split < after_probe || !with.is_char_boundary(split) {
            return Err("the generation prompt is not appended after the turns".into());
        }
        t.generation_prompt = with[split..].to_string();
        t.conversation_end = without[split..].to_string();
        let turn = [Message::new("user", "Hi"), Message::new("assistant", PROBE)];
        let full = t.render(&turn, false)?;
        let at = full
            .rfind(PROBE)
            .ok_or("an assistant turn's content is not rendered")?;
        let end = &full[at + PROBE.len()..];
        t.end_of_turn = end
            .strip_suffix(t.conversation_end.as_str())
            .unwrap_or(end)
            .to_string();
        Ok(t)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation as transformers' `apply_chat_template(..., tokenize=False)` does.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Whether the template renders a `tools` list (Qwen 2.5/3, Llama 3.x, Mistral, SmolLM3).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// [`JinjaTemplate::render`] with `tools` (OpenAI's list of `{"type": "function",
    /// "function": {...}}`) given to the template, as `apply_chat_template(..., tools=...)`.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let msgs: Vec<serde_json::Value> = messages.iter().map(|m| m.to_template_json()).collect();
        let mut ctx = serde_json::json!({
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        if let Some(d) = &self.date_string {
            ctx["date_string"] = serde_json::Value::String(d.clone());
        }
        if let Some(t) = tools {
            ctx["tools"] = t.clone();
        }
        self.env
            .get_template("chat")
            .and_then(|t| t.render(minijinja::Value::from(minijinja::value::Serde(&ctx))))
            .map_err(|e| format!("chat template: {e}"))
    }

    /// Turns without the conversation end.
    fn render_turns(&self, messages: &[Message]) -> Result<String, String> {
        let s = self.render(messages, false)?;
        Ok(match s.strip_suffix(self.conversation_end.as_str()) {
            Some(t) => t.to_string(),
            None => s,
        })
    }

    /// One turn: the conversation with it, minus the same conversation without it.
    fn render_turn(&self, m: &Message, first: bool) -> String {
        if first {
            return self
                .render_turns(std::slice::from_ref(m))
                .unwrap_or_else(|_| self.fallback.render_turn(m, first));
        }
        // A short history that alternates into this turn, as strict templates require.
        let history = match m.role.as_str() {
            "assistant" => vec![Message::new("user", "Hi")],
            _ => vec![
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello"),
            ],
        };
        let mut with = history.clone();
        with.push(m.clone());
        match (self.render_turns(&history), self.render_turns(&with)) {
            (Ok(before), Ok(after)) if after.starts_with(&before) => {
                after[before.len()..].to_string()
            }
            _ => self.fallback.render_turn(m, first),
        }
    }
}

impl ChatTemplate {
    /// The template of a model: its own Jinja template when minijinja runs it, else the
    /// built-in family ([`ChatTemplate::detect`]). `bos`/`eos` are the token texts the template
    /// may print. Returns the reason when a template was present but not usable.
    pub fn for_model(
        template: Option<&str>,
        bos: &str,
        eos: &str,
    ) -> (ChatTemplate, Option<String>) {
        match template {
            Some(src) => match JinjaTemplate::new(src, bos, eos) {
                Ok(j) => (ChatTemplate::Jinja(Box::new(j)), None),
                Err(e) => (ChatTemplate::detect(template), Some(e)),
            },
            None => (ChatTemplate::detect(None), None),
        }
    }

    /// What renders prompts: "jinja (the model's template)" or the built-in family.
    pub fn describe(&self) -> &'static str {
        match self {
            ChatTemplate::Jinja(_) => "jinja (the model's own template)",
            ChatTemplate::ChatMl { .. } => "built-in ChatML",
            ChatTemplate::Llama3 => "built-in Llama 3",
            ChatTemplate::Llama2 => "built-in Llama 2",
        }
    }

    /// Recognise the family of a Jinja template (`None`: no template, use ChatML).
    pub fn detect(template: Option<&str>) -> ChatTemplate {
        let Some(t) = template else {
            return ChatTemplate::ChatMl {
                default_system: None,
            };
        };
        if t.contains("<|start_header_id|>") {
            ChatTemplate::Llama3
        } else if t.contains("[INST]") {
            ChatTemplate::Llama2
        } else {
            // A literal default system message, as SmolLM2's template has:
            // '<|im_start|>system\nYou are a helpful AI assistant ...<|im_end|>'
            let marker = "<|im_start|>system\n";
            let default_system = t.find(marker).and_then(|i| {
                let rest = &t[i + marker.len()..];
                let end = rest.find("<|im_end|>")?;
                let s = &rest[..end];
                (!s.contains("{{") && !s.contains("'") && !s.is_empty()).then(|| s.to_string())
            });
            ChatTemplate::ChatMl { default_system }
        }
    }

    /// Text of one turn. `first`: this is the first message of the conversation.
    pub fn render_turn(&self, m: &Message, first: bool) -> String {
        match self {
            ChatTemplate::Jinja(j) => j.render_turn(m, first),
            ChatTemplate::ChatMl { default_system } => {
                let mut s = String::new();
                if first && m.role != "system" {
                    if let Some(d) = default_system {
                        s.push_str(&format!("<|im_start|>system\n{d}<|im_end|>\n"));
                    }
                }
                s.push_str(&format!(
                    "<|im_start|>{}\n{}<|im_end|>\n",
                    m.role, m.content
                ));
                s
            }
            ChatTemplate::Llama3 => {
                let bos = if first { "<|begin_of_text|>" } else { "" };
                format!(
                    "{bos}<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                    m.role,
                    m.content.trim()
                )
            }
            ChatTemplate::Llama2 => match m.role.as_str() {
                "system" => format!("<s>[INST] <<SYS>>\n{}\n<</SYS>>\n\n", m.content.trim()),
                "user" if first => format!("<s>[INST] {} [/INST]", m.content.trim()),
                "user" => format!("<s>[INST] {} [/INST]", m.content.trim()),
                _ => format!(" {} </s>", m.content.trim()),
            },
        }
    }

    /// The text that makes the model answer as the assistant.
    pub fn generation_prompt(&self) -> &str {
        match self {
            ChatTemplate::Jinja(j) => &j.generation_prompt,
            ChatTemplate::ChatMl { .. } => "<|im_start|>assistant\n",
            ChatTemplate::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ChatTemplate::Llama2 => "",
        }
    }

    /// The text that closes an assistant turn after generation stopped at an end token.
    pub fn end_of_assistant_turn(&self) -> &str {
        match self {
            ChatTemplate::Jinja(j) => &j.end_of_turn,
            ChatTemplate::ChatMl { .. } => "<|im_end|>\n",
            ChatTemplate::Llama3 => "<|eot_id|>",
            ChatTemplate::Llama2 => " </s>",
        }
    }

    /// The opening turns of a conversation (a system message and the first user turn, say),
    /// rendered together: templates may fold a system message into the first user turn (Gemma
    /// 3) or otherwise depend on both. Without the generation prompt or the conversation's end.
    pub fn render_opening(&self, messages: &[Message]) -> String {
        match self {
            ChatTemplate::Jinja(j) => j.render_turns(messages).unwrap_or_else(|_| {
                messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| j.fallback.render_turn(m, i == 0))
                    .collect()
            }),
            _ => messages
                .iter()
                .enumerate()
                .map(|(i, m)| self.render_turn(m, i == 0))
                .collect(),
        }
    }

    /// A new conversation with `tools` in the model's own template, with the generation
    /// prompt; `None` when the template does not render tools (or fails), and the caller
    /// describes them itself.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: &serde_json::Value,
    ) -> Option<String> {
        match self {
            ChatTemplate::Jinja(j) if j.renders_tools() => {
                j.render_with_tools(messages, Some(tools), true).ok()
            }
            _ => None,
        }
    }

    /// A whole conversation, optionally with the generation prompt.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        if let ChatTemplate::Jinja(j) = self {
            if let Ok(s) = j.render(messages, add_generation_prompt) {
                return s;
            }
            return j.fallback.render(messages, add_generation_prompt);
        }
        let mut s: String = messages
            .iter()
            .enumerate()
            .map(|(i, m)| self.render_turn(m, i == 0))
            .collect();
        if add_generation_prompt {
            s.push_str(self.generation_prompt());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders_like_its_jinja() {
        let t = ChatTemplate::detect(Some(SMOLLM2));
        let msgs = [
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "2+2?"),
        ];
        assert_eq!(
            t.render(&msgs, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_sys = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
        ];
        assert_eq!(
            t.render(&with_sys, false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn families_are_recognised() {
        assert_eq!(
            ChatTemplate::detect(Some("... <|start_header_id|> ...")),
            ChatTemplate::Llama3
        );
        assert_eq!(
            ChatTemplate::detect(Some("... [INST] ...")),
            ChatTemplate::Llama2
        );
        assert_eq!(
            ChatTemplate::detect(None),
            ChatTemplate::ChatMl {
                default_system: None
            }
        );
    }
}
