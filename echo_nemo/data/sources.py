"""Named data sources: the paper's pretraining sets, the evaluation sets and echo-lab.

Every source maps rows to one text: a pretraining *document* (question, blank line,
solution; or a `text` field) or an evaluation *problem* (question, parsed ground truth).
Pretraining rows come from streams.py (the hub, its local cache, or a local jsonl,
jsonl.gz, parquet or arrow file or folder), one `Item` per raw row so that a bad row is
counted (or reported by file and line) and a build can resume at a row number.
Evaluation rows come from the hub or a local jsonl/json/parquet file.

Evaluation sets with no path look first in ``$ECHO_NEMO_DATA`` and then in
``../shared/data`` beside the checkout (the layout of that folder), before the hub.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from echo_nemo import env
from echo_nemo.data import echolab, echolab_fair
from echo_nemo.data.catalog import DOCUMENT_SOURCES, ECHO_FORMATS, SourceInfo
from echo_nemo.data.config import EchoLabConfig, SourceSpec
from echo_nemo.data.streams import SKIPPED, Item, RowSource, hub_offline, open_rows
from echo_nemo.errors import UserError
from echo_nemo.reward.formats import last_boxed  # the project's one \boxed{} reader
from echo_nemo.reward.truth import gsm8k_final_answer

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Problem:
    """A prompt with its parsed ground truth (e.g. "1234", "\\frac{1}{2}", "25")."""

    id: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """The text fed to the model: question and a blank line (no chat template)."""
        return self.question + "\n\n"


# ----------------------------------------------------------------------------- ground truth parsing
def parse_gsm8k_answer(answer: str) -> str:
    """The number after GSM8K's last ``####``, commas and ``$`` removed ("1,234" -> "1234").

    The reading is the reward's own (echo_nemo.reward.truth.gsm8k_final_answer); a
    benchmark loader also requires the result to be a number.
    """
    value = gsm8k_final_answer(answer)
    if value is None:
        raise ValueError(f"no '####' in GSM8K answer {answer[-80:]!r}")
    value = value.replace(",", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", value):
        raise ValueError(f"GSM8K answer after '####' is not a number: {value!r}")
    return value


def parse_aime_answer(answer: str | int) -> str:
    """AIME answers are integers 0..999, sometimes zero-padded ("025" -> "25")."""
    s = str(answer).strip()
    if not re.fullmatch(r"\d{1,3}", s):
        raise ValueError(f"AIME answer is not an integer 0..999: {s!r}")
    return str(int(s))


# ----------------------------------------------------------------------------- problem sets
def _math_answer(row: dict) -> str:
    if row.get("answer") not in (None, ""):
        return str(row["answer"]).strip()
    boxed = last_boxed(str(row.get("solution", "")))
    if boxed is None:
        raise ValueError("no `answer` field and no \\boxed{} in `solution`")
    return boxed


PROBLEM_SOURCES: dict[str, SourceInfo | None] = {
    "gsm8k_train": SourceInfo("openai/gsm8k", "main", "train", question="question", answer="answer",
                              parse=lambda a: parse_gsm8k_answer(str(a)), local="gsm8k/train.jsonl"),
    "gsm8k_test": SourceInfo("openai/gsm8k", "main", "test", question="question", answer="answer",
                             parse=lambda a: parse_gsm8k_answer(str(a)), local="gsm8k/test.jsonl"),
    "math500": SourceInfo("HuggingFaceH4/MATH-500", None, "test", question="problem",
                          local="math500/test.jsonl"),
    "aime24": SourceInfo("HuggingFaceH4/aime_2024", None, "train", question="problem", answer="answer",
                         parse=parse_aime_answer, local="aime24/test.jsonl"),
    "aime25": SourceInfo("math-ai/aime25", None, "test", question="problem", answer="answer",
                         parse=parse_aime_answer, local="aime25/test.jsonl"),
    # The MATH train split (7500 problems, fields problem/level/type/solution; the answer is
    # the solution's last \boxed{}) as RL prompts: the study's MATH variant. A local file
    # may also carry an `answer` field, which then wins.
    "math_train": SourceInfo("DigitalLearningGmbH/MATH-lighteval", None, "train", question="problem",
                             local="math/train.jsonl", skip_unparsed=True),
    # AIME 2022, 2023 and 2024 (I and II): 90 problems, fields id/problem/solution/answer/url.
    "aime22_24": SourceInfo("AI-MO/aimo-validation-aime", None, "train", question="problem", answer="answer",
                            parse=parse_aime_answer, local="aime22_24/test.jsonl"),
    "echolab_train": None,
    "echolab_test": None,
    "echolab_train_easy": None,
    "echolab_test_easy": None,
    "echolab_test_medium": None,
    "echolab_test_hard": None,
}


@dataclass(frozen=True)
class EchoLabSet:
    """An echo-lab problem set: the first `stream` problems of a split's generator, and,
    with `steps`, only those whose step count lies in [lo, hi].

    Without `steps` the generator runs over the corpus config's step range (the sets the
    pretraining documents come from); with `steps` it runs over all difficulties 1..5 (the
    stream of a corpus built with `echolab.max_steps=5`) and the set is its slice by
    difficulty: easy prompts for RL, hard problems for evaluation (finding 5, easy-to-hard
    transfer). Train and test stay disjoint by problem key (echolab.split_of).
    """

    split: str
    stream: int  # GSM8K's sizes: 7473 train, 1319 test
    steps: tuple[int, int] | None = None


# Easy = 1-2 steps, hard = 4-5 (3 is left out so the two are apart). Step counts cycle
# over 1..5 in the stream, so each slice holds 2/5 of it: 2990 train-easy prompts,
# 528 test-easy and 527 test-hard problems. Medium = 3 steps (264 problems): the hardest
# problems of the default corpus (1-3 steps), harder than the easy RL prompts but not
# out of the pretraining distribution.
ECHOLAB_SETS: dict[str, EchoLabSet] = {
    "echolab_train": EchoLabSet("train", 7473),
    "echolab_test": EchoLabSet("test", 1319),
    "echolab_train_easy": EchoLabSet("train", 7473, (1, 2)),
    "echolab_test_easy": EchoLabSet("test", 1319, (1, 2)),
    "echolab_test_medium": EchoLabSet("test", 1319, (3, 3)),
    "echolab_test_hard": EchoLabSet("test", 1319, (4, 5)),
}

# The evaluation benchmarks: name on the command line and in metric keys -> problem set.
BENCHMARKS: dict[str, str] = {
    "gsm8k": "gsm8k_test",
    "math500": "math500",
    "aime24": "aime24",
    "aime25": "aime25",
    "aime22_24": "aime22_24",
    "echolab": "echolab_test",
    "echolab_easy": "echolab_test_easy",
    "echolab_medium": "echolab_test_medium",
    "echolab_hard": "echolab_test_hard",
}


def benchmark_name(problem_set: str) -> str:
    """The benchmark name of a problem set (gsm8k_test -> gsm8k), else the set's own name."""
    return next((bench for bench, source in BENCHMARKS.items() if source == problem_set), problem_set)


# ----------------------------------------------------------------------------- reading rows
def _shared_data_dirs() -> list[Path]:
    dirs = [d] if (d := env.data_dir()) else []
    return dirs + [REPO_ROOT.parent / "shared" / "data"]


def _resolve_local(info: SourceInfo, path: str | None) -> Path | None:
    """The local file to read: `path` (a file, or a folder holding `info.local`), else a
    default data folder if it has the file, else None (= the hub)."""
    if path is not None:
        p = Path(path)
        if p.is_dir() and info.local and (p / info.local).is_file():
            return p / info.local
        if not p.is_file():
            raise UserError(f"data file not found: {path!r} (expected a jsonl/json/parquet file"
                            + (f" or a folder containing {info.local!r})" if info.local else ")"))
        return p
    for d in _shared_data_dirs():
        if info.local and (d / info.local).is_file():
            return d / info.local
    return None


def read_rows(path: Path) -> Iterator[dict]:
    """Rows of a local jsonl (.jsonl/.test), json (list, or jsonl) or parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # optional format (pyarrow: ~0.5 s to import)

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8") as f:
        head = f.read(1)
        f.seek(0)
        if suffix == ".json" and head == "[":
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: not valid JSON ({e})") from None
            yield from rows
            return
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not a JSON line ({e})") from None


def _hub_rows(info: SourceInfo) -> Iterator[dict]:
    """Stream rows from the Hugging Face hub (needs network access)."""
    import datasets  # the hub only (seconds to import)

    if hub_offline():
        raise UserError(f"{info.hf_id} (config {info.config}, split {info.split}): HF_HUB_OFFLINE / "
                        f"HF_DATASETS_OFFLINE is set, so the hub is not tried. Pass a local file with `path`.")
    try:
        ds = datasets.load_dataset(info.hf_id, name=info.config, split=info.split, streaming=True)
    except Exception as e:  # no network, unknown id: bad input from the user's point of view
        raise UserError(
            f"could not stream {info.hf_id} (config {info.config}, split {info.split}) from the "
            f"Hugging Face hub: {type(e).__name__}: {str(e)[:200]}. Pass a local file with `path`."
        ) from None
    yield from ds


def _field(row: dict, name: str, where: str) -> str:
    if name not in row:
        raise UserError(f"{where}: row has no field {name!r} (fields: {', '.join(map(str, row))})")
    return str(row[name])


# ----------------------------------------------------------------------------- documents
def source_rows(spec: SourceSpec) -> RowSource | None:
    """Where the rows of a file/hub source come from (None for echo-lab: generated)."""
    info = DOCUMENT_SOURCES[spec.name]
    if info is None:
        return None
    return open_rows(spec.name, spec.path, (info.hf_id, info.config, info.split), info.local)


def source_items(spec: SourceSpec, echolab: EchoLabConfig | None = None, start: int = 0,
                 rows: RowSource | None = None, part: tuple[int, int] | None = None) -> Iterator[Item]:
    """One `Item` per raw row of a source from raw row `start` (documents, filtered rows and
    bad rows alike, so that row numbers are positions to resume from). `spec.limit` is
    applied by the caller (it counts documents, not rows). With `part` (RowSource.rows),
    rows outside it come as filtered rows."""
    if spec.name not in DOCUMENT_SOURCES:
        raise UserError(f"unknown source {spec.name!r} (expected one of {', '.join(DOCUMENT_SOURCES)})")
    info = DOCUMENT_SOURCES[spec.name]
    if info is None:
        docs = _echolab_documents(spec.name, echolab or EchoLabConfig())
        yield from (Item(d) for d in itertools.islice(docs, start, None))
        return
    rows = rows or source_rows(spec)
    text_f = spec.text_field or info.text
    q_f, s_f = spec.question_field or info.question, spec.solution_field or info.solution
    fields = [text_f] if text_f and not (spec.question_field or spec.solution_field) else [q_f, s_f]
    for where, row in rows.rows(start, part):
        yield Item(None) if row is SKIPPED else _row_item(row, where, fields, info.keep)


def _row_item(row: object, where: str, fields: list[str], keep: Callable[[dict], bool] | None) -> Item:
    """A row as a document: its text field, or question + blank line + solution."""
    if isinstance(row, Exception):
        return Item(None, "bad_json", where, f"not a JSON line ({row})")
    if not isinstance(row, dict):
        return Item(None, "bad_json", where, f"a row must be a JSON object, got {type(row).__name__}")
    values = []
    for name in fields:
        if name not in row:
            return Item(None, "missing_field", where, f"row has no field {name!r} (fields: {', '.join(map(str, row))})")
        if not isinstance(row[name], str):
            return Item(None, "not_text", where, f"field {name!r} is {type(row[name]).__name__}, not a string")
        values.append(row[name])
    if keep is not None and not keep(row):
        return Item(None)
    return Item(values[0] if len(values) == 1 else f"{values[0].strip()}\n\n{values[1].strip()}")


def load_documents(
    spec: SourceSpec | str, echolab: EchoLabConfig | None = None
) -> Iterator[str]:
    """Documents of one mixture source, in source order (at most `spec.limit`); a bad row
    raises UserError naming its file and line."""
    spec = SourceSpec(name=spec) if isinstance(spec, str) else spec
    n = 0
    for item in source_items(spec, echolab):
        if item.bad:
            raise UserError(f"source {spec.name!r}: {item.where}: {item.message}")
        if item.text is None:
            continue
        if spec.limit is not None and n >= spec.limit:
            return
        n += 1
        yield item.text


def _echolab_documents(name: str, cfg: EchoLabConfig) -> Iterator[str]:
    if name == "echo_fm3":
        rng = random.Random(f"echolab-prose/{cfg.seed}")
        for _ in range(cfg.num_background):
            yield echolab.background_document(rng, cfg.max_number)
        return
    fmt = ECHO_FORMATS[name]
    if echolab_fair.active(cfg):  # the opt-in fair knobs; without them, today's corpus below
        yield from echolab_fair.documents(fmt, cfg)
        return
    noise = random.Random(f"echolab-misquote/{cfg.seed}")
    # All format sources render the same problem stream, so formats differ only in solution.
    for p in echolab.generate(cfg.num_problems, seed=cfg.seed, split="train", min_steps=cfg.min_steps,
                              max_steps=cfg.max_steps, max_number=cfg.max_number,
                              step_weights=cfg.step_weights):
        wrong = fmt == "tinygsm" and noise.random() < cfg.tinygsm_misquote
        yield p.document(fmt, misquote=noise if wrong else None)


# ----------------------------------------------------------------------------- problems
def load_problems(
    name: str, path: str | None = None, limit: int | None = None, *, echolab: EchoLabConfig | None = None
) -> list[Problem]:
    """Evaluation / RL prompt sets as `Problem`s with parsed ground truths.

    Names: the keys of PROBLEM_SOURCES (gsm8k_train, gsm8k_test, math500, aime24, aime25,
    aime22_24, math_train, and the echo-lab sets of ECHOLAB_SETS). `path`: a local file
    (or a folder in the shared data layout); echo-lab ignores it and is generated from
    `echolab` (defaults = the default data recipe's).
    """
    if name not in PROBLEM_SOURCES:
        raise UserError(f"unknown problem set {name!r} (expected one of {', '.join(PROBLEM_SOURCES)})")
    info = PROBLEM_SOURCES[name]
    if info is None:
        return _echolab_problems(name, limit, echolab or EchoLabConfig())
    local = _resolve_local(info, path)
    rows: Iterable[dict] = read_rows(local) if local else _hub_rows(info)
    where = f"problem set {name!r} ({local or info.hf_id})"
    out: list[Problem] = []
    skipped: list[int] = []
    for i, row in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        question = _field(row, info.question, where)
        try:
            answer = info.parse(row.get(info.answer)) if info.parse else _math_answer(row)
        except ValueError as e:
            if info.skip_unparsed:
                skipped.append(i)
                continue
            raise UserError(f"{where}: row {i}: cannot parse the ground truth: {e}") from None
        pid = f"{name}-{row['id']}" if "id" in row else str(row.get("unique_id", f"{name}-{i}"))
        out.append(Problem(pid, question, answer))
    if skipped:
        print(f"{where}: skipped {len(skipped)} row(s) without a parsable answer (rows "
              f"{', '.join(map(str, skipped[:10]))}{', ...' if len(skipped) > 10 else ''})", file=sys.stderr)
    return out


def echolab_set(name: str, cfg: EchoLabConfig | None = None, limit: int | None = None) -> list:
    """The generated problems (echolab.EchoProblem, with their programs) of an echo-lab set."""
    spec, cfg = ECHOLAB_SETS[name], cfg or EchoLabConfig()
    lo, hi = (cfg.min_steps, cfg.max_steps) if spec.steps is None else (1, 5)
    # Train prompts come from the same stream as the pretraining documents (same seed);
    # test problems are disjoint from both by their parameters.
    gen = echolab.generate(spec.stream, seed=cfg.seed, split=spec.split, min_steps=lo, max_steps=hi,
                           max_number=cfg.max_number)
    if spec.steps is not None:
        gen = (p for p in gen if spec.steps[0] <= p.num_steps <= spec.steps[1])
    return list(itertools.islice(gen, limit))


def _echolab_problems(name: str, limit: int | None, cfg: EchoLabConfig) -> list[Problem]:
    return [Problem(f"{name}-{i}", p.question, p.answer_str) for i, p in enumerate(echolab_set(name, cfg, limit))]
