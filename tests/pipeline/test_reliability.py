"""Reproducibility (same config + seed → identical files and metrics) and atomic outputs under SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from qmap.cli import main


def _args(root, ckpt, out):
    return ["run", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--quiet",
            "--set", "data.calib_size=20", "--set", "hardware.target_layers=[features.3]",
            "--set", "hardware.rtl=none"]


def _metrics(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["metrics"]  # machine-dependent figures are elsewhere


def _hw_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "hw").rglob("*")) if p.is_file()}


def test_same_config_and_seed_give_identical_results(tiny_setup, tmp_path):
    root, ckpt = tiny_setup
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(root, ckpt, a)) == 0
    assert main(_args(root, ckpt, b)) == 0
    assert _metrics(a) == _metrics(b)
    files_a, files_b = _hw_files(a), _hw_files(b)
    assert files_a and files_a.keys() == files_b.keys()
    differing = [k for k in files_a if files_a[k] != files_b[k]]
    assert not differing, f"hardware files differ between identical runs: {differing}"
    assert (a / "quantized_model.safetensors").read_bytes() == (b / "quantized_model.safetensors").read_bytes()


def _complete(path: Path) -> bool:
    """Every finished (non-temporary) output file parses completely."""
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        return True  # an atomic write's temporary, never read by anyone
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".safetensors":
        load_file(str(path))
    elif path.suffix in (".txt", ".md"):
        assert path.read_text().endswith("\n"), f"{path} does not end with a newline"
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), f"{path} is cut"
    return True


def test_killed_run_leaves_only_complete_files(tiny_setup, tmp_path):
    root, ckpt = tiny_setup
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qmap", *_args(root, ckpt, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "results.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later stage
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, "the run wrote nothing before it was killed"
    assert all(_complete(p) for p in files)
    # --resume accepts the folder; --overwrite is needed otherwise.
    assert main(_args(root, ckpt, out)) == 2
    assert main([*_args(root, ckpt, out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["top1_quantized"] is not None
