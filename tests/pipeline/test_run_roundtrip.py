"""A finished run's quantized model loads back: ``qmap eval --run`` reproduces the run's top-1 exactly (fake-quant
and integer model), ``qmap export onnx --run`` exports it without re-quantizing; the RTL skip is stated."""

import json

import pytest

from qmap import load_quantized
from qmap.cli import main
from qmap.runfolder import RUN_OUTPUTS


@pytest.fixture(scope="module")
def finished_run(tiny_setup, tmp_path_factory):
    root, ckpt = tiny_setup
    out = tmp_path_factory.mktemp("roundtrip") / "run"
    args = ["run", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(out), "--quiet", "--method", "alpha",
            "--w-bits", "4", "--a-bits", "4", "--set", "data.calib_size=20", "--set", "hardware.rtl=none",
            "--set", "hardware.target_layers=[features.3]", "--set", "export.onnx=true"]
    assert main(args) == 0
    return root, out


def test_eval_run_reproduces_the_recorded_top1(finished_run, capsys):
    root, out = finished_run
    res = json.loads((out / "results.json").read_text())
    assert main(["eval", "--run", str(out), "--data", str(root), "--integer", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["quantized"]["top1"] == res["metrics"]["top1_quantized"] and got["quantized"]["equal"] is True
    assert got["integer"]["top1"] == res["metrics"]["top1_integer"] and got["integer"]["equal"] is True
    qm = load_quantized(out / "quantized_model.safetensors")
    assert qm.header["method"]["name"] == "alpha" and qm.header["quant"]["w_bits"] == 4
    assert qm.header["model"]["arch"] == "tiny_cnn"


def test_export_onnx_from_a_run(finished_run, tmp_path, capsys):
    root, out = finished_run
    onnx = pytest.importorskip("onnx", reason="optional 'onnx' extra not installed")
    assert main(["export", "onnx", "--run", str(out), "--out", str(tmp_path / "m.onnx"), "--data", str(root),
                 "--verify-split", "test", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == "alpha" and rep["verify"]["optimized"]["top1_agreement"] == 1.0
    props = {p.key: json.loads(p.value) for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert props["qmap.method"]["name"] == "alpha" and props["qmap.quant"]["a_bits"] == 4
    assert len(props["qmap.normalization"]["mean"]) == 3


def test_rtl_skip_is_recorded_and_reported(finished_run):
    _, out = finished_run
    res = json.loads((out / "results.json").read_text())
    assert "hardware.rtl is 'none'" in res["hardware"]["rtl_skipped"]["reason"]
    assert "RTL: SKIPPED" in (out / "report.md").read_text()


def test_eval_run_on_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "is not a qmap run folder" in err and len(err.strip().splitlines()) == 1


def test_a_run_writes_only_what_overwrite_may_delete(finished_run):
    """--overwrite deletes only RUN_OUTPUTS (and refuses a folder holding anything else): a run with every output
    stage on (hardware files, quantized model, ONNX, plots) must write nothing outside that list."""
    _, out = finished_run
    names = {p.name for p in out.iterdir()}
    assert names <= RUN_OUTPUTS, names - RUN_OUTPUTS
    assert {"results.json", "report.md", "report.html", "hw", "quantized_model.safetensors", "model.onnx"} <= names
