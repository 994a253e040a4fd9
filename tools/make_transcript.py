#!/usr/bin/env python3
"""Make a long meeting-style transcript with planted facts, for the summarization evaluation.

usage: tools/make_transcript.py OUT.txt OUT.facts.json [--chars 140000] [--no-facts]

Speaker turns (`NAME: text`, one per line) are taken from ../shared/data/shakespeare_37_plays.txt
(the plays are already "SPEAKER." then the speech). Three facts are planted as ordinary turns:
early (5%), middle (50%) and late (95%) of the text: a number, a name and a decision. The facts
JSON lists, for each, the question to ask, the strings an answer must contain and a reference
answer (for log-likelihood scoring). --no-facts writes the same transcript without the planted
lines (the control for tools/eval_layouts.sh).
Deterministic; about 140k characters ~ 39k SmolLM2 tokens by default.
"""
import json, re, sys
from pathlib import Path

FACTS = [
    (0.05, "TREASURER: For the record, the bridge fund now holds exactly 4217 gold crowns.",
     "How many gold crowns does the bridge fund hold?", ["4217"], "The bridge fund holds 4217 gold crowns."),
    (0.50, "STEWARD: The new keeper of the northern lighthouse will be a woman named Rosalind Vane.",
     "Who will be the new keeper of the northern lighthouse?", ["Rosalind"], "Rosalind Vane will be the new keeper."),
    (0.95, "CHAIR: We have decided: the council will move to Ravenna on the ninth of June.",
     "Where will the council move?", ["Ravenna"], "The council will move to Ravenna."),
]

def turns(text):
    """(speaker, speech) pairs from the plays' 'NAME.' + lines layout."""
    out, who, buf = [], None, []
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z][A-Z' ]{1,30})\.", line.strip())
        if m:
            if who and buf:
                out.append((who, " ".join(buf)))
            who, buf = m.group(1).title(), []
        elif who and line.strip() and not line.startswith("["):
            buf.append(line.strip())
    return out

def speaker_lines(chars, facts=(), skip=0):
    """`NAME: speech` lines, about `chars` characters, with `facts` ((fraction, line, ...))
    inserted at their fractions of the text; `skip`: start after that many characters of turns
    (another transcript from later plays)."""
    src = Path(__file__).resolve().parent.parent.parent / "shared/data/shakespeare_37_plays.txt"
    lines, n, skipped = [], 0, 0
    for who, speech in turns(src.read_text()):
        if skipped < skip:
            skipped += len(who) + len(speech) + 3
            continue
        lines.append(f"{who}: {speech}")
        n += len(lines[-1]) + 1
        if n >= chars:
            break
    for frac, fact, *_ in sorted(facts, reverse=True):
        lines.insert(int(len(lines) * frac), fact)
    return lines

def main():
    out_txt, out_json = Path(sys.argv[1]), Path(sys.argv[2])
    chars = int(sys.argv[sys.argv.index("--chars") + 1]) if "--chars" in sys.argv else 140_000
    lines = speaker_lines(chars, () if "--no-facts" in sys.argv else FACTS)
    out_txt.write_text("\n".join(lines) + "\n")
    out_json.write_text(json.dumps([{"position": f, "fact": t, "question": q, "expect": e, "answer": a} for f, t, q, e, a in FACTS], indent=1))

if __name__ == "__main__":
    main()
