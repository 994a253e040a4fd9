#!/usr/bin/env python3
"""Golden chat prompts: real models' Jinja chat templates rendered by Hugging Face transformers.

Writes tests/golden/chat/templates.json: for each template, its source, its bos/eos token
texts, and several conversations with the text transformers renders for them
(`transformers.utils.chat_template_utils.render_jinja_template`, the function behind
`tokenizer.apply_chat_template(..., tokenize=False)`), with and without the generation prompt; for templates that render tools, also conversations
with `tools`, a call and its result (`tool_cases`).
A conversation the template refuses (`raise_exception`, e.g. a system turn for Gemma 2) is
recorded with "error": true. tests/chat_templates.rs renders the same with famstream's
minijinja and compares byte for byte.

The templates are the files llama.cpp keeps in models/templates/ (copied there from each
model's tokenizer_config.json on the Hub), taken from the llama-cpp-python 0.3.36 sdist on PyPI
(the llama.cpp that make_tiny_models.py also uses), plus SmolLM2's from the default model's
GGUF. Llama 3.x templates print today's date unless `date_string` is given: it is fixed here
(and famstream's test passes the same).

    python3 tools/gen_chat_goldens.py            # about 10 s plus a one-time 77 MB download

Versions used for the committed file: Python 3.11.7, transformers 5.23.0, jinja2 3.1.6.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "golden" / "chat" / "templates.json"
LCP = "0.3.36"
DATE = "26 Jul 2024"
TEMPLATES = {
    # file in llama.cpp's models/templates -> (bos, eos) token texts of that model
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B.jinja": ("", "<|im_end|>"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("<|begin_of_text|>", "<|eot_id|>"),
    "google-gemma-2-2b-it.jinja": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("<s>", "</s>"),
    "HuggingFaceTB-SmolLM3-3B.jinja": ("", "<|im_end|>"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "  And another?  "},
    ],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Thanks\nbye"},
    ],
]

# Tool use, for templates that render `tools` (transformers' `apply_chat_template(tools=...)`):
# messages in OpenAI's form (a call's arguments as JSON text, content null), as famstream's
# server receives them; transformers gets the arguments as a dict, as its templates expect, and
# a null content as empty text (Qwen3's template cannot take null; famstream does the same).
# The description has characters an HTML-escaping `tojson` would change (<, >, &, ') and
# non-ASCII; the parameters' keys are not in sorted order. Mistral's template wants 9-character
# alphanumeric call ids.
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now> & tomorrow's, in °C",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                    "days": {"type": "integer"}}, "required": ["city"]}}}]
TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "What's the weather in Paris?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "abc123XYZ", "content": "{\"temp_c\": 21}"},
    ],
]


def for_transformers(conv):
    out = []
    for m in conv:
        m = dict(m)
        if m.get("content") is None:
            m["content"] = ""
        if m.get("tool_calls"):
            m["tool_calls"] = [dict(c, function=dict(c["function"], arguments=json.loads(c["function"]["arguments"])))
                               for c in m["tool_calls"]]
        out.append(m)
    return out


def llama_cpp_templates() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", f"llama-cpp-python=={LCP}", "-d", tmp], check=True)
        out = {}
        with tarfile.open(Path(tmp) / f"llama_cpp_python-{LCP}.tar.gz") as tf:
            for name in TEMPLATES:
                m = tf.getmember(f"llama_cpp_python-{LCP}/vendor/llama.cpp/models/templates/{name}")
                out[name] = tf.extractfile(m).read().decode("utf-8")
        return out


def smollm2_template() -> str:
    import gguf

    sys.path.insert(0, str(REPO))
    from tools.common import default_model

    path = default_model()
    return gguf.GGUFReader(path).fields["tokenizer.chat_template"].contents()


def main():
    from transformers.utils.chat_template_utils import render_jinja_template

    sources = llama_cpp_templates()
    sources["SmolLM2-135M-Instruct (GGUF)"] = smollm2_template()
    specials = dict(TEMPLATES, **{"SmolLM2-135M-Instruct (GGUF)": ("", "<|im_end|>")})
    entries = []
    for name, src in sources.items():
        bos, eos = specials[name]
        cases = []
        for conv in CONVERSATIONS:
            for gen in (True, False):
                case = {"messages": conv, "add_generation_prompt": gen}
                try:
                    text = render_jinja_template(conversations=[conv], chat_template=src, add_generation_prompt=gen,
                                                 bos_token=bos, eos_token=eos, date_string=DATE)[0][0]
                    case["rendered"] = text
                except Exception as e:  # the template refused the conversation
                    case["error"] = True
                    case["message"] = str(e)[:200]
                cases.append(case)
        tool_cases = []
        if "tools" in src:
            for conv in TOOL_CONVERSATIONS:
                case = {"messages": conv, "tools": TOOLS, "add_generation_prompt": True}
                try:
                    case["rendered"] = render_jinja_template(
                        conversations=[for_transformers(conv)], tools=TOOLS, chat_template=src,
                        add_generation_prompt=True, bos_token=bos, eos_token=eos, date_string=DATE)[0][0]
                except Exception as e:
                    case["error"] = True
                    case["message"] = str(e)[:200]
                tool_cases.append(case)
        entries.append({"name": name, "template": src, "bos_token": bos, "eos_token": eos,
                        "date_string": DATE, "cases": cases, "tool_cases": tool_cases})
        ok = sum("rendered" in c for c in cases)
        print(f"{name}: {ok}/{len(cases)} rendered, {sum('rendered' in c for c in tool_cases)} with tools")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"reference": "transformers render_jinja_template", "templates": entries},
                              indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
