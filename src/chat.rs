//! Chat templates: turn a conversation into the text the model was trained on.
//!
//! We do not run Jinja. The template family is recognised from `tokenizer.chat_template` and
//! rendered by built-in code: ChatML (`<|im_start|>`: SmolLM2, Qwen2), Llama 3
//! (`<|start_header_id|>`) and Llama 2 (`[INST]`). Unknown templates fall back to ChatML.
//! Rendering is per turn, so a persistent session appends only the new turn to its stream.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`; some models add a default system message.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`.
    Llama3,
    /// `[INST] user [/INST] assistant </s>`, system folded into the first user turn.
    Llama2,
}

impl ChatTemplate {
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
    pub fn generation_prompt(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_start|>assistant\n",
            ChatTemplate::Llama3 => "<|start_header_id|>assistant<|end_header_id|>\n\n",
            ChatTemplate::Llama2 => "",
        }
    }

    /// The text that closes an assistant turn after generation stopped at an end token.
    pub fn end_of_assistant_turn(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_end|>\n",
            ChatTemplate::Llama3 => "<|eot_id|>",
            ChatTemplate::Llama2 => " </s>",
        }
    }

    /// A whole conversation, optionally with the generation prompt.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
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
