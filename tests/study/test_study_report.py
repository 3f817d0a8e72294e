"""The study report on a real study folder: plan.json from the planner, RL metrics.jsonl of
levels x seeds in the RL loop's format, eval-over-steps files; grouping by factor level,
seed bands in the figures (pixel check), the verdict table in the HTML."""

from __future__ import annotations

import json
from pathlib import Path

from study_helpers import write_eval_over_steps, write_eval_results, write_rl_run, write_study

from echo_nemo.report.plots import BAND_ALPHA, level_color
from echo_nemo.study.plan import load_study, plan_study, write_plan
from echo_nemo.study.report import build_study_report

# (winner, speed) of each finding's levels: the speed sets how fast and how far the winner
# takes over (a slower one keeps more minority share)
DESIGN = {
    ("f1", "grpo"): ("llm_code", 0.5),
    ("f3", "1x"): ("llm_code", 0.5), ("f3", "4x"): ("text", 0.2),
    ("f5", "easy"): ("llm_code", 0.5),
    ("f4", "0"): ("llm_code", 0.5), ("f4", "0.1"): ("llm_code", 0.3), ("f4", "1.0"): ("llm_code", 0.1),
    ("f6", "grpo"): ("llm_code", 0.5), ("f6", "ppo"): ("llm_code", 0.5),
}


def make_study(tmp_path: Path, seeds: int) -> Path:
    plan = plan_study(load_study(write_study(tmp_path), seeds=seeds), tmp_path / "runs")
    write_plan(plan)
    written = set()
    for fid, members in plan.members.items():
        for m in members:
            if m.rl not in written:  # f6's grpo runs are f1's
                winner, speed = DESIGN[(fid, m.level)]
                write_rl_run(plan.study_dir / m.rl, winner, speed, m.seed)
                written.add(m.rl)
            for key in m.evals.values():
                if fid == "f4":  # pass@8 falls late more at KL 0 than at KL 1
                    write_eval_over_steps(plan.study_dir / key, drop={"0": 0.2, "0.1": 0.1, "1.0": 0.0}[m.level])
                else:  # the hard set after RL: every seed above the pretrained model's 0.3
                    write_eval_results(plan.study_dir / key, 0.35 + 0.05 * m.seed)
            for key in m.before.values():
                write_eval_results(plan.study_dir / key, 0.3)
    return plan.study_dir


def _share_of_pixels(png: Path, hex_color: str, alpha: float) -> float:
    """Fraction of the image's pixels painted in `hex_color` blended over white at `alpha`."""
    import matplotlib.image as mpimg
    import numpy as np
    from matplotlib.colors import to_rgb

    want = alpha * np.array(to_rgb(hex_color)) + (1 - alpha)
    img = mpimg.imread(png)[..., :3]
    return float((np.abs(img - want).max(axis=-1) < 0.02).mean())


def test_study_report_groups_by_level_draws_seed_bands_and_verdicts(tmp_path):
    study = make_study(tmp_path, seeds=3)
    index = build_study_report(study, study / "report")
    page = index.read_text()
    verdicts = {v["finding"].split()[0]: v for v in json.loads((study / "report" / "verdicts.json").read_text())}
    assert {k: v["verdict"] for k, v in verdicts.items()} == {
        "f1": "holds",          # every seed ends >= 0.9 llm_code, accuracy rises most while it takes over
        "f3": "holds",          # 4x text: text wins, accuracy lower than 1x
        "f4": "holds",          # minority share grows with KL, pass@8 falls less late
        "f5": "holds",          # every seed above the pretrained model on the hard set
        "f6": "mixed",          # both collapse, but GRPO's seeds spread no more than PPO's
    }
    assert verdicts["f1"]["seeds"] == 3 and verdicts["f1"]["runs"] == "3/3"
    assert "collapsed (>= 90% from a step to the end) in 3/3 seeds" in verdicts["f1"]["measured"]
    assert "1x: winner llm_code" in verdicts["f3"]["measured"] and "4x: winner text" in verdicts["f3"]["measured"]
    kl = verdicts["f4"]["measured"]
    assert kl.index("KL 0:") < kl.index("KL 0.1:") < kl.index("KL 1.0:") and "pass@k late drop 0.200" in kl
    # the verdict table is in the page, one row per finding, before the sections
    table = page[page.index("<h2>Verdicts</h2>"): page.index("</table>")]
    assert table.count("<tr>") == 6 and "paper&#x27;s claim" in table and page.index("</table>") < page.index("<h2 id='f1'>")
    assert table.count("<td>holds</td>") == 4 and table.count("<td>mixed</td>") == 1
    for fid in ("f1", "f3", "f4", "f5", "f6"):
        assert f"<h2 id='{fid}'>" in page
        assert f'alt="{fid}_format_share.png"' in page and f'alt="{fid}_final_share.png"' in page
    assert "echolab pass@1 before 0.300 ± 0.000 (n=3) -> after 0.400 ± 0.050 (n=3)" in verdicts["f5"]["measured"]
    assert 'alt="f5_before_after_echolab.png"' in page
    assert 'alt="f4_pass_at_k_echolab.png"' in page and 'alt="f1_pass_at_k_echolab.png"' not in page
    # grouped by the factor: its levels in recipe order
    assert "kl.coef in 0, 0.1, 1.0" in page

    png = study / "report" / "f4_format_share.png"
    bands = [_share_of_pixels(png, level_color(i), BAND_ALPHA) for i in range(3)]
    assert all(b > 0.002 for b in bands), bands  # each level's seed band is drawn

    single = make_study(tmp_path / "one", seeds=1)
    build_study_report(single, single / "report")
    png1 = single / "report" / "f4_format_share.png"
    assert max(_share_of_pixels(png1, level_color(i), BAND_ALPHA) for i in range(3)) < 0.0005  # one seed: no band
    assert png1.stat().st_size > 5000


def test_study_report_with_unfinished_runs_and_bad_folder(tmp_path, cli):
    plan = plan_study(load_study(write_study(tmp_path), only=["f1"], seeds=2), tmp_path / "runs")
    write_plan(plan)
    write_rl_run(plan.study_dir / plan.members["f1"][0].rl, "llm_code", 0.5, 0)  # seed 1 not run yet
    index = build_study_report(plan.study_dir, plan.study_dir / "report")
    v = json.loads((plan.study_dir / "report" / "verdicts.json").read_text())[0]
    assert v["runs"] == "1/2" and v["seeds"] == 1 and "1/1 seeds" in v["measured"]
    assert "1 of 2 RL runs finished" in index.read_text()

    res = cli("study", str(tmp_path), "--report-only")  # a folder that is not a study's
    assert res.returncode == 2 and "plan.json" in res.stderr and "Traceback" not in res.stderr
    res = cli("report", str(plan.study_dir))
    assert res.returncode == 2 and "--report-only" in res.stderr and "Traceback" not in res.stderr
    (plan.study_dir / "report" / "index.html").unlink()
    res = cli("study", str(plan.study_dir), "--report-only")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 of 2 RL runs finished" in (plan.study_dir / "report" / "index.html").read_text()
