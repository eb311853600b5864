"""Batched plasticity rules vs their naive references, on values and gradients."""

from __future__ import annotations

import pytest
import torch

from plasticity.errors import ConfigError
from plasticity.rules import RULES, get_rule, rule_names
from plasticity.rules.naive import NAIVE_STEPS
from tests.conftest import assert_close

PLAIN = rule_names(modulated=False)
"""The registered rules without a modulatory signal (the neuromodulated ones: test_neuromod.py)."""
CASES = [(rule, eta_mode, clip) for rule in PLAIN for eta_mode in ("scalar", "per-connection")
         for clip in (None, 0.3)]


def _inputs(eta_mode, b=3, n_in=4, n_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    hebb = (0.5 * torch.randn(b, n_in, n_out, generator=g, dtype=torch.float64)).requires_grad_()
    pre = torch.randn(b, n_in, generator=g, dtype=torch.float64).tanh().requires_grad_()
    post = torch.randn(b, n_out, generator=g, dtype=torch.float64).tanh().requires_grad_()
    shape = () if eta_mode == "scalar" else (n_in, n_out)
    eta = (0.05 + 0.2 * torch.rand(shape, generator=g, dtype=torch.float64)).requires_grad_()
    return hebb, pre, post, eta


@pytest.mark.parametrize("rule,eta_mode,clip", CASES, ids=[f"{r}-{e}-clip{c}" for r, e, c in CASES])
def test_batched_rule_matches_naive(rule, eta_mode, clip):
    hebb, pre, post, eta = _inputs(eta_mode)
    (fast,) = get_rule(rule).update((hebb,), pre, post, eta=eta, clip=clip)
    naive = torch.stack([NAIVE_STEPS[rule](hebb[b], pre[b], post[b], eta, clip) for b in range(hebb.shape[0])])
    assert_close(fast, naive, name="value")
    weights = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * weights).sum(), (hebb, pre, post, eta))
    grads_naive = torch.autograd.grad((naive * weights).sum(), (hebb, pre, post, eta))
    for name, a, b in zip(("hebb", "pre", "post", "eta"), grads_fast, grads_naive, strict=True):
        assert_close(a, b, name=f"grad {name}")


@pytest.mark.parametrize("rule", PLAIN)
def test_rule_gradcheck(rule):
    hebb, pre, post, eta = _inputs("per-connection", b=2, n_in=3, n_out=2)
    fn = lambda h, x, y, e: get_rule(rule).update((h,), x, y, eta=e)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hebb, pre, post, eta))


def test_index_convention_rows_pre_columns_post():
    # H[i, j] = pre_i * post_j: one connection checked by hand.
    hebb = torch.zeros(1, 2, 3)
    pre, post = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    (h,) = get_rule("hebb").update((hebb,), pre, post, eta=torch.tensor(0.5))
    expected = torch.zeros(1, 2, 3)
    expected[0, 0, 2] = 0.5 * 2.0 * 3.0
    assert torch.equal(h, expected)


def test_oja_is_bounded_where_hebb_grows_with_constant_input():
    # Oja's rule normalises: with a constant post = 1 and pre = 1, Hebb -> 1.
    h = torch.zeros(1, 1, 1)
    for _ in range(2000):
        (h,) = get_rule("oja").update((h,), torch.ones(1, 1), torch.ones(1, 1), eta=torch.tensor(0.05))
    assert abs(h.item() - 1.0) < 1e-6


def test_clip_bounds_hebb():
    hebb, pre, post, eta = _inputs("scalar")
    (h,) = get_rule("hebb").update((3 * hebb,), 5 * pre, 5 * post, eta=eta, clip=0.1)
    assert h.abs().max() <= 0.1


def test_unknown_rule_names_the_known_ones():
    known = ", ".join([*PLAIN, *rule_names(modulated=True)])
    with pytest.raises(ConfigError, match=rf"unknown plasticity rule 'hebbb': choose one of {known}"):
        get_rule("hebbb")
    assert set(RULES) >= {"hebb", "oja"}
