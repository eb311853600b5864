"""Serving a trained network that keeps learning (no Ray or MLflow imports here).

    episode.py        the request layouts (whole episodes, single steps) and their checks
    model.py          `ServedModel`: a checkpoint rebuilt without the task's data
    sessions.py       `SessionStore`: per-session state, batched steps, limits, idle expiry
    mlflow_pyfunc.py  edge: the MLflow pyfunc flavour (whole episodes, Hebb from zero)
    ray_app.py        edge: the Ray Serve application of live sessions (`plasticity serve`)

MLflow (and `plasticity.tracking`) only in mlflow_pyfunc.py, Ray (and `plasticity.localray`,
which starts it) only in ray_app.py and cli.py: the edges, whose own docstrings say so.

May import: plasticity.config, plasticity.errors, plasticity.models, plasticity.nn, plasticity.plugins,
    plasticity.tasks, plasticity.train, numpy, torch
"""

from plasticity.serving.episode import EpisodeLayout, RequestError, bit_error
from plasticity.serving.model import ServedModel
from plasticity.serving.sessions import SessionStore

__all__ = ["EpisodeLayout", "RequestError", "ServedModel", "SessionStore", "bit_error"]
