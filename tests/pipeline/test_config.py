import pytest

from qmap.config import config_from_dict, load_config, resolve_path, set_dotted
from qmap.errors import ConfigError


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        config_from_dict({"model": {"checkpoint": "x"}, "hardware": {"bogus": 1}})
    with pytest.raises(ConfigError, match="unknown key.*quant: wbits"):
        config_from_dict({"model": {"checkpoint": "x"}, "quant": {"wbits": 4}})
    with pytest.raises(ConfigError, match="model"):
        config_from_dict({"quant": {}})


def test_bad_bit_width_rejected():
    with pytest.raises(ConfigError, match="quant.w_bits: 9 is out of range; allowed: 2..8"):
        config_from_dict({"model": {"checkpoint": "x"}, "quant": {"w_bits": 9}})
    cfg = config_from_dict({"model": {"checkpoint": "x"}})
    with pytest.raises(ConfigError, match="quant.a_bits: 1 is out of range"):
        set_dotted(cfg, "quant.a_bits", 1)


def test_set_dotted_and_nested_sections():
    cfg = config_from_dict({"model": {"checkpoint": "x"}, "hardware": {"array": {"rows": 16}}})
    assert cfg.hardware.array.rows == 16 and cfg.hardware.array.cols == 8
    set_dotted(cfg, "method.options.iters", 10)
    set_dotted(cfg, "data.test_limit", 5)
    assert cfg.method.options == {"iters": 10} and cfg.data.test_limit == 5
    with pytest.raises(ConfigError, match="unknown key"):
        set_dotted(cfg, "data.nope", 1)
    set_dotted(cfg, "hardware.array.rows", 4)
    assert cfg.hardware.array.rows == 4 and cfg.hardware.array.cols == 8
    with pytest.raises(ConfigError, match="w_bits"):
        set_dotted(cfg, "hardware.array.w_bits", 12)
    with pytest.raises(ConfigError, match="w_bits"):
        config_from_dict({"model": {"checkpoint": "x"}, "hardware": {"array": {"w_bits": 1}}})


def test_shipped_configs_load(tmp_path):
    from pathlib import Path

    from qmap.models import load_model

    repo = Path(__file__).resolve().parents[2]
    configs = sorted(repo.glob("configs/*.yaml")) + sorted(repo.glob("configs/zoo/*.yaml"))
    assert len(configs) >= 8, "shipped configs missing"  # 5 DOMR, the seed alpha config, 3 zoo models
    for p in configs:
        cfg = load_config(p)
        assert cfg.model.checkpoint
        if p.parent.name == "zoo":  # a repository checkpoint ({config}-relative) holding the target layers
            arch = p.stem.split("_domr")[0]
            assert Path(cfg.model.checkpoint).resolve() == repo / "checkpoints" / f"{arch}.safetensors", p
            model, _ = load_model(cfg.model.checkpoint)
            assert all(model.get_submodule(t) is not None for t in cfg.hardware.target_layers), p


def test_data_placeholder(tmp_path):
    assert resolve_path("{data}/models/a.safetensors", tmp_path) == tmp_path / "models/a.safetensors"
    with pytest.raises(ConfigError, match="data root"):
        resolve_path("{data}/x", None)


def test_config_folder_placeholder(tmp_path, monkeypatch):
    """``{config}`` at the start of any string is the config file's folder, whatever the working directory."""
    sub = tmp_path / "cfgs"
    sub.mkdir()
    (sub / "run.yaml").write_text('model: {checkpoint: "{config}/../ck/m.safetensors"}\n'
                                  'data: {folder: "{config}/imgs", root: "x{config}"}\n')
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_config(sub / "run.yaml")
    assert cfg.model.checkpoint == f"{sub.resolve()}/../ck/m.safetensors"
    assert cfg.data.folder == f"{sub.resolve()}/imgs" and cfg.data.root == "x{config}"  # only at the start


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_checkpoint_flag_stands_in_for_a_missing_model_section(tmp_path):
    """``qmap run CONFIG --checkpoint FILE`` with a config that has no model section (bits, method only)."""
    import argparse

    from qmap.commands.run import build_config

    p = tmp_path / "bits.yaml"
    p.write_text("quant: {w_bits: 3, a_bits: 3}\n")
    args = argparse.Namespace(config=str(p), checkpoint="ck.safetensors", method=None, w_bits=None, a_bits=None,
                              calib_size=None, device=None, model=None, num_classes=None, input_shape=None,
                              mean=None, std=None, image_folder=None, set=[])
    cfg = build_config(args)
    assert cfg.model.checkpoint == "ck.safetensors" and cfg.quant.w_bits == 3
    with pytest.raises(ConfigError, match="--checkpoint FILE"):
        load_config(p)
