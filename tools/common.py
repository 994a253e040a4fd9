"""What the tools share: the repository root, the default model, the release binary, and the one
splicer of results/README.md.

Scripts import it as `tools.common` (the repository root on sys.path: the first lines of each
script put it there, so `python3 tools/NAME.py` and `python3 -m tools.NAME` both work).
"""
import math
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The release binary (`cargo build --release`).
FAMSTREAM = ROOT / "target/release/famstream"


def wilson95(hits, n):
    """The 95% Wilson score interval [lo, hi] of hits/n, as src/recall.rs computes it ([0, 1]
    for n = 0)."""
    if n == 0:
        return [0.0, 1.0]
    z, p = 1.96, hits / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(c - h, 0.0), min(c + h, 1.0)]


def default_model(name=None):
    """Path of a model in the model cache, fetched there the first time (tools/fetch_model.sh):
    the default SmolLM2-135M-Instruct Q4_1, or `name` (e.g. "gemma3-270m")."""
    cmd = ["bash", str(ROOT / "tools/fetch_model.sh")] + ([name] if name else [])
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def splice(path, name, text, missing="error"):
    """The one splicer of results/README.md: put `text` between `<!-- NAME:begin -->` and
    `<!-- NAME:end -->` in `path`, writing a temporary file and renaming it. Without the markers:
    `missing` = "error" (stop, naming them), "append" (add the block at the end) or "skip"
    (leave the file)."""
    path = Path(path)
    body = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in body or end not in body:
        if missing == "skip":
            return
        if missing != "append":
            raise SystemExit(f"{path}: no {begin} ... {end} markers")
        body = body.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    # a function as the replacement, so backslashes in the text stay as they are
    body = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", body,
                  count=1, flags=re.S)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body)
    tmp.replace(path)
