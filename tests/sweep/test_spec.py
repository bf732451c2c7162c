"""Sweep files expand into the expected points, every point's config is checked up front, bad input is one
clear error; without Ray, `qmap sweep` says how to install it."""

import sys

import pytest
import yaml

from qmap.cli import main
from qmap.errors import ConfigError
from qmap.sweep.spec import load_sweep


def _write(tmp_path, d):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_axes_expand_to_the_product_in_file_order(tiny_sweep_file):
    sweep = load_sweep(tiny_sweep_file)
    assert [p.name for p in sweep.points] == ["W4A4-rtn", "W4A4-adaround", "W3A3-rtn", "W3A3-adaround"]
    p = sweep.points[3]
    assert p.labels == {"bits": "W3A3", "method": "adaround"}
    assert (p.config.quant.w_bits, p.config.quant.a_bits, p.config.method.name) == (3, 3, "adaround")
    assert p.config.method.options == {"iters": 60, "batch_size": 8}
    assert p.config.name == "W3A3-adaround" and p.config.data.calib_size == 20
    assert sweep.x_axis == "bits" and sweep.repeat_axis is None


def test_list_axes_sets_and_only(tiny_dict, tmp_path):
    d = tiny_dict
    d["axes"]["seed"] = [0, 1]
    d["axes"]["method.options.seed"] = [5]  # a key inside a free-form section, set after the method axis
    d["set"] = {"data.test_limit": 7}
    sweep = load_sweep(_write(tmp_path, d), sets=[("data.calib_seed", 3)], only={"method": ["adaround"]})
    assert [p.name for p in sweep.points] == ["W4A4-adaround-seed0-seed5", "W4A4-adaround-seed1-seed5",
                                              "W3A3-adaround-seed0-seed5", "W3A3-adaround-seed1-seed5"]
    c = sweep.points[1].config
    assert (c.seed, c.data.test_limit, c.data.calib_seed) == (1, 7, 3)
    assert c.method.options == {"iters": 60, "batch_size": 8, "seed": 5}
    assert sweep.repeat_axis == "seed"


@pytest.mark.parametrize("change, message", [
    (lambda d: d["axes"]["bits"]["W4A4"].update({"quant.w_bitz": 4}), "point W4A4-rtn"),
    (lambda d: d["axes"].update({"seed": []}), "axis seed: give a non-empty list"),
    (lambda d: d["axes"].update({"data.calib_seed": {"a/b": {"data.calib_seed": 1}}}), "level label 'a/b'"),
    (lambda d: d.update({"axis": {}}), "unknown key(s)"),
    (lambda d: d["axes"].update({"bits": {"W4A4-rtn": {"seed": 1}, "W4A4": {"seed": 2}},
                                 "method": {"rtn": {"seed": 3}, "rtn-rtn": {"seed": 4}}}), "same point name twice"),
    (lambda d: d.update({"resources": {"num_cpus": -1}}), "resources.num_cpus"),
    (lambda d: d.update({"report": {"x": "nope"}}), "report.x: no axis 'nope'"),
    (lambda d: d.update({"base": 3}), "'base' must be"),
])
def test_bad_sweep_files_are_one_clear_error(tiny_dict, tmp_path, change, message):
    d = tiny_dict
    change(d)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(_write(tmp_path, d))


def test_only_names_unknown_levels(tiny_sweep_file):
    with pytest.raises(ConfigError, match="domr"):
        load_sweep(tiny_sweep_file, only={"method": ["domr"]})


def test_list_prints_points_without_running(tiny_sweep_file, tmp_path, capsys):
    assert main(["sweep", str(tiny_sweep_file), "--out", str(tmp_path / "out"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[:2] for ln in lines] == [["W4A4-rtn", "new"], ["W4A4-adaround", "new"],
                                                    ["W3A3-rtn", "new"], ["W3A3-adaround", "new"]]
    assert not (tmp_path / "out").exists()


def test_without_ray_the_command_says_how_to_install_it(tiny_sweep_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["sweep", str(tiny_sweep_file), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'qmap[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "points").exists()
