//! `famstream serve` with a real HTTP client (plain TCP, HTTP/1.1) on loopback: completions
//! (streaming and not), sessions, 20 concurrent clients, malformed and oversized requests,
//! a client that disconnects mid-stream; the server stays up and its memory bounded.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    start_with(extra, &[])
}

fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let m = common::model_path();
    let dir = common::scratch_dir("serve-sessions");
    let mut child = Command::new(env!("CARGO_BIN_EXE_famstream"))
        .args([
            "serve",
            "-m",
            m.to_str().unwrap(),
            "--port",
            "0",
            "-t",
            "2",
            "--sessions-dir",
            dir.to_str().unwrap(),
        ])
        .args([
            "--memory",
            "fam",
            "--block",
            "64",
            "--mem-blocks",
            "1",
            "--fam-len",
            "8",
        ])
        .args(extra)
        // a key in the caller's environment must not turn on keys in the other tests
        .env_remove("FAMSTREAM_API_KEY")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{line}");
    Server { child, addr }
}

/// One request; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, body, "")
}

/// One request with extra header lines (each ending in \r\n).
fn http_with(addr: &str, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    // Chunked bodies carry hex lengths between chunks; the JSON object is one chunk here.
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

const CHAT: &str = r#"{"messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":12,"temperature":0}"#;

#[test]
fn openai_compatible_endpoints_sessions_and_abuse() {
    let srv = start(&["--max-body", "20000", "--max-states", "2"]);
    let a = srv.addr.as_str();
    assert_eq!(http(a, "GET", "/health", "").0, 200);
    let (s, b) = http(a, "GET", "/v1/models", "");
    assert_eq!(s, 200);
    assert_eq!(json(&b)["object"], "list");

    // Non-streaming chat.
    let (s, b) = http(a, "POST", "/v1/chat/completions", CHAT);
    assert_eq!(s, 200, "{b}");
    let j = json(&b);
    let answer = j["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(answer.contains("Paris"), "{answer}");
    assert!(j["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Streaming chat gives the same text in SSE chunks, then [DONE].
    let body = CHAT.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    let (s, b) = http(a, "POST", "/v1/chat/completions", &body);
    assert_eq!(s, 200);
    assert!(b.contains("data: [DONE]"), "{b}");
    let streamed: String = b
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, answer);

    // Plain completions.
    let (s, b) = http(
        a,
        "POST",
        "/v1/completions",
        r#"{"prompt":"The capital of France is","max_tokens":4,"temperature":0}"#,
    );
    assert_eq!(s, 200, "{b}");
    assert!(json(&b)["choices"][0]["text"]
        .as_str()
        .unwrap()
        .contains("Paris"));

    // Sessions: the second request sends only the new turn and the server continues the stored
    // conversation. What the 135M model *says* about the name differs between CPUs (AVX-512 or
    // not), so the checks are: the second request's prompt is the new turn alone (shorter than
    // the whole conversation's), and the stored first turn changes the reply (a fresh session
    // asked the same answers otherwise).
    let t1 = r#"{"session":"s1","messages":[{"role":"user","content":"My name is Ada. Remember it."}],"max_tokens":16,"temperature":0}"#;
    let t2 = r#"{"session":"s1","messages":[{"role":"user","content":"What is my name?"}],"max_tokens":16,"temperature":0}"#;
    let (s, b1) = http(a, "POST", "/v1/chat/completions", t1);
    assert_eq!(s, 200);
    let r1 = json(&b1)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = http(a, "POST", "/v1/chat/completions", t2);
    assert_eq!(s, 200);
    let in_session = json(&b);
    let whole = serde_json::json!({
        "messages": [
            {"role": "user", "content": "My name is Ada. Remember it."},
            {"role": "assistant", "content": r1},
            {"role": "user", "content": "What is my name?"},
        ],
        "max_tokens": 1, "temperature": 0,
    });
    let (s, b) = http(a, "POST", "/v1/chat/completions", &whole.to_string());
    assert_eq!(s, 200);
    let at_once = json(&b);
    let (p_session, p_whole) = (
        in_session["usage"]["prompt_tokens"].as_u64().unwrap(),
        at_once["usage"]["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(
        p_session * 2 < p_whole,
        "the session resent the first turn: {p_session} vs {p_whole} prompt tokens"
    );
    // and the first turn matters: a fresh session asked the same answers otherwise
    let fresh = t2.replace("\"s1\"", "\"s-fresh\"");
    let (s, b) = http(a, "POST", "/v1/chat/completions", &fresh);
    assert_eq!(s, 200);
    assert_ne!(
        json(&b)["choices"][0]["message"]["content"],
        in_session["choices"][0]["message"]["content"]
    );

    // Malformed and oversized requests: 4xx JSON errors.
    for (body, status) in [
        ("{not json", 400),
        (r#"{"messages":"hi"}"#, 400),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#,
            400,
        ),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            400,
        ),
        (r#"{"messages":[{"role":"wizard","content":"x"}]}"#, 400),
        (
            r#"{"messages":[{"role":"user","content":"x"}],"session":"../etc"}"#,
            400,
        ),
        (
            &format!(
                r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
                "a ".repeat(20000)
            ),
            413,
        ),
    ] {
        let (s, b) = http(a, "POST", "/v1/chat/completions", body);
        assert_eq!(s, status, "{b}");
        assert!(json(&b)["error"]["message"].is_string(), "{b}");
    }
    assert_eq!(http(a, "GET", "/nope", "").0, 404);
    assert_eq!(http(a, "GET", "/v1/chat/completions", "").0, 405);

    under_load(&srv, "");
}

/// Clients that disconnect mid-stream, 20 concurrent clients and malformed JSON, each request
/// with `headers` (e.g. an API key): all answered, the server still up, its memory flat.
fn under_load(srv: &Server, headers: &str) {
    let a = srv.addr.as_str();
    // warm: the weights' pages and the compute buffer are in before memory is measured
    let warm = http_with(a, "POST", "/v1/chat/completions", CHAT, headers);
    assert_eq!(warm.0, 200, "{}", warm.1);
    let rss_before = rss_kb(srv.child.id());
    // A client that disconnects mid-stream.
    for _ in 0..3 {
        let mut s = TcpStream::connect(a).unwrap();
        let body = r#"{"messages":[{"role":"user","content":"Write a long story."}],"max_tokens":400,"stream":true}"#;
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        drop(s);
    }
    // 20 concurrent clients, and malformed JSON among them.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let (a, h) = (srv.addr.clone(), headers.to_string());
            std::thread::spawn(move || {
                let body = format!(r#"{{"messages":[{{"role":"user","content":"Say the number {i}."}}],"max_tokens":6,"temperature":0}}"#);
                let ok = http_with(&a, "POST", "/v1/chat/completions", &body, &h).0;
                let bad = http_with(&a, "POST", "/v1/chat/completions", "{\"messages\": [", &h).0;
                (ok, bad)
            })
        })
        .collect();
    let statuses: Vec<(u16, u16)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == (200, 400)), "{statuses:?}");
    // Still up, and memory did not grow with the traffic (no state is kept per request; the
    // abandoned streams were cancelled and freed).
    assert_eq!(http(a, "GET", "/health", "").0, 200);
    let rss_after = rss_kb(srv.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} kB -> {rss_after} kB"
    );
}

#[test]
fn api_keys_guard_every_endpoint_but_health() {
    for (flags, env) in [
        (vec!["--api-key", "s3cret"], vec![]),
        (vec![], vec![("FAMSTREAM_API_KEY", "s3cret")]),
    ] {
        let srv = start_with(&flags, &env);
        let a = srv.addr.as_str();
        assert_eq!(http(a, "GET", "/health", "").0, 200, "health needs no key");
        // the chat page is static (it asks for the key and sends it with each request)
        let (s, page) = http(a, "GET", "/", "");
        assert!(
            s == 200 && page.contains("<title>famstream chat</title>"),
            "{s}"
        );
        for headers in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: s3cret\r\n",
        ] {
            for (m, path, body) in [
                ("GET", "/v1/models", ""),
                ("POST", "/v1/chat/completions", CHAT),
            ] {
                let (s, b) = http_with(a, m, path, body, headers);
                assert_eq!(s, 401, "{m} {path} with {headers:?}: {b}");
                assert!(
                    json(&b)["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("API key"),
                    "{b}"
                );
            }
        }
        let key = "Authorization: Bearer s3cret\r\n";
        assert_eq!(http_with(a, "GET", "/v1/models", "", key).0, 200);
        let (s, b) = http_with(a, "POST", "/v1/chat/completions", CHAT, key);
        assert_eq!(s, 200, "{b}");
        assert!(
            json(&b)["choices"][0]["message"]["content"].is_string(),
            "{b}"
        );
        under_load(&srv, key);
    }
    // Listening beyond loopback without a key is refused before anything loads.
    let out = Command::new(env!("CARGO_BIN_EXE_famstream"))
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .env_remove("FAMSTREAM_API_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--api-key") && err.contains("--insecure"),
        "{err}"
    );
}

/// The chat page at `/`, in a real browser (Debian's chromium through chromedriver): a typed
/// message gets a streamed reply, the memory panel fills, a reload keeps the conversation and
/// the server continues the same session.
#[test]
fn the_chat_page_works_in_a_real_headless_browser() {
    let srv = start(&[]);
    let url = format!("http://{}/", srv.addr);
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/chat_page_check.py"
        ))
        .arg(&url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chat_page_check failed: {err}");
    let r = json(&String::from_utf8_lossy(&out.stdout));
    eprintln!("{r}");
    assert_eq!(r["messages"], 4, "{r}");
    assert_eq!(r["memory2"]["policy"], "fam", "{r}");
    assert_eq!(r["streamed"], true, "no partial reply was seen: {r}");
    assert!(!r["reply2"].as_str().unwrap().is_empty());
}

/// Each OpenAI request field is honoured or refused with a 400 that names it, never ignored.
#[test]
fn tools_reach_the_model_in_its_own_template_words() {
    // SmolLM2's template has no tools (the server describes them in a system message); served
    // with Qwen 2.5's template (`--chat-template-file`), whose ChatML tokens SmolLM2 shares, the
    // prompt is that template's render with `tools`, exactly as transformers renders it
    // (tests/golden/chat/templates.json): the prompt token counts agree.
    let goldens: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/chat/templates.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let qwen = goldens["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "Qwen-Qwen2.5-7B-Instruct.jinja")
        .unwrap();
    let file = common::scratch_dir("serve-template").join("qwen2.5.jinja");
    std::fs::write(&file, qwen["template"].as_str().unwrap()).unwrap();
    let srv = start(&["--chat-template-file", file.to_str().unwrap()]);
    let rt = common::runtime(common::model_path());
    for case in qwen["tool_cases"].as_array().unwrap() {
        let body = serde_json::json!({"messages": case["messages"], "tools": case["tools"],
                                      "max_tokens": 1, "temperature": 0});
        let (s, b) = http(&srv.addr, "POST", "/v1/chat/completions", &body.to_string());
        assert_eq!(s, 200, "{b}");
        let want = rt
            .encode_chat(case["rendered"].as_str().unwrap(), true)
            .len();
        assert_eq!(json(&b)["usage"]["prompt_tokens"], want, "{b}");
    }
    // a template file minijinja cannot run, or a missing one, is refused at start
    let bad = common::scratch_dir("serve-template").join("bad.jinja");
    std::fs::write(&bad, "{% for %}").unwrap();
    for f in [bad.to_str().unwrap(), "/nonexistent/t.jinja"] {
        let out = Command::new(env!("CARGO_BIN_EXE_famstream"))
            .args([
                "serve",
                "-m",
                common::model_path().to_str().unwrap(),
                "--port",
                "0",
            ])
            .args(["--chat-template-file", f])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && (err.contains("template") || err.contains(f)),
            "{err}"
        );
    }
}

#[test]
fn openai_fields_are_honoured_or_refused_by_name() {
    let srv = start(&[]);
    let a = srv.addr.as_str();
    let chat = |extra: &str| {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"Count to ten."}}],"max_tokens":6,"temperature":0{extra}}}"#
        );
        http(a, "POST", "/v1/chat/completions", &body)
    };
    for (extra, field) in [
        (r#","presence_penalty":2.5"#, "`presence_penalty`"),
        (r#","frequency_penalty":-3"#, "`frequency_penalty`"),
        (r#","top_logprobs":3"#, "`logprobs`"),
        (r#","logprobs":true,"top_logprobs":21"#, "`top_logprobs`"),
        (r#","logprobs":2"#, "`logprobs`"),
        (r#","response_format":{"type":"xml"}"#, "`response_format`"),
        (
            r#","response_format":{"type":"json_schema","json_schema":{"schema":{"type":"nonsense"}}}"#,
            "`response_format`",
        ),
        (
            r#","tools":[{"type":"function","function":{}}]"#,
            "`tools[]`",
        ),
        (r#","tool_choice":"required""#, "`tool_choice`"),
        (
            r#","tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}"#,
            "`tool_choice`",
        ),
        (r#","logit_bias":{"42":500}"#, "`logit_bias`"),
        (r#","logit_bias":{"999999":5}"#, "`logit_bias`"),
        (r#","logit_bias":{"x":5}"#, "`logit_bias`"),
        (r#","logit_bias":[1]"#, "`logit_bias`"),
        (r#","frobnicate":1"#, "`frobnicate`"),
        (
            r#","stream_options":{"include_usage":"yes"}"#,
            "include_usage",
        ),
        (r#","top_k":1.5"#, "`top_k`"),
    ] {
        let (s, b) = chat(extra);
        assert_eq!(s, 400, "{extra}: {b}");
        let msg = json(&b)["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(field), "{extra}: {msg}");
    }
    // the values that ask for nothing are accepted, and honoured fields act
    let (s, b) = chat(
        r#","n":1,"presence_penalty":0,"frequency_penalty":0,"logprobs":false,"response_format":{"type":"text"},"tools":[],"tool_choice":"none","top_k":1,"min_p":0"#,
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = chat(r#","max_completion_tokens":3,"max_tokens":null"#);
    assert_eq!(s, 200, "{b}");
    let used = json(&b)["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=3).contains(&used), "{b}");
    // stream_options.include_usage: a last chunk with no choices and the counts, then [DONE]
    let (s, b) = chat(r#","stream":true,"stream_options":{"include_usage":true}"#);
    assert_eq!(s, 200, "{b}");
    let events: Vec<&str> = b.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{b}");
    let last: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"], serde_json::json!([]), "{b}");
    let u = &last["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() >= 1, "{b}");
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    // without it, no usage chunk
    let (_, b) = chat(r#","stream":true"#);
    assert!(!b.contains("\"usage\""), "{b}");
    // logprobs (chat): one entry per completion token; greedy picks the most likely token, so
    // each token is its own first alternative; the tokens' bytes are the reply
    let (s, b) = chat(r#","logprobs":true,"top_logprobs":3"#);
    assert_eq!(s, 200, "{b}");
    let j = json(&b);
    let content = j["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        j["usage"]["completion_tokens"].as_u64().unwrap(),
        "{b}"
    );
    let mut bytes = Vec::new();
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{e}");
        assert!(
            lp <= 0.0 && top[0]["logprob"].as_f64().unwrap() >= top[1]["logprob"].as_f64().unwrap()
        );
        assert_eq!(top[0]["token"], e["token"], "greedy takes the argmax: {e}");
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6,
            "{e}"
        );
        bytes.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u8),
        );
    }
    let reply = j["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&bytes), reply, "{b}");
    // n: that many choices, each its own sample (seed + index), usage adds their tokens
    let (s, b) = http(
        a,
        "POST",
        "/v1/chat/completions",
        r#"{"messages":[{"role":"user","content":"Name a color."}],"max_tokens":5,"temperature":1.0,"n":3,"seed":7}"#,
    );
    assert_eq!(s, 200, "{b}");
    let j = json(&b);
    let choices = j["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{b}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{b}");
        assert!(c["message"]["content"].is_string(), "{b}");
    }
    let used = j["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((3..=15).contains(&used), "{b}");
    for (extra, field) in [
        (r#","n":2,"stream":true"#, "`n`"),
        (r#","n":2,"session":"s1""#, "`n`"),
        (r#","n":0"#, "`n`"),
        (r#","n":9"#, "`n`"),
    ] {
        let (s, b) = chat(extra);
        assert_eq!(s, 400, "{extra}: {b}");
        assert!(b.contains(field), "{extra}: {b}");
    }
    // completions' logprobs: 0-5 alternatives, else refused by name
    for (logprobs, status) in [("2", 200), ("6", 400), ("true", 400)] {
        let body = format!(r#"{{"prompt":"Hi","max_tokens":2,"logprobs":{logprobs}}}"#);
        let (s, b) = http(a, "POST", "/v1/completions", &body);
        assert_eq!(s, status, "{b}");
        if s == 400 {
            assert!(b.contains("`logprobs`"), "{b}");
        } else {
            let lp = &json(&b)["choices"][0]["logprobs"];
            assert_eq!(lp["tokens"].as_array().unwrap().len(), 2, "{b}");
            assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2, "{b}");
        }
    }
    // logit_bias +100 on one token: greedy decoding produces only it
    let (s, b) = chat(r#","logit_bias":{"28":100},"logprobs":true"#);
    assert_eq!(s, 200, "{b}");
    let toks: Vec<String> = json(&b)["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].to_string())
        .collect();
    assert!(toks.len() == 6 && toks.iter().all(|t| *t == toks[0]), "{b}");
}

#[test]
fn the_official_openai_client_reads_every_reply() {
    // tools/openai_client_check.py drives the server with the `openai` package (pinned in
    // tools/requirements.txt): chat, streaming with usage, n, seed, stop, logprobs,
    // completions, sessions, a refused field and a wrong key, each parsed by the client itself.
    let srv = start(&["--api-key", "client-check-key"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/openai_client_check.py");
    let out = Command::new("python3")
        .args([
            script,
            "--base-url",
            &format!("http://{}/v1", srv.addr),
            "--api-key",
            "client-check-key",
        ])
        .output()
        .expect("run python3 tools/openai_client_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// Schemas of varied shapes for structured replies: every reply must parse and match its schema.
fn schemas() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!({"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}}, "required": ["colour"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}, "name": {"type": "string", "maxLength": 12}}, "required": ["age", "name"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}}, "required": ["ok", "items"], "additionalProperties": false}),
        json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "temp": {"type": "number"}}, "required": ["city", "temp"], "additionalProperties": false}),
    ]
}

/// Whether `v` matches the small schema subset used above (type, enum, required, properties,
/// additionalProperties, items, maxItems, maxLength, minimum/maximum).
fn matches(v: &serde_json::Value, s: &serde_json::Value) -> bool {
    use serde_json::Value;
    if let Some(e) = s["enum"].as_array() {
        return e.contains(v);
    }
    let ok_type = match s["type"].as_str() {
        Some("object") => v.is_object(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        _ => true,
    };
    if !ok_type {
        return false;
    }
    if let (Some(n), Some(max)) = (v.as_f64(), s["maximum"].as_f64()) {
        if n > max {
            return false;
        }
    }
    if let (Some(n), Some(min)) = (v.as_f64(), s["minimum"].as_f64()) {
        if n < min {
            return false;
        }
    }
    if let (Some(t), Some(max)) = (v.as_str(), s["maxLength"].as_u64()) {
        if t.chars().count() as u64 > max {
            return false;
        }
    }
    if let Value::Array(a) = v {
        if s["maxItems"].as_u64().is_some_and(|m| a.len() as u64 > m) {
            return false;
        }
        return a.iter().all(|x| matches(x, &s["items"]));
    }
    if let Value::Object(o) = v {
        let props = s["properties"].as_object();
        for r in s["required"].as_array().into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                return false;
            }
        }
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) if !matches(x, ps) => return false,
                None if s["additionalProperties"] == Value::Bool(false) => return false,
                _ => {}
            }
        }
    }
    true
}

#[test]
fn structured_replies_parse_and_match_their_schema() {
    // response_format json_schema (and json_object) through the server: constrained decoding
    // makes every reply that ends valid, sampled at temperature 1 from the 135M model.
    let srv = start(&[]);
    let a = srv.addr.as_str();
    let prompts = [
        "Describe a person.",
        "Pick a colour and say why.",
        "What's the weather like?",
        "List some numbers.",
    ];
    let mut n_ok = 0;
    for (i, schema) in schemas().iter().enumerate() {
        for (k, p) in prompts.iter().enumerate() {
            let body = serde_json::json!({
                "messages": [{"role": "user", "content": p}],
                "max_tokens": 96, "temperature": 1.0, "seed": (i * 10 + k) as u64,
                "response_format": {"type": "json_schema", "json_schema": {"name": "s", "strict": true, "schema": schema}},
            });
            let (s, b) = http(a, "POST", "/v1/chat/completions", &body.to_string());
            assert_eq!(s, 200, "{b}");
            let j = json(&b);
            let text = j["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(
                j["choices"][0]["finish_reason"], "stop",
                "did not finish: {text}"
            );
            let v: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {text:?}"));
            assert!(matches(&v, schema), "{text} does not match {schema}");
            n_ok += 1;
        }
    }
    // json_object: any object
    let body = r#"{"messages":[{"role":"user","content":"Give me a JSON object about cats."}],"max_tokens":64,"temperature":0,"response_format":{"type":"json_object"}}"#;
    let (s, b) = http(a, "POST", "/v1/chat/completions", body);
    assert_eq!(s, 200, "{b}");
    let text = json(&b)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    if json(&b)["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap()
                .is_object(),
            "{text}"
        );
    } else {
        assert!(text.starts_with('{'), "{text}");
    }
    assert_eq!(n_ok, 16);
}
