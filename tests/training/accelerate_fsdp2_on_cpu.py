"""`seqzoo` with Accelerate's own FSDP2 path forced onto CPU: what `accelerate launch --use_fsdp` gives on GPUs
(Accelerate shards the model and optimizer in `prepare`), which Accelerate will not set up without an accelerator.
Lets test_fsdp.py run the GPU path's code on CPU; it sets private Accelerate state, so it lives in the tests only."""

from __future__ import annotations

import sys

from accelerate import Accelerator, FullyShardedDataParallelPlugin
from accelerate.utils import DistributedType

from seqzoo.cli import main

_init = Accelerator.__init__


def _init_as_fsdp(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch set


Accelerator.__init__ = _init_as_fsdp

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
