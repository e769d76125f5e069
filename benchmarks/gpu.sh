#!/usr/bin/env bash
# The project's GPU checks in one go, sized for a few minutes of a lent GPU (about 8 min on an H100):
#   1. the memory goals: full-size decoder full fine-tune and LoRA at 768² (benchmarks/train.py)
#   2. FSDP: the full-size decoder sharded through accelerate, checkpoint, resume, export (benchmarks/fsdp.py)
#   3. the other full-size trainers: inpaint, prior, MoVQ
# on the released structure with random weights (written once to $WEIGHTS, about 17 GB).
#
#   bash benchmarks/gpu.sh OUT_DIR        # from the repository root; needs torch, accelerate, peft, transformers
#
# OUT_DIR gets gpu.log and each step's results (goals-train.*, fsdp.*, rest-train.*); copy them to
# benchmarks/results/ to keep them.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
weights=${WEIGHTS:-/tmp/kandinsky-2-1-random}
log="$out/gpu.log"
py=${PYTHON:-python3}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" -c "import sys, torch, accelerate, peft, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"
  df -h /tmp | tail -1
} >>"$log" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit
  local name=$1 limit=$2
  shift 2
  echo "== $name: $* (limit ${limit}s) $(date -u +%T)" >>"$log"
  touch "$out/.started"
  timeout "$limit" "$@" >>"$log" 2>&1
  echo "== $name: exit $? $(date -u +%T)" >>"$log"
}

keep() {  # keep PREFIX FILE...: copy the results this step wrote (not older ones) to OUT_DIR
  local prefix=$1 file
  shift
  for file in "$@"; do
    if [ "$file" -nt "$out/.started" ]; then cp "$file" "$out/$prefix${file##*/}"; fi
  done
}

step train-goals 270 "$py" benchmarks/train.py --full --no-tiny --random-weights "$weights" --tasks decoder lora
keep goals- benchmarks/results/train.json benchmarks/results/train.md
step fsdp 190 "$py" benchmarks/fsdp.py --random-weights "$weights"
keep "" benchmarks/results/fsdp.json benchmarks/results/fsdp.md
step train-rest 120 "$py" benchmarks/train.py --full --no-tiny --random-weights "$weights" --tasks inpaint prior movq
keep rest- benchmarks/results/train.json benchmarks/results/train.md
rm -f "$out/.started"
grep -E "^== |^\| |Error|error" "$log" | tail -60
