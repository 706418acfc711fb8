from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Ready: every model has at least one engine replica answering its health probe."""
    models = await request.app.state.service.readiness()
    ok = all(models.values())
    return JSONResponse({"ready": ok, "models": models}, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    gateway_metrics = request.app.state.metrics
    return Response(gateway_metrics.render(), media_type=gateway_metrics.content_type)
