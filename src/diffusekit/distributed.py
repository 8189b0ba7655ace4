"""The one seam to torch.distributed (docs/distributed.md). A single process needs no set-up: every helper is
then the identity or a no-op, and nothing here imports more than torch.

Processes are started by torchrun (``torchrun --nproc-per-node N -m diffusekit train ...``, or the shortcut
``diffusekit train --nproc N``), which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
:func:`init` reads them and joins the process group (NCCL on GPUs, gloo on the CPU).

Collectives here are the few the training loop and evaluation need, each on small tensors: the mean of a
vector over ranks, the concatenation of per-rank tensors, a barrier, and rank 0's Python object.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import DistributedError

__all__ = ["Context", "init", "context", "device_for", "shutdown", "is_main", "barrier", "all_mean",
           "all_gather_cat", "gather_in_order", "broadcast_object", "wrap_ddp", "DistributedError", "shard_fsdp",
           "full_tensor", "set_gradient_sync", "full_model_state", "full_optimizer_state", "load_full_state"]


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_context = Context()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init(device: str = "cpu", timeout_s: float = 600.0) -> Context:
    """Join the process group described by torchrun's environment; a no-op (rank 0 of 1) without it.

    ``device``: the configured device; ``cuda`` becomes ``cuda:LOCAL_RANK`` (see :func:`device_for`), and
    selects NCCL, else gloo. ``timeout_s`` bounds every collective, so a job whose peer died ends instead
    of hanging."""
    global _context
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        _context = Context()
        return _context
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    _context = Context(rank, world_size, local_rank)
    return _context


def context() -> Context:
    return _context


def device_for(device: str) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); anything else unchanged."""
    if device == "cuda" and _context.distributed:
        return f"cuda:{_context.local_rank}"
    return device


def shutdown() -> None:
    global _context
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _context = Context()


def is_main() -> bool:
    return _context.main


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, ValueError) as e:  # gloo / NCCL report a dead peer as RuntimeError (DistBackendError)
        raise DistributedError(f"rank {_context.rank} of {_context.world_size}: a collective failed, another "
                               f"process of the job has probably ended ({str(e).splitlines()[0]})") from None


def barrier() -> None:
    if _context.distributed:
        _collective(dist.barrier)


def _comm_device(values: Tensor) -> torch.device:
    """Where a collective's tensors must live: NCCL moves only CUDA tensors, gloo CPU (and CUDA) ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return values.device


def all_mean(values: Tensor) -> Tensor:
    """The mean over ranks of ``values`` (any shape, float), returned on its device."""
    if not _context.distributed:
        return values
    out = values.detach().to(_comm_device(values), torch.float64).clone()
    _collective(dist.all_reduce, out, op=dist.ReduceOp.SUM)
    return (out / _context.world_size).to(values.device, values.dtype)


def all_gather_cat(values: Tensor) -> Tensor:
    """Every rank's ``values`` concatenated along dim 0 in rank order (sizes may differ between ranks)."""
    if not _context.distributed:
        return values
    device = _comm_device(values)
    size = torch.tensor([values.shape[0]], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(_context.world_size)]
    _collective(dist.all_gather, sizes, size)
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros((largest, *values.shape[1:]), dtype=values.dtype, device=device)
    padded[:values.shape[0]] = values.to(device)
    gathered = [torch.empty_like(padded) for _ in range(_context.world_size)]
    _collective(dist.all_gather, gathered, padded)
    return torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes, strict=True)]).to(values.device)


def gather_in_order(values: Tensor, index: Tensor) -> Tensor:
    """Rows held by different ranks (row j of this rank is item ``index[j]``), gathered on every rank and sorted
    by item: the result does not depend on how the items were shared out."""
    if not _context.distributed:
        return values[torch.argsort(index)]
    everything, order = all_gather_cat(values), all_gather_cat(index)
    return everything[torch.argsort(order)]


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (a small picklable object made by this program, never read from a file)."""
    if not _context.distributed:
        return value
    box = [value]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def wrap_ddp(network: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``network`` (rank 0's weights are broadcast at construction). Buffers are
    not broadcast on each forward: the networks hold none that change, and evaluation then runs a forward on
    one rank alone safely."""
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel
    # torch >= 2.13 renamed the option; older releases only know broadcast_buffers
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(network, device_ids=ids, **no_sync)


# -- FSDP (fully_shard): parameters, gradients and optimizer state sharded over the processes ---------------
def shard_fsdp(network: nn.Module) -> None:
    """``fully_shard`` each block of every ``nn.ModuleList`` of ``network`` (the DiT's blocks, the U-Net's
    encoder and decoder), then the network itself: a block's weights are gathered only while it runs."""
    from torch.distributed.fsdp import fully_shard  # lazy: FSDP runs only; torch builds without distributed lack it

    for child in network.children():
        if isinstance(child, nn.ModuleList):
            for block in child:
                fully_shard(block)
    fully_shard(network)


def full_tensor(value: Tensor) -> Tensor:
    """A sharded (DTensor) value gathered whole on every process (collective); any other tensor unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def set_gradient_sync(network: nn.Module, enabled: bool) -> None:
    """FSDP's ``no_sync``: skip the gradient reduce-scatter for all but the last micro-batch of an accumulation."""
    network.set_requires_gradient_sync(enabled)


def full_model_state(network: nn.Module) -> dict:
    """The sharded network's whole state dict on process 0, on the CPU (collective; empty elsewhere): the same
    keys and shapes as the unsharded network's, so checkpoints do not depend on the world size."""
    # lazy: FSDP runs only; torch builds without distributed support lack it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return _collective(get_model_state_dict, network,
                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state of a sharded network in ``optimizer.state_dict()``'s own layout (parameters
    numbered in ``named_parameters()`` order) on process 0 (collective; empty elsewhere)."""
    # lazy: FSDP runs only; torch builds without distributed support lack it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = _collective(get_optimizer_state_dict, network, optimizer,
                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not state:
        return {}
    index = {name: i for i, (name, _) in enumerate(network.named_parameters())}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]]
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def load_full_state(network: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Load whole (unsharded) states, as every checkpoint holds them, into a sharded network and its optimizer;
    every process reads the same checkpoint."""
    # lazy: FSDP runs only; torch builds without distributed support lack it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    _collective(set_model_state_dict, network, model_state, options=options)
    names = [name for name, _ in network.named_parameters()]
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in optimizer_state["param_groups"]]
    by_name = {"state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
               "param_groups": groups}
    _collective(set_optimizer_state_dict, network, optimizer, by_name, options=options)
