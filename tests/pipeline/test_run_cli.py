"""End-to-end ``qmap run`` on a synthetic data root and a tiny model; CLI error behaviour."""

import json
import subprocess
import sys

import pytest

from qmap.cli import main


def _run_args(root, ckpt, out, *extra):
    return ["run", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--quiet",
            "--set", "data.calib_size=20", "--set", "hardware.target_layers=[features.3]",
            "--set", "hardware.rtl=none", *extra]


@pytest.mark.parametrize("method", ["rtn", "alpha", "ocs"])
def test_run_end_to_end(tiny_setup, tmp_path, method):
    root, ckpt = tiny_setup
    out = tmp_path / "run"
    assert main(_run_args(root, ckpt, out, "--w-bits", "4", "--a-bits", "4", "--method", method,
                          "--set", "quant.w_per_channel=false")) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["metrics"]
    assert 0.0 <= m["top1_fp"] <= 1.0 and 0.0 <= m["top1_quantized"] <= 1.0
    assert [r["layer"] for r in res["layers"]] == ["features.0", "features.3", "features.7", "features.10",
                                                  "classifier"]
    assert res["provenance"]["checkpoint_sha256"] and res["provenance"]["test_data_sha256"]
    hw = res["hardware"]["layers"]
    assert len(hw) == 1 and hw[0]["layer"] == "features.3"
    assert hw[0]["files_vs_integer_mismatches"] == 0
    assert hw[0]["golden_vs_integer_mismatches"] == 0 and hw[0]["golden_vs_files_psum_mismatches"] == 0
    assert (out / "hw" / "features.3" / "image0" / "activation_tile0.txt").is_file()
    assert res["metrics"]["top1_integer"] is not None
    net = res["hardware"]["network_summary"]
    assert net["mismatches"] == 0 and net["logits_match"] is True
    # the signed image input and the conv feeding an average pool on accumulators stay on the host
    assert net["host_layers"] == ["features.0", "features.10"]
    assert (out / "plots" / "cycles.png").is_file()
    assert (out / "plots" / "weight_hist.features.3.png").is_file()
    assert res["peak_rss_bytes"] > 0
    assert (out / "plots" / "levels.features.3.png").is_file() == (method == "ocs")
    if method == "alpha":
        assert set(res["method_report"]["layers"]) >= {"features.3"}
        assert res["hardware"]["layers"][0]["folder"] == "hw/features.3/image0"
    assert (out / "quantized_model.safetensors").is_file()
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    assert "## Accuracy" in (out / "report.md").read_text()


def test_existing_output_refused_without_overwrite(tiny_setup, tmp_path, capsys):
    root, ckpt = tiny_setup
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(_run_args(root, ckpt, out)) == 2
    err = capsys.readouterr().err
    assert "not a qmap run folder" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "precious"


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qmap", "run", "--checkpoint", str(tmp_path / "nope.safetensors"),
                           "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 4  # a checkpoint error
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "nope.safetensors: not found" in proc.stderr


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "qmap", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for cmd in ("run", "eval"):
        assert cmd in proc.stdout


def test_compare_runs(tiny_setup, tmp_path, capsys):
    root, ckpt = tiny_setup
    outs = []
    for bits in ("8", "4"):
        out = tmp_path / f"w{bits}"
        assert main(_run_args(root, ckpt, out, "--w-bits", bits, "--a-bits", bits,
                              "--set", "hardware.enabled=false", "--set", f"name=w{bits}")) == 0
        outs.append(str(out))
    capsys.readouterr()
    assert main(["compare", *outs, "--json", "--plot", str(tmp_path / "cmp.png")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["w8", "w4"] and [r["bits"] for r in rows] == ["W8A8", "W4A4"]
    assert rows[0]["top1_fp"] == rows[1]["top1_fp"]
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("setting, message", [
    ("hardware.target_layers=[features.99]", "the model has no layer 'features.99'"),
    ("hardware.target_layers=[features.0]", "is the first layer"),     # the image stays on the host
    ("hardware.array.w_bits=2", "takes 2-bit weights"),                  # 4-bit weights on a 2-bit array
    ("hardware.images=[100000]", "outside the test set"),
])
def test_bad_hardware_targets_are_one_line_errors(tiny_setup, tmp_path, capsys, setting, message):
    root, ckpt = tiny_setup
    rc = main(_run_args(root, ckpt, tmp_path / "run", "--set", setting, "--set", "hardware.network_cycles=false"))
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_domr_with_omr_runs_through_integer_model_and_hardware(tiny_setup, tmp_path):
    """DOMR's OMR (shift form, live clip) is lowered to the integer model and exported to the array."""
    root, ckpt = tiny_setup
    out = tmp_path / "run"
    assert main(_run_args(root, ckpt, out, "--method", "domr", "--set", "method.options.iters=2")) == 0
    res = json.loads((out / "results.json").read_text())
    assert {p["form"] for p in res["method_report"]["omr"]["pairs"]} == {"shift"}
    assert res["metrics"]["top1_integer"] is not None
    hw = res["hardware"]["layers"][0]
    assert hw["golden_vs_integer_mismatches"] == 0 and hw["files_vs_integer_mismatches"] == 0
    assert res["hardware"]["network_summary"]["logits_match"] is True


def test_unlowerable_model_skips_integer_and_hardware_with_reason(tiny_setup, tmp_path, monkeypatch):
    import qmap.pipeline
    from qmap.errors import ConfigError

    def refuse(*_a, **_k):
        raise ConfigError("integer model: unsupported module X at features.1")

    monkeypatch.setattr(qmap.pipeline, "to_integer_model", refuse)
    root, ckpt = tiny_setup
    out = tmp_path / "run"
    assert main(_run_args(root, ckpt, out)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["integer"]["skipped"] == "integer model: unsupported module X at features.1"
    assert res["hardware"]["skipped"].startswith("no integer model")
    report = (out / "report.md").read_text()
    assert "| SKIPPED | integer model = fake-quant | integer model: unsupported module X" in report
    assert "| SKIPPED | RTL | no integer model" in report
