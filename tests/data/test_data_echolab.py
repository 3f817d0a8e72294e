"""Echo-lab: many problem types, exact answers, faithful formats, determinism, disjoint splits."""

from __future__ import annotations

import ast
import re
from collections import Counter

import pytest

from echo_nemo.data import echolab
from echo_nemo.data.echolab import generate, split_of
from echo_nemo.data.sources import last_boxed, load_problems

N = 1200


@pytest.fixture(scope="module")
def problems():
    return list(generate(N, seed=3, min_steps=1, max_steps=5, max_number=30))


def _run_tinygsm(code: str):
    ns: dict = {}
    exec(compile(code, "<tinygsm>", "exec"), ns)  # trusted: generated here
    return ns["simple_math_problem"]()


def _run_llm_code(code: str):
    """Value of the block's last expression, as the study's reward takes it."""
    tree = ast.parse(code)
    last = tree.body.pop()
    assert isinstance(last, ast.Expr), "the block must end in an expression"
    ns: dict = {}
    exec(compile(tree, "<llm-code>", "exec"), ns)
    return eval(compile(ast.Expression(last.value), "<last>", "eval"), ns)


def test_types_and_difficulties(problems):
    kinds = Counter(p.template for p in problems)
    assert len(echolab.TEMPLATES) >= 30 and len(kinds) >= 30, kinds
    steps = Counter(p.num_steps for p in problems)
    assert set(steps) == {1, 2, 3, 4, 5}
    assert max(steps.values()) - min(steps.values()) <= 1  # equal share per difficulty
    # the number knob: small max_number -> small numbers (and small answers)
    small = list(generate(300, seed=1, min_steps=1, max_steps=1, max_number=10))
    large = list(generate(300, seed=1, min_steps=1, max_steps=1, max_number=200))
    assert all(p.num_steps == 1 for p in small + large)

    def median_answer(ps):
        return sorted(int(p.answer_str) for p in ps)[len(ps) // 2]

    assert median_answer(small) * 4 < median_answer(large)
    assert sum(p.answer.value <= 100 for p in small) > 0.8 * len(small)


def test_every_code_solution_executes_to_the_answer(problems):
    for p in problems:
        answer = float(p.answer_str)
        tg = p.render("tinygsm")
        assert tg.startswith("def simple_math_problem() -> int:\n    \"\"\"\n    " + p.question + "\n")
        assert tg.rstrip().endswith("return result")
        assert float(_run_tinygsm(tg)) == answer, tg

        lc = p.render("llm_code")
        m = re.fullmatch(
            r"Let's solve this problem using Python code\.\n<llm-code>\n(.*)\n</llm-code>\n"
            r"<llm-code-output>\n(.*)\n</llm-code-output>\nThus (.*)\.", lc, re.S)
        assert m, lc
        value = _run_llm_code(m.group(1))
        assert float(value) == answer
        assert m.group(2) == repr(value)  # the written output is exactly what Python prints
        assert last_boxed(m.group(3)) == p.answer_str


def test_every_text_solution_boxes_the_answer_and_its_arithmetic_is_right(problems):
    for p in problems:
        text = p.render("text")
        assert "<llm-code>" not in text and "def " not in text
        assert last_boxed(text) == p.answer_str
        eqs = re.findall(r"\$([^$]*) = (\d+)\$", text)
        assert len(eqs) == p.num_steps
        for lhs, rhs in eqs:
            assert eval(lhs) == int(rhs), (lhs, rhs)  # plain numbers and + - * / ( )


def test_deterministic_by_seed():
    a = [p.document("text") for p in generate(50, seed=7)]
    b = [p.document("text") for p in generate(50, seed=7)]
    c = [p.document("text") for p in generate(50, seed=8)]
    assert a == b and a != c


def test_train_and_test_disjoint_by_parameters():
    train = list(generate(3000, seed=0, split="train"))
    test = list(generate(600, seed=0, split="test"))
    train_keys = {p.key for p in train}
    test_keys = {p.key for p in test}
    assert not train_keys & test_keys
    assert all(split_of(k) == "train" for k in train_keys) and all(split_of(k) == "test" for k in test_keys)
    # questions differ too (same numbers in the same template would be the same key)
    assert not {p.question for p in train} & {p.question for p in test}


def test_load_problems_echolab_shape():
    tr = load_problems("echolab_train", limit=40)
    te = load_problems("echolab_test", limit=40)
    assert len(tr) == len(te) == 40
    assert all(p.answer.isdigit() and p.prompt == p.question + "\n\n" for p in tr + te)
    assert len({p.id for p in tr + te}) == 80
    assert load_problems("echolab_test", limit=40) == te  # deterministic


def test_background_prose_is_latex_math():
    import random

    docs = [echolab.background_document(random.Random(i)) for i in range(30)]
    assert all("$" in d and "\n\n" in d for d in docs)
    assert len(set(docs)) == 30


def test_echolab_test_set_exports_in_gsm8k_shape(cli, tmp_path):
    out = tmp_path / "echolab_test.jsonl"
    r = cli("data", "problems", "echolab_test", "--out", str(out), "--limit", "25")
    assert r.returncode == 0, r.stderr
    back = load_problems("gsm8k_test", path=str(out))  # the GSM8K parser reads it back
    want = load_problems("echolab_test", limit=25)
    assert [(p.question, p.answer) for p in back] == [(p.question, p.answer) for p in want]


def test_tinygsm_misquote_makes_that_share_of_tinygsm_answers_wrong():
    from echo_nemo.data.config import EchoLabConfig
    from echo_nemo.data.sources import _echolab_documents
    from echo_nemo.errors import UserError

    n = 600
    probs = list(generate(n, seed=0))
    clean = list(_echolab_documents("echo_tg", EchoLabConfig(num_problems=n)))
    noisy = list(_echolab_documents("echo_tg", EchoLabConfig(num_problems=n, tinygsm_misquote=0.3)))
    assert clean == [p.document("tinygsm") for p in probs]  # 0 (the default) changes nothing
    wrong = 0
    for p, doc in zip(probs, noisy, strict=True):
        question, _, code = doc.partition("\n\n")
        assert question == p.question  # the question keeps the true numbers
        if doc != p.document("tinygsm"):
            # exactly one given line differs, by 1..3
            diff = [(a, b) for a, b in zip(p.render("tinygsm").splitlines(), code.splitlines(), strict=True) if a != b]
            assert len(diff) == 1 and 1 <= abs(int(diff[0][0].split("= ")[1]) - int(diff[0][1].split("= ")[1])) <= 3
        wrong += float(_run_tinygsm(code)) != float(p.answer_str)
    assert 0.22 * n < wrong < 0.36 * n  # ~30% misquoted (a few misquotes cancel out, e.g. x * 0)
    # the other formats are never touched
    omi = list(_echolab_documents("echo_omi1", EchoLabConfig(num_problems=50, tinygsm_misquote=1.0)))
    assert omi == [p.document("llm_code") for p in probs[:50]]
    with pytest.raises(UserError, match="tinygsm_misquote"):
        EchoLabConfig(tinygsm_misquote=1.5).validate()


def test_difficulty_sets_select_by_step_count():
    """Finding 5's sets: easy prompts (1-2 steps, train) and hard problems (4-5 steps, test),
    sliced by difficulty from a 1..5-step stream; train and test disjoint by key."""
    from echo_nemo.data.config import EchoLabConfig
    from echo_nemo.data.sources import BENCHMARKS, ECHOLAB_SETS, echolab_set
    from echo_nemo.eval.config import EvalConfig
    from echo_nemo.rl.run import _problems

    sets = {name: echolab_set(name) for name in ("echolab_train_easy", "echolab_test_easy", "echolab_test_medium",
                                                 "echolab_test_hard")}
    for name, probs in sets.items():
        lo, hi = ECHOLAB_SETS[name].steps
        assert probs and all(lo <= p.num_steps <= hi for p in probs), name
        assert {p.num_steps for p in probs} == set(range(lo, hi + 1))  # every difficulty in range shows
        want = ECHOLAB_SETS[name].split
        assert all(split_of(p.key) == want for p in probs), name
    assert len(sets["echolab_test_hard"]) >= 200 and len(sets["echolab_train_easy"]) >= 2000
    train_keys = {p.key for p in sets["echolab_train_easy"]}
    assert not train_keys & {p.key for p in sets["echolab_test_hard"]}
    assert not train_keys & {p.key for p in sets["echolab_test_easy"]}
    assert not train_keys & {p.key for p in sets["echolab_test_medium"]} and len(sets["echolab_test_medium"]) >= 200
    assert not {p.question for p in sets["echolab_train_easy"]} & {p.question for p in sets["echolab_test_hard"]}
    # the slice is of the stream a 1..5-step corpus renders (same seed): easy prompts were
    # pretraining documents of that corpus, as echolab_train's are of the default one
    corpus = list(generate(200, seed=0, split="train", min_steps=1, max_steps=5))
    assert [p.question for p in corpus if p.num_steps <= 2] == [p.question for p in sets["echolab_train_easy"][:80]]
    # the generator's own step range does not move the difficulty sets; its seed does
    assert echolab_set("echolab_test_hard", EchoLabConfig(max_steps=2), limit=30) == sets["echolab_test_hard"][:30]
    assert echolab_set("echolab_test_hard", EchoLabConfig(seed=1), limit=30) != sets["echolab_test_hard"][:30]
    # loadable by name: RL prompts (data.train) and an eval benchmark (--benchmarks)
    easy = _problems("echolab_train_easy", None, 50)
    assert [p.question for p in easy] == [p.question for p in sets["echolab_train_easy"][:50]]
    hard = load_problems(BENCHMARKS["echolab_hard"], limit=20)
    assert [p.answer for p in hard] == [p.answer_str for p in sets["echolab_test_hard"][:20]]
    EvalConfig(benchmarks=["echolab_hard", "echolab_medium", "echolab_easy"]).validate()


def test_step_schedule_meets_the_weights_in_every_prefix():
    weights = [1.0, 1.0, 0.25]
    schedule = list(echolab.step_schedule(900, 1, 3, weights))
    assert Counter(schedule) == {1: 400, 2: 400, 3: 100}
    for n in range(1, 901):  # every prefix within one problem of its share
        counts = Counter(schedule[:n])
        for k, w in zip((1, 2, 3), weights):
            assert abs(counts[k] - n * w / sum(weights)) <= 1.0
    # equal (or no) weights: the plain cycle over the step counts
    assert list(echolab.step_schedule(7, 2, 4)) == [2, 3, 4, 2, 3, 4, 2]
    assert list(echolab.step_schedule(7, 2, 4, [3, 3, 3])) == [2, 3, 4, 2, 3, 4, 2]


def test_step_weights_make_hard_problems_rare_and_bad_weights_are_refused():
    from echo_nemo.data.config import EchoLabConfig, SourceSpec
    from echo_nemo.data.sources import source_items
    from echo_nemo.errors import UserError

    weights = [1.0, 1.0, 0.25]
    problems = list(generate(90, step_weights=weights))
    assert Counter(p.num_steps for p in problems) == {1: 40, 2: 40, 3: 10}
    # every format source of the corpus (default and fair renderers) follows those problems
    for style in ("inline", "steps"):
        cfg = EchoLabConfig(num_problems=90, step_weights=weights, text_style=style)
        for source in ("echo_tg", "echo_omi2"):
            docs = [item.text for item in source_items(SourceSpec(name=source), cfg)]
            assert [d.split("\n\n")[0] for d in docs] == [p.question for p in problems]
    for bad in ([1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]):
        with pytest.raises(UserError, match="step_weights needs 3 non-negative weights"):
            EchoLabConfig(step_weights=bad).validate()
