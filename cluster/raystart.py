"""`ray start` for a node whose servers must listen on 127.0.0.1 only (the local launcher's
default): `python -m cluster.raystart start ... --node-ip-address 127.0.0.1`.

Ray binds its gRPC servers (GCS, raylet, object manager), agents, client server and
metrics endpoints to localhost when the node's IP address is 127.0.0.1, as for
`ray.init()`. But `ray start` swaps a loopback address (the node's, and the head's in
`--address`) for the machine's network address, so that nodes on other machines can
reach it (`services.resolve_ip_for_localhost`). Every node of the local cluster runs on
this machine, so here a loopback address is kept as given; everything else is Ray's own
`ray start` (ray 2.60; tests/test_cluster_security.py checks the sockets it leaves).

May import: ray
"""

from __future__ import annotations

import sys

import ray._private.services as services
from ray._common.network_utils import is_localhost

_resolve = services.resolve_ip_for_localhost


def keep_loopback(host: str) -> str:
    return host if host and is_localhost(host) else _resolve(host)


services.resolve_ip_for_localhost = keep_loopback

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    sys.exit(main())
