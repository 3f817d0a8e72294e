"""The echo-lab study end to end under its smoke budget (debug model, a few steps: plumbing,
no effect), every finding F1-F6 through the local executor: data -> pretraining ->
calibration -> RL -> final and finding evals -> the report with every pre-registered
expectation's verdict; running it again redoes nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from echo_nemo.launch.submit import is_done
from echo_nemo.study.report import SHARING_FILE
from echo_nemo.study.stats import OUTCOMES


@pytest.mark.slow
def test_smoke_study_runs_every_finding_end_to_end_and_resumes(tmp_path, cli):
    args = ["study", "recipes/study/echolab.yaml", "--budget", "smoke", "--cluster", "local", "--out", str(tmp_path)]
    res = cli(*args, env={"OMP_NUM_THREADS": "1"}, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "echolab" / "smoke"
    plan = json.loads((study / "plan.json").read_text())
    assert plan["selected"] == ["f1", "f2", "f3", "f4", "f5", "f6"] and plan["pretrain_seeds"] == [0]
    runs = {r["key"]: r for r in plan["runs"]}
    assert all(is_done(study / key) for key in runs)
    n = {s: sum(r["stage"] == s for r in runs.values()) for s in ("data", "pretrain", "calibrate", "rl", "eval")}
    assert f"{len(runs)}/{len(runs)} runs done (data {n['data']}/{n['data']} pretrain {n['pretrain']}/" \
           f"{n['pretrain']} calibrate {n['calibrate']}/{n['calibrate']} rl {n['rl']}/{n['rl']}" in res.stdout
    for key in (k for k, r in runs.items() if r["stage"] == "calibrate"):  # every format's forced accuracy
        cal = json.loads((study / key / "calibration.json").read_text())
        assert set(cal["formats"]) == {"tinygsm", "llm_code", "text"} and "calibration/gap_top2" in cal["context"]
    for m in (m for f in plan["findings"].values() for m in f["members"]):  # one final eval before and after
        assert (study / m["evals"]["final"] / "results.json").is_file()
        assert (study / m["before"]["final"] / "results.json").is_file()
        assert m["rl"].endswith(f"/pretrain-0/seed-{m['seed']}")
    f4 = plan["findings"]["f4"]["members"][0]
    assert len(json.loads((study / f4["rl"] / "metrics.jsonl").read_text().splitlines()[0])) > 1
    assert (study / f4["evals"]["over_steps"] / "metrics.jsonl").is_file()
    # its curve's ends are the final evals of the pretrained model and of the run, not evaluated again
    ends = sorted((study / f4["evals"]["over_steps"] / "steps").glob("step_*.json"), key=lambda p: int(p.stem[5:]))
    reused = [json.loads(p.read_text()).get("reused_from") for p in (ends[0], ends[-1])]
    assert reused == [str(study / f4["before"]["final"]), str(study / f4["evals"]["final"])]

    expectations = yaml.safe_load((study / "expectations.yaml").read_text())["expectations"]
    rows = json.loads((study / "report" / "verdicts.json").read_text())
    assert [r["expectation"] for r in rows] == list(expectations)  # every expectation, in order
    assert all(r["verdict"] in OUTCOMES and r["seeds (pretraining x RL)"] == "1 x 2" for r in rows)
    # f2 compares mini with small; the smoke budget plans the first two sizes only
    f2 = next(r for r in rows if r["expectation"] == "f2_text_shift")
    assert f2["verdict"] == "not testable here" and "level small: 0 run(s)" in f2["why"]
    assert all("not timed yet" not in r["finding's wall time"] for r in rows)
    # the smoke budget runs two at a time: an RL run records how many shared the cores
    sharing = {int((study / k / SHARING_FILE).read_text()) for k, r in runs.items() if r["stage"] == "rl"}
    assert sharing <= {1, 2} and 2 in sharing
    md = (study / "report" / "findings.md").read_text()
    page = (study / "report" / "index.html").read_text()
    for fid in plan["selected"]:
        assert f"## {fid}:" in md and f"<h2 id='{fid}'>" in page and f'alt="{fid}_format_share.png"' in page

    again = cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {len(runs)} run(s) already done are skipped" in again.stdout and "stage rl" not in again.stdout
