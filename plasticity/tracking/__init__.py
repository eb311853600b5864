"""Experiment tracking adapters at the edge of the library (the core never imports them).

    mlflow.py   MlflowTracker: params, buffered metrics, figures, the model, retries
    params.py   which config fields a run's model actually reads (what is logged as params)
    database.py a quick probe of a PostgreSQL store (MLflow's or Optuna's) before it is used

May import: `plasticity.errors`, `plasticity.redact`, `plasticity.rules`, and MLflow,
psycopg and SQLAlchemy (inside functions, so importing this package does not import them).
"""
