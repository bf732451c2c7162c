"""The sweep report's tables and plots: medians with min–max over the repeat axis, blanks for missing values."""

from qmap.sweep.report import PLOTS, plot_report, report_markdown, spread


def _row(point, series, x, top1, seed, status="complete"):
    return {"point": point, "series": series, "x": x, "status": status, "method": series, "bits": x, "seed": seed,
            "top1_fp": 90.0, "top1_quantized": top1, "top1_integer": None, "gap_pp": None, "quantize_s": 1.0,
            "wall_s": 10.0 + seed}


def test_spread_cells_and_plots(tmp_path):
    rows = [_row("W4A4-rtn-seed0", "rtn", "W4A4", 80.0, 0), _row("W4A4-rtn-seed1", "rtn", "W4A4", 82.0, 1),
            _row("W4A4-rtn-seed2", "rtn", "W4A4", 81.0, 2), _row("W2A2-rtn-seed0", "rtn", "W2A2", 10.0, 0),
            _row("W2A2-rtn-seed1", "rtn", "W2A2", None, 1, status="failed")]
    rep = {"sweep": "s", "source": "s.yaml", "axes": {"bits": ["W4A4", "W2A2"], "method": ["rtn"], "seed": ["seed0"]},
           "roles": {"x": "bits", "repeat": "seed"}, "x": ["W4A4", "W2A2"], "series": ["rtn"],
           "counts": {"complete": 4, "failed": 1, "running": 0, "not run": 0}, "points": rows,
           "top1_quantized": {"rtn|W4A4": spread([80.0, 82.0, 81.0]), "rtn|W2A2": spread([10.0])},
           "invocations": [{"started": "t", "points_run": 5, "points_skipped": 0, "wall_s": 20.0,
                            "points_wall_s_sum": 55.0, "speedup": 2.75}]}
    md = report_markdown(rep)
    assert "| rtn | 81.00 (80.00–82.00, n=3) | 10.00 |" in md
    assert "None" not in md and "FP top-1: 90.00 %." in md and "| 2.75 |" in md
    plot_report(rep, tmp_path)
    assert all((tmp_path / p).stat().st_size > 0 for p in PLOTS)
