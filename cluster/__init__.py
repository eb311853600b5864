"""Running the sweep service on a cluster: container entrypoints (`cluster.entrypoint`),
the settings read from docker-compose.yml (`cluster.settings`) and a launcher that starts
the same services as local processes (`python -m cluster.local`). Guide: cluster/README.md.

May import: `plasticity.errors`, `plasticity.redact`, PyYAML and python-dotenv; the
services it starts run `plasticity` and `tune` as commands.
"""
