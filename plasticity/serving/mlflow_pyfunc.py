"""Edge: the MLflow model of a trained network, whose pyfunc answers whole episodes.

One MLflow model with two flavours: `pytorch` (the whole module, for
`mlflow.pytorch.load_model`) and `python_function` (this module's `_load_pyfunc`), with
the checkpoint under `plasticity/checkpoint.pt`, a signature and an input example.

    log_episode_model(model, cfg, name="model")          # inside an active MLflow run
    tracker.finish(run_dir, model=model, flavor=episode_flavor)   # a tracked run's model
    mlflow.pyfunc.load_model("models:/plasticity-patterns/1").predict(episodes)

`predict(episodes [E, K+1, P] float32) -> outputs [E, P] float32`: for each episode the K
items in the order shown, then the degraded one; the network's output at the last step.
Hebb starts at zero for every episode. Served over HTTP with
`mlflow models serve -m models:/plasticity-patterns/1 --env-manager local` and
`POST /invocations {"inputs": [[[...], ...]]}`; a bad request gets a 400 whose
`message` says what is wrong.

May import: mlflow, plasticity.tracking
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import Schema, TensorSpec

from plasticity.serving.episode import EpisodeLayout, RequestError
from plasticity.serving.model import ServedModel
from plasticity.tasks import served_tasks
from plasticity.tracking.mlflow import check_tracking, default_tracking_uri, experiment_id, quiet_model_logging
from plasticity.train.checkpoint import load_checkpoint

DATA_DIR = "plasticity"
CHECKPOINT = "checkpoint.pt"


class EpisodeRequestError(MlflowException):
    """A bad episode request: HTTP 400 whose message is only ours. The scoring server
    rewrites `message` of a failing predict to "Failed to predict data '<the whole
    request>'. Error: ..."; ignoring that assignment keeps the answer one clear line."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self._clear = message

    @property
    def message(self) -> str:
        return self._clear

    @message.setter
    def message(self, value: str) -> None:
        pass


class EpisodePredictor:
    """What `mlflow.pyfunc.load_model` returns (wrapped by MLflow's `PyFuncModel`)."""

    def __init__(self, served: ServedModel):
        self.served = served

    def predict(self, model_input, params=None) -> np.ndarray:
        """episodes `[E, K+1, P]` (or one `[K+1, P]`; ndarray, list or DataFrame of K+1
        rows) -> outputs `[E, P]` float32."""
        try:
            episodes = self.served.layout.check_episodes(model_input)
        except RequestError as e:
            raise EpisodeRequestError(str(e)) from None
        return self.served.run_episodes(episodes)


def _load_pyfunc(data_path: str) -> EpisodePredictor:
    """The pyfunc loader named in the MLmodel file: `data_path` is the model's `plasticity/`."""
    served = ServedModel.from_checkpoint(Path(data_path) / CHECKPOINT)
    served.warm_up()
    return EpisodePredictor(served)


def signature(layout: EpisodeLayout) -> ModelSignature:
    """float32 `[E, K+1, P]` -> `[E, P]`. The sizes are left free (-1) in the signature:
    MLflow's own shape check answers with the whole request pasted into its message,
    ours with one line naming the expected shape. The exact layout is in the model's
    metadata (`episode_layout`) and its input example."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def metadata(layout: EpisodeLayout) -> dict:
    k, p = layout.num_items, layout.item_size
    return {"episode_layout": {
        "input": f"float32 [E, {k + 1}, {p}]: per episode the {k} items in the order shown, then the degraded one",
        "output": f"float32 [E, {p}]: the network's output at the last step (Hebb starts at zero per episode)",
        **layout.describe()}}


def save_model(path: str, mlflow_model: Model, *, model, config: dict, episode: int = 0,
               pip_requirements: list[str] | None = None, **kwargs) -> None:
    """Write the model folder (MLflow's flavour protocol: called by `Model.log`)."""
    import mlflow.pytorch
    from mlflow import pyfunc

    from plasticity.train.checkpoint import save_checkpoint

    cfg_layout = EpisodeLayout.from_config(_config(config))
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), **metadata(cfg_layout)}
    mlflow.pytorch.save_model(model.cpu(), path, mlflow_model=mlflow_model, serialization_format="pickle",
                              signature=signature(cfg_layout), input_example=cfg_layout.example(),
                              pip_requirements=pip_requirements)
    save_checkpoint(Path(path) / DATA_DIR / CHECKPOINT, model=model, config=config, episode=episode)
    env = mlflow_model.flavors[pyfunc.FLAVOR_NAME].get(pyfunc.ENV)
    # Replace mlflow.pytorch's pyfunc (model(tensor) -> (outputs, state)) with ours.
    del mlflow_model.flavors[pyfunc.FLAVOR_NAME]
    pyfunc.add_to_model(mlflow_model, loader_module=__name__, data=DATA_DIR, env=env)
    mlflow_model.save(str(Path(path) / "MLmodel"))


def _config(config: dict):
    from plasticity.config import CONFIGS

    return CONFIGS[config["task"]].from_dict(config)


def log_episode_model(model, cfg, name: str = "model", episode: int = 0) -> str:
    """Log `model` (trained under `cfg`) to the active MLflow run; returns its model URI."""
    import sys

    import torch

    import plasticity

    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"plasticity=={plasticity.__version__}",
            f"mlflow=={mlflow.__version__}"]
    with quiet_model_logging():
        info = Model.log(artifact_path=None, name=name, flavor=sys.modules[__name__], model=model,
                         config=cfg.to_dict(), episode=episode, pip_requirements=reqs)
    return info.model_uri


def episode_flavor(model, name: str, checkpoint: Path | None) -> str | None:
    """This module as a tracker's model flavour (`MlflowTracker.finish(..., flavor=episode_flavor)`,
    `plasticity.tracking.mlflow.ModelFlavor`): inside the active run, log `model` with the
    config and episode of its run's `checkpoint` when that task is served (`served_tasks()`);
    None otherwise (no checkpoint, another task), and the tracker logs plain PyTorch."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return None
    ckpt = load_checkpoint(checkpoint)
    if ckpt["config"].get("task") not in served_tasks():
        return None
    return log_episode_model(model, _config(ckpt["config"]), name=name, episode=int(ckpt["episode"]))


def log_checkpoint(path: str | Path, tracking_uri: str | None = None, experiment: str = "plasticity",
                   register: str | None = None) -> tuple[str, str | None]:
    """Log a checkpoint as a new run's model (and register it under `register`);
    returns (model URI, registered version or None)."""
    uri = tracking_uri or default_tracking_uri()
    client = check_tracking(uri)
    served = ServedModel.from_checkpoint(path)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id(client, experiment), run_name=f"serve-{Path(path).parent.name}"):
        mlflow.log_params({k: str(v) for k, v in served.cfg.to_dict().items()})
        model_uri = log_episode_model(served.model, served.cfg, episode=served.episode)
    version = None
    if register:
        version = mlflow.register_model(model_uri, register).version
    return model_uri, version


def checkpoint_of(model_uri: str) -> Path:
    """The local checkpoint of a logged model (downloaded if remote), or `model_uri`
    itself if it is a checkpoint file."""
    if Path(model_uri).is_file():
        return Path(model_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/{DATA_DIR}/{CHECKPOINT}",
                                                     dst_path=tempfile.mkdtemp(prefix="plasticity-serve-")))
    return local
