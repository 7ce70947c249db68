"""A tiny random-weight Llama made on this machine: config, tokenizer and safetensors, no download.

Shaped so that every parallel layout of the tests splits it: 8 attention and 8 key/value heads
(TP up to 8), 4 layers (PP up to 4), head dimension 64 (the CPU attention of vLLM supports
32, 64, 128 …, not 16). About 13 M parameters in bfloat16: an engine starts on it in seconds.

`ensure()` runs in the project's environment; the building itself (`python tiny_model.py OUT`)
runs in an engine's environment, which has torch, transformers and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
VOCAB_SIZE = 512
SEED = 0
NAME = "tiny-llama"


def fingerprint() -> str:
    """Changes whenever the shape or the way it is made changes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    return digest.hexdigest()[:10]


def model_dir(root: Path) -> Path:
    return root / "models" / f"{NAME}-{fingerprint()}"


def ensure(root: Path, python: Path) -> Path:
    """The model directory under ``root``, made with ``python`` (an engine's) when missing."""
    target = model_dir(root)
    if (target / "config.json").is_file():
        print(f"{NAME}: warm, reusing {target}", file=sys.stderr, flush=True)
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([str(python), __file__, str(partial)], check=True)
    try:
        partial.rename(target)  # atomic: a model in the cache is always whole
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)  # another run made it first
    size = sum(p.stat().st_size for p in target.iterdir())
    print(f"{NAME}: made {target} ({size / 2**20:.1f} MiB)", file=sys.stderr, flush=True)
    return target


_WORDS = (
    "the a of to and in is it that for on with as was be by at this from are or an which"
    " model rank tensor pipeline sequence parallel token layer head cache memory request"
    " paraserve kubernetes operator pod replica gang latency throughput prefill decode"
)


def _corpus() -> list[str]:
    # Deterministic text for the tokenizer's merges; words enough for a 512-token vocabulary.
    words = _WORDS.split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(24)) for i in range(400)]


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.model_max_length = CONFIG["max_position_embeddings"]
    fast.save_pretrained(out)

    config = LlamaConfig(
        **{k: v for k, v in CONFIG.items() if k not in ("architectures", "model_type")},
        vocab_size=VOCAB_SIZE,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    config.architectures = CONFIG["architectures"]
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    (out / "paraserve-tiny.json").write_text(
        json.dumps({"parameters": params, "seed": SEED, "fingerprint": fingerprint()}) + "\n"
    )


if __name__ == "__main__":
    build(Path(sys.argv[1]))
