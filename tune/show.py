"""`plasticity sweep show NAME`: a sweep's answer read back from its stores (Optuna and
MLflow), the same block the sweep printed when it ended; works while the sweep runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from plasticity.cliargs import parse_args
from plasticity.errors import PlasticityError, TrackingError
from tune.stores import default_storage, default_storage_path, fail


@dataclass
class ShowArgs:
    """Print a sweep's answer from its stores (Optuna + MLflow): the top trials, the best
    trial as a `plasticity train` command, the registered model and where to look. Works
    while the sweep runs."""

    name: Annotated[str, tyro.conf.Positional]
    """The sweep's name (printed when it started; the Optuna study's name)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; when unset, $MLFLOW_TRACKING_URI or sqlite:///mlruns.db here."""
    no_tracking: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Read the Optuna study only."""
    experiment: str = "plasticity-sweeps"
    """MLflow experiment of the sweep."""
    storage: str | None = None
    """Optuna storage URL; default $OPTUNA_STORAGE, else sqlite:///optuna.db here."""
    storage_path: str | None = None
    """Folder of Ray's results; default $PLASTICITY_STORAGE_PATH, else ray_results here."""


def show_main(argv: list[str], prog: str) -> int:
    from plasticity.tracking.mlflow import default_tracking_uri
    from tune.summary import collect, results_folder, show

    args = parse_args(ShowArgs, argv, prog=f"{prog} show")
    storage = default_storage(args.storage)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        fail(f"no Optuna storage at {storage}: run this where the sweep ran, or pass --storage")
    tracking = None if args.no_tracking else (args.tracking_uri or default_tracking_uri())
    storage_path = default_storage_path(args.storage_path)
    try:
        print(show(collect(args.name, storage, tracking, args.experiment,
                           results=results_folder(storage_path, args.name))))
    except (PlasticityError, TrackingError) as e:
        fail(str(e))
    return 0
