"""A STAND-IN for NVIDIA's dcgm-exporter, for ranks that run on a CPU: the same page format.

dcgm-exporter serves ``DCGM_FI_DEV_FB_USED`` (framebuffer used, MiB) per GPU with the
``namespace``, ``pod`` and ``container`` of the pod holding it. CPU ranks have no framebuffer;
this stand-in reports, in that exact format, each rank process's resident memory instead, so
that the operator's dcgm-exporter path (discovery by label, scrape, join on namespace/pod) runs
end to end. It measures a process, not a GPU: wherever its figures are shown, they are named
as the stand-in's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: What dcgm-exporter's own page says of the metric.
HELP = "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).\n"
TYPE = "# TYPE DCGM_FI_DEV_FB_USED gauge\n"


@dataclass(frozen=True)
class GpuSample:
    """One GPU's line: which pod holds it and how many MiB are in use."""

    namespace: str
    pod: str
    container: str
    gpu: int
    used_mib: float
    hostname: str = "stand-in"


def render(samples: Sequence[GpuSample]) -> str:
    """A dcgm-exporter page of the framebuffer-used gauge (its label set, its units)."""
    lines = [HELP, TYPE]
    for s in samples:
        labels = (
            f'gpu="{s.gpu}",UUID="GPU-standin-{s.gpu:04d}",device="nvidia{s.gpu}",'
            f'modelName="paraserve dcgm stand-in (process RSS)",Hostname="{s.hostname}",'
            f'container="{s.container}",namespace="{s.namespace}",pod="{s.pod}"'
        )
        lines.append(f"DCGM_FI_DEV_FB_USED{{{labels}}} {s.used_mib:.0f}\n")
    return "".join(lines)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the engine's workers), MiB."""
    total = 0
    for proc in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])  # kB
        except OSError:
            continue
    return total / 1024


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class StandIn:
    """Serves ``/metrics`` on 127.0.0.1:<port>, rendering ``samples()`` at every request."""

    def __init__(self, port: int, samples: Callable[[], Sequence[GpuSample]]) -> None:
        source = samples

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(source()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
