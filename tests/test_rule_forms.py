"""Every registered rule against its own elementwise form: the form is complete and
consistent (inverse(update(h)) == h, the derivatives are those of `update`), translates to
C++, the C++ kernels built from it keep the kernel contract, and the fused path built
from it equals plain autograd through the rule's `update` in values and gradients
(neuromodulated rules with M(t) computed inside the episode). A half-edited rule fails
with a message naming the piece."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from plasticity.nn import PlasticRNN
from plasticity.nn.fused import supports
from plasticity.rules import RULES, Rule
from plasticity.rules.base import Elementwise
from plasticity.rules.elementwise import FormError, check_elementwise, cpp_rule
from plasticity.rules.hebb import ELEMENTWISE as HEBB_FORM
from plasticity.rules.hebb import hebb_update
from plasticity.rules.neuromod import ELEMENTWISE as NEUROMOD_FORM
from plasticity.rules.neuromod import neuromod_update
from tests.conftest import assert_close
from tests.kernel_contract import check_kernel_contract

FORMS = [name for name, rule in RULES.items() if rule.elementwise is not None]


@pytest.mark.parametrize("name", FORMS)
def test_elementwise_form_is_complete_and_consistent(name):
    assert check_elementwise(RULES[name]) == []
    assert "struct PlasticRule" in cpp_rule(RULES[name])
    assert supports(RULES[name])
    # Single-trace forms are inverted in the backward pass; two-trace ones are recomputed.
    assert RULES[name].invertible == (len(RULES[name].traces) == 1)


def test_every_registered_rule_has_a_fused_form():
    assert FORMS == list(RULES)


def test_a_rule_without_a_form_is_autograd_only(capsys, monkeypatch):
    """A rule without an elementwise form runs on the autograd path, and says so once (the
    notice is printed once per process, hence the reset)."""
    from plasticity.nn.fused import contract

    monkeypatch.setattr(contract, "_NOTICES", set())
    rule = Rule("formless", hebb_update)
    assert not rule.invertible and not supports(rule)
    assert "rule 'formless' has no elementwise form" in capsys.readouterr().err
    net = PlasticRNN(4, rule="hebb", impl="fused")
    assert net.fused


def _fused_vs_plain(rule_name: str, backend: str, clip=None, eta_mode="scalar", modulation="neuron"):
    """Outputs and gradients (w, alpha, eta, Hebb0; a neuromodulated rule's read-out of M(t),
    `modulation` per neuron or per network) of the fused path vs plain autograd."""
    results = {}
    modulation = modulation if RULES[rule_name].modulated else "none"
    for impl, kw in (("autograd", {}), ("fused", dict(fused_backend=backend))):
        torch.manual_seed(0)
        net = PlasticRNN(6, rule=rule_name, eta=0.1, init_std=0.3, clip=clip, eta_mode=eta_mode, impl=impl,
                         modulation=modulation, **kw).double()
        with torch.no_grad():
            net.plastic.alpha.mul_(3)
            if net.modulator is not None:
                net.modulator.weight.mul_(3)  # M(t) of both signs and of order one
        assert net.fused == (impl == "fused"), f"rule {rule_name!r} did not take the {impl} path"
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, 8, 6, generator=g, dtype=torch.float64)
        traces0 = [(0.2 * torch.randn(3, 6, 6, generator=g, dtype=torch.float64)).requires_grad_()
                   for _ in RULES[rule_name].traces]  # Hebb (and retroactive's eligibility trace)
        out, state = net(x, state=(torch.zeros(3, 6, dtype=torch.float64), tuple(traces0)))
        loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum() + state.traces[0].pow(2).sum()
        loss = loss + sum(0.5 * t.sum() for t in state.traces[1:])
        p = net.plastic
        read_out = [] if net.modulator is None else [net.modulator.weight, net.modulator.bias]
        # allow_unused: neuromod does not read eta (no gradient either way).
        results[impl] = (out, *torch.autograd.grad(loss, [p.w, p.alpha, p.eta_logit, *read_out, *traces0],
                                                   allow_unused=True, materialize_grads=True))
    read_out_names = ["grad w_mod", "grad b_mod"] if RULES[rule_name].modulated else []
    names = ["outputs", "grad w", "grad alpha", "grad eta", *read_out_names,
             *(f"grad {t}0" for t in RULES[rule_name].traces)]
    for what, a, b in zip(names, results["fused"], results["autograd"], strict=True):
        assert_close(a, b, rtol=1e-9, name=f"rule {rule_name!r} ({backend}): {what}")


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("name", FORMS)
def test_fused_path_built_from_the_form_equals_autograd(name, backend):
    _fused_vs_plain(name, backend, clip=0.5, eta_mode="per-connection")


MODULATED = [name for name in FORMS if RULES[name].modulated]


@pytest.mark.parametrize("name", MODULATED)
def test_fused_path_of_a_modulated_rule_with_one_signal_per_network(name):
    """M(t) of shape [B, 1] (one per episode), broadcast over the neurons inside the path."""
    _fused_vs_plain(name, "cpp", modulation="network")


@pytest.mark.parametrize("name", FORMS)
@pytest.mark.parametrize("clip", [None, 0.4])
@pytest.mark.parametrize("shared", [False, True], ids=["per-connection", "shared"])
def test_cpp_kernels_keep_the_contract(name, clip, shared):
    """The C++ kernels compiled from the form against the torch-op kernels made from the
    same functions: one forward step and every backward mode, N = 37 (uneven row blocks)."""
    from plasticity.nn.fused import cpp_kernels

    check_kernel_contract(cpp_kernels(RULES[name]), RULES[name], clip, shared, n=37)


# A half-edited rule: the decaying Hebb rule with one piece of its form changed.
def _wrong_d_post(h, pre, post, eta, mod):
    return eta * post


def _uses_exp(h, pre, post, eta, mod):
    return h * torch.exp(-eta)  # outside the subset: not an elementwise form


def _reads_mod(h, pre, post, eta, mod):
    return h + eta * (pre * post - h) + mod * pre


@pytest.fixture
def temporary_rule():
    added = []

    def register(name: str, form: Elementwise | None) -> Rule:
        rule = Rule(name, hebb_update, elementwise=form)
        RULES[name] = rule
        added.append(name)
        return rule

    yield register
    for name in added:
        RULES.pop(name, None)


@pytest.mark.parametrize("change,message", [
    (dict(d_post=_wrong_d_post), "rule 'half_edited': d_post != d update / d post"),
    (dict(inverse=None), "rule 'half_edited': inverse is missing"),
    (dict(d_h=_uses_exp), r"rule 'half_edited': d_h uses `torch.exp\(-eta\)`, outside the elementwise subset"),
], ids=["wrong-d_post", "no-inverse", "not-translatable"])
def test_a_half_edited_rule_is_named_and_runs_on_the_autograd_path(temporary_rule, change, message, capsys):
    rule = temporary_rule("half_edited", dataclasses.replace(HEBB_FORM, **change))
    problems = check_elementwise(rule)
    assert problems and any(re.search(message, p) for p in problems), problems
    net = PlasticRNN(4, rule="half_edited")
    assert not net.fused  # the notice, and the plain path, rather than wrong gradients
    assert "runs on the autograd path" in capsys.readouterr().err
    net(torch.randn(2, 3, 4))[0].sum().backward()


def test_the_check_would_catch_a_wrong_derivative_on_the_fused_path(temporary_rule):
    """What the check prevents: forcing a wrong d_post onto the fused path gives wrong
    gradients, which the fused-vs-autograd comparison names."""
    from plasticity.nn.fused import contract

    temporary_rule("wrong_d_post", dataclasses.replace(HEBB_FORM, d_post=_wrong_d_post))
    contract._form_problem.cache_clear()
    original = contract._form_problem
    contract._form_problem = lambda rule: None  # pretend the form passed its check
    try:
        with pytest.raises(AssertionError, match="rule 'wrong_d_post' \\(torch\\): grad"):
            _fused_vs_plain("wrong_d_post", "torch")
    finally:
        contract._form_problem = original


def test_modulated_rule_forms_need_d_mod_and_others_must_not_read_mod(temporary_rule):
    no_d_mod = Rule("no_d_mod", neuromod_update, modulated=True,
                    elementwise=dataclasses.replace(NEUROMOD_FORM, d_mod=None))
    assert check_elementwise(no_d_mod) == ["rule 'no_d_mod': d_mod is missing: give Elementwise.d_mod = a function "
                                           "f(h, pre, post, eta, mod)"]
    reads = temporary_rule("reads_mod", dataclasses.replace(HEBB_FORM, update=_reads_mod))
    problems = check_elementwise(reads)
    assert problems == ["rule 'reads_mod': update reads mod but the rule is not modulated: register it with "
                        "modulated=True and give d_mod, or do not read mod"]
    assert not supports(reads, notice=False)


def test_translation_errors_are_one_line():
    rule = Rule("exp_rule", hebb_update, elementwise=dataclasses.replace(HEBB_FORM, d_h=_uses_exp))
    with pytest.raises(FormError) as info:
        cpp_rule(rule)
    assert "\n" not in str(info.value) and "exp_rule" in str(info.value) and "d_h" in str(info.value)


# A half-edited two-trace rule: retroactive with one piece of its form changed.
def _wrong_e_d_e(h, e, pre, post, eta, mod):
    return 1.0 + eta


def _two_trace_reads_inverse(h_next, pre, post, eta, mod):
    return h_next


@pytest.mark.parametrize("change,message", [
    (dict(e_d_e=_wrong_e_d_e), r"rule 'half_retro': e_d_e != d update_e / d e \(max error .*\): fix e_d_e"),
    (dict(update_e=None), r"rule 'half_retro': update_e is missing: give Elementwise2.update_e = a function "
                          r"f\(h, e, pre, post, eta, mod\)"),
    (dict(d_e=_two_trace_reads_inverse), r"rule 'half_retro': d_e must take exactly 6 arguments "
                                         r"\(h, e, pre, post, eta, mod\), got \(h_next, pre, post, eta, mod\)"),
], ids=["wrong-e_d_e", "no-update_e", "five-arguments"])
def test_a_half_edited_two_trace_rule_is_named_and_runs_on_the_autograd_path(change, message, capsys, monkeypatch):
    from plasticity.rules.retroactive import ELEMENTWISE as RETRO_FORM
    from plasticity.rules.retroactive import retroactive_update

    rule = Rule("half_retro", retroactive_update, traces=("hebb", "eligibility"), modulated=True,
                elementwise=dataclasses.replace(RETRO_FORM, **change))
    monkeypatch.setitem(RULES, "half_retro", rule)
    problems = check_elementwise(rule)
    assert problems and any(re.search(message, p) for p in problems), problems
    net = PlasticRNN(4, rule="half_retro", modulation="network")
    assert not net.fused
    assert "runs on the autograd path" in capsys.readouterr().err
    net(torch.randn(2, 3, 4))[0].sum().backward()


def test_two_trace_form_is_translated_with_both_traces():
    source = cpp_rule(RULES["retroactive"])
    assert "static constexpr int traces = 2;" in source
    update_e = ("static inline T update_e(T h, T e, T pre, T post, T eta, T mod) { "
                "return (e + (eta * ((pre * post) - e)));")
    assert update_e in source
    assert "static constexpr int traces = 1;" in cpp_rule(RULES["hebb"])
