"""Shared fixtures: data paths, float64 helpers, a relative-error assert."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLASTICITY_TEST_DATA", REPO.parent / "shared" / "data"))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10, name: str = "") -> None:
    """Relative error of the whole tensor (as in flash-linear-attention's tests)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * max(scale, 1e-12), f"{name}: max abs err {err:.3e} vs scale {scale:.3e}"


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
