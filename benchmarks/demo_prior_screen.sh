#!/usr/bin/env bash
# The demo prior screened on a GPU (session 15): seven training recipes, each scored by
# text-to-image with the shipped decoder at five prior guidance scales; see
# benchmarks/demo_prior_screen.py. Ran on one H200 in 570 s (the 8 000/12 000-step rows did
# not finish). Results: benchmarks/results/demo-prior-screen.md.
#   OUT=DIR bash benchmarks/demo_prior_screen.sh      (DIV=1000 EVALN=1: a CPU smoke run)
export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
R=/tmp/ps; RES=/tmp/res; mkdir -p $RES; export OUT_REAL=$OUT
nvidia-smi -L; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
collect() {
  python3 - <<'PY'
import json, os, glob
d = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob("/tmp/res/*.json")}
json.dump(d, open(os.environ["OUT_REAL"] + "/all.json", "w"), indent=1)
PY
  for f in /tmp/log_*.txt; do echo "== $f"; tr '\r' '\n' < $f | grep -v '^$' | grep -v 'it/s\]$' | tail -n 6; done > $OUT_REAL/logs.txt 2>&1
}
OUT=$RES python3 benchmarks/demo_prior_screen.py prep $R > /tmp/log_prep.txt 2>&1 || { collect; exit 1; }
for v in "F 12000 64 3e-4 0.1" "E 8000 64 3e-4 0.1" "D 8000 32 3e-4 0.1" "G 4000 128 3e-4 0.1" "A 4000 64 3e-4 0.1" "B 4000 64 1e-3 0.1" "C 4000 64 3e-4 0.2"; do
  set -- $v
  OUT=$RES python3 benchmarks/demo_prior_screen.py variant $R $1 $(( $2 / ${DIV:-1} )) $3 $4 $5 ${EVALN:-64} > /tmp/log_$1.txt 2>&1 &
done
OUT=$RES python3 benchmarks/demo_prior_screen.py base $R ${EVALN:-64} > /tmp/log_base.txt 2>&1 &
( while true; do sleep 15; collect; done ) &
wait -n; sleep 1
while [ $(jobs -r | wc -l) -gt 1 ]; do sleep 5; done
collect; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; cat $OUT_REAL/logs.txt
