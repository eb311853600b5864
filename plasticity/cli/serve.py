"""`plasticity serve MODEL_URI`: hands over to `plasticity.serving.cli` (Ray Serve, the
serve extras), imported when the command runs.

May import in functions: plasticity.serving
"""

from __future__ import annotations


def cmd_serve(argv: list[str]) -> int:
    from plasticity.serving.cli import main as serve_main

    return serve_main(argv)
