"""Command line: `python -m e2e.kind build|missing|gomod|binary NAME|…` (e2e/kind/up.sh uses it)."""

from __future__ import annotations

import argparse
import sys

from e2e.cluster import gomod
from e2e.kind import build, nodeimage
from e2e.kind.components import COMPONENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.kind", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build or reuse the node image's binaries")
    sub.add_parser("missing", help="list the node binaries not built yet")
    sub.add_parser("base-image", help="the Debian base image (debootstrap, docker import)")
    sub.add_parser("node-image", help="build or reuse the node image; prints its tag")
    path = sub.add_parser("binary", help="print the path of a built binary")
    path.add_argument("name")
    gen = sub.add_parser("gomod", help="regenerate go/*/go.mod and go.sum from upstream")
    gen.add_argument("components", nargs="*", choices=[c.name for c in COMPONENTS])
    args = parser.parse_args(argv)
    if args.command == "build":
        build.build_all()
    elif args.command == "base-image":
        print(nodeimage.base_image())
    elif args.command == "node-image":
        build.build_all()
        print(nodeimage.node_image())
    elif args.command == "missing":
        print("\n".join(build.missing()))
    elif args.command == "binary":
        print(build.binary(args.name))
    elif args.command == "gomod":
        gomod.generate_all(args.components or None, COMPONENTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
