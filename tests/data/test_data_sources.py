"""Sources: the real sample files in ../shared/data load with their field mapping."""

from __future__ import annotations

import json

import pytest

from echo_nemo.data.config import SourceSpec
from echo_nemo.data.sources import (
    last_boxed,
    load_documents,
    load_problems,
    parse_aime_answer,
    parse_gsm8k_answer,
)
from echo_nemo.errors import UserError


def test_parsers():
    assert parse_gsm8k_answer("so 1,000 + 234 = 1,234\n#### 1,234") == "1234"
    assert parse_gsm8k_answer("#### $-5") == "-5"
    with pytest.raises(ValueError):
        parse_gsm8k_answer("no marker 12")
    assert last_boxed(r"a \boxed{1} then \boxed{\frac{1}{2}} end") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}.") == r"\left( 3, \frac{\pi}{2} \right)"
    assert last_boxed("none") is None
    assert parse_aime_answer("025") == "25" and parse_aime_answer(70) == "70" and parse_aime_answer("000") == "0"
    with pytest.raises(ValueError):
        parse_aime_answer("1.5")


def test_gsm8k(shared_data):
    train = load_problems("gsm8k_train", path=str(shared_data / "gsm8k" / "train.jsonl"))
    test = load_problems("gsm8k_test", path=str(shared_data))  # a folder works too
    assert (len(train), len(test)) == (7473, 1319)
    for p in train + test:
        float(p.answer)  # every ground truth is a number
        assert "," not in p.answer and "####" not in p.question
    assert train[0].answer == "72" and train[0].prompt.endswith("?\n\n")
    assert load_problems("gsm8k_test", limit=5) == test[:5]  # default: the shared folder


def test_math500_and_aime(shared_data):
    math = load_problems("math500", path=str(shared_data))
    assert len(math) == 500 and math[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert math[0].id == "test/precalculus/807.json"
    a24 = load_problems("aime24", path=str(shared_data))
    a25 = load_problems("aime25", path=str(shared_data))
    assert len(a24) == len(a25) == 30
    raw24 = [json.loads(line)["answer"] for line in open(shared_data / "aime24" / "test.jsonl")]
    assert [p.answer for p in a24] == [str(int(a)) for a in raw24]
    assert any(a.startswith("0") for a in raw24)  # the file really has zero-padded answers
    assert [p.answer for p in a25][:5] == ["70", "588", "16", "117", "279"]


def test_instruction_samples_become_documents(shared_data):
    omi1 = list(load_documents(SourceSpec(name="omi1", path=str(shared_data))))
    omi2 = list(load_documents(SourceSpec(name="omi2", path=str(shared_data))))
    tg = list(load_documents(SourceSpec(name="tg_gpt41", path=str(shared_data))))
    assert (len(omi1), len(omi2), len(tg)) == (100, 100, 1000)
    first = json.loads(open(shared_data / "openmathinstruct1" / "openmathinstruct.test").readline())
    assert omi1[0] == first["question"].strip() + "\n\n" + first["generated_solution"].strip()
    assert sum("<llm-code>" in d for d in omi1) == 78
    assert all(r"\boxed{" in d for d in omi2)
    assert sum("def simple_math_problem()" in d for d in tg) >= 990
    # the TinyGSM mapping (question/code) with field overrides reads the same file
    spec = SourceSpec(name="tg", path=str(shared_data / "tinygsm_style" /
                      "ThomasTheMaker_TinyGSM_gpt4.1_samples.json"),
                      question_field="user", solution_field="assistant", limit=7)
    assert list(load_documents(spec)) == tg[:7]


def test_bad_inputs_name_the_problem(tmp_path, shared_data):
    with pytest.raises(UserError, match="field 'code'"):
        list(load_documents(SourceSpec(name="tg", path=str(shared_data / "gsm8k" / "test.jsonl"), limit=1)))
    with pytest.raises(UserError, match="not found"):
        load_problems("gsm8k_test", path=str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(UserError, match="row 0"):
        load_problems("gsm8k_test", path=str(bad))
    with pytest.raises(UserError, match="unknown problem set"):
        load_problems("gsm9k")


def test_parquet_and_hub_paths(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["What is 1+1?"], "answer": ["002"]}), tmp_path / "a.parquet")
    assert load_problems("aime25", path=str(tmp_path / "a.parquet"))[0].answer == "2"
    # The hub path is real `datasets` streaming code; offline it fails with a UserError.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="nvidia/OpenMathInstruct-2"):
        next(load_documents("omi2"))


def test_math_train_and_aime22_24_from_local_files_in_the_hub_layout(tmp_path, monkeypatch, capsys):
    """MATH train prompts (answer = the solution's last \\boxed{}) and the 90-problem AIME
    2022-24 set, read from files with the hub datasets' fields through the same loader."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from echo_nemo.data.sources import BENCHMARKS
    from echo_nemo.eval.config import EvalConfig

    math_rows = [
        {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "level": "Level 1", "type": "Prealgebra",
         "solution": "We get $\\boxed{\\frac{1}{2}}$ first, then $\\boxed{\\frac{3}{4}}$."},
        {"problem": "A proof.", "level": "Level 5", "type": "Geometry", "solution": "No boxed answer here."},
        {"problem": "Find $x$.", "level": "Level 2", "type": "Algebra", "solution": "So $x = \\fbox{7}$."},
    ]
    # the shared-data layout (a folder holding math/train.jsonl) and a bare parquet file
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    pq.write_table(pa.Table.from_pylist(math_rows), tmp_path / "math.parquet")
    for path in (tmp_path, tmp_path / "math.parquet"):
        probs = load_problems("math_train", path=str(path))
        assert [p.answer for p in probs] == ["\\frac{3}{4}", "7"]
        assert [p.id for p in probs] == ["math_train-0", "math_train-2"]  # row numbers of the file
        assert "skipped 1 row(s)" in capsys.readouterr().err  # the unanswerable row is counted
    assert load_problems("math_train", path=str(tmp_path), limit=1)[0].question == math_rows[0]["problem"]
    # usable as RL prompts by name (data.train: math_train, data.train_path: ...)
    from echo_nemo.rl.run import _problems

    assert len(_problems("math_train", str(tmp_path), None)) == 2

    years = [(2022, "I"), (2023, "II"), (2024, "I")]
    aime_rows = [{"id": i, "problem": f"Problem {i} of {y} AIME {e}.", "solution": f"... $\\boxed{{{i:03d}}}$",
                  "answer": f"{i:03d}" if i % 2 else str(i), "url": f"https://example.org/{y}_AIME_{e}"}
                 for i, (y, e) in enumerate(years)]
    (tmp_path / "aime22_24").mkdir()
    (tmp_path / "aime22_24" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in aime_rows))
    monkeypatch.setenv("ECHO_NEMO_DATA", str(tmp_path))  # the shared-data lookup, no path given
    aime = load_problems(BENCHMARKS["aime22_24"])
    assert [(p.id, p.answer) for p in aime] == [("aime22_24-0", "0"), ("aime22_24-1", "1"), ("aime22_24-2", "2")]
    EvalConfig(benchmarks=["aime22_24", "aime24", "aime25"]).validate()
    # an evaluation set stays strict: a bad answer fails naming the set and the row
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**aime_rows[0], "answer": "1.5"}) + "\n")
    with pytest.raises(UserError, match=r"aime22_24.*row 0"):
        load_problems("aime22_24", path=str(bad))
    # offline, the hub path names the dataset it tried
    monkeypatch.delenv("ECHO_NEMO_DATA")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="DigitalLearningGmbH/MATH-lighteval"):
        load_problems("math_train", limit=1)
    with pytest.raises(UserError, match="AI-MO/aimo-validation-aime"):
        load_problems("aime22_24", limit=1)
