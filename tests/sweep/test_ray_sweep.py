"""`qmap sweep` on a real local Ray instance with 2 workers: a 4-point sweep completes; a worker killed in the
middle of a point is rerun by Ray, resumes the point and gives the same results; a second invocation skips
every point."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from qmap.cli import main
from qmap.sweep.execute import run_sweep
from qmap.sweep.spec import load_sweep

ray = pytest.importorskip("ray", reason="Ray is the optional extra qmap[ray] (scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def local_ray():
    """One 2-CPU local Ray instance for the module (run_sweep uses it instead of starting its own)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, logging_level="WARNING",
             log_to_driver=False)
    yield
    ray.shutdown()


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _outputs(folder: Path) -> dict:
    """What a rerun must reproduce exactly: metrics, per-layer errors, hardware rows, the quantized model."""
    r = _results(folder)
    return {"metrics": r["metrics"], "layers": r["layers"], "hardware": r["hardware"],
            "model": (folder / "quantized_model.safetensors").read_bytes()}


@pytest.fixture(scope="module")
def clean_sweep(local_ray, tiny_sweep_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "clean"
    rep = run_sweep(load_sweep(tiny_sweep_file), out, quiet=True)
    return out, rep


def test_four_point_sweep_completes_with_its_report(clean_sweep, capsys):
    out, rep = clean_sweep
    assert rep["counts"]["complete"] == 4 and rep["invocations"][-1]["points_run"] == 4
    for row in rep["points"]:
        res = _results(out / row["folder"])
        assert res["status"] == "complete" and res["config"]["name"] == row["point"]
        assert row["top1_quantized"] == round(100 * res["metrics"]["top1_quantized"], 2)
        assert row["peak_rss_mb"] == round(res["peak_rss_bytes"] / 2**20) > 0
    assert json.loads((out / "sweep.json").read_text())["points"] == rep["points"]
    assert "## Top-1 % of the quantized model" in (out / "report.md").read_text()
    assert all((out / "plots" / p).stat().st_size > 0 for p in ("accuracy_vs_bits.png", "accuracy_vs_time.png",
                                                               "seed_spread.png"))
    # qmap compare reads the same points from the sweep folder
    assert main(["compare", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["top1_quantized"]) for r in rows] == [(p["point"], p["top1_quantized"])
                                                               for p in rep["points"]]


def test_second_invocation_skips_every_point(clean_sweep, tiny_sweep_file):
    out, _ = clean_sweep
    before = {p: (p / "results.json").read_bytes() for p in (out / "points").iterdir()}
    rep = run_sweep(load_sweep(tiny_sweep_file), out, quiet=True)
    last = rep["invocations"][-1]
    assert (last["points_run"], last["points_skipped"], rep["counts"]["complete"]) == (0, 4, 4)
    assert {p: (p / "results.json").read_bytes() for p in before} == before
    assert len(rep["invocations"]) == 2


def _point_pids(point: str) -> list[int]:
    """Processes whose title is the Ray task of ``point`` (Ray titles a busy worker ``ray::<task name>``)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(f"ray::qmap-point:{point}".encode()):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def test_killed_worker_is_rerun_and_resumes_with_identical_results(clean_sweep, tiny_sweep_file,
                                                                   tmp_path):
    clean, _ = clean_sweep
    out = tmp_path / "killed"
    victim = "W4A4-adaround"
    seen: dict = {}

    def kill_mid_point():
        deadline = time.monotonic() + 300
        folder = out / "points" / victim
        while time.monotonic() < deadline:
            try:
                res = _results(folder)
            except (OSError, ValueError):
                res = {}
            if res.get("status") == "running":
                pids = _point_pids(victim)
                if pids:
                    seen.update(run_id=res["run_id"], stages=list(res["timings"]), pid=pids[0])
                    os.kill(pids[0], signal.SIGKILL)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_mid_point)
    killer.start()
    rep = run_sweep(load_sweep(tiny_sweep_file), out, quiet=True)
    killer.join()
    assert seen, "the point's worker was never found running"
    assert "report" not in seen["stages"], "killed after the point had finished"
    assert rep["counts"]["complete"] == 4
    res = _results(out / "points" / victim)
    assert res["run_id"] == seen["run_id"], "the rerun did not resume the killed run folder"
    for point in ("W4A4-rtn", victim, "W3A3-rtn", "W3A3-adaround"):
        assert _outputs(out / "points" / point) == _outputs(clean / "points" / point), point
