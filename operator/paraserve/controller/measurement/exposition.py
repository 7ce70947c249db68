"""Parse a Prometheus text exposition into samples that can be looked up by name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


class ExpositionError(ValueError):
    """The endpoint answered with something that is not the Prometheus text format."""


@dataclass(frozen=True)
class Exposition:
    """Every sample of one scrape: sample name → [(labels, value)]."""

    samples: Mapping[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return bool(self.samples.get(name))

    def total(self, name: str) -> float | None:
        """The sum over all series of a sample name (a counter across labels); None if absent."""
        values = [v for _, v in self.samples.get(name, ()) if not math.isnan(v)]
        return sum(values) if values else None

    def maximum(self, name: str) -> float | None:
        values = [v for _, v in self.samples.get(name, ()) if not math.isnan(v)]
        return max(values) if values else None

    def labelled(self, name: str, **labels: str) -> float | None:
        """The value of the one series with these labels (first match)."""
        for have, value in self.samples.get(name, ()):
            if all(have.get(k) == v for k, v in labels.items()):
                return value
        return None

    def buckets(self, histogram: str) -> dict[float, float] | None:
        """`sum by (le)` of `<histogram>_bucket` over all its series; None if absent."""
        series = self.samples.get(f"{histogram}_bucket")
        if not series:
            return None
        out: dict[float, float] = {}
        for labels, value in series:
            try:
                le = float(labels["le"])
            except (KeyError, ValueError):
                continue
            out[le] = out.get(le, 0.0) + value
        return out or None


def parse(text: str) -> Exposition:
    """All samples of a text exposition (HELP/TYPE lines only group them; names are kept)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except (ValueError, TypeError, IndexError) as error:
        raise ExpositionError(f"not the Prometheus text format: {error}") from None
    return Exposition(samples)
