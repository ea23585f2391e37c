#!/usr/bin/env bash
# Train the four models of one style (BN, IN, BN+SE, IEBN) with identical settings, seed and
# photos, then export each to $EXPORT/<name>/<norm>.safetensors (default models/) with its loss log;
# `STYLETRANSFER_MODELS=models styletransfer stylize photo.jpg -m NAME` then finds them by name.
# Resumable: run it again after an interruption and every run continues from its checkpoint.
# NORMS picks some of the four; on a 2-core CPU two halves at once, each on one core
# (OMP_NUM_THREADS=1 NORMS="bn se" ... & OMP_NUM_THREADS=1 NORMS="in iebn" ...), made 1.94 steps/s
# in all against 1.8 for one run on both cores.
#
#   scripts/train_style.sh STYLE_IMAGE NAME "CREDIT" [more styletransfer train options]
#
# The shipped models (styletransfer/checkpoints) were made with the defaults below and ITERATIONS=3000,
# on the CPU, from the paintings in styles/, with EXPORT=styletransfer/checkpoints,
#   STYLETRANSFER_VGG_WEIGHTS=../shared/assets/vgg/vgg19-imagenet-features.pth and CONTENT_DIR a folder of
#   the 428 photos of ../shared/assets/content outside bsds500/val and bsds500/test.
set -euo pipefail
style_image=$1 name=$2 credit=$3
shift 3
: "${CONTENT_DIR:?set CONTENT_DIR to a folder of training photos}"
: "${NORMS:=bn in se iebn}"
: "${ITERATIONS:=1000}" "${IMAGE_SIZE:=128}" "${STYLE_SIZE:=256}" "${BATCH_SIZE:=4}" "${VGG:=vgg19}"
: "${RUNS:=runs}" "${EXPORT:=models}"

for norm in $NORMS; do
  run="$RUNS/$name-$norm"
  styletransfer train --resume --out "$run" --style "$style_image" --content-dir "$CONTENT_DIR" \
    --norm "$norm" --iterations "$ITERATIONS" --image-size "$IMAGE_SIZE" --style-size "$STYLE_SIZE" \
    --batch-size "$BATCH_SIZE" --vgg "$VGG" --seed 0 --style-name "$name" --style-credit "$credit" "$@"
  styletransfer export "$run/checkpoint.safetensors" "$EXPORT/$name/$norm.safetensors"
done
styletransfer list "$EXPORT"
