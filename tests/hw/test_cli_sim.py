import json

from qmap.cli import main


def test_qmap_sim_random_golden_agrees(tmp_path, capsys):
    assert main(["sim", "--random", "--layers", "2", "--out", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["golden_psum_mismatches"] == 0 == r["golden_output_mismatches"] for r in rows)
    assert all(r["golden_cycles"] > 0 for r in rows)


def test_qmap_sim_reports_disagreement(tmp_path, capsys):
    main(["sim", "--random", "--layers", "1", "--out", str(tmp_path), "--json"])
    capsys.readouterr()
    out = tmp_path / "layer0" / "out.txt"
    lines = out.read_text().splitlines()
    lines[3] = ("1" if lines[3][0] == "0" else "0") + lines[3][1:]
    out.write_text("\n".join(lines) + "\n")
    manifest = json.loads((tmp_path / "layer0" / "manifest.json").read_text())
    assert main(["sim", str(tmp_path / "layer0")]) == 5  # checksum no longer matches: a HardwareError (exit 5)
    assert "SHA-256" in capsys.readouterr().err
    assert manifest["format"] == "qmap-hw-course-v1"


def test_sigterm_stops_a_command_like_ctrl_c(tmp_path):
    """``kill`` (SIGTERM, a scheduler's stop) ends a command the way Ctrl-C does: one line, exit code 130."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "layers"
    proc = subprocess.Popen([sys.executable, "-m", "qmap", "sim", "--random", "--layers", "1000", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "layer1").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "qmap sim: interrupted"
