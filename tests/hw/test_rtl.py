"""The Verilog core against the exported files and the golden model (Icarus via cocotb and the plain
Verilog testbench; Verilator's --binary build of the plain testbench when Verilator is installed)."""

import os
import shutil

import pytest

from qmap.hw.export import export_conv, read_export
from qmap.hw.sim import run_cocotb, run_plain_tb
from qmap.hw.spec import ArraySpec
from qmap.hw.systolic import simulate

pytestmark = [pytest.mark.rtl, pytest.mark.filterwarnings("ignore:Python runners:UserWarning")]
needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed (apt iverilog)")
needs_verilator = [
    pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not installed"),
    pytest.mark.skipif(os.environ.get("QMAP_TEST_VERILATOR") != "1",
                       reason="Verilator's C++ build takes 20-120 s; set QMAP_TEST_VERILATOR=1 to run it"),
]

LAYERS = {  # name: (in, out, h, w, spec)
    "8x8_layer": (8, 8, 4, 4, ArraySpec()),
    "tiled_2bit_4x4": (7, 10, 3, 3, ArraySpec(rows=4, cols=4, a_bits=2)),
    "tiled_small_map": (12, 9, 2, 2, ArraySpec(rows=8, cols=8, psum_bits=18)),
}


def _export(tmp_path, make_conv, name):
    i, o, h, w, spec = LAYERS[name]
    x, wt = make_conv(i, o, h, w, spec=spec)
    export_conv(x, wt, spec, tmp_path / "vec")
    return tmp_path / "vec", simulate(read_export(tmp_path / "vec").mapped, "cycle")


def _assert_agrees(result, golden):
    assert result["done"] and result["psum_mismatches"] == 0 and result["output_mismatches"] == 0
    assert result.get("acc_mismatches", 0) == 0 and result.get("format_errors", 0) == 0
    assert result["psums_checked"] == golden.fold_psums.shape[0] * golden.fold_psums.shape[1] * \
        golden.fold_psums.shape[2] * golden.fold_psums.shape[3]
    assert result["cycles"] == golden.cycles.total


@needs_icarus
@pytest.mark.parametrize("name", list(LAYERS))
def test_cocotb_icarus_matches_files_and_golden_cycles(tmp_path, make_conv, name, capfd):
    folder, golden = _export(tmp_path, make_conv, name)
    capfd.readouterr()
    result = run_cocotb(folder, "icarus", tmp_path / "build")
    _assert_agrees(result, golden)
    assert capfd.readouterr().out == ""  # the runner's chatter goes to runner.log, not `qmap run --json`'s stdout
    assert "Running command" in (tmp_path / "build" / "runner.log").read_text()
    if name == "8x8_layer":
        assert result["cycles"] == 160


@needs_icarus
@pytest.mark.parametrize("name", ["8x8_layer", "tiled_2bit_4x4"])
def test_plain_verilog_tb_icarus(tmp_path, make_conv, name):
    folder, golden = _export(tmp_path, make_conv, name)
    _assert_agrees(run_plain_tb(folder, "icarus", tmp_path / "build"), golden)


@needs_icarus
def test_corrupted_expectation_is_detected(tmp_path, make_conv):
    folder, _ = _export(tmp_path, make_conv, "8x8_layer")
    out = folder / "out.txt"
    lines = out.read_text().splitlines()
    lines[3] = ("1" if lines[3][0] == "0" else "0") + lines[3][1:]
    out.write_text("\n".join(lines) + "\n")
    result = run_plain_tb(folder, "icarus", tmp_path / "build")
    assert result["output_mismatches"] == 1 and result["psum_mismatches"] == 0


@needs_icarus
def test_plain_tb_reads_the_address_file_like_the_template(tmp_path, make_conv):
    """The testbench reads acc_address.txt with $fscanf("%11b") from its first line and replays the template's
    accumulation, so a header line there (or a missing address) fails it."""
    folder, _ = _export(tmp_path, make_conv, "8x8_layer")
    build = tmp_path / "build"
    assert run_plain_tb(folder, "icarus", build)["acc_mismatches"] == 0
    addr = folder / "acc_address.txt"
    good = addr.read_text()
    addr.write_text("#acc_address#\n" + good)
    bad = run_plain_tb(folder, "icarus", build)
    assert bad["format_errors"] > 0 and bad["acc_mismatches"] > 0 and bad["output_mismatches"] == 0
    addr.write_text("".join(good.splitlines(keepends=True)[:-1]))
    assert run_plain_tb(folder, "icarus", build)["format_errors"] == 1


@needs_verilator[0]
@needs_verilator[1]
def test_plain_verilog_tb_verilator_binary(tmp_path, make_conv):
    folder, golden = _export(tmp_path, make_conv, "8x8_layer")
    _assert_agrees(run_plain_tb(folder, "verilator", tmp_path / "build"), golden)
