"""FSDP for ``seqzoo train``: torch's FSDP2 (``fully_shard``), asked for the way Accelerate asks for it.

``accelerate launch --use_fsdp --fsdp_version 2 ...`` puts ``ACCELERATE_USE_FSDP=true`` and the ``FSDP_*`` settings
in every process's environment (setting them by hand under ``torchrun`` does the same). On GPUs Accelerate then
shards the model itself. On CPU it joins the processes over gloo but ignores FSDP: the run would train with DDP,
unsharded, without a word. There seqzoo applies ``fully_shard`` itself, as Accelerate's FSDP2 does on GPUs and
with the same meaning of its flags: with ``--fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP`` one unit per layer (the
classes a model names in ``_no_split_modules``, or those in ``--fsdp_transformer_layer_cls_to_wrap``), then the
root for the rest (embeddings, final norm, head); without a policy the root alone. Settings of Accelerate's FSDP
plugin that this CPU path does not implement stop the run with the flag to drop.

Whichever shards the model, seqzoo's checkpoints and the final model hold full (gathered) state dicts in
safetensors, so ``fsdp_state_dict_type`` does not apply: a checkpoint written under FSDP resumes under FSDP with the
same number of processes, and the final folder loads with ``from_pretrained`` like any other.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

USE_FSDP = "ACCELERATE_USE_FSDP"


def fsdp_requested() -> bool:
    """Whether this process was launched for FSDP (``ACCELERATE_USE_FSDP``)."""
    value = os.environ.get(USE_FSDP, "false")
    if value.lower() not in ("true", "false"):
        # Accelerate reads anything but "true" (in any case) as false: a "1" would train unsharded without saying so.
        raise ValueError(f"{USE_FSDP}={value!r}: expected 'true' or 'false' (as `accelerate launch --use_fsdp` sets)")
    return value.lower() == "true"


def seqzoo_shards(accelerator: Any) -> bool:
    """True when FSDP was asked for and Accelerate will not shard the model, so :func:`shard_on_cpu` must.

    Raises when FSDP was asked for a run that has nothing to shard over (a single process)."""
    from accelerate.utils import DistributedType

    if not fsdp_requested() or accelerator.distributed_type == DistributedType.FSDP:
        return False
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        return True
    raise ValueError(
        f"{USE_FSDP}=true (accelerate launch --use_fsdp) but this run has {accelerator.num_processes} process(es) "
        f"and Accelerate set it up as {accelerator.distributed_type.value}, so there is nothing to shard over. Launch "
        "several processes (accelerate launch --use_fsdp --fsdp_version 2 --num_processes N -m seqzoo train ...), "
        "or train one process without --use_fsdp"
    )


def shard_on_cpu(model: Any, mixed_precision: str) -> Any:
    """``fully_shard`` ``model`` over the default (gloo) process group, per layer then at the root.

    Reads the launch's FSDP settings through Accelerate's plugin and refuses those this path does not implement.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    plugin = FullyShardedDataParallelPlugin()  # the FSDP_* environment that accelerate launch wrote
    refused = []
    if plugin.fsdp_version != 2:
        refused.append(f"--fsdp_version {plugin.fsdp_version} (FSDP1 needs an accelerator; pass --fsdp_version 2)")
    if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
        refused.append("--fsdp_offload_params true (the parameters are in CPU memory already)")
    if plugin.activation_checkpointing:
        refused.append("--fsdp_activation_checkpointing true")
    if plugin.auto_wrap_policy is size_based_auto_wrap_policy:
        refused.append("--fsdp_auto_wrap_policy SIZE_BASED_WRAP (use TRANSFORMER_BASED_WRAP: one unit per layer)")
    if plugin.ignored_modules is not None:
        refused.append("--fsdp_ignored_modules")
    if mixed_precision != "no":
        refused.append(f"train.mixed_precision={mixed_precision!r} (set it to 'no')")
    if refused:
        raise ValueError(
            "FSDP on CPU (seqzoo applies torch's fully_shard itself, since Accelerate shards only on accelerators) "
            f"does not implement: {'; '.join(refused)}. Drop these settings, or run on GPUs where Accelerate "
            "implements them"
        )

    names: list[str] = []  # no policy (or NO_WRAP): one unit, the whole model gathered for every forward
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy:
        names = list(plugin.transformer_cls_names_to_wrap or model._no_split_modules or [])
    classes = []
    for name in names:
        cls = get_module_class_from_name(model, name)
        if cls is None:
            raise ValueError(f"FSDP: no module of {type(model).__name__} is a {name!r} (--fsdp_transformer_layer_cls_"
                             f"to_wrap / the model's _no_split_modules); its layer classes: {layer_classes(model)}")
        classes.append(cls)
    # Bottom-up, as fully_shard requires: reversed pre-order puts every module after the modules inside it.
    for module in reversed(list(model.modules())):
        if module is not model and isinstance(module, tuple(classes)):
            fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, reshard_after_forward=plugin.reshard_after_forward)
    return model


def layer_classes(model: Any) -> list[str]:
    """The model's own module classes (torch's building blocks left out): what a wrap unit can name."""
    return sorted({type(m).__name__ for m in model.modules()
                   if m is not model and not type(m).__module__.startswith("torch.")})


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync_off(accelerator: Any, model: Any) -> Iterator[None]:
    """Accumulate gradients locally (DDP's ``no_sync``); FSDP2 reduce-scatters at the next backward with sync on."""
    if not is_sharded(model):
        with accelerator.no_sync(model):
            yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
