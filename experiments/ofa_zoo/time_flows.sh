#!/bin/bash
# Both zoo flows from nothing (stand-in files, Note10 import, nas run, queries), timed; see README.md here.
# Deletes runs/ofa_zoo_local, runs/ofa_zoo_note10, runs/ofa_zoo_files and $HWNAS_HOME first.
cd "$(dirname "$0")/../.."
export HWNAS_HOME=${HWNAS_HOME:-$PWD/runs/ofa_zoo_home}   # a fresh device store
rm -rf "$HWNAS_HOME" runs/ofa_zoo_local runs/ofa_zoo_note10 runs/ofa_zoo_files
uptime
t0=$(date +%s.%N)
.venv/bin/python experiments/ofa_zoo/make_standin.py --out runs/ofa_zoo_files
.venv/bin/nas latency import-ofa ../shared/data/ofa_note10_lut --device note10 --space ofa_mbv3_w1.2
t1=$(date +%s.%N)
.venv/bin/nas run experiments/ofa_zoo_note10.yaml --no-progress
for b in 15 20 25 30 40; do
  .venv/bin/nas query runs/ofa_zoo_note10 --device note10 --max-latency-ms $b --export runs/ofa_zoo_note10/exports/note10-${b}ms.onnx | grep -E "arch |latency|accuracy|exported"
done
t2=$(date +%s.%N)
.venv/bin/nas run experiments/ofa_zoo_local.yaml --no-progress
.venv/bin/nas query runs/ofa_zoo_local --device local-cpu-1t-ort --max-latency-ms 3.5 --export runs/ofa_zoo_local/exports/local-3.5ms.onnx
t3=$(date +%s.%N)
echo "TIMES standin+import-ofa $(echo "$t1 - $t0" | bc) s; note10 run+5 queries $(echo "$t2 - $t1" | bc) s; local run+query $(echo "$t3 - $t2" | bc) s"
uptime
