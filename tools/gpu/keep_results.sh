#!/usr/bin/env bash
# Here, after a device call of run_prebuilt.sh: copies what came back (the results folder under
# the call's files_at) into tools/gpu/results/<UTC date>-<GPU name>/ for committing: summary.md,
# gpu.txt, MANIFEST (the qtrain commit), logs and JSON, nothing over 1 MiB.
#   bash tools/gpu/keep_results.sh <files_at>/results
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
src="${1:?usage: keep_results.sh <results folder that came back from the device call>}"
[[ -f "$src/summary.md" ]] || { echo "keep_results: $src has no summary.md" >&2; exit 2; }
gpu="$(head -1 "$src/gpu.txt" 2>/dev/null | cut -d, -f1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//')"
dest="$root/tools/gpu/results/$(date -u +%Y-%m-%d)-${gpu:-unknown}"
mkdir -p "$dest"
(cd "$src" && find . -type f -size -1025k -print0) | while IFS= read -r -d '' f; do
  mkdir -p "$dest/$(dirname "$f")"
  cp "$src/$f" "$dest/$f"
done
echo "keep_results: $dest ($(find "$dest" -type f | wc -l) files); review, then git add it"
