"""A tiny Llama with random weights and a byte-level BPE tokenizer, for benchmarking a real vLLM on the CPU.

Run with the vLLM venv's Python (it needs transformers and torch):

    /opt/vllm-venv/bin/python -m bench.tiny_llama /tmp/tiny-llama [WORDS_FILE]

hidden 64, 2 layers, 4 heads of dimension 64 (vLLM's CPU attention rejects head_dim 16), vocab 1000; a byte-level
BPE tokenizer.json trained here on generated text (plus, when given, sentences of the words in WORDS_FILE, so that
each of those words is one token: ``bench/vllm_compare.py`` passes sluice bench's prompt words, making a prompt of
N words N tokens, as vLLM's random dataset's prompts are), tokenizer_config.json with a chat template so
/v1/chat/completions works too. Deterministic (seeded). What it says is noise: it is for timing, not for text.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build(out: Path, extra_words: list[str], vocab_size: int = 1000) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    corpus = [" ".join(rng.choices(words, k=50)) for _ in range(300 if extra_words else 2000)]
    corpus.append(open(__file__).read())
    corpus += [" ".join(rng.choices(extra_words, k=50)) for _ in range(2000 if extra_words else 0)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "model_max_length": 2048, "chat_template": CHAT_TEMPLATE, "add_bos_token": False,
    }, indent=2))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
                         max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, torch_dtype="float32")
    LlamaForCausalLM(config).save_pretrained(out)


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]).read_text().split() if len(sys.argv) > 2 else [])
