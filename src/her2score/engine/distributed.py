"""Training on several processes with ``torchrun`` (DistributedDataParallel), one per GPU or CPU slot.

``torchrun --nproc_per_node=N -m her2score.cli.main train ...`` starts N copies of the command; each
reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from its environment.
:func:`process_group` joins them (NCCL on CUDA, gloo on the CPU) and, on CUDA, gives each its own GPU.

How the shared training loop (:func:`her2score.engine.train.fit`) uses these helpers:

- ``batch_size`` stays the *global* batch: each process takes ``batch_size / N`` slides per step from
  its shard of the epoch (:func:`epoch_sampler`, a :class:`~torch.utils.data.DistributedSampler`
  given ``set_epoch`` every epoch), and DDP averages the gradients, so N processes take the same
  steps as one process would (same order, same updates; BatchNorm aside: batch statistics are per
  process, synchronised only on CUDA by ``SyncBatchNorm``).
- validation runs on rank 0; its record, and with it the choice of the kept epoch and early stopping,
  is broadcast so that every process stops at the same epoch.
- only rank 0 writes: the training state, checkpoints (from the unwrapped module, so one process
  loads them), logs and reports. The other ranks run the same code into a scratch folder that is
  removed at the end (:func:`rank_run_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if _initialised() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if _initialised() else 1


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


@contextmanager
def process_group(device: str = "auto") -> Iterator[int]:
    """Join the processes ``torchrun`` started (a no-op, yielding 1, when it did not) and leave at the end.

    The backend is NCCL when training runs on CUDA, gloo otherwise; on CUDA each process takes the GPU
    of its ``LOCAL_RANK`` as its current device, so ``device: cuda`` means that GPU.
    """
    if not launched_by_torchrun() or _initialised():
        yield world_size()
        return
    import torch
    import torch.distributed as dist

    from her2score.errors import ConfigError

    cuda = not device.startswith("cpu") and torch.cuda.is_available()
    if cuda and device.startswith("cuda:"):
        raise ConfigError(
            f"device {device}: under torchrun each process takes the GPU of its LOCAL_RANK; use device "
            "auto or cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)"
        )
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started local rank {local}, but this machine has {torch.cuda.device_count()} "
                "GPU(s); use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the torchrun process group: {exc}") from exc
    try:
        yield dist.get_world_size()
    finally:
        dist.destroy_process_group()


@contextmanager
def rank_run_dir(run_dir: Path) -> Iterator[Path]:
    """The run folder this process writes into: ``run_dir`` on rank 0, a scratch folder (removed at
    the end) on the others, so that only rank 0's checkpoints, logs and reports land in ``run_dir``."""
    if is_main():
        yield run_dir
        return
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=f"her2score-rank{rank()}-"))
    try:
        yield scratch / "run"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def epoch_sampler(labels: np.ndarray, balanced: bool, num_classes: int, seed: int) -> Any:
    """This rank's share of each epoch's order over the training rows (positions into ``labels``).

    The order is the one a single process draws (:func:`her2score.engine.train.epoch_order` with a
    generator seeded ``seed + epoch``): a shuffle, or class-balanced draws with replacement. Rank ``r``
    of ``N`` takes positions ``r, r + N, ...``, so the ranks' batches at a step together make the single
    process's batch at that step. Call ``set_epoch`` before each epoch.
    """
    import torch
    from torch.utils.data import DistributedSampler

    from her2score.engine.train import epoch_order

    class EpochOrderSampler(DistributedSampler):
        def __iter__(self) -> Iterator[int]:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = list(epoch_order(labels, gen, balanced, num_classes))
            order += order[: self.total_size - len(order)]  # pad to a multiple of the ranks
            return iter(order[self.rank : self.total_size : self.num_replicas])

    return EpochOrderSampler(range(len(labels)), shuffle=True, seed=seed, drop_last=False)


def check_batch(batch_size: int) -> None:
    """A global batch that every process can share (at least 2 slides each: BatchNorm needs 2)."""
    from her2score.errors import ConfigError

    n = world_size()
    if n > 1 and (batch_size % n or batch_size // n < 2):
        raise ConfigError(
            f"batch_size {batch_size} is the global batch of {n} processes: it must be a multiple of {n} "
            f"with at least 2 slides per process (e.g. {2 * n})"
        )


def wrap_for_training(model: Any, device: Any) -> Any:
    """``model`` under DistributedDataParallel, called as ``wrapped(batch, criterion)`` for the model's
    ``training_step`` (so that DDP sees the forward pass and averages the gradients in backward).

    The parameters stay ``model``'s own: the optimiser, the EMA and the saved checkpoint use the
    unwrapped module. On CUDA, BatchNorm layers become SyncBatchNorm (batch statistics over all ranks).
    """
    import warnings

    import torch
    from torch.nn.parallel import DistributedDataParallel

    class TrainingStep(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, batch: dict[str, Any], criterion: Any) -> Any:
            return self.inner.training_step(batch, criterion)

    # depthwise convolutions' gradients come in another memory layout than DDP's buckets: slower, not wrong
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if device.type == "cuda":
        # converts in place where it can; a top-level BatchNorm would be returned anew, ours are nested
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type != "cuda":
        return DistributedDataParallel(TrainingStep(model))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(TrainingStep(model), device_ids=[index])


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled); ``obj`` itself when not distributed."""
    if not _initialised():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: list[float], device: Any) -> list[float]:
    """Each value summed over the ranks (``values`` as given when not distributed)."""
    if not _initialised():
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: Any) -> bool:
    """Whether ``flag`` is true on any rank (so that all ranks act on it together)."""
    return sum_over_ranks([float(flag)], device)[0] > 0
