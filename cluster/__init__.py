"""Running the sweep service on a cluster: container entrypoints (`cluster.entrypoint`),
the settings read from docker-compose.yml (`cluster.settings`) and a launcher that starts
the same services as local processes (`python -m cluster.local`). Guide: cluster/README.md.

The services it starts run `plasticity` and `tune` as commands; `raystart.py` (run as
`ray start`) imports Ray, and its docstring says so.

May import: plasticity.errors, plasticity.redact, yaml, dotenv
May import in functions: psycopg, torch
"""
