"""Real checkpoint: the integer-only W4A4 model matches the fake-quant model's top-1 within 0.1 pp."""

from __future__ import annotations

import pytest
import torch

from qmap.data import calibration_set, load_cifar10, to_tensor
from qmap.methods.rtn import apply as rtn
from qmap.models import load_model
from qmap.quant import QuantConfig, to_integer_model


@pytest.mark.slow
def test_integer_top1_matches_fake_quant_w4a4(data_root, reference_checkpoint):
    model, manifest = load_model(reference_checkpoint)
    mean, std = manifest.mean_std()
    test = load_cifar10(data_root, "test_exact")  # the 1017 genuine test images
    calib = to_tensor(calibration_set(load_cifar10(data_root, "train_exact"), 256, seed=0).images, mean, std)
    qmodel = rtn(model, calib, QuantConfig(w_bits=4, a_bits=4, w_observer="minmax", a_observer="mse")).model
    imodel = to_integer_model(qmodel)
    labels = torch.as_tensor(test.labels)
    fq_correct = int_correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 256):
            x = to_tensor(test.images[start:start + 256], mean, std)
            y = labels[start:start + 256]
            fq_correct += int((qmodel(x).argmax(1) == y).sum())
            int_correct += int((imodel.run(x).logits.argmax(1) == y).sum())
    fq, it = 100 * fq_correct / len(test), 100 * int_correct / len(test)
    assert fq > 80, f"W4A4 fake-quant top-1 {fq:.2f} % is implausibly low"
    assert abs(it - fq) <= 0.1, f"integer top-1 {it:.2f} % vs fake-quant {fq:.2f} %"
    report = imodel.accumulator_report()
    assert all(r["bits_needed"] <= r["declared_bits"] for r in report)
