"""The documents' contract: the README opens with the two set-up commands and .ci/run runs
the test one; every link between the documents resolves; the documents speak of the project
as it is (no development history outside CHANGELOG.md's dates); every ECHO_NEMO_* variable
the code reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
DOCUMENTS = [README, REPO / "CHANGELOG.md", REPO / "slurm" / "README.md", *DOCS]


def _setup_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "quickstart" in cmds[0] and "pytest" in cmds[1]
    for c in cmds:
        assert c.startswith("python3 -m venv .venv")  # fresh machine: only Python 3.11 needed
    # nothing but the title comes before them
    before = README.read_text().split("```", 1)[0]
    assert [line for line in before.splitlines() if line.strip()] == ["# echo-nemo"]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()


def test_readme_is_a_short_guide():
    assert len(README.read_text().splitlines()) <= 250


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_slug_matches_github_anchors():
    assert slug("Data at scale") == "data-at-scale"
    assert slug("`recipes/rl/`: `RLConfig`") == "recipesrl-rlconfig"
    assert slug("F1 by the strict rule") == "f1-by-the-strict-rule"


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_link_between_documents_resolves():
    broken = []
    for doc in DOCUMENTS:
        for link in _links(doc):
            if re.match(r"[a-z]+:", link):  # http(s), mailto: not checked offline
                continue
            target, _, anchor = link.partition("#")
            file = (doc.parent / target).resolve() if target else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(REPO)}: {link} (no such file)")
            elif anchor and file.suffix == ".md":
                anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)}
                if anchor not in anchors:
                    broken.append(f"{doc.relative_to(REPO)}: {link} (no such heading)")
    assert broken == []


def test_readme_links_every_docs_page():
    linked = {(REPO / link.partition("#")[0]).resolve() for link in _links(README)}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def test_every_docs_page_says_when_it_was_last_checked():
    assert DOCS
    for page in DOCS:
        head = page.read_text().splitlines()[:6]
        assert any(re.match(r"Last checked: \d{4}-\d{2}-\d{2}\b", line) for line in head), page.name


HISTORY = [
    (r"\bsessions?\b", "development sessions"),
    (r"\bissue \d+", "issue numbers"),
    (r"(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/.-])", "commit ids"),
    (r"\bround \d+ of development|\bdevelopment round", "development rounds"),
]


def test_documents_carry_no_development_history():
    found = []
    for doc in DOCUMENTS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for pattern, what in HISTORY:
                if re.search(pattern, line, flags=re.I):
                    found.append(f"{doc.relative_to(REPO)}:{n}: {what}: {line.strip()[:80]}")
    assert found == []


def test_history_patterns_can_fail():
    text = "measured in session 19 at commit 6bfa5be for issue 21"
    assert all(re.search(p, text, flags=re.I) for p, _ in HISTORY[:3])
    assert not re.search(HISTORY[2][0], "runs/data/echo_tg_omi1 and 2026-12-01 and 0x40000000", flags=re.I)


def test_every_environment_variable_is_documented():
    sources = [*(REPO / "echo_nemo").rglob("*.py"), *(REPO / "slurm").glob("*.sbatch"), *(REPO / "slurm").glob("*.sh")]
    read = {v for f in sources for v in re.findall(r"\bECHO_NEMO_[A-Z_]+[A-Z]\b", f.read_text())}
    assert read, "no ECHO_NEMO_* variable found: the scan is broken"
    documented = set(re.findall(r"`(ECHO_NEMO_[A-Z_]+)`", (REPO / "docs" / "configuration.md").read_text()))
    assert sorted(read - documented) == []


def test_every_path_the_documents_name_exists():
    """A file or folder of the repository named in backticks (`echo_nemo/cpu/kernels.py`)
    exists: the documents follow the code when it moves."""
    pattern = r"`((?:echo_nemo|recipes|benchmarks|slurm|tests|docs|tokenizer)/[^`\s]*)`"
    missing = []
    for doc in DOCUMENTS:
        for path in re.findall(pattern, doc.read_text()):
            if any(c in path for c in "<*{["):  # a pattern, not a path
                continue
            if not (REPO / path.rstrip(".,:;")).exists():
                missing.append(f"{doc.relative_to(REPO)}: {path}")
    assert missing == []
