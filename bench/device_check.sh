#!/usr/bin/env bash
# Every GPU figure the project claims, from one command on a machine with NVIDIA GPUs (within 8
# minutes on one H100/H200). Needs the project installed with a CUDA build of torch (`make setup
# TORCH=...`, see the README); installs nothing, needs no network and no browser:
#
#   bench/device_check.sh --prepare DIR    # beforehand, on a machine with Chromium: the demo's
#                                          # tokenizer, localized pages and tiny LayoutLM (the
#                                          # fine-tuning and padding checks); carry DIR over
#   DEVICE_CHECK_DATA=DIR bench/device_check.sh    # on the GPU machine
#   SMOKE=1 bench/device_check.sh          # the same steps at toy sizes on a CPU (CI: plumbing)
#
# It prints, step by step: the device; MVLM as published (a BERT-base-shaped model converted as
# `init-model` converts cl-tohoku's BERT, lr 5e-5, 1,000 warmup steps, 32 × 512 per GPU) in fp16
# (loss scaler: overflow steps counted) and bf16, eager and compiled: tokens/s, MFU, peak GPU
# memory, and after the bf16 run the held-out layout-ablation gap; the padding share of the
# prepared real pages with and without length grouping; bench_pretrain.py against the Hugging
# Face Trainer; fine-tuning and `predict` times; with several GPUs visible, the same MVLM steps
# under torchrun on all of them and the scaling efficiency. A step that fails prints its error and
# the script goes on; the exit status counts the failed steps.
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
LJ="$PY -m layoutja"
WORK=$(mktemp -d /tmp/device-check-XXXX)
trap 'rm -rf "$WORK"' EXIT

if [ "${1:-}" = "--prepare" ]; then
  DIR=${2:?usage: bench/device_check.sh --prepare DIR}
  make --no-print-directory vocab localize bert init-model OUT="$DIR"
  echo "prepared $DIR: carry it to the GPU machine and set DEVICE_CHECK_DATA=$DIR"
  exit $?
fi

# MVLM runs as PRECISION:COMPILE; the smoke test takes each path once (compiling is slow on a CPU)
if [ -n "${SMOKE:-}" ]; then  # toy sizes: checks the script, measures nothing
  HIDDEN=64 LAYERS=1 BATCH=2 STEPS=4 PAGES=6 WARMUP=1 WARMUP_STEPS=2
  RUNS="fp16:false bf16:true"
else
  HIDDEN=768 LAYERS=12 BATCH=32 STEPS=30 PAGES=64 WARMUP=5 WARMUP_STEPS=1000
  RUNS="fp16:false fp16:true bf16:false bf16:true"
fi
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
FAILED=0

step() {  # step TITLE COMMAND...: run it, print its output; on failure its error, then go on
  echo "== $1"
  shift
  "$@" > "$WORK/step.log" 2>&1
  local status=$?
  if [ "$status" -ne 0 ]; then
    FAILED=$(( FAILED + 1 ))
    echo "FAILED (exit $status):"
    tail -n 25 "$WORK/step.log" | sed 's/^/  /'
  else
    # without torchrun's banner and transformers' progress bars
    grep -v -E "^(W[0-9]{4}|\*+$|Setting OMP)|it/s\]" "$WORK/step.log" | tail -n 20
  fi
}

device() {
  $PY - <<'EOF'
import torch, transformers
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (no CUDA)"
print(f"{name} × {max(torch.cuda.device_count(), 1)}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, transformers {transformers.__version__}")
EOF
}

model() {  # synthetic pages, and a BERT-base-shaped BERT converted to LayoutLM as published
  $PY - "$WORK" "$PAGES" "$HIDDEN" "$LAYERS" <<'EOF' &&
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_pretrain import prepare_synthetic
from transformers import BertConfig, BertForPreTraining
from layoutja.common import copy_tokenizer
work, pages, hidden, layers = Path(sys.argv[1]), *map(int, sys.argv[2:])
tokenizer, _ = prepare_synthetic(work, pages)
config = BertConfig(vocab_size=32768, hidden_size=hidden, num_hidden_layers=layers,
                    num_attention_heads=max(hidden // 64, 1), intermediate_size=4 * hidden)
BertForPreTraining(config).save_pretrained(work / "bert")
copy_tokenizer(tokenizer, work / "bert")
print(f"{pages} synthetic pages of 4,300 tokens; a BERT of hidden {hidden}, {layers} layers")
EOF
  $LJ init-model --from "$WORK/bert" --out "$WORK/layoutlm-init"
}

summary() {  # summary METRICS.jsonl LABEL: the figures of a run
  $PY - "$1" "$2" <<'EOF'
import json, math, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
timed = [r for r in rows[1:] if "tokens_per_s" in r] or rows  # the first window has start-up
last = rows[-1]
mfu = [r["mfu"] for r in timed if "mfu" in r]
text = (f"{sys.argv[2]}: {last['step']} steps, loss {rows[0]['loss']:.3f} → {last['loss']:.3f} "
        f"(finite: {math.isfinite(last['loss'])}), overflow steps {last['skipped_steps']}, "
        f"{sum(r['tokens_per_s'] for r in timed) / len(timed):,.0f} tokens/s")
text += f", MFU {sum(mfu) / len(mfu):.1%}" if mfu else ", MFU: not known for this device"
text += f", peak memory {last['max_memory_gb']} GB" if "max_memory_gb" in last else ""
if "eval_loss_without_layout" in last:
    gap = last["eval_loss_without_layout"] - last["eval_loss"]
    text += f"; held-out loss {last['eval_loss']:.3f}, without layout +{gap:.3f}"
print(text)
EOF
}

mvlm() {  # mvlm PRECISION COMPILE [PROCESSES]: MVLM as published, a few steps
  local out="$WORK/mvlm-$1-$2-${3:-1}" launch="$LJ"
  [ -n "${3:-}" ] && launch="$PY -m torch.distributed.run --nproc_per_node $3 -m layoutja"
  $launch pretrain --config train/mvlm-base.yaml --data "$WORK/localized" --init "$WORK/layoutlm-init" \
    --out "$out" --quiet --schedule.mixed_precision "$1" --schedule.compile "$2" \
    --schedule.max_steps "$STEPS" --schedule.warmup_steps "$WARMUP_STEPS" \
    --schedule.global_batch_size $(( BATCH * ${3:-1} )) --schedule.per_device_batch_size "$BATCH" \
    --data.eval_pages 4 --checkpoint.eval_every "$STEPS" --checkpoint.log_every 5 \
    --checkpoint.save_every 1000000 && summary "$out/metrics.jsonl" "$1, compile $2${3:+, $3 GPUs}"
}

padding() {  # the padding share of real localized pages, with and without length grouping
  $PY - "$DATA/localized" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_data import padding
padding(sorted(Path(sys.argv[1]).glob("part-*.parquet")))
EOF
}

finetune() {
  local start=$(date +%s)
  $LJ finetune --config train/finetune-tiny.yaml --data demo/shinra --model "$DATA/layoutlm-init" \
    --localized "$DATA/localized" --out "$WORK/shinra" --quiet --schedule.mixed_precision fp16 \
    --schedule.epochs 10 && local tuned=$(date +%s) &&
  $LJ predict --model "$WORK/shinra" --data demo/shinra --localized "$DATA/localized" \
    --out "$WORK/predictions.jsonl" --max-length 128 --margin 32 &&
  tail -n 1 "$WORK/shinra/metrics.jsonl" &&
  echo "fine-tuning (10 epochs): $(( tuned - start )) s; predict: $(( $(date +%s) - tuned )) s"
}

step "device" device
step "MVLM as published: a BERT-base-shaped BERT converted to LayoutLM" model
for run in $RUNS; do
  step "MVLM ${run%:*}, compile ${run#*:}" mvlm "${run%:*}" "${run#*:}"
done
if [ "$GPUS" -gt 1 ]; then
  step "MVLM bf16 on $GPUS GPUs (torchrun)" mvlm bf16 false "$GPUS"
  step "scaling efficiency" $PY -c "
import json, sys
one = [json.loads(x) for x in open('$WORK/mvlm-bf16-false-1/metrics.jsonl')][1:]
many = [json.loads(x) for x in open('$WORK/mvlm-bf16-false-$GPUS/metrics.jsonl')][1:]
rate = lambda rows: sum(r['tokens_per_s'] for r in rows) / len(rows)
print(f'$GPUS GPUs: {rate(many) / ($GPUS * rate(one)):.0%} of $GPUS × one GPU')"
fi
step "bench_pretrain.py: layoutja against the Hugging Face Trainer, bf16" \
  $PY bench/bench_pretrain.py --synthetic --pages "$PAGES" --hidden "$HIDDEN" --layers "$LAYERS" \
  --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --precision bf16

DATA=${DEVICE_CHECK_DATA:-}
if [ -z "$DATA" ] && [ -x "${LAYOUTJA_CHROMIUM:-/usr/bin/chromium}" ]; then
  DATA="$WORK/demo"
  step "preparing the demo's pages here (--prepare)" bench/device_check.sh --prepare "$DATA"
fi
if [ -n "$DATA" ]; then
  step "padding share of the prepared real pages" padding
  step "fine-tuning and predict on the device" finetune
else
  echo "== padding share, fine-tuning and predict: skipped (no DEVICE_CHECK_DATA, no browser)"
fi
echo "== $FAILED step(s) failed"
exit "$FAILED"
