from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sluice.errors import ConfigError, NotFoundError
from sluice.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from sluice.quota._pricing import Price, Pricer
from sluice.quota._tokenizer import ChatOverhead, EstimateCounter, ExactCounter

WORDS = "the a gateway token engine quota request model reply stream budget tenant fair queue limit window".split()


def _sentences(count: int) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "." for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_sentences(400), trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def chat(*texts: str, **kw: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": t} for t in texts], **kw}
    )


def completion(prompt: object, **kw: object) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": prompt, **kw})


def pricer(counter: object = None, *, default_max_tokens: int = 100, max_model_len: int | None = None) -> Pricer:
    return Pricer({"m": counter or EstimateCounter()}, default_max_tokens, {"m": max_model_len})


# --- exact counting ---------------------------------------------------------------------------------------


def test_exact_count_matches_the_tokenizer(tokenizer_path: Path) -> None:
    reference = Tokenizer.from_file(str(tokenizer_path))
    counter = ExactCounter.from_file(tokenizer_path)
    for text in ["the gateway", "a fair queue limit window.", "unseen wörds ☃ and 123", ""]:
        assert counter.count_text(text) == len(reference.encode(text).ids)
    assert counter.count_text("the quota") < len("the quota")  # merges were learnt
    assert counter.count_ids([5, 6, 7]) == 3


def test_exact_chat_adds_template_overhead_per_message(tokenizer_path: Path) -> None:
    reference = Tokenizer.from_file(str(tokenizer_path))
    counter = ExactCounter.from_file(tokenizer_path, ChatOverhead(per_message_tokens=5, reply_tokens=2))
    texts = ["the gateway token", "a tenant budget.", "fair queue"]
    price = pricer(counter).price_chat(chat(*texts, max_tokens=10))
    assert price.prompt_tokens == sum(len(reference.encode(t).ids) for t in texts) + 3 * 5 + 2
    assert price.fixed_tokens == 17 and price.prompt_chars == sum(map(len, texts))


def test_exact_counter_default_overhead_and_bad_file(tmp_path: Path, tokenizer_path: Path) -> None:
    assert ExactCounter.from_file(tokenizer_path).chat_overhead(2) == 2 * 4 + 3
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        ExactCounter.from_file(bad)
    with pytest.raises(ConfigError):
        ExactCounter.from_file(tmp_path / "missing.json")


def test_exact_counter_ignores_calibration(tokenizer_path: Path) -> None:
    counter = ExactCounter.from_file(tokenizer_path)
    before = counter.count_text("the gateway token")
    p = pricer(counter)
    price = p.price_completion(completion("the gateway token"))
    for _ in range(50):
        p.observe("m", price, 1000)
    assert counter.count_text("the gateway token") == before


# --- estimating and calibration -----------------------------------------------------------------------------


def test_estimate_rounds_up() -> None:
    counter = EstimateCounter(4.0)
    assert counter.count_text("") == 0
    assert counter.count_text("a") == 1
    assert counter.count_text("abcd") == 1
    assert counter.count_text("abcde") == 2
    assert counter.count_ids([1, 2, 3, 4, 5]) == 5


def test_calibration_converges_to_the_observed_ratio() -> None:
    counter = EstimateCounter(4.0)
    rng = random.Random(1)
    for _ in range(100):
        tokens = rng.randint(10, 2000)
        counter.observe(tokens * 3, tokens)
    assert counter.chars_per_token == pytest.approx(3.0, rel=0.05)
    assert counter.count_text("x" * 300) == pytest.approx(100, rel=0.05)


def test_calibration_ignores_degenerate_samples() -> None:
    counter = EstimateCounter(4.0)
    for chars, tokens in [(100, 0), (0, 50), (-5, 10), (10, -3), (0, 0)]:
        counter.observe(chars, tokens)
    assert counter.chars_per_token == 4.0


def test_calibration_stays_clamped() -> None:
    counter = EstimateCounter(4.0, min_chars_per_token=1.0, max_chars_per_token=10.0)
    for _ in range(200):
        counter.observe(10_000, 1)
    assert counter.chars_per_token == 10.0
    for _ in range(200):
        counter.observe(1, 10_000)
    assert counter.chars_per_token == 1.0


def test_estimate_counter_rejects_bad_parameters() -> None:
    for kwargs in [{"chars_per_token": 0.5}, {"chars_per_token": 11.0}, {"weight": 0.0}, {"weight": 1.5},
                   {"min_chars_per_token": 0.0, "chars_per_token": 4.0}]:
        with pytest.raises(ConfigError):
            EstimateCounter(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ChatOverhead(per_message_tokens=-1)


def test_pricer_observe_calibrates_on_text_only() -> None:
    counter = EstimateCounter(4.0, weight=1.0, chat=ChatOverhead(per_message_tokens=4, reply_tokens=3))
    p = pricer(counter)
    price = p.price_chat(chat("x" * 60, "y" * 60))  # 120 chars, overhead 2*4+3 = 11
    assert (price.prompt_chars, price.fixed_tokens, price.prompt_tokens) == (120, 11, 30 + 11)
    p.observe("m", price, 40 + 11)  # the engine saw 40 text tokens: 3 chars per token
    assert counter.chars_per_token == pytest.approx(3.0)
    ids_only = p.price_completion(completion([1, 2, 3]))
    p.observe("m", ids_only, 3)  # no characters: nothing to learn
    assert counter.chars_per_token == pytest.approx(3.0)


def test_media_parts_are_not_counted_and_do_not_calibrate() -> None:
    counter = EstimateCounter(4.0, weight=1.0)
    p = pricer(counter)
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]})
    price = p.price_chat(req)
    assert not price.calibrates and price.prompt_chars == len("describe this")
    p.observe("m", price, 700)
    assert counter.chars_per_token == 4.0


# --- pricing ----------------------------------------------------------------------------------------------


def test_price_total() -> None:
    assert Price(10, 32).total == 42
    with pytest.raises(AttributeError):
        Price(1, 2).prompt_tokens = 3  # type: ignore[misc]


def test_chat_price_uses_cap_default_and_n() -> None:
    counter = EstimateCounter(4.0, chat=ChatOverhead(per_message_tokens=0, reply_tokens=0))
    p = pricer(counter, default_max_tokens=100)
    assert p.price_chat(chat("x" * 40)) == Price(10, 100, 40, 0)
    assert p.price_chat(chat("x" * 40, max_tokens=20)).max_output_tokens == 20
    assert p.price_chat(chat("x" * 40, max_tokens=20, max_completion_tokens=30)).max_output_tokens == 30
    price = p.price_chat(chat("x" * 40, max_tokens=20, n=3))
    assert (price.prompt_tokens, price.max_output_tokens, price.total, price.sequences) == (10, 60, 70, 3)


def test_chat_counts_names_tool_calls_and_tools() -> None:
    counter = EstimateCounter(1.0, chat=ChatOverhead(0, 0))
    plain = pricer(counter).price_chat(chat("hi"))
    req = ChatCompletionRequest.model_validate({
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi", "name": "bob"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    })
    assert pricer(counter).price_chat(req).prompt_tokens > plain.prompt_tokens + len("bob") + 40


def test_output_cap_is_clamped_to_the_context() -> None:
    counter = EstimateCounter(4.0, chat=ChatOverhead(0, 0))
    p = pricer(counter, default_max_tokens=1000, max_model_len=128)
    assert p.price_chat(chat("x" * 400)) == Price(100, 28, 400, 0)  # default 1000 clamped to 128 - 100
    assert p.price_chat(chat("x" * 400, max_tokens=10)).max_output_tokens == 10
    assert p.price_chat(chat("x" * 400, n=2)).max_output_tokens == 56
    assert p.price_chat(chat("x" * 800)).max_output_tokens == 0  # prompt beyond the context: never negative
    unknown = Pricer({"m": counter}, 1000, {})
    assert unknown.price_chat(chat("x" * 400)).max_output_tokens == 1000


def test_completion_with_several_prompts_and_token_ids() -> None:
    p = pricer(EstimateCounter(4.0), default_max_tokens=100, max_model_len=50)
    price = p.price_completion(completion(["x" * 40, "y" * 8], max_tokens=45, n=2))
    # prompt 1: 10 tokens, cap min(45, 40) = 40; prompt 2: 2 tokens, cap 45; each × n=2
    assert price == Price(12, 2 * 40 + 2 * 45, 48, 0, sequences=4)  # two answers to each of two prompts
    ids = p.price_completion(completion([[1] * 30, [2] * 5], max_tokens=30))
    assert ids == Price(35, 20 + 30, 0, 35, sequences=2)
    single = p.price_completion(completion([7, 8, 9], max_tokens=4))
    assert single == Price(3, 4, 0, 3)
    assert p.price_completion(completion("abcd")).max_output_tokens == 16  # the completions API default
    # the default of 100, clamped to 50 - 1
    assert p.price_completion(completion("abcd", max_tokens=None)).max_output_tokens == 49


def test_exact_completion_price(tokenizer_path: Path) -> None:
    reference = Tokenizer.from_file(str(tokenizer_path))
    p = pricer(ExactCounter.from_file(tokenizer_path))
    texts = ["the model reply stream.", "quota window limit"]
    price = p.price_completion(completion(texts, max_tokens=8, n=3))
    assert price.prompt_tokens == sum(len(reference.encode(t).ids) for t in texts)
    assert price.max_output_tokens == 2 * 3 * 8


def test_embedding_price_has_no_output() -> None:
    p = pricer(EstimateCounter(4.0))
    emb = lambda value: EmbeddingRequest.model_validate({"model": "m", "input": value})  # noqa: E731
    assert p.price_embedding(emb("x" * 9)) == Price(3, 0, 9, 0)
    assert p.price_embedding(emb(["x" * 8, "y" * 4])) == Price(3, 0, 12, 0)
    assert p.price_embedding(emb([1, 2, 3])) == Price(3, 0, 0, 3)
    assert p.price_embedding(emb([[1, 2], [3, 4, 5]])) == Price(5, 0, 0, 5)


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        pricer().price_chat(ChatCompletionRequest.model_validate(
            {"model": "other", "messages": [{"role": "user", "content": "x"}]}))


def test_estimate_never_under_reserves_by_rounding() -> None:
    counter = EstimateCounter(3.7)
    for length in range(0, 200):
        assert counter.count_text("z" * length) >= length / 3.7
        assert counter.count_text("z" * length) == math.ceil(length / 3.7)
