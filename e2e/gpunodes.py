"""Fake GPU nodes for kwok whose pods get loopback IPs, so nothing ever dials a private address.

kwok gives a pod an IP from its node's `spec.podCIDR` when the node has one. The operator
scrapes each ready rank's metrics at its pod IP; with a 127.x.y.0/24 per node, a scrape of a
pod that no process serves is refused on this machine's loopback instead of leaving it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from e2e.cluster.gpupool import parse_pool, render_nodes


def loopback_cidr(node: str) -> str:
    """A /24 in 127.0.0.0/8 chosen by the node's name (127.0.0.0/16 is left alone)."""
    digest = hashlib.sha256(node.encode()).digest()
    return f"127.{digest[0] % 254 + 1}.{digest[1]}.0/24"


def pool_nodes(name: str, spec: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The kwok Node objects of pool `name` (`"1 x 8 x A100-80GB"`), with loopback pod CIDRs."""
    nodes = render_nodes(name, parse_pool(spec, labels=labels))
    for node in nodes:
        cidr = loopback_cidr(node["metadata"]["name"])
        node["spec"]["podCIDR"] = cidr
        node["spec"]["podCIDRs"] = [cidr]
    return nodes


def main(argv: list[str] | None = None) -> int:
    """`python -m e2e.gpunodes POOL "1 x 8 x A100-80GB"`: the pool's Node objects as YAML."""
    import sys

    import yaml

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        nodes = pool_nodes(args[0], args[1])
    except ValueError as error:
        print(f"python -m e2e.gpunodes: {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(nodes), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
