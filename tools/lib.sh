# Sourced by the evaluation and benchmark scripts: stop on errors, work from the repository
# root, fetch the default model (its path in $M) and build the release binary ($BIN). With
# FAMSTREAM_BIN set, that binary is used and nothing is built (a long evaluation keeps its
# binary while the tree changes); a relative path is from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
M=$(tools/fetch_model.sh)
if [ -n "${FAMSTREAM_BIN:-}" ]; then
  BIN=$FAMSTREAM_BIN
else
  BIN=target/release/famstream
  cargo build --release --quiet
fi
