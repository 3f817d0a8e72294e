"""A smoke study end to end through the local executor: two findings (collapse, algorithms),
two seeds, the echo-lab recipe's smoke budget (debug model, a few steps: plumbing, no effect):
data -> shared pretraining -> RL -> report with its verdict table; running it again redoes
nothing."""

from __future__ import annotations

import json

import pytest

from echo_nemo.launch.submit import is_done


@pytest.mark.slow
def test_smoke_study_runs_end_to_end_and_resumes(tmp_path, cli):
    args = ["study", "recipes/study/echolab.yaml", "--budget", "smoke", "--only", "f1,f6", "--seeds", "2",
            "--cluster", "local", "--out", str(tmp_path)]
    res = cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = tmp_path / "echolab" / "smoke"
    plan = json.loads((study / "plan.json").read_text())
    assert plan["selected"] == ["f1", "f6"]
    rl = sorted({m["rl"] for fid in plan["selected"] for m in plan["findings"][fid]["members"]})
    # f6's GRPO level is also f2's tiny, f3's 1x and f4's KL-0 level: its runs carry f2's name
    assert rl == [f"rl/{f}/{lv}/seed-{s}" for f, lv in (("f1", "grpo"), ("f2", "tiny"), ("f6", "ppo")) for s in (0, 1)]
    assert all(is_done(study / key) for key in rl)
    # the smoke budget shares the cores again as runs finish: every RL run had a share file
    shares = {key: study / "logs" / "threads" / key.replace("/", "__") for key in rl}
    assert all(int(path.read_text()) in (1, 2) for path in shares.values()), shares
    assert "8/8 runs done (data 1/1 pretrain 1/1 rl 6/6)" in res.stdout and "ETA" in res.stdout
    for key in rl:  # real RL runs: a row per step with format shares, the final greedy eval
        rows = [json.loads(line) for line in (study / key / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1, 2, 3]  # 0: the pretrained model's eval
        assert "format/llm_code/share" in rows[1] and "acc/echolab/pass@1" in rows[0] and "acc/echolab/pass@1" in rows[-1]
    assert (study / "rl/f6/ppo/seed-0/config.yaml").read_text().count("algorithm: ppo") == 1

    page = (study / "report" / "index.html").read_text()
    verdicts = json.loads((study / "report" / "verdicts.json").read_text())
    # the report gathers every finding with runs: f2, f3 and f4 too, partly (the shared level)
    assert [v["finding"].split()[0] for v in verdicts] == ["f1", "f2", "f3", "f4", "f6"]
    assert [v["runs"] for v in verdicts] == ["2/2", "2/4", "2/4", "2/4", "4/4"] and all(v["seeds"] == 2 for v in verdicts)
    assert all(v["verdict"] in ("holds", "does not hold", "mixed", "not measured") for v in verdicts)
    assert all("no runs yet" in v["measured"] for v in verdicts[1:4])
    assert "<h2>Verdicts</h2>" in page and page.count("<td>" + verdicts[-1]["verdict"] + "</td>") >= 1
    assert 'alt="f6_format_share.png"' in page and 'alt="f1_accuracy.png"' in page

    again = cli(*args, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming: 8 run(s) already done are skipped" in again.stdout and "stage rl" not in again.stdout
