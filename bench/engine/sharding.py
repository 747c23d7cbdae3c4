"""How one run spans several processes: PyTorch's FSDP2 (``fully_shard``), data-parallel.

``Sharding`` is the Trainer's part for it. Without a process group (one process, the default) it
leaves the model whole and every function here is the plain one-process operation. With one
(``train.workers = N``: Ray Train starts N workers and initializes it, ``bench.launch.workers``):

- ``shard``: ``fully_shard`` on every decoder layer (the classes the model lists in
  ``_no_split_modules``), then on the root, on a 1-D device mesh over all ranks, with the
  precision's ``MixedPrecisionPolicy`` (compute in the autocast dtype, gradients reduced in
  fp32, master shards in the parameter dtype). Every rank first keeps a whole copy in host
  memory, in the parameter dtype, for evaluation (``whole_model``): every rank then evaluates
  its share of the items on exactly the weights one process would evaluate.
- the step: every rank draws the same rows; the step's micro-batches are dealt out in
  contiguous blocks (``my_micro_batches``: ``train.grad_accum`` is the number of micro-batches of
  the whole step and a multiple of the workers), so N workers compute exactly the micro-batches
  one process would. The loss is divided by the step's answer tokens over all rows and scaled by
  N (``step_loss``), which FSDP2's averaging reduce-scatter undoes: the gradient is the
  one-process gradient. Gradients are
  reduced once per step (``sync``), and clipping uses the global norm (``clip``).
- a method's own forward/backward passes (calibration, probes) run the same batch on every rank:
  the averaged gradient is again the one-process one.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from bench.engine.precision import Precision
from methods.parts.collectives import barrier, reduce_

T = TypeVar("T")

class Sharding:
    """FSDP2 over the default process group, or nothing when there is none."""

    def __init__(self, device: torch.device, enabled: bool | None = None, workers: int | None = None) -> None:
        """``enabled``: shard (default: whenever a process group exists; ``bench.tools.perf --fsdp``
        shards in a one-process group to measure FSDP2's own cost). ``workers``: the run's
        ``train.workers``, checked against the process group's size."""
        grouped = dist.is_available() and dist.is_initialized()
        self.active = grouped if enabled is None else enabled and grouped
        self.workers = dist.get_world_size() if self.active else 1
        if workers is not None and workers != self.workers:
            raise RuntimeError(f"train.workers = {workers}, but this process is one of {self.workers} "
                               f"(the process group's size): they must be equal")
        self.rank = dist.get_rank() if self.active else 0
        self.device = device
        self.replica: nn.Module | None = None  # this rank's whole copy, for evaluation

    @property
    def writes(self) -> bool:
        """Rank 0 writes the run's files (result, logs, base scores, task files); in a checkpoint
        every rank writes its own blocks (``bench.engine.checkpoint``)."""
        return self.rank == 0

    def on_writer(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only (it may write files), its value sent to every rank; an error
        there is raised on every rank, so none waits for a value that never comes."""
        return self._from_rank_0(fn, everywhere=False)

    def from_writer(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank (it may use collectives, e.g. a sharded evaluation), rank 0's
        value sent to all; an error on rank 0 is raised on every rank."""
        return self._from_rank_0(fn, everywhere=True)

    def _from_rank_0(self, fn: Callable[[], T], everywhere: bool) -> T:
        if not self.active:
            return fn()
        box: list[Any] = [None]
        try:
            if everywhere or self.writes:
                box = [(True, fn())]
        except Exception as e:
            if self.writes:
                dist.broadcast_object_list([(False, f"{type(e).__name__}: {e}")], src=0)
            raise
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def writer_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the others (which then read what rank 0 wrote); an error on
        rank 0 is raised on every rank."""
        kept: list[T] = []
        self.on_writer(lambda: kept.append(fn()))
        return kept[0] if self.writes else fn()

    def shard(self, model: nn.Module, precision: Precision) -> nn.Module:
        """``fully_shard`` per decoder layer, then the root; the model unchanged in one process."""
        if not self.active:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # the copy is made in host memory, never beside the whole model on the GPU; fully_shard moves
        self.replica = copy.deepcopy(model.to("cpu"))  # the shards back to the device
        mesh = init_device_mesh(self.device.type, (self.workers,))
        policy = MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32)
        blocks = decoder_layer_classes(model)
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def my_micro_batches(self, rows: Sequence[T], grad_accum: int) -> list[Sequence[T]]:
        """The step's ``rows`` cut into ``grad_accum`` micro-batches, and this rank's contiguous
        block of them: N workers compute exactly the micro-batches one process computes."""
        size = len(rows) // grad_accum
        micro = [rows[i:i + size] for i in range(0, len(rows), size)]
        per = len(micro) // self.workers
        return micro[self.rank * per:(self.rank + 1) * per]

    def step_loss(self, summed_nll: torch.Tensor, step_tokens: int) -> torch.Tensor:
        """What one micro-batch back-propagates: its summed NLL over the step's answer tokens of
        all rows, times the workers, which FSDP2's averaging reduce-scatter divides out again.
        (torchtitan instead turns the division off with ``set_gradient_divide_factor(1)``; here
        a method's own passes, calibration and probes, run the same batch on every rank and rely
        on the average being the one-process gradient.)"""
        return summed_nll / step_tokens * self.workers

    def sync(self, model: nn.Module, last: bool) -> None:
        """Reduce gradients after the last micro-batch of the step only."""
        if self.active:
            model.set_requires_gradient_sync(last)  # type: ignore[operator]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return reduce_(value) if self.active else value

    def clip(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip to ``max_norm`` by the norm of all ranks' gradients together; returns that norm."""
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def _gathered(self, model: nn.Module) -> nn.Module:
        """The whole model for evaluation: ``model`` itself in one process; sharded, every rank
        gathers the full state on its device, loads it into its host copy (then frees it) and
        gets that copy back on its device: one whole model per device at a time."""
        if not self.active:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        assert self.replica is not None, "shard() first"
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        self.replica.load_state_dict(state)
        del state
        return self.replica.to(self.device)

    @contextlib.contextmanager
    def whole_model(self, model: nn.Module) -> Iterator[nn.Module]:
        """The whole model on every rank for the body (to evaluate or export it), released after
        it: each rank's copy goes back to host memory, and every rank waits for the others. In
        one process: ``model`` itself."""
        whole = self._gathered(model)
        try:
            yield whole
        finally:
            self._release()

    def barrier(self) -> None:
        if self.active:
            barrier()

    def _release(self) -> None:
        """This rank's copy back to host memory; every rank waits for the others' evaluation."""
        if self.replica is not None:
            self.replica.to("cpu")
        self.barrier()


def decoder_layer_classes(model: nn.Module) -> set[str]:
    """Class names of the repeated blocks (transformers' ``_no_split_modules``)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return set(names)
    raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules): cannot shard it")
