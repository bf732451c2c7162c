"""Affine (per-channel zero point) weights reach the array as signed integers q − z: the course-format files and
the golden model agree with the integer model, which agrees with the fake-quant model (tests/quant)."""

from __future__ import annotations

import pytest
import torch

from qmap.hw.check import check_layer
from qmap.hw.spec import ArraySpec
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, calibrate, quantize_model, to_integer_model


@pytest.mark.parametrize("bits,symmetric", [(2, False), (3, False), (4, True)])
def test_affine_weights_through_files_and_golden_model(tmp_path, bits, symmetric):
    torch.manual_seed(bits)
    cfg = QuantConfig(w_bits=bits, a_bits=4, first_last_bits=None, w_symmetric=symmetric, a_observer="minmax")
    qmodel = quantize_model(tiny_cnn(0.5).eval(), cfg)
    calibrate(qmodel, torch.randn(16, 3, 32, 32))
    imodel = to_integer_model(qmodel)
    trace = imodel.run(torch.randn(1, 3, 32, 32), return_intermediates=True).layers[1]
    lay = imodel.layers[1]
    assert lay.w_bits == bits + (0 if symmetric else 1) <= 4  # 2/3-bit affine and 4-bit symmetric fit 4 bits
    row = check_layer(trace.x_int[0].numpy(), lay.w_int.numpy(), trace.psum[0].numpy(),
                      ArraySpec(4, 4, w_bits=4, a_bits=4, psum_bits=32), tmp_path / "layer",
                      padding=lay.padding[0], stride=lay.stride[0], meta={"layer": lay.name}, simulators=[],
                      build_root=tmp_path / "build")
    assert row["files_vs_integer_mismatches"] == 0
    assert row["golden_vs_integer_mismatches"] == 0 and row["golden_vs_files_psum_mismatches"] == 0
