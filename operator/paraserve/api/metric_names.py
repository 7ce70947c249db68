"""The metric names a rank exports and the operator's ``paraserve`` profile reads.

The worker registers exactly these; the measurement loop scrapes exactly these. Engines' own
names (vLLM, SGLang) are not ours and live with their profiles.
"""

from typing import Final

MEMORY: Final = "paraserve_rank_memory_bytes"
MEMORY_USED: Final = "paraserve_rank_memory_used_bytes"
PREFILL_LATENCY: Final = "paraserve_prefill_latency_seconds"
DECODE_TOKEN_LATENCY: Final = "paraserve_decode_token_latency_seconds"
REQUESTS: Final = "paraserve_requests_total"
GENERATED_TOKENS: Final = "paraserve_generated_tokens_total"
#: Gauges of rank 0: requests queued, and in the batch being generated (hang detection).
REQUESTS_WAITING: Final = "paraserve_requests_waiting"
REQUESTS_RUNNING: Final = "paraserve_requests_running"
RANK_INFO: Final = "paraserve_rank_info"

#: Values of MEMORY's ``kind`` label; the operator compares the first two with its estimate.
KIND_PARAMETERS: Final = "parameters"
KIND_KV_CACHE: Final = "kv_cache"
MEMORY_KINDS: Final = (
    KIND_PARAMETERS,
    KIND_KV_CACHE,
    "activations_peak",
    "process_rss",
    "device_allocated_peak",
    "device_reserved_peak",
)
