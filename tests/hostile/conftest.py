"""A tiny world for hostile-input tests: a 10-class image tree standing in for CIFAR-10, a tiny_cnn checkpoint,
an exported hardware folder; the assertion itself is ``hostile_kit.refused``."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from datafakes import CLASSES, write_tree  # noqa: E402
from hostile_kit import DROP  # noqa: E402
from testutil import randomise_bn  # noqa: E402

from qmap.hw.export import export_conv  # noqa: E402
from qmap.hw.spec import ArraySpec  # noqa: E402
from qmap.models import Manifest, build_model, save_checkpoint  # noqa: E402


@dataclass
class World:
    root: Path      # data root: cifar10-jpeg-q75/cifar10_jpeg/{train,test}/<class>/*.png (2 / 1 per class)
    ckpt: Path      # tiny_cnn checkpoint with its manifest
    hw: Path        # an exported 8x8 layer folder (manifest.json + course files)
    cache: Path     # QMAP_CACHE for every case


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("hostile_world")
    root = base / "data"
    write_tree(root / "cifar10-jpeg-q75" / "cifar10_jpeg", {"train": 2, "test": 1}, classes=CLASSES)
    torch.manual_seed(0)
    ckpt = base / "models" / "tiny.safetensors"
    save_checkpoint(randomise_bn(build_model("tiny_cnn")), ckpt, Manifest(arch="tiny_cnn"))
    rng = np.random.default_rng(0)
    hw = base / "hw" / "layer"
    export_conv(rng.integers(0, 16, (8, 4, 4)), rng.integers(-8, 8, (8, 8, 3, 3)), ArraySpec(), hw)
    return World(root, ckpt, hw, base / "cache")


@dataclass
class Sandbox:
    """The folder a case may write into (also the working directory), and helpers to put inputs there."""

    path: Path
    world: World

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        return p

    def config(self, text: str, name: str = "cfg.yaml") -> Path:
        return self.file(name, text.replace("CKPT", str(self.world.ckpt)))

    def checkpoint_copy(self, name: str = "ck") -> Path:
        """A copy of the tiny checkpoint and its manifest (to be damaged by the case)."""
        dst = self.path / name / "tiny.safetensors"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.world.ckpt, dst)
        shutil.copy(self.world.ckpt.with_suffix(".json"), dst.with_suffix(".json"))
        return dst

    def manifest_edit(self, ckpt: Path, **changes) -> None:
        mp = ckpt.with_suffix(".json")
        d = json.loads(mp.read_text())
        for k, v in changes.items():
            if v is DROP:
                d.pop(k, None)
            else:
                d[k] = v
        mp.write_text(json.dumps(d))

    def hw_copy(self, name: str = "hwcase") -> Path:
        dst = self.path / name
        shutil.copytree(self.world.hw, dst)
        return dst

    def run_folder(self, name: str = "prev", fingerprint: str = "0" * 64) -> Path:
        """A finished qmap run folder (marker + a report that must survive a refused --overwrite)."""
        d = self.path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"run_id": "abc", "status": "complete",
                                                    "config_fingerprint": fingerprint, "config": {},
                                                    "metrics": {}}))
        (d / "report.md").write_text("keep me")
        return d

    def run_args(self, out: str | Path = "out", *extra: str) -> list[str]:
        w = self.world
        return ["run", "-c", str(w.ckpt), "--data", str(w.root), "-o", str(self.path / out), "-q",
                "--set", "data.calib_size=8", "--set", "hardware.target_layers=[features.3]",
                "--set", "hardware.rtl=none", *extra]




@pytest.fixture
def sandbox(tmp_path, world, monkeypatch) -> Sandbox:
    box = tmp_path / "box"
    box.mkdir()
    monkeypatch.chdir(box)
    monkeypatch.setenv("QMAP_CACHE", str(world.cache))
    monkeypatch.setenv("QMAP_DATA", str(world.root))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return Sandbox(box, world)
