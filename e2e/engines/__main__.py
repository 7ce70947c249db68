"""Command line: `python -m e2e.engines install vllm|sglang [--version V]`."""

from __future__ import annotations

import argparse
import sys

from e2e.engines import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.engines")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install (or reuse) an engine's cached CPU build")
    p_install.add_argument("engine", choices=sorted(install.INSTALLERS))
    p_install.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            installer = install.INSTALLERS[args.engine]
            if args.version:
                installer(args.version)
            else:
                installer()
    except install.InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
