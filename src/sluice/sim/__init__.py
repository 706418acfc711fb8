"""The engine simulator: an OpenAI-compatible server that behaves like a GPU inference engine, on the CPU.

It models continuous batching over a paged KV cache (``EngineModel``), drives it on an injected clock
(``EngineRunner``), and serves it over HTTP with the metric names and health endpoints of vLLM, SGLang or
LMDeploy (``SimSettings.dialect``).

    server = await SimServer.start(SimSettings(speed=1e9), model_name="sim")
    ...  # POST {server.url}/v1/chat/completions
    await server.stop()
"""

from sluice.sim._engine import EngineModel, SeqState, Sequence, Step
from sluice.sim._metrics import METRIC_NAMES, SimMetrics
from sluice.sim._runner import EngineRunner, Generation
from sluice.sim._server import SimServer, serve_sim
from sluice.sim._tokenizer import chat_ids, count_chat, count_prompt, count_text, prompt_ids, text_ids

__all__ = [
    "METRIC_NAMES",
    "EngineModel",
    "EngineRunner",
    "Generation",
    "SeqState",
    "Sequence",
    "SimMetrics",
    "SimServer",
    "Step",
    "chat_ids",
    "count_chat",
    "count_prompt",
    "count_text",
    "prompt_ids",
    "serve_sim",
    "text_ids",
]
