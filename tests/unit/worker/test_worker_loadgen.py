"""The load generator: seeded arrivals, limits, and batches of at most maxBatchSize."""

import pytest

from paraserve.worker.loadgen import LoadGenerator, LoadProfile


def test_rate_zero_queues_every_request_at_once() -> None:
    load = LoadGenerator(LoadProfile(rate=0, requests=5, prompt_length=3), 100, 2)
    load.admit(0.0)
    batches = [load.take() for _ in range(3)]
    assert [len(b.requests) for b in batches if b] == [2, 2, 1]
    assert batches[0] is not None and tuple(batches[0].prompt.shape) == (2, 3)
    assert load.finished and load.take() is None


def test_uniform_arrivals_stop_at_the_duration() -> None:
    load = LoadGenerator(LoadProfile(rate=4, arrival="uniform", duration=1.0), 100, 8)
    load.admit(10.0)
    batch = load.take()
    assert batch is not None
    assert [r.arrival for r in batch.requests] == [0.0, 0.25, 0.5, 0.75]
    assert load.finished


def test_poisson_arrivals_are_seeded() -> None:
    def arrivals(seed: int) -> list[float]:
        load = LoadGenerator(LoadProfile(rate=10, requests=20, seed=seed), 100, 32)
        load.admit(1e9)
        batch = load.take()
        assert batch is not None
        return [r.arrival for r in batch.requests]

    assert arrivals(1) == arrivals(1) != arrivals(2)
    assert 0.5 < arrivals(1)[-1] < 5  # ≈ 19 gaps of 0.1 s


def test_a_load_that_cannot_fit_the_cache_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds maxSequenceLength 16"):
        LoadProfile(prompt_length=10, output_tokens=7).check(4, 16)
