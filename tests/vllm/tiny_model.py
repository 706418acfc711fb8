"""Build a tiny random-weight Llama with a byte-level BPE tokenizer and a chat template, for real-engine tests.

    python tests/vllm/tiny_model.py DIR

Runs with the engine's interpreter (it needs torch and transformers; Sluice does not). Deterministic: the same
seed gives the same weights and vocabulary, so several replicas serve the same model. Takes a few seconds.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

VOCAB_SIZE = 1024
SPECIALS = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = ("the a engine token cache queue request model answer prompt stream replica gateway sluice fast slow "
         "one two three four five six seven eight nine ten hello world count go on and of to in is it").split()


def corpus(lines: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 20))]
        out.append(" ".join(words) + rng.choice([".", "?", "!", ",", ""]) + f" {rng.randint(0, 9999)}")
    return out


def build_tokenizer(out: Path, rng: random.Random):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(5000, rng), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   model_max_length=2048)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # head_dim 32, not hidden/heads = 16: vLLM's CPU attention takes head sizes 32, 64, 80, ... only
    # (vllm/v1/attention/backends/cpu_attn.py, get_supported_head_sizes).
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, random.Random(0))
    assert len(tokenizer) <= VOCAB_SIZE, len(tokenizer)
    build_model(out, tokenizer)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
