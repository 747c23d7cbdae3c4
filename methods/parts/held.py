"""What a ``Method.held_fixed`` value says, read the same way by every consumer (the trainer's
budget, the lost-update sentinel, the contract check): a bool mask of a parameter's block, a 0-d
bool for the whole parameter, or sorted flat indices into the block."""

from __future__ import annotations

import torch

from methods.parts.collectives import local


def _as_mask(index: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(block.numel(), dtype=torch.bool, device=block.device)
    mask[index.long()] = True
    return mask.view_as(block)


def held_mask(held: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``Method.held_fixed`` value (bool mask, 0-d bool, or sorted flat indices) as a bool
    mask of this rank's block of ``like``."""
    block = local(like)
    if held.dtype == torch.bool:
        return held.expand(block.shape) if held.dim() == 0 else held.view(block.shape)
    return _as_mask(held, block)


def held_count(held: torch.Tensor, like: torch.Tensor) -> int | torch.Tensor:
    """How many entries of this rank's block of ``like`` a ``held_fixed`` value holds: an int, or
    a 0-d tensor on the value's device for a mask (summed without a host sync every step)."""
    if held.dtype != torch.bool:
        return held.numel()
    return held.long() * local(like).numel() if held.dim() == 0 else held.sum()


def held_at(held: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool per flat local ``index``: does the ``held_fixed`` value hold that entry? (Sorted
    indices are searched, so no mask of the whole block is built.)"""
    if held.dtype == torch.bool:
        return held.expand(index.shape) if held.dim() == 0 else held.reshape(-1)[index]
    if not held.numel():
        return torch.zeros(index.shape, dtype=torch.bool, device=index.device)
    sorted_held = held.long()
    position = torch.searchsorted(sorted_held, index.long()).clamp_(max=sorted_held.numel() - 1)
    return sorted_held[position] == index
