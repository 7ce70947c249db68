"""Real exposition texts of each metric profile, as the engines print them (trimmed)."""
# ruff: noqa: E501

# Captured from `paraserve worker --tiny --rate 50 --requests 30` (CPU), python_/process_ cut.
PARASERVE = """\
# HELP paraserve_rank_memory_bytes Bytes the rank holds, by kind.
# TYPE paraserve_rank_memory_bytes gauge
paraserve_rank_memory_bytes{kind="parameters"} 723200.0
paraserve_rank_memory_bytes{kind="kv_cache"} 524288.0
paraserve_rank_memory_bytes{kind="activations_peak"} 65536.0
paraserve_rank_memory_bytes{kind="process_rss"} 6.4495616e+08
# HELP paraserve_rank_memory_used_bytes The rank's GPU-memory figure: peak reserved on GPU; on CPU parameters + KV cache + peak activations.
# TYPE paraserve_rank_memory_used_bytes gauge
paraserve_rank_memory_used_bytes 1.313024e+06
# HELP paraserve_prefill_latency_seconds Time to first token of a request: queueing + prefill, seconds.
# TYPE paraserve_prefill_latency_seconds histogram
paraserve_prefill_latency_seconds_bucket{le="0.005"} 13.0
paraserve_prefill_latency_seconds_bucket{le="0.01"} 19.0
paraserve_prefill_latency_seconds_bucket{le="0.025"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.05"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.075"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.1"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.15"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.2"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.3"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.5"} 30.0
paraserve_prefill_latency_seconds_bucket{le="0.75"} 30.0
paraserve_prefill_latency_seconds_bucket{le="1.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="1.5"} 30.0
paraserve_prefill_latency_seconds_bucket{le="2.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="3.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="5.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="7.5"} 30.0
paraserve_prefill_latency_seconds_bucket{le="10.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="20.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="30.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="60.0"} 30.0
paraserve_prefill_latency_seconds_bucket{le="+Inf"} 30.0
paraserve_prefill_latency_seconds_count 30.0
paraserve_prefill_latency_seconds_sum 0.27765568985006783
# HELP paraserve_prefill_latency_seconds_created Time to first token of a request: queueing + prefill, seconds.
# TYPE paraserve_prefill_latency_seconds_created gauge
paraserve_prefill_latency_seconds_created 1.7954825792900705e+09
# HELP paraserve_decode_token_latency_seconds Latency of one generated token after the first (one decode step), seconds.
# TYPE paraserve_decode_token_latency_seconds histogram
paraserve_decode_token_latency_seconds_bucket{le="0.001"} 0.0
paraserve_decode_token_latency_seconds_bucket{le="0.0025"} 113.0
paraserve_decode_token_latency_seconds_bucket{le="0.005"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.0075"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.01"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.015"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.02"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.03"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.04"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.05"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.075"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.1"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.15"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.2"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.3"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="0.5"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="1.0"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="2.0"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="5.0"} 210.0
paraserve_decode_token_latency_seconds_bucket{le="+Inf"} 210.0
paraserve_decode_token_latency_seconds_count 210.0
paraserve_decode_token_latency_seconds_sum 0.5424639790007859
# HELP paraserve_decode_token_latency_seconds_created Latency of one generated token after the first (one decode step), seconds.
# TYPE paraserve_decode_token_latency_seconds_created gauge
paraserve_decode_token_latency_seconds_created 1.7954825792901702e+09
# HELP paraserve_requests_total Requests completed (counted by rank 0 of the replica only).
# TYPE paraserve_requests_total counter
paraserve_requests_total 30.0
# HELP paraserve_requests_created Requests completed (counted by rank 0 of the replica only).
# TYPE paraserve_requests_created gauge
paraserve_requests_created 1.7954825792903275e+09
# HELP paraserve_generated_tokens_total Tokens generated (counted by rank 0 of the replica only).
# TYPE paraserve_generated_tokens_total counter
paraserve_generated_tokens_total 240.0
# HELP paraserve_generated_tokens_created Tokens generated (counted by rank 0 of the replica only).
# TYPE paraserve_generated_tokens_created gauge
paraserve_generated_tokens_created 1.7954825792903388e+09
# HELP paraserve_rank_info Where this rank sits; always 1.
# TYPE paraserve_rank_info gauge
paraserve_rank_info{pp_rank="0",rank="0",replica="0",sp_rank="0",tp_rank="0"} 1.0
"""

# vLLM v1 (≥ 0.9), one engine, prometheus_client's format: labels engine and model_name,
# requests split by finished_reason, *_created samples.
VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4125
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"} 70.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="meta-llama/Llama-3.1-8B-Instruct"} 30.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:request_success_created Count of successfully processed requests.
# TYPE vllm:request_success_created gauge
vllm:request_success_created{engine="0",finished_reason="stop",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.7564e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25600.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.12
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.005",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="meta-llama/Llama-3.1-8B-Instruct"} 10.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="meta-llama/Llama-3.1-8B-Instruct"} 60.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.06",model_name="meta-llama/Llama-3.1-8B-Instruct"} 90.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.08",model_name="meta-llama/Llama-3.1-8B-Instruct"} 95.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 98.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.25",model_name="meta-llama/Llama-3.1-8B-Instruct"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 100.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 100.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 100.0
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 380.5
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.025",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25000.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.05",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25500.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.075",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25500.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25500.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 25500.0
"""

# vLLM before 0.9: time_per_output_token and gpu_cache_usage_perc, no engine label.
VLLM_OLD = """\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="mistral-7b"} 0.5
# HELP vllm:time_per_output_token_seconds Histogram of time per output token in seconds.
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="mistral-7b"} 50.0
vllm:time_per_output_token_seconds_bucket{le="0.025",model_name="mistral-7b"} 100.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="mistral-7b"} 100.0
vllm:time_per_output_token_seconds_count{model_name="mistral-7b"} 100.0
vllm:time_per_output_token_seconds_sum{model_name="mistral-7b"} 1.2
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="mistral-7b"} 7.0
"""

# SGLang with --enable-metrics, TP=2: the scheduler's series carry tp_rank.
SGLANG = """\
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 0.21
sglang:token_usage{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="1"} 0.23
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="Qwen/Qwen2.5-7B-Instruct",pp_rank="0",tp_rank="0"} 4.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 400.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 51200.0
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{model_name="Qwen/Qwen2.5-7B-Instruct"} 30.0
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="Qwen/Qwen2.5-7B-Instruct"} 100.0
sglang:time_to_first_token_seconds_bucket{le="0.2",model_name="Qwen/Qwen2.5-7B-Instruct"} 300.0
sglang:time_to_first_token_seconds_bucket{le="0.4",model_name="Qwen/Qwen2.5-7B-Instruct"} 400.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 400.0
sglang:time_to_first_token_seconds_count{model_name="Qwen/Qwen2.5-7B-Instruct"} 400.0
# HELP sglang:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE sglang:inter_token_latency_seconds histogram
sglang:inter_token_latency_seconds_sum{model_name="Qwen/Qwen2.5-7B-Instruct"} 600.0
sglang:inter_token_latency_seconds_bucket{le="0.005",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
sglang:inter_token_latency_seconds_bucket{le="0.01",model_name="Qwen/Qwen2.5-7B-Instruct"} 40000.0
sglang:inter_token_latency_seconds_bucket{le="0.02",model_name="Qwen/Qwen2.5-7B-Instruct"} 50800.0
sglang:inter_token_latency_seconds_bucket{le="+Inf",model_name="Qwen/Qwen2.5-7B-Instruct"} 51200.0
sglang:inter_token_latency_seconds_count{model_name="Qwen/Qwen2.5-7B-Instruct"} 51200.0
"""
