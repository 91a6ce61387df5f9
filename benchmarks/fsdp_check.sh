#!/usr/bin/env bash
# `llm train` under FSDP (recipes/accelerate/fsdp.yaml, one process per GPU) against the same command on one
# process without accelerate, on the GPUs of this machine: titles in fp32 and bf16, semantic IDs (LoRA + SID rows as
# trainable tokens) in fp32. Tiny random Llama ("tiny" backbone, SmolLM2's tokenizer) on the tests' rule dataset.
#   bash benchmarks/fsdp_check.sh [PROCESSES]      (from the repository root; output in $WORK, default /tmp/fsdp_check)
set -euo pipefail
processes=${1:-1}
work=${WORK:-/tmp/fsdp_check}
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$work"
python3 - "$work" <<'PY'
import sys

import pandas as pd
from tests.conftest import rule_dataset
from tests.unit.test_tsrec import rule_sids

from recalign.data.dataset import item_table

dataset = rule_dataset()
dataset.save(f"{sys.argv[1]}/data")
frame = dataset.items.to_pandas().drop(columns="item_id")
frame["sid"] = rule_sids(dataset).sids
dataset.items = item_table(pd.DataFrame(frame))
dataset.save(f"{sys.argv[1]}/sid_data")
PY
python3 -m recalign.cli index import --data "$work/sid_data" --out "$work/sids" > "$work/import.log"
common=(--backbone tiny --epochs 2 --batch-size 8 --micro-batch-size 4 --lr 1e-2 --lora-dropout 0 --eval-rows 12
        --beams 5)
arms=("titles-fp32:--data $work/data --max-train-rows 40 --precision fp32"
      "titles-bf16:--data $work/data --max-train-rows 40 --precision bf16"
      "sids-fp32:--data $work/sid_data --sids $work/sids --max-examples 40 --precision fp32")
for arm in "${arms[@]}"; do
  name=${arm%%:*}; read -ra options <<< "${arm#*:}"
  precision=${options[-1]/fp32/no}
  python3 -m recalign.cli llm train "${options[@]}" "${common[@]}" --out "$work/$name-one" > "$work/$name-one.log" 2>&1
  accelerate launch --config_file recipes/accelerate/fsdp.yaml --num_processes "$processes" \
    --mixed_precision "$precision" -m recalign.cli llm train "${options[@]}" "${common[@]}" --out "$work/$name-fsdp" \
    > "$work/$name-fsdp.log" 2>&1
  test -d "$work/$name-fsdp/train/checkpoint/pytorch_model_fsdp_0"  # it ran under FSDP
  echo "== $name: one process vs FSDP x $processes"
  python3 benchmarks/compare_runs.py "$work/$name-one" "$work/$name-fsdp"
done
