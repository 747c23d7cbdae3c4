"""Shared fixtures: everything offline, tiny model on CPU, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("ISOBENCH_CPU_BF16", "0")  # train.precision = "auto" is fp32 here on every CPU

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def harness():
    from tests.harness import Harness

    return Harness
