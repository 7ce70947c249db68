"""The parameter count derived from each shipped config.json against the published total.

Tolerance: the published figures are rounded (8.03B, 141B, 116.83B), so the derived count
must round to the published figure: within half a unit of its last digit. That is 0.06 % for
"8.03B" and 0.4 % for "141B" — as exact as the publication allows, and never looser than 0.5 %.
Run with `-s` to see the table.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from paraserve.api import Dtype, Parallelism
from paraserve.planner import architecture_from_config
from paraserve.planner.weights import parameter_count, stage_weights

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"

# config file → (published total, where it is published)
PUBLISHED = {
    "llama-3.1-8b": ("8.03B", "Hugging Face model page of meta-llama/Llama-3.1-8B"),
    "llama-3.1-70b": ("70.6B", "Hugging Face model page of meta-llama/Llama-3.1-70B"),
    "llama-3.1-405b": ("406B", "Hugging Face model page of meta-llama/Llama-3.1-405B"),
    "qwen2.5-72b": ("72.7B", "Qwen2.5-72B model card: Number of Parameters"),
    "qwen3-32b": ("32.8B", "Qwen3-32B model card: Number of Parameters"),
    "mixtral-8x7b": ("46.7B", "Mistral AI, Mixtral of experts: 46.7B total parameters"),
    "mixtral-8x22b": ("141B", "Mistral AI, Mixtral 8x22B announcement: 141B parameters"),
    "deepseek-v3": ("671B", "DeepSeek-V3 report and README_WEIGHTS.md: main model 671B"),
    "qwen3-235b-a22b": ("235B", "Qwen3-235B-A22B model card: 235B in total"),
    "qwen3-30b-a3b": ("30.5B", "Qwen3-30B-A3B model card: 30.5B in total"),
    "gpt-oss-120b": ("116.83B", "OpenAI gpt-oss model card, Table 1: 116.83B total"),
    "gpt-oss-20b": ("20.91B", "OpenAI gpt-oss model card, Table 1: 20.91B total"),
    "deepseek-v2-lite": ("15.7B", "DeepSeek-V2-Lite model card: 15.7B total"),
    "gemma-2-27b": ("27.2B", "Hugging Face model page of google/gemma-2-27b"),
}


def published_count(text: str) -> tuple[Decimal, Decimal]:
    """The figure and half a unit of its last digit, in parameters."""
    number = text.removesuffix("B")
    decimals = len(number.partition(".")[2])
    return Decimal(number) * 10**9, Decimal(5) * Decimal(10) ** (8 - decimals)


def derived(name: str) -> int:
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    return parameter_count(architecture_from_config(config, name)).total


def test_print_the_table() -> None:
    print(f"\n{'model':<17} {'derived':>17} {'published':>10} {'difference':>15}  tolerance")
    for name, (figure, _) in PUBLISHED.items():
        count = derived(name)
        value, half_unit = published_count(figure)
        difference = Decimal(count) - value
        print(
            f"{name:<17} {count:>17,} {figure:>10} {difference / 10**9:>+14.4f}B"
            f" ({difference / value * 100:+.3f} %)  ±{half_unit / value * 100:.3f} %"
        )


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_derived_count_rounds_to_the_published_total(name: str) -> None:
    figure, source = PUBLISHED[name]
    value, half_unit = published_count(figure)
    count = derived(name)
    assert abs(Decimal(count) - value) <= half_unit, (name, count, figure, source)
    assert half_unit / value <= Decimal("0.005")


def test_deepseek_v3_checkpoint_matches_hugging_face_element_count() -> None:
    # Hugging Face counts every stored element: the main model, the MTP module with its own
    # embedding and head (model.layers.61), and the float32 scales of the fp8 blocks. Its
    # safetensors metadata gives 684,531,386,000 (shown as "685B" on the model page).
    arch = architecture_from_config(json.loads((CONFIGS / "deepseek-v3.json").read_text()))
    weights = stage_weights(
        arch, Dtype.BFLOAT16, Parallelism(), start=0, end=61, first=True, last=True,
        multi_token_prediction=True,
    )  # fmt: skip
    scales = sum((p.quantized_bytes - p.quantized) // 4 for p in weights.parts.values())
    assert weights.params() + scales == 684_531_386_000


def test_active_parameters_match_the_published_ones() -> None:
    # Active per token: all but the routed experts a token is not sent to, less the embedding
    # lookup (which multiplies nothing) — the convention of DeepSeek (36.6B incl. the head) and
    # OpenAI (5.13B, 3.61B). Qwen and Mistral count the lookup too; they are left out here.
    def active(name: str) -> float:
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        return parameter_count(architecture_from_config(config)).active / 1e9

    assert round(active("deepseek-v3"), 1) == 36.6
    assert round(active("gpt-oss-120b"), 2) == 5.13
    assert round(active("gpt-oss-20b"), 2) == 3.61


def test_mxfp4_is_4_25_bits_per_expert_weight() -> None:
    arch = architecture_from_config(json.loads((CONFIGS / "gpt-oss-120b.json").read_text()))
    weights = stage_weights(
        arch, Dtype.BFLOAT16, Parallelism(), start=0, end=36, first=True, last=True
    )
    experts = weights.parts["routed_experts"]
    assert experts.quantized_bytes * 8 / experts.quantized == 4.25
    # The checkpoint: 60.9 GB of MXFP4 experts plus the bfloat16 rest, 65.25 GB in all.
    assert round(weights.total_bytes / 1e9, 2) == 65.25
