"""Report generation from generated run directories: PNGs exist, HTML embeds and names them."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

from echo_nemo.metrics import MetricsLogger
from echo_nemo.report.html import build_report, collect_runs, sweep_labels


def make_rl_run(path: Path, kl: float, steps: int = 20) -> Path:
    """An RL-like run: text share falls, llm_code rises (speed depends on kl)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"run_dir: {path}\nrl:\n  kl_coef: {kl}\n  lr: 0.0001\nseed: 0\n")
    with MetricsLogger(path, tensorboard=False) as log:
        for step in range(1, steps + 1):
            decay = math.exp(-step / (3 + 100 * kl))
            text = 0.4 * decay
            code = (1 - text) * (0.5 + 0.4 * (1 - decay))
            log.log(step, {
                "reward/mean": 0.5 + 0.4 * (1 - decay),
                "format/text/share": text, "format/llm_code/share": code,
                "format/tinygsm/share": 1 - text - code, "format/other/share": 0.0,
                "acc/echolab/pass@1": 0.55 + 0.3 * (1 - decay),
            })
    return path


def make_eval_run(path: Path, label: str, good: float) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"checkpoint: /x/{label}\nbenchmarks: [echolab]\n")
    pass_k = {str(k): min(1.0, good + 0.1 * math.log2(k)) for k in (1, 2, 4, 8)}
    results = {"label": label, "benchmarks": {"echolab": {
        "problems": 50, "pass@1": good, "pass_at_k": pass_k, "maj_at_k": good + 0.05, "k": 8,
        "sample_acc": good - 0.05,
        "formats": {"tinygsm": {"share": (1 - good) / 4, "acc": 0.8},
                    "llm_code": {"share": 1 - 3 * (1 - good) / 4, "acc": 0.9},
                    "text": {"share": (1 - good) / 2, "acc": 0.2}, "other": {"share": 0.0, "acc": None}},
    }}}
    (path / "results.json").write_text(json.dumps(results))
    with MetricsLogger(path, tensorboard=False) as log:
        log.log(0, {"acc/echolab/pass@1": good})
    return path


def test_report_writes_pngs_and_self_contained_html(tmp_path):
    rl = make_rl_run(tmp_path / "rl", kl=0.0)
    before = make_eval_run(tmp_path / "eval_before", "before RL", 0.4)
    after = make_eval_run(tmp_path / "eval_after", "after RL", 0.8)
    index = build_report([before, rl, after], tmp_path / "out")

    pngs = sorted((tmp_path / "out").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"rl_format_share.png", "rl_accuracy_reward.png", "pass_at_k_echolab.png", "formats_echolab.png"} <= names
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for png in pngs:
        assert png.stat().st_size > 5000  # a real figure, not an empty file
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'alt="{png.name}"' in page and f'href="{png.name}"' in page
        assert base64.b64encode(png.read_bytes()).decode() in page  # embedded: self-contained
    assert "http://" not in page and "https://" not in page
    assert "kl_coef" in page  # resolved config inlined
    assert "before RL" in page and "after RL" in page
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    after_row = next(r for r in summary if r["run"] == "after RL")
    assert after_row["pass@1 (greedy)"] == 0.8 and after_row["dominant format"].startswith("llm_code")


def test_sweep_folder_compares_runs_by_differing_config(tmp_path):
    sweep = tmp_path / "sweep"
    for kl in (0.0, 0.01, 0.1):
        make_rl_run(sweep / f"kl{kl}", kl=kl)
    runs = collect_runs([sweep])
    assert [r.name for r in runs] == ["kl0.0", "kl0.01", "kl0.1"]
    assert sweep_labels(runs) == ["rl.kl_coef=0.0", "rl.kl_coef=0.01", "rl.kl_coef=0.1"]
    index = build_report([sweep], sweep / "report")
    names = {p.name for p in (sweep / "report").glob("*.png")}
    assert {"sweep_reward.png", "sweep_share_text.png", "sweep_share_llm_code.png"} <= names
    assert "sweep: text share" in index.read_text()
    assert (sweep / "report" / "sweep_share_text.png").stat().st_size > 5000


def test_report_cli_and_bad_input(tmp_path, cli):
    rl = make_rl_run(tmp_path / "rl", kl=0.0)
    r = cli("report", str(rl))
    assert r.returncode == 0, r.stderr
    assert (rl / "report" / "index.html").is_file()
    assert "rl_format_share.png" in (rl / "report" / "index.html").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("report", str(empty))
    assert r.returncode == 2 and "neither a run directory" in r.stderr and "Traceback" not in r.stderr
    r = cli("report", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr

    broken = make_eval_run(tmp_path / "broken", "x", 0.5)
    (broken / "results.json").write_text("{not json")
    r = cli("report", str(broken), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "results.json" in r.stderr


def _share_of_pixels(png: Path, hex_color: str, alpha: float = 0.85) -> float:
    """Fraction of the image's pixels painted in `hex_color` (blended over white at `alpha`)."""
    import matplotlib.image as mpimg
    import numpy as np
    from matplotlib.colors import to_rgb

    want = alpha * np.array(to_rgb(hex_color)) + (1 - alpha)
    img = mpimg.imread(png)[..., :3]
    return float((np.abs(img - want).max(axis=-1) < 0.03).mean())


def test_format_share_with_one_point_is_drawn(tmp_path):
    """RL runs that evaluate held-out prompts only at the end still show that one point."""
    from echo_nemo.report.plots import FORMAT_COLORS, plot_format_share

    rows = [{"step": 35, "eval/format/llm_code/share": 0.9, "eval/format/tinygsm/share": 0.1,
             "eval/format/text/share": 0.0, "eval/format/other/share": 0.0}]
    png = plot_format_share(rows, tmp_path / "one.png", "one point", prefix="eval/")
    code = _share_of_pixels(png, FORMAT_COLORS["llm_code"])
    tiny = _share_of_pixels(png, FORMAT_COLORS["tinygsm"])
    assert code > 0.05  # a bar, not just the legend's swatch (~0.1% of the image)
    assert 5 < code / tiny < 15  # the stack keeps the 9:1 proportion (up to the legend swatches)


def test_a_series_with_one_point_draws_bars_and_with_several_draws_lines():
    """Accuracy and greedy formats logged once (an eval only at the last step) are bars named
    by their step; logged at several steps they are curves over the step axis."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from echo_nemo.report.plots import format_share_figure, metric_curves_figure

    def eval_row(step, code):
        return {"step": step, "acc/echolab/pass@1": 0.3 + code / 2, "eval/format/llm_code/share": code,
                "eval/format/tinygsm/share": 1 - code, "eval/format/text/share": 0.0,
                "eval/format/other/share": 0.0}

    train = [{"step": s, "reward/mean": s / 10} for s in range(1, 11)]
    once = [*train[:-1], {**train[-1], **eval_row(10, 0.9)}]
    often = [{**r, **eval_row(r["step"], r["step"] / 10)} if r["step"] % 5 == 0 else r for r in train]
    often = [eval_row(0, 0.2), *often]
    keys = ["reward/mean", "acc/echolab/pass@1"]

    fig = metric_curves_figure(once, keys, "t", "y")
    lines_ax, bars_ax = fig.axes
    assert [ln.get_label() for ln in lines_ax.lines] == ["reward/mean"]
    assert len(bars_ax.patches) == 1 and bars_ax.patches[0].get_height() == 0.75
    assert bars_ax.get_xticklabels()[0].get_text() == "acc/echolab/pass@1\n(step 10)"
    plt.close(fig)

    fig = metric_curves_figure(often, keys, "t", "y")
    (ax,) = fig.axes
    assert sorted(ln.get_label() for ln in ax.lines) == sorted(keys) and not ax.patches
    assert list(ax.lines[1].get_xdata()) == [0, 5, 10]
    plt.close(fig)

    fig = format_share_figure(once, "t", prefix="eval/")
    (ax,) = fig.axes
    assert len(ax.patches) == 4 and not any(isinstance(c, PolyCollection) for c in ax.collections)
    assert ax.get_xticklabels()[0].get_text() == "step 10"
    plt.close(fig)

    fig = format_share_figure(often, "t", prefix="eval/")
    (ax,) = fig.axes
    assert not ax.patches and sum(isinstance(c, PolyCollection) for c in ax.collections) == 4
    assert ax.get_xlim() == (0, 10)
    plt.close(fig)
