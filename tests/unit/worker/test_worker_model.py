"""In one process: prefill + decode with the KV cache equals the cache-free reference."""

import torch

from paraserve.api.rank_env import parse_rank_env
from paraserve.worker.device_memory import ActivationMeter
from paraserve.worker.engine import Engine
from paraserve.worker.groups import form_groups
from paraserve.worker.kvcache import KVCache
from paraserve.worker.model import StageModel
from paraserve.worker.parallel import TensorParallel
from paraserve.worker.reference import reference_logits
from paraserve.worker.shape import ModelShape
from paraserve.worker.weights import build_stage


def test_cached_decode_matches_the_full_forward() -> None:
    shape = ModelShape.tiny()
    weights = build_stage(shape, seed=7)
    cache = KVCache(weights.shard, shape.num_layers, 2, 16, torch.float32)
    groups = form_groups(parse_rank_env({}), torch.device("cpu"))
    engine = Engine(
        groups, StageModel(weights, TensorParallel(), ActivationMeter()), cache, torch.float32
    )
    prompt = torch.randint(0, shape.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    step = engine.prefill(prompt, 2, 6, all_logits=True)
    logits, tokens = [step.logits], [step.tokens]
    for _ in range(3):
        step = engine.decode(tokens[-1])
        logits.append(step.logits[:, 0])
        tokens.append(step.tokens)
    expected = reference_logits(weights, torch.cat([prompt, torch.stack(tokens[:-1], 1)], 1))
    torch.testing.assert_close(logits[0], expected[:, :6], rtol=1e-4, atol=1e-4)
    for i in range(3):
        torch.testing.assert_close(logits[i + 1], expected[:, 6 + i], rtol=1e-4, atol=1e-4)
    assert cache.length == 9


def test_seed_changes_the_model() -> None:
    a = build_stage(ModelShape.tiny(), seed=0).layers[0].wq
    b = build_stage(ModelShape.tiny(), seed=1).layers[0].wq
    assert not torch.equal(a, b)
