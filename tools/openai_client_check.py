#!/usr/bin/env python3
"""The official `openai` Python client against a running `famstream serve`.

    python3 tools/openai_client_check.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY

Run by tests/serve.rs (the server is started there). Each check uses the client's own types
and parsing, so a reply that the client cannot read fails here, not just a field we look at by
hand: chat (plain, streamed with the usage chunk, `n`, `seed`, `stop`, logprobs with
top_logprobs, streamed too, `logit_bias`, presence/frequency penalties, llama-server's
`repeat_penalty`, tool calls plain and streamed), completions (plain, streamed, logprobs), the
model list, sessions, a wrong key (401 AuthenticationError), and refused fields (400 BadRequestError naming them). Prints one line per
check and exits non-zero on the first failure.
"""
from __future__ import annotations

import argparse
import json
import sys


SCHEMAS = [
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"],
     "additionalProperties": False},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120},
                                      "name": {"type": "string", "maxLength": 12}},
     "required": ["age", "name"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"},
                                      "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
     "required": ["ok", "items"], "additionalProperties": False},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "temp": {"type": "number"}},
     "required": ["city", "temp"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 20},
                                      "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2},
                                      "year": {"type": "integer", "minimum": 1900, "maximum": 2100}},
     "required": ["title", "tags", "year"], "additionalProperties": False},
]
PROMPTS = ["Describe a person.", "Pick a colour.", "What's the weather?", "List some numbers.", "Name a book."]


def valid(v, s) -> bool:
    """The schema subset of SCHEMAS: enum, type, min/max, maxLength, items/maxItems, properties."""
    if "enum" in s:
        return v in s["enum"]
    t = s.get("type")
    types = {"object": dict, "string": str, "boolean": bool, "array": list}
    if t == "integer" and not (isinstance(v, int) and not isinstance(v, bool)):
        return False
    if t == "number" and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
        return False
    if t in types and not isinstance(v, types[t]):
        return False
    if "minimum" in s and v < s["minimum"] or "maximum" in s and v > s["maximum"]:
        return False
    if "maxLength" in s and len(v) > s["maxLength"]:
        return False
    if isinstance(v, list):
        return len(v) <= s.get("maxItems", len(v)) and all(valid(x, s.get("items", {})) for x in v)
    if isinstance(v, dict):
        props = s.get("properties", {})
        return all(k in v for k in s.get("required", [])) and all(
            (k in props and valid(x, props[k])) or (k not in props and s.get("additionalProperties", True) is not False)
            for k, x in v.items())
    return True


def structured(c, n: int) -> int:
    """n json_schema requests over SCHEMAS x PROMPTS at temperature 1 with varied seeds: every
    reply that finished must parse and validate. Prints the tally (results/README.md quotes it)."""
    import json
    import time

    ok = truncated = 0
    t0 = time.time()
    for i in range(n):
        schema, prompt = SCHEMAS[i % len(SCHEMAS)], PROMPTS[(i // len(SCHEMAS)) % len(PROMPTS)]
        r = c.chat.completions.create(
            model="famstream", messages=[{"role": "user", "content": prompt}], max_tokens=128, temperature=1.0,
            seed=i, response_format={"type": "json_schema",
                                     "json_schema": {"name": f"s{i % len(SCHEMAS)}", "strict": True, "schema": schema}})
        ch = r.choices[0]
        if ch.finish_reason != "stop":
            truncated += 1
            continue
        v = json.loads(ch.message.content)
        if not valid(v, schema):
            print(f"FAIL reply {ch.message.content!r} does not match {schema}")
            return 1
        ok += 1
    print(f"structured: {ok} of {n} replies parsed and matched their schema, {truncated} hit max_tokens, "
          f"{time.time() - t0:.0f} s")
    return 0 if ok + truncated == n else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--structured", type=int, default=0,
                    help="instead: N structured (json_schema) requests, each validated")
    args = ap.parse_args()
    import openai

    c = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    if args.structured:
        return structured(c, args.structured)
    user = [{"role": "user", "content": "Name three colours."}]

    def check(name, ok, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
        if not ok:
            sys.exit(1)

    models = c.models.list()
    check("models.list", len(models.data) >= 1 and models.data[0].id, models.data[0].id)

    r = c.chat.completions.create(model="famstream", messages=user, max_tokens=12, temperature=0)
    check("chat", r.choices[0].message.role == "assistant" and len(r.choices[0].message.content) > 0
          and r.usage.completion_tokens > 0, repr(r.choices[0].message.content))

    again = c.chat.completions.create(model="famstream", messages=user, max_tokens=12, temperature=0)
    check("chat is deterministic at temperature 0", again.choices[0].message.content == r.choices[0].message.content)

    pieces, usage = [], None
    for chunk in c.chat.completions.create(model="famstream", messages=user, max_tokens=12, temperature=0,
                                           stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    check("chat stream equals the plain reply", "".join(pieces) == r.choices[0].message.content, repr("".join(pieces)))
    check("stream_options.include_usage", usage is not None and usage.completion_tokens > 0)

    n2 = c.chat.completions.create(model="famstream", messages=user, max_tokens=8, temperature=0.9, n=2, seed=7)
    check("n=2", len(n2.choices) == 2 and [ch.index for ch in n2.choices] == [0, 1])
    s1 = c.chat.completions.create(model="famstream", messages=user, max_tokens=8, temperature=0.9, seed=11)
    s2 = c.chat.completions.create(model="famstream", messages=user, max_tokens=8, temperature=0.9, seed=11)
    check("seed reproduces a sampled reply", s1.choices[0].message.content == s2.choices[0].message.content)

    lp = c.chat.completions.create(model="famstream", messages=user, max_tokens=5, temperature=0,
                                   logprobs=True, top_logprobs=3)
    content = lp.choices[0].logprobs.content
    check("logprobs + top_logprobs", len(content) > 0 and all(len(t.top_logprobs) == 3 and t.logprob <= 0
                                                               for t in content))

    spieces, sentries = [], []
    for chunk in c.chat.completions.create(model="famstream", messages=user, max_tokens=5, temperature=0,
                                           logprobs=True, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            spieces.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            sentries += chunk.choices[0].logprobs.content
    check("streamed logprobs equal the plain ones",
          [(t.token, round(t.logprob, 4)) for t in sentries] == [(t.token, round(t.logprob, 4)) for t in content]
          and "".join(spieces) == lp.choices[0].message.content, f"{len(sentries)} vs {len(content)} tokens")

    # logit_bias: +100 on one token makes greedy decoding repeat it; -100 bans the greedy choice
    forced = c.chat.completions.create(model="famstream", messages=user, max_tokens=4, temperature=0, logprobs=True,
                                       logit_bias={"100": 100})
    ftoks = [t.token for t in forced.choices[0].logprobs.content]
    check("logit_bias +100 forces a token", len(ftoks) == 4 and len(set(ftoks)) == 1, repr(ftoks))
    # presence/frequency penalties: greedy decoding then picks the token of largest logprob minus
    # (presence + frequency * count) over the tokens the reply has produced (logprobs are the
    # model's, before penalties). From the plain reply's top-20 logprobs, predict where each
    # penalized reply first parts from it and with which token, and check the server's reply does
    # exactly that (a prediction is made only while it is certain: no near-tie, and no token
    # outside the top 20 could win). Exact on any machine, whatever reply the model gives here.
    # The server's repetition penalty (llama-server's `repeat_penalty`) is turned off for this.
    rep = [{"role": "user", "content": "Count from 1 to 30, separated by commas."}]

    def reply(**kw):
        return c.chat.completions.create(model="famstream", messages=rep, max_tokens=40, temperature=0,
                                         logprobs=True, top_logprobs=20, extra_body={"repeat_penalty": 1.0},
                                         **kw).choices[0].logprobs.content
    plain = reply()
    parted = 0
    for field, pen in [("frequency_penalty", 2.0), ("presence_penalty", 2.0), ("frequency_penalty", -2.0),
                       ("presence_penalty", -2.0)]:
        pres, freq = (pen, 0.0) if field == "presence_penalty" else (0.0, pen)
        got = [t.token for t in reply(**{field: pen})]
        counts, want, n_sure = {}, None, len(plain)
        for i, t in enumerate(plain):
            score = sorted(((x.logprob - (pres + freq * counts[x.token] if x.token in counts else 0.0), x.token)
                            for x in t.top_logprobs), reverse=True)
            # a token outside the top 20 scores at most the 20th logprob plus the largest bonus
            outside = t.top_logprobs[-1].logprob - min([0.0] + [pres + freq * n for n in counts.values()])
            if score[0][0] - max(score[1][0], outside) < 1e-3:
                n_sure = i  # a near-tie: the replies are compared up to here only
                break
            if score[0][1] != t.token:
                want = score[0][1]
                n_sure = i
                break
            counts[t.token] = counts.get(t.token, 0) + 1
        plain_toks = [t.token for t in plain]
        # an empty token is the end token (the reply stops there) or another special one
        ends = [[want], []] if want == "" else [[want]]
        ok = got[:n_sure] == plain_toks[:n_sure] and (want is None or got[n_sure:n_sure + 1] in ends)
        parted += want is not None
        check(f"{field}={pen} parts from the plain reply where predicted", ok,
              f"at token {n_sure} with {want!r}" if want is not None else f"same first {n_sure} tokens")
    check("some penalty changed the reply", parted > 0, f"{parted} of 4")

    first = r.choices[0].message.content.split()[0] if r.choices[0].message.content.split() else None
    if first:
        st = c.chat.completions.create(model="famstream", messages=user, max_tokens=12, temperature=0, stop=[first])
        check("stop", first not in st.choices[0].message.content and st.choices[0].finish_reason == "stop",
              repr(st.choices[0].message.content))

    comp = c.completions.create(model="famstream", prompt="The capital of France is", max_tokens=6, temperature=0)
    check("completions", len(comp.choices[0].text) > 0, repr(comp.choices[0].text))
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="famstream", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if ch.choices)
    check("completions stream equals the plain one", streamed == comp.choices[0].text)
    clp = c.completions.create(model="famstream", prompt="The capital of France is", max_tokens=6, temperature=0,
                               logprobs=2).choices[0]
    check("completions logprobs", clp.text == comp.choices[0].text and "".join(clp.logprobs.tokens) == clp.text
          and len(clp.logprobs.token_logprobs) == len(clp.logprobs.tokens)
          and all(len(t) >= 1 for t in clp.logprobs.top_logprobs)
          and clp.logprobs.text_offset[0] == 0, repr(clp.logprobs.tokens))

    s = c.chat.completions.create(model="famstream", messages=[{"role": "user", "content": "My name is Ada."}],
                                  max_tokens=4, temperature=0, extra_body={"session": "client-check"})
    check("session", len(s.choices) == 1)

    weather = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                       "required": ["city"], "additionalProperties": False}}},
               {"type": "function", "function": {
        "name": "get_time", "description": "The time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                       "required": ["city"], "additionalProperties": False}}}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        t = c.chat.completions.create(model="famstream", messages=ask, max_tokens=64, temperature=0,
                                      tools=weather, tool_choice=choice)
        calls = t.choices[0].message.tool_calls
        if choice == "required":
            required = calls[0] if calls else None
        check(f"tool_choice={choice if isinstance(choice, str) else 'named'}",
              t.choices[0].finish_reason == "tool_calls" and len(calls) == 1
              and calls[0].function.name in ("get_weather", "get_time")
              and isinstance(json.loads(calls[0].function.arguments)["city"], str),
              f"{calls[0].function.name}({calls[0].function.arguments})" if calls else "no call")
    named = calls[0]
    # streamed: the call comes as tool_calls deltas (id and name, then the arguments)
    acc, finish = {}, None
    for chunk in c.chat.completions.create(model="famstream", messages=ask, max_tokens=64, temperature=0,
                                           tools=weather, tool_choice="required", stream=True):
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        check("a streamed call sends no text", not ch.delta.content, repr(ch.delta.content))
        for d in ch.delta.tool_calls or []:
            e = acc.setdefault(d.index, {"name": "", "arguments": "", "id": None})
            e["id"] = d.id or e["id"]
            e["name"] += (d.function.name or "") if d.function else ""
            e["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = ch.finish_reason or finish
    check("streamed tool call", finish == "tool_calls" and len(acc) == 1 and acc[0]["id"]
          and acc[0]["name"] == required.function.name
          and json.loads(acc[0]["arguments"]) == json.loads(required.function.arguments), repr(acc))
    sauto = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="famstream", messages=user, max_tokens=12, temperature=0, tools=weather, stream=True) if ch.choices)
    plain_auto = c.chat.completions.create(model="famstream", messages=user, max_tokens=12, temperature=0,
                                           tools=weather).choices[0].message
    check("streamed tool_choice=auto reply equals the plain one", plain_auto.tool_calls
          or sauto == plain_auto.content, repr(sauto))
    check("named tool is the one called", named.function.name == "get_weather")
    auto = c.chat.completions.create(model="famstream", messages=ask, max_tokens=64, temperature=0, tools=weather)
    m = auto.choices[0].message
    check("tool_choice=auto gives a reply or a call", (m.content is not None) != bool(m.tool_calls))
    follow = c.chat.completions.create(model="famstream", max_tokens=24, temperature=0, tools=weather, messages=ask + [
        {"role": "assistant", "content": None, "tool_calls": [named.model_dump()]},
        {"role": "tool", "tool_call_id": named.id, "content": '{"temp_c": 21, "sky": "clear"}'}])
    check("a tool result continues the conversation", follow.choices[0].message.content is not None
          or bool(follow.choices[0].message.tool_calls))

    try:
        c.completions.create(model="famstream", prompt="Hi", max_tokens=4, best_of=2)
        check("refused field", False, "best_of was accepted")
    except openai.BadRequestError as e:
        check("refused field names it", "best_of" in str(e), str(e)[:80])
    try:
        c.chat.completions.create(model="famstream", messages=user, max_tokens=4, presence_penalty=3)
        check("out-of-range penalty", False, "presence_penalty=3 was accepted")
    except openai.BadRequestError as e:
        check("out-of-range penalty names it", "presence_penalty" in str(e), str(e)[:80])
    try:
        c.chat.completions.create(model="famstream", messages=user, max_tokens=4, extra_body={"repeat_penalty": 0})
        check("repeat_penalty 0", False, "was accepted")
    except openai.BadRequestError as e:
        check("repeat_penalty 0 is refused, naming it", "repeat_penalty" in str(e), str(e)[:80])

    bad = openai.OpenAI(base_url=args.base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
        check("wrong key", False, "accepted")
    except openai.AuthenticationError:
        check("wrong key gets 401", True)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
