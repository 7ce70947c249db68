"""Sharded weights are slices of one seeded full model; sizes match the planner's model."""

import pytest
import torch

from paraserve.api import InferenceDeploymentSpec
from paraserve.worker.allocation import allocation_report
from paraserve.worker.shape import TINY_ARCHITECTURE, ModelShape, ShapeError, Shard
from paraserve.worker.weights import build_stage

TINY = ModelShape.tiny()


def shards(tensor: int, shape: ModelShape = TINY) -> list:
    return [build_stage(shape, tp_size=tensor, tp_rank=t) for t in range(tensor)]


@pytest.mark.parametrize("tensor", [2, 4])
def test_tensor_shards_reassemble_the_full_model(tensor: int) -> None:
    full = build_stage(TINY)
    parts = shards(tensor)
    for index, layer in enumerate(full.layers):
        pieces = [p.layers[index] for p in parts]
        assert torch.equal(torch.cat([p.wq for p in pieces]), layer.wq)
        assert torch.equal(torch.cat([p.w_gate for p in pieces]), layer.w_gate)
        assert torch.equal(torch.cat([p.wo for p in pieces], dim=1), layer.wo)
        assert torch.equal(torch.cat([p.w_down for p in pieces], dim=1), layer.w_down)
        assert all(torch.equal(p.attn_norm, layer.attn_norm) for p in pieces)
    assert torch.equal(torch.cat([p.embed for p in parts]), full.embed)
    assert torch.equal(torch.cat([p.lm_head for p in parts]), full.lm_head)


def test_kv_heads_split_when_enough_else_replicated() -> None:
    full = build_stage(TINY)  # 2 KV heads of 16
    two = shards(2)
    assert torch.equal(torch.cat([p.layers[0].wk for p in two]), full.layers[0].wk)
    four = shards(4)  # tensor 4 > 2 KV heads: ranks 0,1 hold head 0; ranks 2,3 head 1
    heads = [p.layers[0].wk for p in four]
    assert torch.equal(heads[0], full.layers[0].wk[:16])
    assert torch.equal(heads[1], heads[0])
    assert torch.equal(heads[2], full.layers[0].wk[16:])


def test_vocabulary_is_padded_to_a_multiple_of_tensor() -> None:
    shape = ModelShape.from_wire(TINY_ARCHITECTURE | {"vocabSize": 250})
    full = build_stage(shape)
    parts = shards(4, shape)
    joined = torch.cat([p.embed for p in parts])
    assert joined.shape[0] == 252
    assert torch.equal(joined[:250], full.embed) and not joined[250:].any()


def test_unsplittable_shapes_are_named() -> None:
    with pytest.raises(ShapeError, match="numAttentionHeads=4 is not divisible by tensor=3"):
        Shard(TINY, 3, 0)


def test_models_beyond_a_dense_decoder_are_refused_in_one_line() -> None:
    experts = {"routed": 4, "perToken": 2, "intermediateSize": 32}
    with pytest.raises(ShapeError, match="has experts: the reference worker builds dense"):
        ModelShape.from_wire(TINY_ARCHITECTURE | {"experts": experts})


def test_tied_embeddings_are_held_once_when_pipeline_is_one() -> None:
    shape = ModelShape.from_wire(TINY_ARCHITECTURE | {"tieWordEmbeddings": True})
    weights = build_stage(shape)
    assert weights.lm_head is weights.embed
    untied = build_stage(TINY)
    assert untied.nbytes - weights.nbytes == 256 * 64 * 4


def test_meta_device_allocates_nothing_and_sizes_match_the_planner() -> None:
    spec = InferenceDeploymentSpec.model_validate(
        {
            "model": {"name": "tiny", "dtype": "bfloat16", "architecture": TINY_ARCHITECTURE},
            "parallelism": {"pipeline": 2, "tensor": 4, "sequence": 4},
            "serving": {"maxBatchSize": 3, "maxSequenceLength": 40},
        }
    )
    rows = allocation_report(spec)
    assert [r.rank for r in rows] == list(range(8))
    assert all(r.parameters_ratio == 1.0 and r.kv_cache_ratio == 1.0 for r in rows)
    live = build_stage(
        TINY, tp_size=4, tp_rank=3, layer_range=(2, 4), first_stage=False, dtype=torch.bfloat16
    )
    assert rows[7].parameters_bytes == live.nbytes
