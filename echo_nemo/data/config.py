"""Typed schema of data recipes (recipes/data/*.yaml) and of the echo-lab generator.

A recipe names a mixture: sources with repeat factors, the tokenizer, the sequence
length and where the shards go. Example (recipes/data/echo_tg_4xomi1_omi2.yaml):

    defaults: [_echo_base.yaml]
    name: echo_tg_4xomi1_omi2
    sources:
      - {name: echo_tg}
      - {name: echo_omi1, repeat: 4}
      - {name: echo_omi2}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from echo_nemo.data.catalog import DOCUMENT_SOURCES
from echo_nemo.errors import UserError


@dataclass
class EchoLabConfig:
    """Knobs of the synthetic corpus (the same defaults serve `load_problems('echolab_*')`)."""

    seed: int = 0
    num_problems: int = 20000  # problems per echo-lab format source (before repeats)
    num_background: int = 5000  # documents of the echo_fm3 prose source
    min_steps: int = 1  # difficulty: reasoning steps per problem, within 1..5
    max_steps: int = 3
    # relative share of each step count min_steps..max_steps (None: equal); e.g. [1, 1, 0.25]
    # makes 3-step problems rare (echolab.step_schedule)
    step_weights: list[float] | None = None
    max_number: int = 20  # largest number stated in a question (small = learnable by a tiny model)
    # Share of tinygsm documents whose code misquotes one number of the question (so its
    # answer is wrong). TinyGSM's solutions were never checked against an answer, while
    # OpenMathInstruct's were filtered by it; 0 renders every format correctly.
    tinygsm_misquote: float = 0.0
    # Opt-in knobs of the fair corpus (data/echolab_fair.py; the defaults give the corpus
    # above byte for byte): `steps` writes the text format's arithmetic out step by step,
    # and a share of each code format's programs carries one wrong operation.
    text_style: str = "inline"  # inline | steps
    tinygsm_wrong: float = 0.0
    llm_code_wrong: float = 0.0
    wrong_by: str = "document"  # document (random, per program) | template (systematic, per problem type)

    def validate(self, where: str = "echolab") -> None:
        if not 1 <= self.min_steps <= self.max_steps <= 5:
            raise UserError(
                f"{where}: need 1 <= min_steps <= max_steps <= 5, got min_steps={self.min_steps}, "
                f"max_steps={self.max_steps}"
            )
        span = self.max_steps - self.min_steps + 1
        if self.step_weights is not None and (len(self.step_weights) != span or min(self.step_weights) < 0
                                              or sum(self.step_weights) <= 0):
            raise UserError(f"{where}.step_weights needs {span} non-negative weights (one per step count "
                            f"{self.min_steps}..{self.max_steps}) with a positive sum, got {self.step_weights}")
        if self.max_number < 5:
            raise UserError(f"{where}.max_number must be >= 5, got {self.max_number}")
        if not 0.0 <= self.tinygsm_misquote <= 1.0:
            raise UserError(f"{where}.tinygsm_misquote must be a share in [0, 1], got {self.tinygsm_misquote}")
        if self.text_style not in ("inline", "steps"):
            raise UserError(f"{where}.text_style must be inline or steps, got {self.text_style!r}")
        if self.wrong_by not in ("document", "template"):
            raise UserError(f"{where}.wrong_by must be document or template, got {self.wrong_by!r}")
        for knob in ("tinygsm_wrong", "llm_code_wrong"):
            if not 0.0 <= getattr(self, knob) <= 1.0:
                raise UserError(f"{where}.{knob} must be a share in [0, 1], got {getattr(self, knob)}")
        if self.num_problems < 1 or self.num_background < 0:
            raise UserError(f"{where}: num_problems must be >= 1 and num_background >= 0")


@dataclass
class SourceSpec:
    """One source of a mixture. `repeat`: 4 = the whole source four times, 0.25 = a quarter."""

    name: str = "???"
    repeat: float = 1.0
    # local copy instead of the hub: a jsonl, jsonl.gz, json, parquet or arrow file, a
    # `save_to_disk` folder, or a folder of such files (e.g. a downloaded hub snapshot)
    path: str | None = None
    limit: int | None = None  # read at most this many documents (before repeats)
    # Documents the source holds, if known: skips the counting pass the build otherwise
    # makes over a file/hub source (its schedule and subsample need the count).
    documents: int | None = None
    question_field: str | None = None  # override the registry's field names
    solution_field: str | None = None
    text_field: str | None = None


PACKINGS = ("concat", "best_fit")
BAD_ROW_POLICIES = ("skip", "error")


@dataclass
class DataRecipe:
    """`echo-nemo data build` input: a mixture, the tokenizer and the shard layout."""

    name: str = "???"
    sources: list[SourceSpec] = field(default_factory=list)
    echolab: EchoLabConfig = field(default_factory=EchoLabConfig)
    # None = the committed default in tokenizer/; else a local folder (tokenizer.json, or a
    # transformers tokenizer) or a hub id such as meta-llama/Llama-2-7b-hf
    tokenizer: str | None = None
    seq_length: int = 256  # tokens per training sample; shards store seq_length + 1
    packing: str = "concat"  # concat (cut a token stream) | best_fit (whole documents + padding)
    output_dir: str = "runs/data/${name}"
    sequences_per_shard: int = 2000
    num_workers: int = 2  # tokenizer processes
    seed: int = 0  # document shuffle and subsampling
    # Documents shuffled (and, with best_fit, packed) together: the build's memory bound.
    # A mixture no larger than this is shuffled exactly as one in-memory permutation.
    shuffle_buffer: int = 100_000
    on_bad_row: str = "skip"  # skip (count per source in the manifest) | error (exit 2 naming file:line)
    max_tokens: int | None = None  # build only a prefix of the mixture of about this many tokens
    # Per-source repeat factors that replace sources[*].repeat: the command-line knob for
    # format shares, e.g. `echo-nemo data build recipe.yaml repeats.echo_omi1=4`.
    repeats: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.sources:
            raise UserError(f"data recipe {self.name!r}: `sources` is empty (expected at least one)")
        names = [s.name for s in self.sources]
        for name, factor in self.repeats.items():
            if name not in names:
                raise UserError(f"data recipe {self.name!r}: repeats.{name} names no source of the "
                                f"recipe (sources: {', '.join(names)})")
            for s in self.sources:
                if s.name == name:
                    s.repeat = float(factor)
        for i, s in enumerate(self.sources):
            if s.name not in DOCUMENT_SOURCES:
                raise UserError(
                    f"data recipe {self.name!r}: sources[{i}].name={s.name!r} is not a known source "
                    f"(expected one of {', '.join(sorted(DOCUMENT_SOURCES))})"
                )
            if not s.repeat > 0:
                raise UserError(f"data recipe {self.name!r}: sources[{i}].repeat must be > 0, got {s.repeat}")
        if self.packing not in PACKINGS:
            raise UserError(f"data recipe {self.name!r}: packing={self.packing!r}; expected one of "
                            f"{', '.join(PACKINGS)}")
        if self.seq_length < 8:
            raise UserError(f"data recipe {self.name!r}: seq_length must be >= 8, got {self.seq_length}")
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise UserError(f"data recipe {self.name!r}: on_bad_row={self.on_bad_row!r}; expected one of "
                            f"{', '.join(BAD_ROW_POLICIES)}")
        if self.shuffle_buffer < 1 or (self.max_tokens is not None and self.max_tokens < 1):
            raise UserError(f"data recipe {self.name!r}: shuffle_buffer and max_tokens must be >= 1")
        for i, s in enumerate(self.sources):
            if (s.limit is not None and s.limit < 1) or (s.documents is not None and s.documents < 1):
                raise UserError(f"data recipe {self.name!r}: sources[{i}].limit / documents must be >= 1")
        if self.sequences_per_shard < 1 or self.num_workers < 1:
            raise UserError(f"data recipe {self.name!r}: sequences_per_shard and num_workers must be >= 1")
        self.echolab.validate(f"data recipe {self.name!r}: echolab")
