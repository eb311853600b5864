"""`plasticity plugins`: the plugins this command line loaded (entry points,
$PLASTICITY_PLUGINS, --plugin), where each came from and what it registered."""

from __future__ import annotations

from plasticity.cliargs import fail
from plasticity.plugins import describe


def cmd_plugins(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):
        print("usage: plasticity plugins [--plugin MODULE ...]\n\nList the loaded plugins, where each came "
              "from and the tasks, rules and search spaces it registered.")
        return 0
    if argv:
        fail(f"plasticity plugins takes no arguments, got {' '.join(argv)!r}: pass --plugin MODULE to load one")
    print(describe())
    return 0
