#!/usr/bin/env bash
# Makes a small `--local` run in each layout (WebDataset tars, `--format files`) with the tiny
# model and reads both back with the `webdataset` and Hugging Face `datasets` packages
# (tools/check_readers.py: every sample's image, caption and metadata). Outside the default test
# run: `datasets` pulls in pyarrow and pandas. The packages go into .venv-readers.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-readers/bin/python ] || python3 -m venv .venv-readers
.venv-readers/bin/python -c 'import webdataset, datasets, PIL' 2>/dev/null \
  || .venv-readers/bin/pip install -q webdataset datasets pillow
cargo build -q -p fleet-cli
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 12); do echo "a small house, view $i"; done > "$work/prompts.txt"
run() {
  target/debug/fleet bulk run "$work/prompts.txt" --name "$1" --local --model tiny --width 64 --height 64 \
    --steps 1 --shard-size 5 --out "$work/$1" "${@:2}" > "$work/$1.log"
}
run readers-webdataset
run readers-files --format files
.venv-readers/bin/python tools/check_readers.py "$work/readers-webdataset" --expect 12
.venv-readers/bin/python tools/check_readers.py "$work/readers-files" --expect 12
echo "check-readers: both layouts read back with webdataset and datasets"
