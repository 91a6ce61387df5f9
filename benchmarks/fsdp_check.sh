#!/usr/bin/env bash
# `llm train` under FSDP (recipes/accelerate/fsdp.yaml, one process per GPU) against the same command on one
# process without accelerate, on the GPUs of this machine: titles in fp32 and bf16, titles with model selection
# every epoch, and semantic IDs (LoRA + SID rows as trainable tokens) in fp32. Tiny random Llama ("tiny" backbone,
# SmolLM2's tokenizer) on the tests' rule dataset.
#   bash benchmarks/fsdp_check.sh [PROCESSES]      (from the repository root; runs in $WORK, default /tmp/fsdp_check)
set -euo pipefail
processes=${1:-1}
work=${WORK:-/tmp/fsdp_check}
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
rm -rf "$work" && mkdir -p "$work"

logged() {  # logged LOG COMMAND...: the command's output goes to LOG, shown when it fails
  local log=$1; shift
  "$@" > "$log" 2>&1 || { tail -40 "$log"; echo "failed: $*" >&2; exit 1; }
}

nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import accelerate, peft, torch, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__,
      'peft', peft.__version__)"
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
logged "$work/import.log" python3 -m recalign.cli index import --data "$work/sid_data" --out "$work/sids"
common=(--backbone tiny --epochs 2 --batch-size 8 --micro-batch-size 4 --lr 1e-2 --lora-dropout 0 --eval-rows 12
        --beams 5)
arms=("titles-fp32 fp32 --data $work/data --max-train-rows 40"
      "titles-bf16 bf16 --data $work/data --max-train-rows 40"
      "titles-selection-fp32 fp32 --data $work/data --max-train-rows 40 --select-every 1 --select-split test"
      "sids-fp32 fp32 --data $work/sid_data --sids $work/sids --max-examples 40")
for arm in "${arms[@]}"; do
  read -r name precision options <<< "$arm"
  read -ra options <<< "$options"
  mixed=no; [ "$precision" = bf16 ] && mixed=bf16
  logged "$work/$name-one.log" python3 -m recalign.cli llm train "${options[@]}" "${common[@]}" \
    --precision "$precision" --out "$work/$name-one"
  logged "$work/$name-fsdp.log" accelerate launch --config_file recipes/accelerate/fsdp.yaml \
    --num_processes "$processes" --mixed_precision "$mixed" -m recalign.cli llm train "${options[@]}" "${common[@]}" \
    --precision "$precision" --out "$work/$name-fsdp"
  [ -d "$work/$name-fsdp/train/checkpoint/pytorch_model_fsdp_0" ] || { echo "$name: no FSDP checkpoint" >&2; exit 1; }
  echo "== $name: one process vs FSDP x $processes (both wrote their checkpoints; FSDP's is sharded)"
  python3 benchmarks/compare_runs.py "$work/$name-one" "$work/$name-fsdp"
done
