"""What holds for well-formed but adversarial situations (issue 16 items 2, 3, 7, 10, 11): atomic plots,
permissions from the umask, run-folder marker/lock/fingerprint rules, a tampered data cache, the split of
results.json into deterministic metrics and machine-dependent figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile_kit import snapshot

from qmap.cli import main
from qmap.config import CONSTRAINTS, RunConfig, config_from_dict
from qmap.errors import ConfigError
from qmap.io import atomic_savefig, atomic_write_json
from qmap.runfolder import RunFolder, config_fingerprint, is_complete, read_marker


def _cfg(**changes) -> RunConfig:
    return config_from_dict({"model": {"checkpoint": "x.safetensors"}, **changes})


# ---- item 2: plots go through the atomic writer
def test_plot_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    target = tmp_path / "plots" / "p.png"
    atomic_savefig(fig, target)
    good = target.read_bytes()

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_savefig(fig, target)
    plt.close(fig)
    assert target.read_bytes() == good  # the previous complete file, never a cut one
    assert [p.name for p in target.parent.iterdir()] == ["p.png"]  # no temporary left behind


# ---- item 10: permissions follow the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode


# ---- item 3: run folders
def test_fingerprint_ignores_the_name_only():
    a, b = _cfg(name="a"), _cfg(name="b")
    assert config_fingerprint(a) == config_fingerprint(b)
    assert config_fingerprint(a) != config_fingerprint(_cfg(name="a", seed=1))
    assert len(config_fingerprint(a)) == 64


def test_run_folder_lifecycle(tmp_path):
    out = tmp_path / "deep" / "run"
    fp = config_fingerprint(_cfg())
    with RunFolder(out, fp) as folder:
        with pytest.raises(ConfigError, match="in use"):
            RunFolder(out, fp).__enter__()  # the lock is exclusive
        results = folder.begin({"name": "run", "metrics": {}})
        assert read_marker(out)["status"] == "running"
        folder.save(results, status="complete")
    assert is_complete(out, fp) and not is_complete(out, "0" * 64)
    run_id = read_marker(out)["run_id"]
    (out / "work").mkdir()
    (out / "work" / "block_000.pt").write_text("partial")
    with RunFolder(out, fp, resume=True) as folder:  # resume keeps the run id and the files
        folder.begin({"name": "run"})
    assert read_marker(out)["run_id"] == run_id and (out / "work" / "block_000.pt").exists()
    with RunFolder(out, fp, overwrite=True) as folder:  # overwrite clears only when the run begins
        assert (out / "work").exists()
        folder.begin({"name": "run"})
        assert not (out / "work").exists()
    (out / "notes.txt").write_text("the user's")  # an entry no run writes: overwrite refuses, deletes nothing
    with pytest.raises(ConfigError, match="no qmap run writes"):
        RunFolder(out, fp, overwrite=True).__enter__()
    assert (out / "notes.txt").read_text() == "the user's"
    with pytest.raises(ConfigError, match="different config"):
        RunFolder(out, "1" * 64, resume=True).__enter__()


def test_failure_before_begin_leaves_nothing_and_after_begin_says_failed(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError), RunFolder(out, "f" * 64):
        raise RuntimeError("data failed to load")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError), RunFolder(out, "f" * 64) as folder:
        folder.begin({"name": "run"})
        raise RuntimeError("quantize blew up\nsecond line")
    marker = read_marker(out)
    assert marker["status"] == "failed" and marker["error"] == "quantize blew up"


def test_method_option_choices_match_the_methods():
    """config.CONSTRAINTS repeats a few choice lists of the methods; they must not drift."""
    from qmap.methods import alpha, ocs, omr

    assert CONSTRAINTS["method.options.criterion"].choices == alpha.CRITERIA
    assert CONSTRAINTS["method.options.fixed_grid"].choices == alpha.FIXED_GRIDS
    assert CONSTRAINTS["method.options.target"].choices == ocs.TARGETS
    assert CONSTRAINTS["method.options.omr_options.form"].choices == omr.FORMS


def test_every_method_declares_typed_options():
    import dataclasses

    from qmap.methods import METHODS, method_options

    for name in METHODS:
        assert dataclasses.is_dataclass(method_options(name)), name


# ---- item 7: the data cache is verified, the checksum recomputed
def test_edited_cache_entry_is_rebuilt(tmp_path, caplog):
    from datafakes import write_tree

    from qmap.data.folders import load_image_folder

    tree = write_tree(tmp_path / "tree", {"train": 2, "test": 2})
    cache = tmp_path / "cache"
    first = load_image_folder(tree, "test", cache_dir=cache)
    entry = next(cache.glob("*test*.npz"))
    with np.load(entry) as z:
        arrays = dict(z)
    arrays["labels"] = (arrays["labels"] + 1) % 3  # the attack: relabel, keep the recorded checksum
    with open(entry, "wb") as f:
        np.savez(f, **arrays)
    again = load_image_folder(tree, "test", cache_dir=cache)
    assert np.array_equal(again.labels, first.labels) and again.checksum == first.checksum
    assert "does not match its recorded checksum" in caplog.text


# ---- items 3 and 11 through a real (tiny) run: marker, fingerprint, metrics vs throughput, overwrite
def test_run_marks_its_folder_and_splits_metrics_from_timings(sandbox, capsys):
    out = sandbox.path / "out"
    assert main(sandbox.run_args("out")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and len(res["run_id"]) == 32
    assert res["config_fingerprint"] == res["provenance"]["config_sha256"]
    assert not [k for k in res["metrics"] if k.endswith(("_per_s", "slowdown"))]
    assert set(res["throughput"]) >= {"fp_images_per_s", "quantized_images_per_s", "fakequant_slowdown"}
    assert res["metrics"]["test_images"] == 10
    assert oct(os.stat(out / "results.json").st_mode & 0o777) == oct(0o666 & ~_umask())
    # the same config again: --overwrite replaces the run folder, the new run id differs
    assert main([*sandbox.run_args("out"), "--overwrite"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["run_id"] != res["run_id"] and again["metrics"] == res["metrics"]
    # a failure after the folder was claimed is recorded there
    capsys.readouterr()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_compare_warns_on_runs_that_are_not_comparable(sandbox, capsys):
    a, b = sandbox.path / "a", sandbox.path / "b"
    for folder, split, n in ((a, "test", 10000), (b, "test_exact", 500)):
        folder.mkdir()
        atomic_write_json(folder / "results.json", {
            "run_id": "x", "status": "complete", "name": folder.name,
            "config": {"data": {"test_split": split}, "quant": {"w_bits": 4, "a_bits": 4}, "method": {"name": "rtn"}},
            "metrics": {"top1_fp": 0.88, "top1_quantized": 0.86, "test_images": n}})
    assert main(["compare", str(a), str(b), "-o", str(sandbox.path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert "test split" in err and "number of test images" in err
    assert (sandbox.path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_help_has_no_rst_markup_and_lists_exit_codes():
    from qmap.cli import COMMANDS, build_parser

    parser = build_parser()
    text = parser.format_help()
    assert "exit codes" in text and "``" not in text
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        help_text = sub.choices[name].format_help()
        assert "``" not in help_text and ":class:" not in help_text, name
        assert sub.choices[name].description, f"qmap {name} has no description"


def test_version_flag(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("qmap ")


@pytest.mark.parametrize("argv", [
    ["run", "--checkpoint", "x.safetensors", "--set", "hardware.array.rows=abc"],
    ["sim", "/nonexistent"],
    ["compare", "/nonexistent"],
    ["eval", "-c", "/nonexistent.safetensors", "--batch-size", "0"],
])
def test_real_process_errors_are_one_line(tmp_path, argv):
    """A handful of cases through a real interpreter (what a user sees), not just main()."""
    proc = subprocess.run([sys.executable, "-m", "qmap", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode not in (0, 1) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not list(Path(tmp_path).iterdir()), snapshot(tmp_path)
