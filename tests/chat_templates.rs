//! Real models' Jinja chat templates rendered by famstream (minijinja) against transformers'
//! renders of the same conversations (tests/golden/chat/templates.json, made by
//! tools/gen_chat_goldens.py): byte for byte, with and without the generation prompt; a
//! conversation a template refuses is refused here too. And per-turn rendering (sessions) adds
//! up to the whole conversation.

use famstream::chat::{ChatTemplate, JinjaTemplate, Message};
use serde_json::Value;

fn goldens() -> Vec<Value> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/chat/templates.json"
    );
    let j: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    j["templates"].as_array().unwrap().clone()
}

/// Messages as the server receives them (OpenAI's form: a call's content null, its arguments
/// JSON text).
fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut msg = Message::new(
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap_or(""),
            );
            msg.tool_calls = m.get("tool_calls").cloned();
            msg.tool_call_id = m["tool_call_id"].as_str().map(str::to_string);
            msg
        })
        .collect()
}

fn template(t: &Value) -> JinjaTemplate {
    JinjaTemplate::with_date(
        t["template"].as_str().unwrap(),
        t["bos_token"].as_str().unwrap(),
        t["eos_token"].as_str().unwrap(),
        t["date_string"].as_str(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", t["name"]))
}

#[test]
fn templates_render_like_transformers() {
    let all = goldens();
    assert!(all.len() >= 8);
    let mut n = 0;
    for t in &all {
        let name = t["name"].as_str().unwrap();
        let jt = template(t);
        for case in t["cases"].as_array().unwrap() {
            let msgs = messages(&case["messages"]);
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let ours = jt.render(&msgs, gen);
            if case["error"].as_bool() == Some(true) {
                assert!(
                    ours.is_err(),
                    "{name}: transformers refused {msgs:?}, we rendered it"
                );
                continue;
            }
            let want = case["rendered"].as_str().unwrap();
            assert_eq!(
                ours.as_deref(),
                Ok(want),
                "{name}, {msgs:?}, generation prompt {gen}"
            );
            n += 1;
        }
    }
    assert!(n >= 50, "{n} renders compared");
}

#[test]
fn tools_render_like_transformers() {
    // `apply_chat_template(tools=...)`: the tool list in the template's own words (its
    // `tojson` as Python's json.dumps: key order kept, no HTML escapes), a call and its result.
    let mut n = 0;
    let mut with_tools = Vec::new();
    for t in &goldens() {
        let name = t["name"].as_str().unwrap();
        let jt = template(t);
        assert_eq!(
            jt.renders_tools(),
            !t["tool_cases"].as_array().unwrap().is_empty(),
            "{name}"
        );
        if jt.renders_tools() {
            with_tools.push(name.to_string());
        }
        for case in t["tool_cases"].as_array().unwrap() {
            let msgs = messages(&case["messages"]);
            let ours = jt.render_with_tools(&msgs, Some(&case["tools"]), true);
            let want = case["rendered"].as_str().unwrap();
            assert_eq!(ours.as_deref(), Ok(want), "{name}, {msgs:?}");
            // and through the server's entry point
            let ct = ChatTemplate::Jinja(Box::new(jt.clone()));
            assert_eq!(
                ct.render_with_tools(&msgs, &case["tools"]).as_deref(),
                Some(want)
            );
            n += 1;
        }
    }
    assert!(n >= 8, "{n} renders with tools compared");
    for family in ["Qwen2.5", "Qwen3", "Llama-3.2", "Mistral-Nemo"] {
        assert!(
            with_tools.iter().any(|w| w.contains(family)),
            "{family} renders tools: {with_tools:?}"
        );
    }
}

#[test]
fn templates_without_tools_leave_them_to_the_server() {
    let smol = goldens()
        .into_iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("SmolLM2"))
        .unwrap();
    let ct = ChatTemplate::Jinja(Box::new(template(&smol)));
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
    assert_eq!(
        ct.render_with_tools(&[Message::new("user", "Hi")], &tools),
        None
    );
}

/// Templates that render a turn differently depending on what follows it, which a session that
/// renders each turn once cannot follow: Qwen3 prints an empty `<think>` block in the latest
/// assistant turn only; Mistral Nemo puts the system message into the latest user turn.
const POSITION_DEPENDENT: &[&str] = &[
    "Qwen-Qwen3-0.6B.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
];

#[test]
fn turn_by_turn_rendering_adds_up_to_the_whole_conversation() {
    // A session renders one turn at a time; the concatenation must be the full render, for
    // every template and every conversation the template accepts.
    for t in &goldens() {
        let name = t["name"].as_str().unwrap();
        let ct = ChatTemplate::Jinja(Box::new(template(t)));
        for case in t["cases"].as_array().unwrap() {
            if case["error"].as_bool() == Some(true)
                || !case["add_generation_prompt"].as_bool().unwrap()
            {
                continue;
            }
            let msgs = messages(&case["messages"]);
            // As a session renders it: the opening (system and first user turn) together, then
            // each later turn on its own, then the generation prompt.
            let first_user = msgs.iter().position(|m| m.role == "user").unwrap();
            let mut text = ct.render_opening(&msgs[..=first_user]);
            for m in &msgs[first_user + 1..] {
                text.push_str(&ct.render_turn(m, false));
            }
            text.push_str(ct.generation_prompt());
            let want = case["rendered"].as_str().unwrap();
            if POSITION_DEPENDENT.contains(&name) {
                // Only the ends must agree: the first turn and the new turn with the prompt.
                let tail = ct.generation_prompt();
                let head = ct.render_turn(&msgs[0], true);
                let head = head.split(msgs[0].content.as_str()).next().unwrap();
                assert!(
                    want.ends_with(tail) && want.starts_with(head),
                    "{name}: {msgs:?}"
                );
                continue;
            }
            assert_eq!(text, want, "{name}: turn by turn, {msgs:?}");
        }
    }
}

#[test]
fn smollm2s_own_template_gives_what_the_built_in_chatml_gave() {
    let t = goldens()
        .into_iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("SmolLM2"))
        .unwrap();
    let jinja = ChatTemplate::Jinja(Box::new(template(&t)));
    let builtin = ChatTemplate::detect(t["template"].as_str());
    let conv = [
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "2+2?"),
    ];
    assert_eq!(jinja.render(&conv, true), builtin.render(&conv, true));
    for (i, m) in conv.iter().enumerate() {
        assert_eq!(jinja.render_turn(m, i == 0), builtin.render_turn(m, i == 0));
    }
    assert_eq!(jinja.generation_prompt(), builtin.generation_prompt());
    assert_eq!(
        jinja.end_of_assistant_turn(),
        builtin.end_of_assistant_turn()
    );
}

#[test]
fn a_template_minijinja_cannot_run_falls_back_with_a_reason() {
    let (t, why) = ChatTemplate::for_model(Some("{% for m in messages %}{{ m.content "), "", "");
    assert!(why.unwrap().contains("chat template"));
    assert!(!matches!(t, ChatTemplate::Jinja(_)));
    let (t, why) = ChatTemplate::for_model(None, "", "");
    assert!(why.is_none() && !matches!(t, ChatTemplate::Jinja(_)));
}
