"""Expert parallelism as each engine spells it: the flags a rank's command gets for
``parallelism.expert`` (docs/planner.md, "Expert parallelism: what the engines mean").

- vLLM: ``--enable-expert-parallel`` makes the MoE layers' EP group the whole TP × DP group of
  a stage (vllm/model_executor/layers/fused_moe/config.py, FusedMoEParallelConfig.make); a
  paraserve replica has no DP, so vLLM runs EP = TP or no EP.
- SGLang: ``--ep-size`` splits each stage's TP group: ``moe_tp_size = tp_size // ep_size``
  (python/sglang/srt/distributed/parallel_state.py, initialize_model_parallel).
"""

from __future__ import annotations

from paraserve.api.spec import Parallelism


class UnsupportedExpertParallelism(ValueError):
    """The engine cannot run the EP degree asked for: one line naming both."""


def engine_expert_args(engine: str, parallelism: Parallelism) -> list[str]:
    """The engine flags that give ``parallelism.expert`` (none for EP = 1)."""
    ep, tp = parallelism.expert, parallelism.tensor
    if ep == 1:
        return []
    if engine == "vllm":
        if ep != tp:
            raise UnsupportedExpertParallelism(
                f"vLLM's --enable-expert-parallel makes EP = TP; EP={ep} with TP={tp} needs"
                " SGLang (--ep-size) or EP=1 or EP=TP"
            )
        return ["--enable-expert-parallel"]
    if engine == "sglang":
        return ["--ep-size", str(ep)]
    raise UnsupportedExpertParallelism(f"engine {engine!r}: no expert-parallel flags known")
