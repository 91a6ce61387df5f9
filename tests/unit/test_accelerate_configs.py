"""The shipped accelerate configurations load with accelerate's own reader and say what their names say."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"


@pytest.mark.parametrize("name,kind", [("ddp", DistributedType.MULTI_GPU), ("deepspeed", DistributedType.DEEPSPEED),
                                       ("fsdp", DistributedType.FSDP)])
def test_accelerate_configs_load(name, kind):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind
    assert config.num_machines == 1 and config.num_processes >= 2 and not config.use_cpu
    if kind == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1  # recalign accumulates itself
    if kind == DistributedType.FSDP:  # FSDP2, sharding per decoder layer (the model's _no_split_modules)
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "fsdp_transformer_layer_cls_to_wrap" not in config.fsdp_config
