"""Weight merging for CPI-FT's fusion step: spherical linear interpolation (SLERP) of two
tensors, and the grouping of tasks by the overlap of their core regions.

``slerp(a, b, omega, epsilon)`` treats each tensor as one flat vector. With the angle
``Omega = arccos(<a, b> / (|a| |b|))`` it returns
``sin((1 - omega) Omega) / sin(Omega) * a + sin(omega Omega) / sin(Omega) * b``, and the linear
interpolation ``(1 - omega) a + omega b`` when the two are nearly collinear
(``|cos Omega| > 1 - epsilon``), where the formula divides by ~0. This is the usual model-merging
form (mergekit's ``slerp``: angle from the normalized vectors, applied to the raw ones). A base
model and a short fine-tune of it are very nearly collinear, so with the default epsilon most
tensors fall back to the linear form: that is the formula's limit, not an approximation of ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from methods.parts.collectives import reduce_
from methods.parts.selection import jaccard


def slerp(a: torch.Tensor, b: torch.Tensor, omega: float, epsilon: float) -> torch.Tensor:
    """SLERP from ``a`` (omega = 0) to ``b`` (omega = 1), computed in fp64, returned in fp32.
    ``a`` and ``b`` may be this rank's blocks of sharded tensors: the angle is the whole tensors'."""
    x, y = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    dots = reduce_(torch.stack([x @ y, x @ x, y @ y]))
    nx, ny = dots[1].sqrt(), dots[2].sqrt()
    if nx == 0 or ny == 0:
        out = (1 - omega) * x + omega * y
    else:
        cos = float(torch.clamp(dots[0] / (nx * ny), -1.0, 1.0))
        if abs(cos) > 1 - epsilon:
            out = (1 - omega) * x + omega * y
        else:
            angle = math.acos(cos)
            out = (math.sin((1 - omega) * angle) * x + math.sin(omega * angle) * y) / math.sin(angle)
    return out.float().view_as(a)


def overlap_matrix(cores: Sequence[dict[str, torch.Tensor]], sizes: dict[str, int]) -> list[list[float]]:
    """Pairwise Jaccard overlap of per-task core regions (flat indices per tensor)."""
    return [[1.0 if i == j else jaccard(a, b, sizes) for j, b in enumerate(cores)] for i, a in enumerate(cores)]


def connected_groups(names: Sequence[str], overlap: Sequence[Sequence[float]], tau: float) -> list[list[str]]:
    """Tasks joined by an edge where their overlap is >= ``tau``; groups = connected components,
    each in task order, ordered by their first task."""
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if overlap[i][j] >= tau:
                parent[root(j)] = root(i)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return sorted(groups.values(), key=lambda g: names.index(g[0]))
