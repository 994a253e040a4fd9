"""The one splicer of results/README.md: replace the generated block between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` with new text, writing a temporary file and renaming
it. Every script that regenerates a table calls this."""
import re
from pathlib import Path


def splice(path, name, text, missing="error"):
    """Put `text` between NAME's markers in `path`. Without the markers: `missing` = "error"
    (stop, naming them), "append" (add the block at the end) or "skip" (leave the file)."""
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
