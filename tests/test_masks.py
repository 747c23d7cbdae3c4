"""The shared mask machinery: exact global top-rho, ties, normalization, Jaccard, restore."""

from __future__ import annotations

import pytest
import torch

from methods.parts.masks import IsolatedSet, jaccard, select_top_fraction


def reference(scores, rho, normalize):
    """Brute force: normalize, sort everything (stable), take the first k."""
    flat = []
    for i, (n, s) in enumerate(scores.items()):
        s = s.double().reshape(-1)
        if normalize:
            s = (s - s.min()) / (s.max() - s.min() + 1e-12)
        flat += [(-v.item(), i, j, n) for j, v in enumerate(s)]
    k = round(rho * len(flat))
    chosen = sorted(flat)[:k]
    return {n: sorted(j for _, _, j, m in chosen if m == n) for n in scores}


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rho", [0.0, 0.003, 0.05, 0.5, 1.0])
def test_matches_brute_force(rho, normalize):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(40, 50, generator=g) ** 3, "b": torch.rand(30, 7, generator=g) * 5,
              "c": torch.randn(60, generator=g).abs()}
    got = select_top_fraction(scores, rho, normalize=normalize, bins=16, exact_below=50)
    want = reference(scores, rho, normalize)
    assert {n: i.tolist() for n, i in got.items()} == want


@pytest.mark.parametrize("sample", [0, 64, 1 << 16])
@pytest.mark.parametrize("rho", [0.001, 0.01, 0.3, 0.9])
def test_a_sampled_range_and_a_constant_tensor_select_the_brute_force_set(rho, sample):
    """Heavy-tailed scores (as importance is), ties at zero, and one constant tensor (it normalizes
    to 0, and no threshold of its own dtype may round onto its value): with the range proposed by
    a sample (64 entries: often wrong, so the histogram search takes over), or without one."""
    g = torch.Generator().manual_seed(3)
    scores = {f"t{i}": (torch.rand(30, 70, generator=g) ** (3 + i)) * (i + 1) for i in range(4)}
    scores["t0"][:10] = 0.0
    scores["flat"] = torch.full((20, 30), 0.5)
    for normalize in (True, False):
        got = select_top_fraction(scores, rho, normalize=normalize, bins=16, exact_below=100, sample=sample)
        assert {n: i.tolist() for n, i in got.items()} == reference(scores, rho, normalize)


def test_exact_fraction_with_ties():
    scores = {"a": torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]]), "b": torch.ones(3, 4)}
    for rho in (0.1, 0.25, 0.5, 0.8):
        got = select_top_fraction(scores, rho, normalize=False, bins=4, exact_below=1)
        assert sum(i.numel() for i in got.values()) == round(rho * 20)


def test_histogram_search_narrows_without_sorting_everything():
    scores = {"a": torch.rand(200_000, generator=torch.Generator().manual_seed(1))}
    got = select_top_fraction(scores, 0.01, normalize=True, bins=256, exact_below=1_000)
    assert got["a"].numel() == 2000
    assert scores["a"][got["a"]].min() >= scores["a"].kthvalue(200_000 - 2000 + 1).values


def test_jaccard():
    a = {"w": torch.tensor([0, 1, 2, 3])}
    b = {"w": torch.tensor([2, 3, 4, 5])}
    assert jaccard(a, b) == pytest.approx(2 / 6)
    assert jaccard(a, a) == 1.0
    assert jaccard({"w": torch.tensor([], dtype=torch.long)}, {"w": torch.tensor([], dtype=torch.long)}) == 1.0


def test_isolated_set_restores_bit_exact_and_round_trips():
    p = torch.nn.Parameter(torch.randn(5, 6))
    iso = IsolatedSet({"p": p})
    iso.assign({"p": torch.tensor([1, 7, 29])})
    frozen = p.detach().reshape(-1)[[1, 7, 29]].clone()
    with torch.no_grad():
        p.mul_(0.9).add_(0.01)
    iso.restore()
    assert torch.equal(p.detach().reshape(-1)[[1, 7, 29]], frozen)
    other = IsolatedSet({"p": p})
    other.load_state_dict(iso.state_dict())
    assert torch.equal(other.masks()["p"], iso.masks()["p"]) and other.masks()["p"].sum() == 3
