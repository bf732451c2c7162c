"""A tiny sweep over the synthetic run set-up of tests/pipeline (image-tree data, tiny_cnn checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pipeline.conftest import tiny_setup  # noqa: F401 - the session fixture, shared


def tiny_sweep_dict(root: Path, ckpt: Path) -> dict:
    """2 bit settings x 2 methods = 4 tiny points; AdaRound's iterations make a point last long enough to be
    killed in the middle (and resumed)."""
    return {
        "name": "tiny",
        "base": {"model": {"checkpoint": str(ckpt)}, "data": {"root": str(root), "calib_size": 20},
                 "hardware": {"target_layers": ["features.3"], "rtl": "none", "network_cycles": False}},
        "axes": {"bits": {"W4A4": {"quant.w_bits": 4, "quant.a_bits": 4},
                          "W3A3": {"quant.w_bits": 3, "quant.a_bits": 3}},
                 "method": {"rtn": {"method.name": "rtn"},
                            "adaround": {"method.name": "adaround",
                                         "method.options": {"iters": 60, "batch_size": 8}}}},
        "resources": {"num_cpus": 1},
        "max_retries": 2,
    }


@pytest.fixture
def tiny_dict(tiny_setup) -> dict:  # noqa: F811 - the fixture imported above
    """A fresh tiny sweep dict (for tests that change it)."""
    return tiny_sweep_dict(*tiny_setup)


@pytest.fixture(scope="module")
def tiny_sweep_file(tiny_setup, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The tiny sweep as a YAML file (read-only for the tests)."""
    root, ckpt = tiny_setup
    path = tmp_path_factory.mktemp("sweepfile") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep_dict(root, ckpt), sort_keys=False))
    return path
