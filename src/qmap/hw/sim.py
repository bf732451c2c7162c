"""Run the Verilog core on an exported folder: cocotb (Icarus or Verilator) or the plain Verilog testbench
(Icarus ``vvp`` or a ``verilator --binary`` executable). Every runner returns a dict with ``cycles``,
``psum_mismatches``, ``output_mismatches``, ``run_wall_s`` and ``cycles_per_s``.

Simulator support (cocotb 1.9): Icarus 11 via cocotb and plain TB; Verilator 5.006 via ``--binary`` for the
plain TB; cocotb with Verilator needs Verilator >= 5.036 (cocotb 2.x) or the older cocotb 1.8 pairing, so
:func:`run_cocotb` with ``"verilator"`` is attempted and its error reported rather than hidden.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import subprocess
import time
import warnings
from pathlib import Path

from ..errors import HardwareError
from .export import read_manifest
from .mapping import ConvGeometry
from .spec import ArraySpec

RTL_DIR = Path(__file__).parent / "rtl"
CORE_SOURCES = ("qmap_delay.v", "qmap_sat_add.v", "qmap_pe.v", "qmap_mac_array.v", "qmap_sfu.v", "qmap_core.v")
TESTBENCH = "qmap_tb.v"
SIMULATORS = ("icarus", "verilator")
_RESULT = re.compile(r"QMAP_RESULT cycles=(\d+) psums=(\d+) psum_mismatches=(\d+) outputs=(\d+) "
                     r"output_mismatches=(\d+) acc_mismatches=(\d+) format_errors=(\d+) done=(\d)")


def core_sources() -> list[Path]:
    return [RTL_DIR / name for name in CORE_SOURCES]


def simulator_available(simulator: str) -> bool:
    return shutil.which({"icarus": "iverilog", "verilator": "verilator"}[simulator]) is not None


def core_parameters(spec: ArraySpec, layers: list[tuple[ConvGeometry, int, int]], reference: bool = False
                    ) -> dict[str, int]:
    """Verilog parameters of one build of qmap_core (and qmap_tb) that runs every ``(geometry, itiles, otiles)``
    of ``layers``: the array's shape and widths, and memory depths fitting the largest layer."""
    R, C = spec.rows, spec.cols
    return {"R": R, "C": C, "WB": spec.w_bits, "AB": spec.a_bits, "PB": spec.psum_bits,
            "ACT_DEPTH": max(it * g.n_padded for g, it, _ in layers),
            "W_DEPTH": max(ot * it * g.n_kij * C for g, it, ot in layers),
            "OUT_DEPTH": max(ot * g.n_positions for g, _, ot in layers),
            "N_MAX": max(g.n_positions for g, _, _ in layers), "OT_MAX": max(ot for _, _, ot in layers),
            "PSUM_DEPTH": max(ot * it * g.n_kij * g.n_padded for g, it, ot in layers) if reference else 1}


def folder_parameters(folder: str | Path) -> dict[str, int]:
    """:func:`core_parameters` for one exported folder (from its manifest)."""
    man = read_manifest(folder)
    layer = (ConvGeometry(**man["geometry"]), int(man["n_itiles"]), int(man["n_otiles"]))
    return core_parameters(ArraySpec(**man["spec"]), [layer], bool(man.get("reference", True)))


def _require(simulator: str) -> None:
    if simulator not in SIMULATORS:
        raise HardwareError(f"unknown simulator {simulator!r}; known: {', '.join(SIMULATORS)}")
    if not simulator_available(simulator):
        package = "iverilog" if simulator == "icarus" else simulator
        raise HardwareError(f"{simulator} is not installed (apt-get install {package})")


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise HardwareError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def rtl_cache_dir() -> Path:
    """Where built testbenches are kept between runs: ``$QMAP_CACHE/rtl``, else ``~/.cache/qmap/rtl``."""
    root = os.environ.get("QMAP_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "qmap") / "rtl"


def cached_plain_tb(params: dict[str, int], simulator: str) -> tuple[list[str], bool]:
    """:func:`build_plain_tb` into the cache folder keyed by the simulator, the parameters and the Verilog
    sources, reusing an earlier build of the same key; returns ``(command, reused)``."""
    key = hashlib.sha256(json.dumps([simulator, sorted(params.items())]).encode()
                         + b"".join(p.read_bytes() for p in [*core_sources(), RTL_DIR / TESTBENCH])).hexdigest()
    final = rtl_cache_dir() / f"{simulator}-{key[:20]}"
    runnable = final / ("qmap_tb.vvp" if simulator == "icarus" else "obj/qmap_tb")
    if not runnable.exists():
        tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_plain_tb(params, simulator, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # another process built the same key meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(final)
        return _tb_command(simulator, final), False
    return _tb_command(simulator, final), True


def _tb_command(simulator: str, build: Path) -> list[str]:
    return ["vvp", "-n", str(build / "qmap_tb.vvp")] if simulator == "icarus" else [str(build / "obj" / "qmap_tb")]


def build_plain_tb(params: dict[str, int], simulator: str, build_dir: str | Path) -> list[str]:
    """Compile the plain testbench with :func:`core_parameters` ``params``; returns the command that runs it
    (append ``+dir=FOLDER`` and optionally ``+out=FILE``)."""
    _require(simulator)
    build = Path(build_dir)
    build.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in core_sources()] + [str(RTL_DIR / TESTBENCH)]
    if simulator == "icarus":
        out = build / "qmap_tb.vvp"
        _run(["iverilog", "-g2005", "-o", str(out), *[f"-Pqmap_tb.{k}={v}" for k, v in params.items()], *sources],
             build, "iverilog")
        return _tb_command(simulator, build)
    _run(["verilator", "--binary", "-O3", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "qmap_tb",
          "-Mdir", str(build / "obj"), "-o", "qmap_tb", *[f"-G{k}={v}" for k, v in params.items()], *sources],
         build, "verilator --binary")
    return _tb_command(simulator, build)


def run_built_tb(cmd: list[str], folder: str | Path, out_file: str | Path | None = None) -> dict:
    """Run a built plain testbench on ``folder`` (``out_file``: where it writes the output memory); parse
    its QMAP_RESULT line. ``run_wall_s`` covers the whole process (file reading, loading, the run);
    ``run_cpu_s`` is the CPU time it used (user + system; on a loaded machine much less than the wall time)."""
    folder = Path(folder).resolve()
    args = [*cmd, f"+dir={folder}"] + ([f"+out={Path(out_file).resolve()}"] if out_file else [])
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    stdout = _run(args, folder, "plain testbench")
    wall, cpu = time.perf_counter() - t0, _children_cpu_s() - cpu0
    match = _RESULT.search(stdout)
    if not match:
        raise HardwareError(f"the testbench printed no QMAP_RESULT line: {stdout[-1000:]}")
    cycles, psums, psum_bad, outputs, out_bad, acc_bad, fmt_bad, done = map(int, match.groups())
    return {"runner": "plain_tb", "cycles": cycles, "done": bool(done), "psums_checked": psums,
            "psum_mismatches": psum_bad, "outputs_checked": outputs, "output_mismatches": out_bad,
            "acc_mismatches": acc_bad, "format_errors": fmt_bad, "run_wall_s": wall, "run_cpu_s": cpu,
            "cycles_per_s": cycles / wall if wall else None}


def _children_cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_plain_tb(folder: str | Path, simulator: str = "icarus", build_dir: str | Path | None = None) -> dict:
    """Build the plain Verilog testbench for ``folder`` and run it (see :func:`run_built_tb`)."""
    folder = Path(folder).resolve()
    build = Path(build_dir or folder / f"build_{simulator}_tb")
    cmd = build_plain_tb(folder_parameters(folder), simulator, build)
    return {"simulator": simulator, **run_built_tb(cmd, folder)}


def _core_only(params: dict[str, int]) -> dict[str, int]:
    """qmap_core's parameters (the testbench's PSUM_DEPTH is not one of them)."""
    return {k: v for k, v in params.items() if k != "PSUM_DEPTH"}


def run_cocotb(folder: str | Path, simulator: str = "icarus", build_dir: str | Path | None = None) -> dict:
    """Build qmap_core for ``folder`` and run the cocotb testbench :mod:`qmap.hw.cocotb_tb` on it.
    ``run_wall_s`` covers only the cycles from start to done (not loading, not the build)."""
    _require(simulator)
    with warnings.catch_warnings():  # cocotb 1.x flags its Python runner API as experimental
        warnings.simplefilter("ignore", UserWarning)
        from cocotb.runner import get_runner

    folder = Path(folder).resolve()
    build = Path(build_dir or folder / f"build_{simulator}_cocotb").resolve()
    result_path = build / "result.json"
    result_path.unlink(missing_ok=True)
    runner = get_runner(simulator)
    log = build / "cocotb.log"
    chatter = io.StringIO()  # the runner prints INFO lines on stdout: keep them off `qmap run --json`'s output
    try:
        with contextlib.redirect_stdout(chatter):
            runner.build(verilog_sources=core_sources(), hdl_toplevel="qmap_core",
                         parameters=_core_only(folder_parameters(folder)), build_dir=build, always=True,
                         timescale=("1ns", "1ps"), log_file=build / "build.log")
            runner.test(test_module="qmap.hw.cocotb_tb", hdl_toplevel="qmap_core", build_dir=build,
                        test_dir=build, timescale=("1ns", "1ps"),
                        extra_env={"QMAP_HW_DIR": str(folder), "QMAP_HW_RESULT": str(result_path)}, log_file=log)
    except (SystemExit, subprocess.CalledProcessError, RuntimeError) as e:
        raise HardwareError(f"cocotb/{simulator} run failed ({e}); see {build}") from None
    finally:
        build.mkdir(parents=True, exist_ok=True)
        (build / "runner.log").write_text(chatter.getvalue())
    if not result_path.exists():
        raise HardwareError(f"cocotb/{simulator} wrote no result; see {log}")
    return {"simulator": simulator, "runner": "cocotb", **json.loads(result_path.read_text())}
