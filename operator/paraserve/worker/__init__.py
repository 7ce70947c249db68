"""The reference rank runtime: one process per rank, driven by the operator's env contract."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`paraserve worker` on its own (the torch-heavy modules load only when it runs)."""
    from paraserve.worker.worker_flags import main as run

    return run(argv)
