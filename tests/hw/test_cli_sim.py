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
