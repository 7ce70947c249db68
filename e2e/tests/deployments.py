"""The InferenceDeployments the suite applies: the review's two, and the tiny CPU model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REVIEW_IMPOSSIBLE = EXAMPLES / "review-pp8-tp2-sp2.yaml"
REVIEW_FITTING = EXAMPLES / "review-pp4-tp2-sp2.yaml"
TINY = EXAMPLES / "tiny-pp2-tp2-sp2.yaml"


def load(path: Path, selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    """An example on the suite's pool; `spec` keys replace the example's."""
    body: dict[str, Any] = copy.deepcopy(yaml.safe_load(path.read_text()))
    body["spec"].setdefault("placement", {})["nodeSelector"] = dict(selector)
    body["spec"].update(spec)
    return body


def review(path: Path, selector: dict[str, str]) -> dict[str, Any]:
    """A review deployment whose ranks idle: a 70B model cannot run where real containers do."""
    return load(path, selector, worker={"command": ["sleep", "infinity"]})
