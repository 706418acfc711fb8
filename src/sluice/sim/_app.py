"""The simulator's HTTP face (aiohttp): OpenAI routes, health, metrics, and each dialect's extra endpoints."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from sluice.clock import Clock
from sluice.config import SimSettings
from sluice.dialects import facts_for
from sluice.errors import EngineUnavailableError, SluiceError
from sluice.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    parse_request,
)
from sluice.sim._bodies import error_body
from sluice.sim._embeddings import embedding_response
from sluice.sim._metrics import CONTENT_TYPE, SimMetrics
from sluice.sim._serving import Job, Serving

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# above the gateway's default max_body_bytes (10 MiB): what a gateway lets through meets the engine's own checks
MAX_BODY_BYTES = 16 * 1024 * 1024
STREAMING = web.RequestKey("streaming", bool)  # set once a stream's headers went out: no error body after that

log = logging.getLogger("sluice.sim")


@web.middleware
async def _engine_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as vLLM writes one (``error_body``): the engine's own, aiohttp's (413, 404, 405), and a bug's
    (500, logged here), unless a stream already began (aiohttp then drops the connection)."""
    try:
        return await handler(request)
    except SluiceError as exc:
        return web.Response(body=error_body(exc), status=exc.status, content_type=JSON)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = SluiceError(exc.reason, status=exc.status)
        return web.Response(body=error_body(error), status=exc.status, content_type=JSON)
    except Exception:
        if request.get(STREAMING):
            raise
        log.exception("sim: unhandled error on %s %s", request.method, request.path)
        error = SluiceError("The server had an error while processing your request.", status=500)
        return web.Response(body=error_body(error), status=500, content_type=JSON)


class SimRoutes:
    def __init__(
        self, settings: SimSettings, *, model_name: str, serving: Serving, metrics: SimMetrics, clock: Clock
    ) -> None:
        self._settings = settings
        self._model_name = model_name
        self._serving = serving
        self._metrics = metrics
        self._clock = clock

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_engine_errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.metrics)
        facts = facts_for(self._settings.dialect)
        app.router.add_get(facts.health_path, self.health)
        if facts.ready_path != facts.health_path:  # a readiness probe that generates (SGLang's /health_generate)
            app.router.add_get(facts.ready_path, self.health_generate)
        if facts.model_info_path is not None:
            app.router.add_get(facts.model_info_path, self.model_info)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(ChatCompletionRequest, await request.read())
        return await self._generate(request, self._serving.chat_job(req), stream=req.stream)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_request(CompletionRequest, await request.read())
        return await self._generate(request, self._serving.completion_job(req), stream=req.stream)

    async def embeddings(self, request: web.Request) -> web.Response:
        req = parse_request(EmbeddingRequest, await request.read())
        self._serving.check_model(req.model)
        body = embedding_response(req, created=int(self._clock.wall()), default_dim=self._settings.embedding_dim,
                                  max_model_len=self._settings.max_model_len)
        return web.Response(body=body, content_type=JSON)

    async def models(self, request: web.Request) -> web.Response:
        card = ModelCard(
            id=self._model_name,
            created=int(self._clock.wall()),
            owned_by=self._settings.dialect,
            max_model_len=self._settings.max_model_len,
        )
        return web.Response(body=ModelList(data=[card]).model_dump_json(), content_type=JSON)

    async def health(self, request: web.Request) -> web.Response:
        """200 while the engine loop runs; 503 (saying why) once it has failed."""
        failure = self._serving.failure
        if failure is None:
            return web.Response(status=200)
        error = EngineUnavailableError(f"The engine loop stopped: {failure}", reason="engine_stopped")
        return web.Response(body=error_body(error), status=error.status, content_type=JSON)

    async def health_generate(self, request: web.Request) -> web.Response:
        await self._serving.probe()
        return web.Response(status=200)

    async def model_info(self, request: web.Request) -> web.Response:
        info = {"model_path": self._model_name, "tokenizer_path": self._model_name, "is_generation": True}
        return web.Response(body=orjson.dumps(info), content_type=JSON)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _generate(self, request: web.Request, job: Job, *, stream: bool) -> web.StreamResponse:
        with self._serving.running(job) as gen:
            if not stream:
                return web.Response(body=await self._serving.full(job, gen), content_type=JSON)
            resp = web.StreamResponse(headers=SSE_HEADERS)
            await resp.prepare(request)
            request[STREAMING] = True
            try:
                await self._serving.stream(job, gen, resp.write)
                await resp.write_eof()
            except ConnectionResetError:
                pass  # the client left; leaving `running` aborts its sequences
            return resp
