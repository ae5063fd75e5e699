"""Scale-out on PyTorch's own engine: ``torchrun`` sets RANK/WORLD_SIZE, we join the process group
(gloo on CPU, NCCL on CUDA) and wrap the model in DistributedDataParallel, or ``fully_shard`` (FSDP2)
for models that do not fit one device. Only rank 0 writes files.

    torchrun --nproc-per-node 2 -m duplexlm.cli pretrain examples/pretrain-gpt2-tiny.yaml
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    threads_before: int | None = None  # torch's thread count before this run changed it; cleanup restores it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def pick_device(preference: str) -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {preference!r} requested but CUDA is not available")
    return device


def set_threads(threads: int | None) -> int | None:
    """Give torch ``threads`` intra-op threads (``None``: leave them); returns the count before, or
    ``None`` when nothing changed. The inter-op pool is left alone: eager training does not use it,
    and PyTorch lets a process size it only once, before any parallel work."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads: expected a positive integer, found {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before


def init_distributed(preference: str = "auto", threads: int | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise.

    ``threads``: torch's intra-op threads in this process (every rank). ``None`` keeps the default:
    PyTorch's own (``OMP_NUM_THREADS``, else one per core) in a single process, the machine's cores
    divided among its processes under torchrun on CPU. :func:`cleanup` restores the count before."""
    device = pick_device(preference)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ:  # not launched by torchrun: one plain process
        return DistInfo(device=device, threads_before=set_threads(threads))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:  # one GPU per process: the CUDA error later would be "invalid device ordinal"
            raise ConfigError(f"device: torchrun started process {local_rank} on this machine, but it has {gpus} "
                              f"GPU{'s' if gpus != 1 else ''}; use --nproc-per-node {gpus} (one process per GPU), "
                              "or device=cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif threads is None:
        # Processes on one machine share its cores: do not oversubscribe them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        threads = max(1, (os.cpu_count() or 1) // local_world)
    before = set_threads(threads)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, threads_before=before)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all ranks (fp64, so token counts and loss sums stay exact)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool = False, find_unused: bool = False) -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` of every block, then the root) when distributed; ``find_unused``:
    some parameters get no gradient in a step (a multi-task model trains one head at a time)."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for module in model.modules():
            if type(module).__name__ == "Block":
                fully_shard(module)
                if hasattr(module, "cross_kv"):
                    # T5's decoder computes every block's cross-attention keys/values once, outside
                    # the block's forward: FSDP must gather the block's parameters for that call too
                    register_fsdp_forward_method(module, "cross_kv")
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_gather_objects(items: list[Any], info: DistInfo) -> list[Any]:
    """Every rank's list, concatenated in rank order (predictions for metrics over a whole split)."""
    if not info.enabled:
        return items
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo, finished: bool = True) -> None:
    """Leave the process group. ``finished``: every rank got here the normal way, so all ranks meet at a
    barrier first (a rank that tears gloo down while a peer's last collective is still in flight can
    abort the peer: "terminate called without an active exception"); after an error on this rank the
    group is left as it is (a collective destroy would hang on peers blocked elsewhere; torchrun ends them)."""
    if info.enabled and dist.is_initialized() and finished:
        dist.barrier()
        dist.destroy_process_group()
    if info.threads_before is not None:  # the caller's thread count again (the Python API, tests)
        torch.set_num_threads(info.threads_before)
        info.threads_before = None
