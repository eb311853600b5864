"""`plasticity sweep ...`: hands over to the sweep service (`tune.sweep`), which needs the
sweep extras; the only place `plasticity` imports `tune`, inside the function.

May import in functions: tune
"""

from __future__ import annotations

from plasticity.cliargs import fail


def cmd_sweep(argv: list[str]) -> int:
    try:
        from tune.sweep import main as sweep_main
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("ray", "optuna", "psycopg"):
            raise
        fail(f"the sweep service needs the sweep extras ({e.name} is missing): pip install 'plasticity[sweep]'")
    return sweep_main(argv, prog="plasticity sweep")
