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
  "layers": [...], "batching": {...}, "unreadable_ground_truths": n}``: ``layers`` names the
  sandbox layers in force (docs/sandbox.md); ``unreadable_ground_truths`` counts the items
  whose ground truth held no readable answer (each is also logged, rate-limited).

Every endpoint goes through one MicroBatcher (batcher.py): concurrent requests are scored
together. Bad requests (body over the size limit, malformed JSON, wrong types, mismatched
lengths, too many items) get a 4xx with a message; an unreadable ground truth is that
item's error (reward 0), not a failed request. The sandbox pool belongs to the app and is
closed when the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from echo_nemo.errors import UserError
from echo_nemo.reward.adapters import NOT_FOUND, reward_payload
from echo_nemo.reward.batcher import MicroBatcher
from echo_nemo.reward.query import (
    COMMON_SPECIAL_TOKENS,
    special_token_strings,
    split_queries,
    strip_special_tokens,
)
from echo_nemo.reward.sandbox import REQUIRED_BY_STRICT, Limits, WorkerPool
from echo_nemo.reward.score import Score

MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_ITEMS = 8192
MAX_ITEM_CHARS = 64 * 1024
log = logging.getLogger("echo_nemo.reward.server")


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


class TruthErrors:
    """Counts the items whose ground truth held no readable answer and logs each, at most
    `per_minute` a minute (then how many were left out), so a misconfigured label key shows
    on the server instead of as a silent reward of 0."""

    def __init__(self, per_minute: int = 10) -> None:
        self.count = 0
        self.per_minute = per_minute
        self._window = (0.0, 0, 0)  # (minute start, logged in it, left out in it)

    def record(self, scores: list[Score], endpoint: str) -> None:
        for s in scores:
            if s.truth_error:
                self.count += 1
                self._log(f"{endpoint}: {s.error}")

    def _log(self, message: str) -> None:
        start, logged, skipped = self._window
        now = time.monotonic()
        if now - start >= 60.0:
            if skipped:
                log.warning("%d more unreadable ground truths in the last minute", skipped)
            start, logged, skipped = now, 0, 0
        if logged < self.per_minute:
            log.warning("unreadable ground truth (reward 0) from %s", message)
            logged += 1
        else:
            skipped += 1
        self._window = (start, logged, skipped)


def _lifespan(pool: WorkerPool | None, workers: int, limits: Limits | None, window_s: float):
    """Start (or adopt) the sandbox pool and the batcher; close the pool at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.pool = pool or WorkerPool(workers, limits)
        await run_in_threadpool(app.state.pool.wait_ready)
        app.state.batcher = MicroBatcher(app.state.pool, window_s=window_s)
        app.state.truth_errors = TruthErrors()
        try:
            yield
        finally:
            app.state.pool.close()

    return lifespan


async def _score(app: FastAPI, completions: list[str], truths: list, endpoint: str) -> list[Score]:
    """Score through the app's batcher; count and log the unreadable ground truths."""
    scores = await app.state.batcher.score(completions, truths)
    app.state.truth_errors.record(scores, endpoint)
    return scores


def _add_health_and_score(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        info = app.state.pool.info()
        return JSONResponse({"status": "ok", **info, "batching": app.state.batcher.info(),
                             "unreadable_ground_truths": app.state.truth_errors.count})  # fmt: skip

    @app.post("/score")
    async def score_endpoint(request: Request) -> JSONResponse:
        data = await _read_json(request)
        completions = _string_list(data, "completions")
        ground_truths = _truth_list(data, "ground_truths")
        _same_length(completions=completions, ground_truths=ground_truths)
        scores = await _score(app, completions, ground_truths, "/score")
        return JSONResponse({"results": [s.to_dict() for s in scores]})


def _add_openrlhf(app: FastAPI, tokens: tuple[str, ...]) -> None:
    @app.post("/get_reward")
    async def get_reward(request: Request) -> JSONResponse:
        data = await _read_json(request)
        queries = _string_list(data, "query")
        labels = _truth_list(data, "labels")
        prompts = _string_list(data, "prompts") if "prompts" in data else [""] * len(queries)
        _same_length(query=queries, prompts=prompts, labels=labels)
        responses, hows = split_queries(queries, prompts, tokens)
        found = [i for i, r in enumerate(responses) if r is not None]
        scores: list[Score] = [Score(0.0, "other", None, NOT_FOUND)] * len(queries)
        if found:
            got = await _score(app, [responses[i] for i in found], [labels[i] for i in found],
                               "/get_reward")  # fmt: skip
            for i, s in zip(found, got):
                scores[i] = s
        return JSONResponse(reward_payload(scores, hows))


def _add_slime(app: FastAPI, tokens: tuple[str, ...]) -> None:
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
        # a bare number cannot carry an error: an unreadable label is logged and counted
        (result,) = await _score(app, [clean], [data["label"]], "/reward")
        return JSONResponse(result.reward)


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
    app = FastAPI(title="echo-nemo reward", lifespan=_lifespan(pool, workers, limits, window_s))
    _add_health_and_score(app)
    _add_openrlhf(app, tokens)
    _add_slime(app, tokens)
    return app


def describe_protections(protections: dict) -> str:
    """One line: each sandbox layer, on or OFF with why."""
    if not protections:
        return "sandbox workers did not start: no protections could be checked"
    on = lambda key: "on" if protections.get(key) else "OFF"  # noqa: E731
    landlock = f"ABI {protections.get('landlock_abi')}" if protections.get("landlock") else protections.get("landlock_note", "")
    return (
        f"landlock {on('landlock')} ({landlock}), seccomp {on('seccomp')} "
        f"({protections.get('seccomp_note', '')}), network namespace {on('network_namespace')} "
        f"({protections.get('network_namespace_note', '')}), uid drop {on('uid_drop')}"
        f"{'' if protections.get('uid_drop') else ' (not root)'}, rlimits {on('rlimits')}, "
        f"audit hook {on('audit_hook')}; model code never sees a ground truth "
        f"({protections.get('answer_isolation', '?')})"
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
    unless the filesystem (Landlock) and syscall (seccomp) layers are both in force.
    SIGINT/SIGTERM close the pool.
    """
    import uvicorn  # only for serving: create_app's users (tests, other ASGI hosts) need none

    tokens = COMMON_SPECIAL_TOKENS + (special_token_strings(tokenizer) if tokenizer else ())
    workers = workers or os.cpu_count() or 1
    pool = WorkerPool(workers, limits)
    pool.wait_ready()
    protections = pool.info()["protections"]
    print(f"[reward] {workers} sandbox workers; {describe_protections(protections)}",
          file=sys.stderr, flush=True)  # fmt: skip
    missing = [layer for layer in REQUIRED_BY_STRICT if not protections.get(layer)]
    if strict and missing:
        pool.close()
        raise UserError(
            f"reward serve --strict: the sandbox lacks {' and '.join(missing)} "
            f"({'; '.join(protections.get(m + '_note', 'workers did not start') for m in missing)}); "
            "run on a Linux kernel with Landlock (>= 5.13) and seccomp, or drop --strict"
        )
    app = create_app(workers, limits, pool=pool, special_tokens=tokens)
    uvicorn.run(app, host=host, port=port, log_level="warning", backlog=4096)
