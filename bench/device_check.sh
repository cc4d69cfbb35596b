#!/usr/bin/env bash
# Every GPU figure the project claims, from one command on a machine with one NVIDIA GPU
# (under 5 minutes on an H100/H200). Needs the project installed with a CUDA build of torch;
# needs no network and no browser:
#
#   bench/device_check.sh                  # on the GPU machine
#   bench/device_check.sh --prepare DIR    # beforehand, on any machine with Chromium: the demo's
#                                          # tokenizer, localized pages and tiny LayoutLM, for the
#                                          # fine-tuning check (DEVICE_CHECK_DATA=DIR on the GPU)
#   SMOKE=1 bench/device_check.sh          # the same steps at toy sizes, on a CPU (plumbing only)
#
# It prints, in order: the device and attention implementation; a short fp16 MVLM pretraining
# (loss scaler on: overflow steps counted) and a bf16 one at BERT-base size, with tokens/s and
# MFU; bench_pretrain.py at BERT-base size (hidden 768, 12 layers, batch 32, length 512) against
# the Hugging Face Trainer baseline in the same run; fine-tuning and `predict` on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
LJ="$PY -m layoutja"
WORK=$(mktemp -d /tmp/device-check-XXXX)
trap 'rm -rf "$WORK"' EXIT

if [ "${1:-}" = "--prepare" ]; then
  DIR=${2:?usage: bench/device_check.sh --prepare DIR}
  make --no-print-directory vocab localize bert init-model OUT="$DIR"
  echo "prepared $DIR: carry it to the GPU machine and set DEVICE_CHECK_DATA=$DIR"
  exit 0
fi

if [ -n "${SMOKE:-}" ]; then  # toy sizes: checks the script, measures nothing
  HIDDEN=64 LAYERS=1 BATCH=2 STEPS=4 PAGES=4 WARMUP=1
else
  HIDDEN=768 LAYERS=12 BATCH=32 STEPS=30 PAGES=64 WARMUP=5
fi
HEADS=$(( HIDDEN / 64 ))

echo "== device"
$PY - <<'EOF'
import torch, transformers
from transformers import LayoutLMConfig, LayoutLMForMaskedLM
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA)"
print(f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"transformers {transformers.__version__}")
model = LayoutLMForMaskedLM(LayoutLMConfig(hidden_size=64, num_hidden_layers=1,
                                           num_attention_heads=1, intermediate_size=64))
print(f"LayoutLM attention: {model.config._attn_implementation}")
EOF

echo "== synthetic localized pages ($PAGES, ~4,300 tokens each)"
$PY - "$WORK" "$PAGES" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_pretrain import prepare_synthetic
prepare_synthetic(Path(sys.argv[1]), int(sys.argv[2]))
EOF

pretrain() {  # $1 precision: a short MVLM run at BERT-base size, its figures from metrics.jsonl
  local out="$WORK/mvlm-$1"
  $LJ pretrain --config train/mvlm-tiny.yaml --data "$WORK/localized" --tokenizer "$WORK/tokenizer" \
    --out "$out" --quiet --schedule.mixed_precision "$1" --schedule.max_steps "$STEPS" \
    --schedule.global_batch_size "$BATCH" --schedule.per_device_batch_size "$BATCH" \
    --data.max_length 512 --checkpoint.log_every 5 --checkpoint.save_every 1000000 \
    --model.hidden_size "$HIDDEN" --model.num_hidden_layers "$LAYERS" \
    --model.num_attention_heads "$HEADS" --model.intermediate_size $(( 4 * HIDDEN )) \
    --model.max_position_embeddings 512
  $PY - "$out/metrics.jsonl" "$1" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
timed = rows[1:] or rows  # the first logged window includes start-up
last = rows[-1]
mfu = [r["mfu"] for r in timed if "mfu" in r]
print(f"{sys.argv[2]}: {last['step']} steps, loss {rows[0]['loss']:.3f} → {last['loss']:.3f} "
      f"(finite: {math.isfinite(last['loss'])}), overflow steps skipped {last['skipped_steps']}, "
      f"{sum(r['tokens_per_s'] for r in timed) / len(timed):.0f} tokens/s"
      + (f", MFU {sum(mfu) / len(mfu):.1%}" if mfu else ", MFU not known for this device"))
EOF
}
echo "== MVLM pretraining, fp16 (GradScaler) and bf16"
pretrain fp16
pretrain bf16

echo "== bench_pretrain.py: layoutja against the Hugging Face Trainer, bf16"
$PY bench/bench_pretrain.py --synthetic --pages "$PAGES" --hidden "$HIDDEN" --layers "$LAYERS" \
  --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --precision bf16 2>/dev/null \
  | grep -E "^(hidden|HF|layoutja)"

echo "== fine-tuning and predict on the device"
DATA=${DEVICE_CHECK_DATA:-}
if [ -z "$DATA" ] && [ -x "${LAYOUTJA_CHROMIUM:-/usr/bin/chromium}" ]; then
  DATA="$WORK/demo"
  bench/device_check.sh --prepare "$DATA" > "$WORK/prepare.log" 2>&1 || { cat "$WORK/prepare.log"; exit 1; }
fi
if [ -z "$DATA" ]; then
  echo "skipped: no browser here and no DEVICE_CHECK_DATA (see --prepare above)"
  exit 0
fi
start=$(date +%s)
$LJ finetune --config train/finetune-tiny.yaml --data demo/shinra --model "$DATA/layoutlm-init" \
  --localized "$DATA/localized" --out "$WORK/shinra" --quiet --schedule.mixed_precision fp16 \
  --schedule.epochs 10
$LJ predict --model "$WORK/shinra" --data demo/shinra --localized "$DATA/localized" \
  --out "$WORK/predictions.jsonl" --max-length 128 --margin 32
tail -n 1 "$WORK/shinra/metrics.jsonl"
echo "fine-tuning + predict: $(( $(date +%s) - start )) s"
