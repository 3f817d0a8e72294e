"""The reward server: a thin FastAPI transport over `score` (uvicorn runs it).

Endpoints:
- ``POST /score``: ``{"completions": [...], "ground_truths": [...]}`` ->
  ``{"results": [{"reward", "format", "answer", "error"}, ...]}`` in request order.
- ``POST /get_reward``: OpenRLHF's remote reward shape ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. A query
  is prompt + response; the prompt prefix is removed before scoring.
- ``GET /health``: ``{"status": "ok", "workers": ..., "live": ..., "restarts": ...}``.

Bad requests (body over the size limit, malformed JSON, wrong types, mismatched lengths,
too many items) get a 4xx with a message. The sandbox pool belongs to the app and is
closed when the server stops.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from echo_nemo.reward.formats import FORMATS
from echo_nemo.reward.sandbox import Limits, WorkerPool
from echo_nemo.reward.score import score

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 8192
MAX_ITEM_CHARS = 64 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _read_json(request: Request) -> dict:
    """The request body as a JSON object, refusing bodies over MAX_BODY_BYTES as they stream."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(
            413, f"request body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(413, f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise BadRequest(422, f"expected a JSON object, got {type(data).__name__}")
    return data


def _string_list(data: dict, key: str) -> list[str]:
    if key not in data:
        raise BadRequest(422, f"missing field {key!r} (a list of strings)")
    value = data[key]
    if not isinstance(value, list):
        raise BadRequest(
            422, f"field {key!r} must be a list of strings, got {type(value).__name__}"
        )
    if len(value) > MAX_ITEMS:
        raise BadRequest(413, f"field {key!r} has {len(value)} items; the limit is {MAX_ITEMS}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(422, f"{key}[{i}] must be a string, got {type(item).__name__}")
        if len(item) > MAX_ITEM_CHARS:
            raise BadRequest(
                413, f"{key}[{i}] has {len(item)} characters; the limit is {MAX_ITEM_CHARS}"
            )
    return value


def _same_length(**lists: list) -> None:
    sizes = {name: len(v) for name, v in lists.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(422, f"lists must have the same length, got {sizes}")


def create_app(workers: int = 2, limits: Limits | None = None) -> FastAPI:
    """The app; its sandbox pool starts with the server and closes when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = WorkerPool(workers, limits)
        await run_in_threadpool(app.state.pool.wait_ready)
        try:
            yield
        finally:
            app.state.pool.close()

    app = FastAPI(title="echo-nemo reward", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **app.state.pool.info()}

    @app.post("/score")
    async def score_endpoint(request: Request) -> dict:
        data = await _read_json(request)
        completions = _string_list(data, "completions")
        ground_truths = _string_list(data, "ground_truths")
        _same_length(completions=completions, ground_truths=ground_truths)
        scores = await run_in_threadpool(score, completions, ground_truths, pool=app.state.pool)
        return {"results": [s.to_dict() for s in scores]}

    @app.post("/get_reward")
    async def get_reward(request: Request) -> dict:
        data = await _read_json(request)
        queries = _string_list(data, "query")
        labels = _string_list(data, "labels")
        prompts = _string_list(data, "prompts") if "prompts" in data else [""] * len(queries)
        _same_length(query=queries, prompts=prompts, labels=labels)
        # OpenRLHF sends prompt + response as one string: keep the response.
        responses = [q[len(p) :] if p and q.startswith(p) else q for q, p in zip(queries, prompts)]
        scores = await run_in_threadpool(score, responses, labels, pool=app.state.pool)
        rewards = [s.reward for s in scores]
        formats = [s.format for s in scores]
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {
                f"format_{name}": [float(f == name) for f in formats] for name in FORMATS
            },
        }

    return app


def serve(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 2, limits: Limits | None = None
) -> None:
    """Run the server until interrupted (SIGINT/SIGTERM close the sandbox pool)."""
    import uvicorn

    uvicorn.run(create_app(workers, limits), host=host, port=port, log_level="warning")
