#!/usr/bin/env bash
# Fill the GPU check's data folder (default gpu_data/ in the checkout, git-ignored) from
# $ATLAS_SHARED_DIR: the BVLC InceptionV1 weights and as many ImageNet sample photos as fit in
# 64 MiB in all (every other class first), so that the folder travels with the checkout.
#   ATLAS_SHARED_DIR=/path/to/shared bash benchmarks/make_gpu_data.sh [DEST]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${ATLAS_SHARED_DIR:-$repo/../shared}"
dest="${1:-$repo/gpu_data}"
limit=$((64 * 1024 * 1024 - 512 * 1024))  # 64 MiB, minus room for the file system's rounding
weights="$shared/models/bvlc_googlenet.pth"
photos="$shared/images/imagenet-sample"
[[ -f "$weights" ]] || { echo "no $weights: set ATLAS_SHARED_DIR to the folder with models/ and images/" >&2; exit 1; }
[[ -d "$photos" ]] || { echo "no $photos: set ATLAS_SHARED_DIR to the folder with models/ and images/" >&2; exit 1; }
mkdir -p "$dest/photos"
cp "$weights" "$dest/bvlc_googlenet.pth"
total=$(stat -c %s "$dest/bvlc_googlenet.pth")
n=0
# even-numbered classes first, then odd ones, until the budget is spent
for f in $(ls "$photos" | grep -i '\.jpe\?g$' | awk 'NR % 2 == 1') $(ls "$photos" | grep -i '\.jpe\?g$' | awk 'NR % 2 == 0'); do
  size=$(stat -c %s "$photos/$f")
  if (( total + size > limit )); then break; fi
  cp "$photos/$f" "$dest/photos/$f"
  total=$((total + size))
  n=$((n + 1))
done
echo "$dest: weights + $n photos, $(du -sb "$dest" | cut -f1) bytes ($(du -sh "$dest" | cut -f1)), limit 64 MiB"
