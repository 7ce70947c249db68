"""kubectl against the cluster under test, whichever it is (local control plane or kind)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from e2e import install

T = TypeVar("T")


class Kube:
    """The cluster a kubeconfig points at, through kubectl."""

    def __init__(self, kubeconfig: Path, env: Mapping[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**(env or os.environ), "KUBECONFIG": str(kubeconfig)}
        self.kubectl_path = str(install.tool("kubectl"))

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def apply(
        self, *objects: Mapping[str, Any], namespace: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = yaml.safe_dump_all([dict(o) for o in objects])
        scope = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *scope, "-f", "-", input=text, check=check)

    def get(self, kind: str, name: str = "", namespace: str | None = None) -> dict[str, Any]:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        args += ["-n", namespace] if namespace else []
        result: dict[str, Any] = json.loads(self.kubectl(*args).stdout)
        return result

    def items(self, kind: str, namespace: str | None = None, selector: str = "") -> list[Any]:
        args = ["get", kind, "-o", "json"]
        args += ["-n", namespace] if namespace else ["-A"]
        args += ["-l", selector] if selector else []
        items: list[Any] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def wait_for(
        self,
        condition: Callable[[], T],
        timeout: float = 60,
        interval: float = 1.0,
        what: str = "condition",
        explain: Callable[[], str] | None = None,
    ) -> T:
        """Poll until `condition()` is truthy; AssertionError (with `explain()`) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                detail = f"\n{explain()}" if explain else ""
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
            time.sleep(interval)
