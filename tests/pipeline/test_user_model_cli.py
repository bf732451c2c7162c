"""The CLI with the user's own model and data: ``--model package.module:factory`` + a plain state_dict, an input
shape and normalisation, and an image-folder dataset (``ROOT/{train,val}/<class>/*``, images of mixed sizes) —
through ``qmap run``, ``qmap eval`` and ``qmap export onnx``, with no CIFAR-10 data root at all."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from qmap.cli import main

MODULE = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Net(nn.Module):
        """Head defined before the body, functional ReLU, a residual add and x.view(x.size(0), -1)."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.fc = nn.Linear(8 * 4 * 4, num_classes)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.bn(self.stem(x)))
            y = F.relu(y + self.conv(y))
            y = F.adaptive_avg_pool2d(y, 4)
            return self.fc(y.view(y.size(0), -1))


    def make(num_classes=10):
        return Net(num_classes)


    class Mobile(nn.Module):
        """Depthwise conv + ReLU6, a squeeze-excite gate and a Hardswish head."""

        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6())
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1),
                                    nn.Hardsigmoid())
            self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Hardswish())
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            y = self.dw(self.stem(x))
            y = self.pw(y * self.se(y))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


    def mobile(num_classes=10):
        return Mobile(num_classes)


    def gelu(num_classes=10):
        """Every conv input signed (GELU): nothing the unsigned-activation array can take."""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


    def dilated(num_classes=10):
        """Convs the array's mapping cannot take: dilation 2, and a 1x3 kernel padded on one axis only."""
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2),
                             nn.ReLU(), nn.Conv2d(8, 8, (1, 3), padding=(0, 1)), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))


    def broken(num_classes=10):
        raise RuntimeError("no such layer size")


    def fixed(num_classes=10):
        """A head sized for 16x16 inputs only."""
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 16 * 16, num_classes))
''')


@pytest.fixture()
def user_setup(tmp_path, monkeypatch):
    """(checkpoint .pt, image folder) with the model's module importable and no data root configured."""
    (tmp_path / "user_cli_net.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("QMAP_DATA", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("QMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    import user_cli_net

    torch.manual_seed(0)
    model = user_cli_net.make(num_classes=3)
    torch.save(model.state_dict(), tmp_path / "net.pt")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in ("cat", "dog", "eel"):
            folder = tmp_path / "imgs" / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (20, 24) if i % 2 else (30, 30)  # mixed sizes: resized to the input shape
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "net.pt", tmp_path / "imgs"


def _model_flags(ckpt, imgs):
    return ["--checkpoint", str(ckpt), "--model", "user_cli_net:make", "--num-classes", "3",
            "--input-shape", "3,16,16", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
            "--image-folder", str(imgs)]


@pytest.mark.parametrize("method", ["rtn", "adaround"])
def test_run_eval_export_with_own_model_and_folder(user_setup, tmp_path, capsys, method):
    ckpt, imgs = user_setup
    out = tmp_path / "run"
    assert main(["run", *_model_flags(ckpt, imgs), "--out", str(out), "--quiet", "--method", method,
                 "--set", "data.calib_size=12", "--set", "hardware.rtl=none",
                 "--set", "method.options.iters=4"] + ([] if method == "adaround" else
                                                       ["--set", "method.options={}"])) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete"
    assert res["metrics"]["test_images"] == 9
    assert res["config"]["model"]["arch"] == "user_cli_net:make"
    assert [r["layer"] for r in res["layers"]] == ["stem", "conv", "fc"]  # execution order, not definition
    assert res["metrics"]["top1_integer"] is not None

    capsys.readouterr()
    assert main(["eval", *_model_flags(ckpt, imgs), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 9 and ev["arch"] == "user_cli_net:make"
    assert ev["top1"] == res["metrics"]["top1_fp"]

    assert main(["export", "onnx", *_model_flags(ckpt, imgs), "--out", str(tmp_path / "m.onnx"),
                 "--calib-size", "12", "--json", "--quiet"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert ex["verify"]["optimized"]["n"] == 9
    assert ex["verify"]["optimized"]["max_abs_diff"] == 0.0  # exact accumulation on both sides


@pytest.mark.parametrize("flags,message", [
    (["--input-shape", "4,16,16"], "3,H,W"),
    (["--mean", "0.5,0.5"], "3 comma-separated"),
    (["--std", "0.2,0,0.2"], "positive"),
    (["--image-folder", "nowhere"], "does not exist"),
])
def test_bad_model_and_data_flags_are_one_line(user_setup, tmp_path, capsys, flags, message):
    ckpt, imgs = user_setup
    argv = ["run", *_model_flags(ckpt, imgs), "--out", str(tmp_path / "bad"), "--quiet", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_state_dict_without_model_name_is_refused(user_setup, tmp_path, capsys):
    ckpt, imgs = user_setup
    assert main(["eval", "--checkpoint", str(ckpt), "--image-folder", str(imgs)]) != 0
    err = capsys.readouterr().err.strip()
    assert "name the model" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("factory,flags,message", [
    ("broken", [], "the factory raised RuntimeError: no such layer size"),
    ("fixed", ["--input-shape", "3,8,8"], "its forward fails on one 3x8x8 image"),  # head sized for 16x16
    ("make", ["--num-classes", "2"], "2 outputs but the dataset has 3 classes"),
])
def test_model_that_does_not_fit_is_one_line(user_setup, tmp_path, capsys, factory, flags, message):
    import user_cli_net

    ckpt, imgs = user_setup
    if factory != "broken":  # a checkpoint of that model, so loading succeeds and the fit is what fails
        classes = 2 if "--num-classes" in flags else 3
        torch.save(getattr(user_cli_net, factory)(num_classes=classes).state_dict(), ckpt)
    argv = ["run", *_model_flags(ckpt, imgs), "--out", str(tmp_path / "bad"), "--quiet", "--model",
            f"user_cli_net:{factory}", "--set", "data.calib_size=12", *flags]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_train_own_model_on_a_folder_then_eval_from_its_manifest(user_setup, tmp_path, capsys):
    _, imgs = user_setup
    ckpt = tmp_path / "trained.safetensors"
    folder = ["--image-folder", str(imgs), "--input-shape", "3,16,16"]
    assert main(["train", "user_cli_net:make", "-o", str(ckpt), "--epochs", "1", "--batch-size", "8",
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--quiet", *folder]) == 0
    man = json.loads(ckpt.with_suffix(".json").read_text())
    assert (man["arch"], man["num_classes"], man["normalize_std"]) == ("user_cli_net:make", 3, [0.25] * 3)
    assert man["train"]["channels_last"] is False  # its forward flattens with .view: trained in NCHW, and said so
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--json", *folder]) == 0  # the manifest names the model
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 9 and ev["top1"] == man["test_top1"]


@pytest.mark.parametrize("factory,network", [("mobile", "PASS"), ("gelu", "SKIPPED")])
def test_run_depthwise_se_and_gelu_models(user_setup, tmp_path, factory, network):
    """The whole-network array view takes a depthwise conv as one pass per group (utilisation said honestly) and
    a model without unsigned conv inputs is reported SKIPPED with the reason — the run completes either way."""
    import user_cli_net

    from qmap.report.verdict import verdict

    ckpt, imgs = user_setup
    torch.save(getattr(user_cli_net, factory)(num_classes=3).state_dict(), ckpt)
    out = tmp_path / factory
    assert main(["run", *_model_flags(ckpt, imgs), "--model", f"user_cli_net:{factory}", "--out", str(out),
                 "--quiet", "--set", "data.calib_size=12", "--set", "hardware.rtl=none"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete"
    row = next(r for r in verdict(res) if r["check"] == "whole network on the array")
    assert row["status"] == network, row
    if factory == "mobile":
        dw = next(r for r in res["hardware"]["network"] if r["name"] == "dw.0")
        assert dw["groups"] == 8 and dw["utilisation"] <= 1 / 8 and dw["mismatches"] == 0
    else:
        assert "unsigned" in res["hardware"]["network_skipped"]


def test_a_depthwise_target_layer_runs_one_pass_per_group(user_setup, tmp_path):
    """A grouped (depthwise) target conv: the array has no grouped mode, so each group is exported, simulated and
    compared as its own dense pass (``hw/<layer>/g<k>/``); the verdict counts the passes and sums their cycles."""
    import user_cli_net

    from qmap.report.verdict import verdict

    ckpt, imgs = user_setup
    torch.save(user_cli_net.mobile(num_classes=3).state_dict(), ckpt)
    out = tmp_path / "dw"
    assert main(["run", *_model_flags(ckpt, imgs), "--model", "user_cli_net:mobile", "--out", str(out), "--quiet",
                 "--set", "data.calib_size=12", "--set", "hardware.rtl=none",
                 "--set", "hardware.target_layers=['dw.0']"]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["hardware"]["layers"]
    assert sorted(r["group"] for r in rows) == list(range(8)) and {r["layer"] for r in rows} == {"dw.0"}
    assert all(r["files_vs_integer_mismatches"] == 0 and r["golden_vs_integer_mismatches"] == 0 for r in rows)
    assert all((out / "hw" / "dw.0" / f"g{k}" / "image0").is_dir() for k in range(8))
    row = next(r for r in verdict(res) if r["check"] == "dw.0: golden = files = integer")
    assert row["status"] == "PASS" and "1 image(s) × 8 group passes" in row["detail"]
    assert f"{sum(r['golden_cycles'] for r in rows)} cycles" in row["detail"]


def test_a_layer_after_gelu_is_checked_on_offset_codes(user_setup, tmp_path):
    """A target conv whose input is signed GELU codes: the files hold x + 2^(b-1) (host-padded, padding 0) and the
    offset partial sums; files, golden model and integer model agree exactly."""
    ckpt, imgs = user_setup
    import user_cli_net

    torch.save(user_cli_net.gelu(num_classes=3).state_dict(), ckpt)
    out = tmp_path / "gelu"
    assert main(["run", *_model_flags(ckpt, imgs), "--model", "user_cli_net:gelu", "--out", str(out), "--quiet",
                 "--set", "data.calib_size=12", "--set", "hardware.rtl=none",
                 "--set", "hardware.target_layers=['2']", "--set", "hardware.array.psum_bits=24"]) == 0
    row = json.loads((out / "results.json").read_text())["hardware"]["layers"][0]
    assert row["input_offset"] == 8
    assert row["files_vs_integer_mismatches"] == 0 and row["golden_vs_integer_mismatches"] == 0
    assert row["golden_vs_files_psum_mismatches"] == 0


def test_convs_the_array_cannot_take_stay_on_the_host(user_setup, tmp_path, capsys):
    """A dilated conv and one padded on one axis only: the whole-network view leaves them on the host and checks
    the others one by one (before, the mapping took padding[0] and stride[0] and the run ended in a ValueError);
    naming one as a target layer is refused in one line before any work."""
    import user_cli_net

    ckpt, imgs = user_setup
    torch.save(user_cli_net.dilated(num_classes=3).state_dict(), ckpt)
    flags = [*_model_flags(ckpt, imgs), "--model", "user_cli_net:dilated", "--quiet", "--set", "data.calib_size=12",
             "--set", "hardware.rtl=none"]
    assert main(["run", *flags, "--out", str(tmp_path / "run")]) == 0
    net = json.loads((tmp_path / "run" / "results.json").read_text())["hardware"]
    assert {"2", "4"} <= set(net["network_summary"]["host_layers"])
    assert [r["name"] for r in net["network"]] == ["6"] and net["network"][0]["mismatches"] == 0
    for layer, says in (("2", "dilation (2, 2)"), ("4", "padding (0, 1) differs between the axes")):
        capsys.readouterr()
        assert main(["run", *flags, "--out", str(tmp_path / f"t{layer}"),
                     "--set", f"hardware.target_layers=['{layer}']"]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"t{layer}").exists()
