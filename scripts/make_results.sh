#!/usr/bin/env bash
# Regenerate the figures of docs/results.md from the shipped checkpoints and their loss logs,
# with the project's own commands.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p docs/figures
for style in "$@"; do
  styletransfer compare examples/chelsea.jpg examples/astronaut.jpg examples/rocket.jpg examples/coffee.jpg \
    -m "$style" -o "docs/figures/$style-grid.jpg" --size 256
  styletransfer plot "$style" -o "docs/figures/$style-curves.png" \
    --title "training loss by normalisation: ${style//_/ }"
done
styletransfer list styletransfer/checkpoints
