"""Experiment tracking adapters at the edge of the library (the core never imports them).

    mlflow.py   MlflowTracker: params, buffered metrics, figures, the model, retries
    session.py  MlflowSession: a training run's MLflow run, opened, reopened on resume, closed
    params.py   which config fields a run's model actually reads (what is logged as params)
    database.py a quick probe of a PostgreSQL store (MLflow's or Optuna's) before it is used

MLflow, psycopg and SQLAlchemy are imported inside functions, so importing this package
does not import them. Tracking logs models but does not know their flavours: the caller
hands one over (`plasticity.serving.mlflow_pyfunc.episode_flavor`); it never imports
`plasticity.serving`.

May import: plasticity.errors, plasticity.redact, plasticity.rules
May import in functions: plasticity.nn.fused, mlflow, psycopg, sqlalchemy, torch
"""
