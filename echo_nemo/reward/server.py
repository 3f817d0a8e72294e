"""The reward server: a thin FastAPI transport over `score` (uvicorn runs it).

Endpoints (ground truths and labels may be strings in any form truth.py reads, or numbers):
- ``POST /score``: ``{"completions": [...], "ground_truths": [...]}`` ->
  ``{"results": [{"reward", "format", "answer", "error", "truth"}, ...]}`` in request order.
- ``POST /get_reward``: OpenRLHF's remote reward shape ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. A query
  is the decoded prompt + response with its special tokens; query.py removes them and the
  prompt, and ``extra_logs`` counts per item the format and how the response was found.
- ``POST /reward``: slime's remote reward shape ``{"prompt", "response", "label"}`` (one
  sample) -> the reward as a bare JSON number, which slime takes as it is.
- ``GET /health``: ``{"status": "ok", "workers", "live", "restarts", "protections": {...},
  "batching": {...}}``.

Every endpoint goes through one MicroBatcher (batcher.py): concurrent requests are scored
together. Bad requests (body over the size limit, malformed JSON, wrong types, mismatched
lengths, too many items) get a 4xx with a message; an unreadable ground truth is that
item's error (reward 0), not a failed request. The sandbox pool belongs to the app and is
closed when the server stops.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from echo_nemo.reward.adapters import NOT_FOUND, reward_payload
from echo_nemo.reward.batcher import MicroBatcher
from echo_nemo.reward.query import (
    COMMON_SPECIAL_TOKENS,
    special_token_strings,
    split_queries,
    strip_special_tokens,
)
from echo_nemo.reward.sandbox import Limits, WorkerPool
from echo_nemo.reward.score import Score

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


def _list_field(data: dict, key: str, items: str) -> list:
    """data[key], checked to be a list of at most MAX_ITEMS (`items` names what it holds)."""
    if key not in data:
        raise BadRequest(422, f"missing field {key!r} (a list of {items})")
    value = data[key]
    if not isinstance(value, list):
        raise BadRequest(422, f"field {key!r} must be a list of {items}, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise BadRequest(413, f"field {key!r} has {len(value)} items; the limit is {MAX_ITEMS}")
    return value


def _string_list(data: dict, key: str) -> list[str]:
    value = _list_field(data, key, "strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(422, f"{key}[{i}] must be a string, got {type(item).__name__}")
        if len(item) > MAX_ITEM_CHARS:
            raise BadRequest(
                413, f"{key}[{i}] has {len(item)} characters; the limit is {MAX_ITEM_CHARS}"
            )
    return value


def _truth_list(data: dict, key: str) -> list:
    """Ground truths: a list whose items are read per item (strings, numbers; others error)."""
    value = _list_field(data, key, "strings or numbers")
    for i, item in enumerate(value):
        if isinstance(item, str) and len(item) > MAX_ITEM_CHARS:
            raise BadRequest(
                413, f"{key}[{i}] has {len(item)} characters; the limit is {MAX_ITEM_CHARS}"
            )
    return value


def _same_length(**lists: list) -> None:
    sizes = {name: len(v) for name, v in lists.items()}
    if len(set(sizes.values())) > 1:
        raise BadRequest(422, f"lists must have the same length, got {sizes}")


def create_app(
    workers: int = 2,
    limits: Limits | None = None,
    *,
    pool: WorkerPool | None = None,
    special_tokens: Iterable[str] = COMMON_SPECIAL_TOKENS,
    window_s: float = 0.005,
) -> FastAPI:
    """The app; its sandbox pool (`pool`, or a new one) closes when the server stops."""
    tokens = tuple(special_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = pool or WorkerPool(workers, limits)
        await run_in_threadpool(app.state.pool.wait_ready)
        app.state.batcher = MicroBatcher(app.state.pool, window_s=window_s)
        try:
            yield
        finally:
            app.state.pool.close()

    app = FastAPI(title="echo-nemo reward", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        info = app.state.pool.info()
        return JSONResponse({"status": "ok", **info, "batching": app.state.batcher.info()})

    @app.post("/score")
    async def score_endpoint(request: Request) -> JSONResponse:
        data = await _read_json(request)
        completions = _string_list(data, "completions")
        ground_truths = _truth_list(data, "ground_truths")
        _same_length(completions=completions, ground_truths=ground_truths)
        scores = await app.state.batcher.score(completions, ground_truths)
        return JSONResponse({"results": [s.to_dict() for s in scores]})

    async def score_queries(queries: list[str], prompts: list[str], labels: list) -> dict:
        responses, hows = split_queries(queries, prompts, tokens)
        found = [i for i, r in enumerate(responses) if r is not None]
        scores: list[Score] = [Score(0.0, "other", None, NOT_FOUND)] * len(queries)
        if found:
            got = await app.state.batcher.score(
                [responses[i] for i in found], [labels[i] for i in found]
            )
            for i, s in zip(found, got):
                scores[i] = s
        return reward_payload(scores, hows)

    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        data = await _read_json(request)
        queries = _string_list(data, "query")
        labels = _truth_list(data, "labels")
        prompts = _string_list(data, "prompts") if "prompts" in data else [""] * len(queries)
        _same_length(query=queries, prompts=prompts, labels=labels)
        return JSONResponse(await score_queries(queries, prompts, labels))

    @app.post("/reward")
    async def slime_reward(request: Request) -> JSONResponse:
        data = await _read_json(request)
        response = data.get("response")
        if not isinstance(response, str):
            raise BadRequest(422, "field 'response' must be a string (the sample's response)")
        if len(response) > MAX_ITEM_CHARS:
            raise BadRequest(413, f"'response' has {len(response)} characters; the limit is {MAX_ITEM_CHARS}")
        if "label" not in data:
            raise BadRequest(422, "missing field 'label' (the sample's ground truth)")
        # slime sends the response alone (its prompt may be a message list): no prefix to cut
        clean = strip_special_tokens(response, tokens)
        (result,) = await app.state.batcher.score([clean], [data["label"]])
        return JSONResponse(result.reward)

    return app


def describe_protections(protections: dict) -> str:
    """One line: which sandbox protections are in force."""
    if not protections:
        return "sandbox workers did not start: no protections could be checked"
    on = lambda key: "on" if protections.get(key) else "OFF"  # noqa: E731
    return (
        f"network namespace {on('network_namespace')} "
        f"({protections.get('network_namespace_note', '')}), uid drop {on('uid_drop')}"
        f"{'' if protections.get('uid_drop') else ' (not root)'}, rlimits {on('rlimits')}, "
        f"audit hook {on('audit_hook')}"
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int | None = None,
    limits: Limits | None = None,
    *,
    strict: bool = False,
    tokenizer: str | None = None,
) -> None:
    """Start the sandbox pool, report its protections, run until interrupted.

    ``workers`` defaults to the CPU count. ``strict``: refuse to start (UserError, exit 2)
    when the sandbox has no network namespace. SIGINT/SIGTERM close the pool.
    """
    import uvicorn

    from echo_nemo.errors import UserError

    tokens = COMMON_SPECIAL_TOKENS + (special_token_strings(tokenizer) if tokenizer else ())
    workers = workers or os.cpu_count() or 1
    pool = WorkerPool(workers, limits)
    pool.wait_ready()
    protections = pool.info()["protections"]
    print(f"[reward] {workers} sandbox workers; {describe_protections(protections)}",
          file=sys.stderr, flush=True)  # fmt: skip
    if strict and not protections.get("network_namespace"):
        pool.close()
        raise UserError(
            "reward serve --strict: the sandbox has no network isolation "
            f"({protections.get('network_namespace_note', 'workers did not start')}); "
            "run where user namespaces or root are available, or drop --strict"
        )
    app = create_app(workers, limits, pool=pool, special_tokens=tokens)
    uvicorn.run(app, host=host, port=port, log_level="warning", backlog=4096)
