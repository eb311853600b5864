"""Checks of a rule's elementwise form, and its translation to C++.

    problems = check_elementwise(rule)      # [] when every piece is there and consistent
    source = cpp_rule(rule)                 # the `PlasticRule` functor the C++ kernels use

Each function of `Elementwise` is `f(h, pre, post, eta, mod)` (of `Elementwise2`, a rule with a
second trace e: `f(h, e, pre, post, eta, mod)`) with one `return` of `+ - * /`, unary `-`, its
arguments and float literals (see `Elementwise`). That subset means the same
function runs on torch tensors and on Triton values, and translates line for line into C++
(`cpp_rule`); anything else is named (`FormError`) and the rule runs on the autograd path.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable

import torch

from plasticity.rules.base import Elementwise, Elementwise2, Rule

FIELDS = ("update", "inverse", "d_h", "d_pre", "d_post", "d_eta", "d_mod")
ARGS = ("h", "pre", "post", "eta", "mod")
FIELDS2 = ("update", "update_e", "d_h", "d_e", "d_pre", "d_post", "d_eta", "d_mod",
           "e_d_h", "e_d_e", "e_d_pre", "e_d_post", "e_d_eta", "e_d_mod")
ARGS2 = ("h", "e", "pre", "post", "eta", "mod")
MOD_FIELDS = ("d_mod", "e_d_mod")
"""The derivatives by M(t): given by neuromodulated rules only."""
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


class FormError(ValueError):
    """A function of a rule's elementwise form is missing or outside the subset."""


def two_traces(form: Elementwise | Elementwise2 | None) -> bool:
    """Whether `form` is a two-trace form (`Elementwise2`: Hebb and a second trace)."""
    return isinstance(form, Elementwise2)


def args_of(form: Elementwise | Elementwise2) -> tuple[str, ...]:
    """The argument names of a form's functions."""
    return ARGS2 if two_traces(form) else ARGS


def _expression(rule: str, field: str, fn: Callable | None, names: tuple[str, ...] = ARGS
                ) -> tuple[ast.expr, list[str]]:
    """The single returned expression of `fn` and its argument names (`names`: the ones
    the form's functions take)."""
    where = f"rule {rule!r}: {field}"
    form = "Elementwise2" if names == ARGS2 else "Elementwise"
    if fn is None:
        raise FormError(f"{where} is missing: give {form}.{field} = a function f({', '.join(names)})")
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError) as exc:
        raise FormError(f"{where}: its source cannot be read ({exc}); define it with `def` in a module") from None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        raise FormError(f"{where} must be a module-level `def`, not a lambda")
    args = [a.arg for a in node.args.args]
    body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if len(args) != len(names) or node.args.vararg or node.args.kwarg or node.args.kwonlyargs:
        raise FormError(f"{where} must take exactly {len(names)} arguments ({', '.join(names)}), got "
                        f"({', '.join(args)})")
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        raise FormError(f"{where}: the body must be a single `return <expression>`")
    return body[0].value, args


def _cpp(rule: str, field: str, node: ast.expr, args: list[str]) -> str:
    """C++ for one expression of the subset (`FormError` naming what is outside it)."""
    def go(n: ast.expr) -> str:
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return f"({go(n.left)} {_OPS[type(n.op)]} {go(n.right)})"
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
            # A multiplication by the reciprocal: where the divisor does not change along
            # a row (one eta), the compiler hoists the division out of the loop.
            return f"({go(n.left)} * (T(1) / {go(n.right)}))"
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            return f"({'-' if isinstance(n.op, ast.USub) else '+'}{go(n.operand)})"
        if isinstance(n, ast.Name) and n.id in args:
            return n.id
        if isinstance(n, ast.Constant) and type(n.value) in (int, float):
            return f"T({float(n.value)!r})"
        raise FormError(f"rule {rule!r}: {field} uses `{ast.unparse(n)}`, outside the elementwise subset "
                        f"(+ - * /, unary -, its arguments, number literals)")
    return go(node)


def fields(rule: Rule) -> tuple[str, ...]:
    """The fields a rule's form must give: all of `FIELDS` (`FIELDS2` for a two-trace form)
    for a neuromodulated rule, all but the derivatives by mod for the others."""
    every = FIELDS2 if two_traces(rule.elementwise) else FIELDS
    return every if rule.modulated else tuple(f for f in every if f not in MOD_FIELDS)


def cpp_rule(rule: Rule) -> str:
    """The C++ functor `PlasticRule` with one static inline function per field, translated
    from the rule's Python functions (`FormError` if a piece is missing or untranslatable),
    and `modulated` (whether the kernels take M(t) and sum d_mod)."""
    if rule.elementwise is None:
        raise FormError(f"rule {rule.name!r} has no elementwise form")
    names = args_of(rule.elementwise)
    lines = [f"// Generated from the elementwise form of rule {rule.name!r} (plasticity/rules/elementwise.py).",
             "struct PlasticRule {",
             f"  static constexpr bool modulated = {'true' if rule.modulated else 'false'};",
             f"  static constexpr int traces = {2 if two_traces(rule.elementwise) else 1};"]
    for field in fields(rule):
        node, args = _expression(rule.name, field, getattr(rule.elementwise, field), names)
        lines.append(f"  template <typename T> static inline T {field}(T {', T '.join(args)}) {{ "
                     f"return {_cpp(rule.name, field, node, args)}; }}")
    if not rule.modulated:  # never called (`modulated` is false), but the kernels name them
        for field in MOD_FIELDS if two_traces(rule.elementwise) else MOD_FIELDS[:1]:
            lines.append(f"  template <typename T> static inline T {field}(T {', T '.join(names)}) "
                         "{ return T(0); }")
    lines.append("};")
    return "\n".join(lines) + "\n"


def uses(rule: Rule, field: str) -> set[str]:
    """The argument names (of h, [e,] pre, post, eta, mod) a field's expression reads."""
    canonical_names = args_of(rule.elementwise)
    node, args = _expression(rule.name, field, getattr(rule.elementwise, field), canonical_names)
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return {canonical for canonical, own in zip(canonical_names, args, strict=True) if own in names}


def _samples(names: tuple[str, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """float64 values of the arguments `names` in the ranges the layers use: activities and
    M(t) in (-1, 1), eta in (0, 0.5), the traces of order one."""
    g = torch.Generator().manual_seed(seed)
    shape = (64,)
    values = {"h": torch.randn(shape, generator=g, dtype=torch.float64),
              "e": torch.randn(shape, generator=g, dtype=torch.float64)}
    for name in ("pre", "post", "mod"):
        values[name] = torch.rand(shape, generator=g, dtype=torch.float64) * 1.8 - 0.9
    values["eta"] = torch.rand(shape, generator=g, dtype=torch.float64) * 0.5
    return tuple(values[name] for name in names)


def _derivatives(ew: Elementwise | Elementwise2) -> list[tuple[str, str, str]]:
    """(output, derivative field, argument) for every derivative a form gives."""
    names = args_of(ew)
    if not two_traces(ew):
        return [("update", field, arg) for field, arg in zip(FIELDS[2:], ARGS, strict=True)]
    return ([("update", f"d_{arg}", arg) for arg in names]
            + [("update_e", f"e_d_{arg}", arg) for arg in names])


def check_elementwise(rule: Rule, rtol: float = 1e-9) -> list[str]:
    """What is missing or wrong in `rule`'s elementwise form, one line each (empty: all good).

    Every field present and in the subset (the derivatives by mod for neuromodulated rules
    only); in float64, `inverse(update(h)) == h` (single-trace forms), every derivative
    equals torch.autograd's derivative of `update` (and `update_e`), and an unmodulated
    rule's updates do not read `mod`."""
    ew = rule.elementwise
    if ew is None:
        return [f"rule {rule.name!r} has no elementwise form: it runs on the autograd path only"]
    problems = []
    names = args_of(ew)
    for field in fields(rule):
        try:
            node, args = _expression(rule.name, field, getattr(ew, field), names)
            _cpp(rule.name, field, node, args)
        except FormError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    outputs = ("update", "update_e") if two_traces(ew) else ("update",)
    if not rule.modulated and any("mod" in uses(rule, out) for out in outputs):
        return [f"rule {rule.name!r}: update reads mod but the rule is not modulated: register it with "
                "modulated=True and give d_mod, or do not read mod"]
    samples = tuple(t.requires_grad_() for t in _samples(names))
    plain = tuple(t.detach() for t in samples)
    new = {out: getattr(ew, out)(*samples) for out in outputs}
    if not two_traces(ew):
        back = ew.inverse(new["update"].detach(), *plain[1:])
        err = float((back - plain[0]).abs().max())
        if not err <= rtol * max(1.0, float(plain[0].abs().max())):
            problems.append(f"rule {rule.name!r}: inverse(update(h)) != h (max error {err:.2e}): fix inverse or "
                            "update")
    grads = {out: dict(zip(names, torch.autograd.grad(value.sum(), samples, allow_unused=True,
                                                      materialize_grads=True), strict=True))
             for out, value in new.items()}
    for out, field, arg in _derivatives(ew):
        if field not in fields(rule):
            continue
        expected = grads[out][arg]
        got = torch.broadcast_to(torch.as_tensor(getattr(ew, field)(*plain), dtype=torch.float64), expected.shape)
        err = float((got - expected).abs().max())
        if not err <= rtol * max(1.0, float(expected.abs().max())):
            problems.append(f"rule {rule.name!r}: {field} != d {out} / d {arg} (max error {err:.2e}): fix {field}")
    return problems
