"""Runs accelerate's FSDP code on CPU processes, for the FSDP tests: accelerate turns FSDP on only for GPU-like
devices (``AcceleratorState`` takes the plugin in its multi-GPU branch), so ``allow_fsdp_on_cpu`` applies that
branch to a gloo CPU launch as well. Everything else (the plugin read from the launch configuration, FSDP2's
sharding, the sharded checkpoints) is accelerate's and torch's own code.

As a script it runs the recalign CLI under that patch:
``ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/fsdp.yaml fsdp_on_cpu.py llm train ...``
"""

from __future__ import annotations

import sys


def allow_fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    initialise = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        initialise(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


if __name__ == "__main__":
    allow_fsdp_on_cpu()
    from recalign.cli import app

    app(sys.argv[1:])
