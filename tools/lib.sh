# Sourced by the evaluation and benchmark scripts: stop on errors, work from the repository
# root, fetch the default model (its path in $M) and build the release binary ($BIN).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
M=$(tools/fetch_model.sh)
BIN=target/release/famstream
cargo build --release --quiet
