"""Reconstruction engine: blocks, schedules, caches (in memory and spilled), QDrop hooks, resume after a kill."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from qmap.errors import ConfigError
from qmap.methods.recon import (
    ReconConfig,
    beta_at,
    fp_reference,
    mix_inputs,
    reconstruct,
    set_drop,
)
from qmap.methods.recon_blocks import make_blocks, sequential_units
from qmap.methods.recon_cache import CachePool
from qmap.models import build_model
from qmap.models.tiny import tiny_cnn
from qmap.quant import QuantConfig, calibrate, quant_layers, quantize_model
from qmap.quant.qmodules import QuantConv2d
from qmap.quant.spec import QuantSpec

torch.set_num_threads(1)
FAST = {"iters": 12, "batch_size": 16, "eval_samples": 32}


def _qmodel(seed: int = 0, w_bits: int = 3, a_bits: int = 4):
    torch.manual_seed(seed)
    model = tiny_cnn(0.5).eval()
    calib = torch.randn(64, 3, 8, 8)
    qmodel = quantize_model(model, QuantConfig(w_bits=w_bits, a_bits=a_bits))
    calibrate(qmodel, calib)
    return qmodel, calib


def _tensors(qmodel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in qmodel.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_blocks_of_vgg_and_tiny():
    vgg = quantize_model(build_model("vgg16_bn_sq8", 0.125).eval())
    units = sequential_units(vgg)
    n_layers = len(quant_layers(vgg))
    layer = make_blocks(units, "layer")
    assert len(layer) == n_layers and all(len(b.layers(units)) == 1 for b in layer)
    stages = make_blocks(units, "block")
    assert [len(b.layers(units)) for b in stages] == [2, 2, 3, 3, 3, 1]  # 5 VGG stages + the classifier
    net = make_blocks(units, "network")
    assert len(net) == 1 and len(net[0].loss_points) == n_layers and net[0].end == len(units)
    every = make_blocks(units, "block", loss_every_layer=True)
    assert [len(b.loss_points) for b in every] == [2, 2, 3, 3, 3, 1]
    # consecutive and covering
    assert [b.start for b in layer[1:]] == [b.end for b in layer[:-1]] and layer[0].start == 0
    x = torch.randn(2, 3, 32, 32)
    y = x
    for u in units:
        y = u(y)
    assert torch.allclose(y, vgg(x))


def test_residual_is_one_unit_and_unsupported_ops_are_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 1)
            self.b = nn.Conv2d(3, 3, 1)
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            x = self.a(x)
            return self.c(torch.relu(self.b(x)) + x)

    units = sequential_units(quantize_model(Branchy()))
    assert len(units) == 3  # a | the residual block (never split) | c
    assert [len(b.layers(units)) for b in make_blocks(units, "layer")] == [1, 1, 1]

    class Softmaxed(Branchy):
        def forward(self, x):
            return self.c(torch.softmax(self.a(x), 1))

    with pytest.raises(ConfigError, match="as the forward's last op is supported for .*softmax.*supported: Conv2d"):
        sequential_units(Softmaxed())
    with pytest.raises(ConfigError, match="granularity"):
        make_blocks(sequential_units(tiny_cnn()), "row")


def test_beta_schedule_warmup_and_annealing():
    cfg = ReconConfig(iters=100, warmup=0.2, beta_start=20, beta_end=2)
    assert beta_at(0, cfg) is None and beta_at(19, cfg) is None
    assert beta_at(20, cfg) == pytest.approx(20)
    assert beta_at(60, cfg) == pytest.approx(11)
    assert beta_at(100, cfg) == pytest.approx(2)


def test_cache_pool_spills_to_files_and_cleans_up(tmp_path):
    pool = CachePool(memory_limit=1000, device=torch.device("cpu"), spill_dir=tmp_path)
    small = pool.new(4, (10,))               # 160 bytes: in memory
    big = pool.new(8, (100,))                # 3200 bytes: over the limit, memory-mapped file
    assert small.path is None and big.path is not None and big.path.exists()
    data = torch.randn(8, 100)
    big.write(0, data[:5])
    big.write(5, data[5:])
    assert torch.equal(big.read(torch.tensor([7, 0, 3])), data[[7, 0, 3]])
    pool.close()
    assert not list(tmp_path.iterdir())


def test_spilled_cache_gives_identical_result(tmp_path):
    qa, calib = _qmodel()
    qb = copy.deepcopy(qa)
    cfg = dict(granularity="block", **FAST)
    reconstruct(qa, calib, ReconConfig(**cfg))
    rep = reconstruct(qb, calib, ReconConfig(**cfg, memory_limit_mb=0, work_dir=str(tmp_path)))
    assert rep["cache"]["spilled_mb"] > 0
    _assert_same(_tensors(qa), _tensors(qb))


def test_reconstruction_lowers_block_error():
    """From a symmetric 3-bit start reconstruction removes > 10 % of the error; the affine grid (the 3-bit
    default) starts lower, is still improved, and ends below the symmetric result."""
    errors = {}
    for symmetric in (True, False):
        torch.manual_seed(0)
        model, calib = tiny_cnn(0.5).eval(), torch.randn(64, 3, 8, 8)
        qmodel = quantize_model(model, QuantConfig(w_bits=3, a_bits=4, w_symmetric=symmetric))
        calibrate(qmodel, calib)
        rep = reconstruct(qmodel, calib, ReconConfig(granularity="block", iters=150, batch_size=16))
        errors[symmetric] = tuple(sum(b[k] for b in rep["blocks"]) for k in ("error_before", "error_after"))
    (sym_before, sym_after), (aff_before, aff_after) = errors[True], errors[False]
    assert sym_after < 0.9 * sym_before, errors
    assert aff_after < aff_before and aff_before < sym_before and aff_after < sym_after, errors


def test_drop_passes_a_fraction_p_unquantized():
    qmodel, _ = _qmodel()
    layer = quant_layers(qmodel)[1][1]
    x = torch.rand(4, 8, 16, 16) * 3 + 0.013  # off the quantization grid almost everywhere
    gen = torch.Generator().manual_seed(0)
    set_drop([layer], 0.5, gen)
    out = layer.input_quantizer(x)
    set_drop([layer], 0.0, None)
    kept = (out == x).float().mean()
    assert abs(float(kept) - 0.5) < 0.03
    assert torch.equal(layer.input_quantizer(x), layer.input_quantizer(x))  # drop off: deterministic


def test_mix_inputs_keeps_extra_channels_quantized():
    gen = torch.Generator().manual_seed(0)
    xq, xf = torch.zeros(2, 5, 4, 4), torch.ones(2, 3, 4, 4)
    mixed = mix_inputs(xq, xf, 0.5, gen)
    assert mixed.shape == xq.shape and torch.all(mixed[:, 3:] == 0)
    assert 0.4 < float(mixed[:, :3].mean()) < 0.6


def test_drop_keeps_the_channels_last_layout():
    """QDrop's masks follow the maps' layout: a mask in NCHW order would turn every later op (and the next
    convolution) onto the slow strided path."""
    from qmap.quant.ste import drop_mask, select

    gen = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=cl)
    keep = drop_mask(x, 0.3, gen)
    assert keep.is_contiguous(memory_format=cl) and set(keep.unique().tolist()) <= {0.0, 1.0}
    assert 0.2 < float(keep.mean()) < 0.4
    y = torch.randn(4, 6, 8, 8).contiguous(memory_format=cl)
    mixed = select(keep, x, y)
    assert mixed.is_contiguous(memory_format=cl)
    assert torch.equal(mixed, torch.where(keep.bool(), x, y))  # exact selection, not a blend
    assert mix_inputs(y, x, 0.5, gen).is_contiguous(memory_format=cl)
    layer = QuantConv2d.from_float(nn.Conv2d(6, 6, 3, padding=1), QuantSpec(bits=4), QuantSpec(bits=4, signed=True))
    layer.input_quantizer.set_qparams(torch.tensor(0.2))
    set_drop([layer], 0.5, gen)
    out = layer.input_quantizer(x.requires_grad_(True))
    set_drop([layer], 0.0, None)
    assert out.is_contiguous(memory_format=cl)


class _Killed(Exception):
    pass


def test_resume_after_block_gives_identical_result(tmp_path):
    qa, calib = _qmodel()
    qb, qc = copy.deepcopy(qa), copy.deepcopy(qa)
    cfg = dict(granularity="layer", **FAST)
    reconstruct(qa, calib, ReconConfig(**cfg))  # uninterrupted reference

    def kill_after_1(k):
        if k == 1:
            raise _Killed

    with pytest.raises(_Killed):
        reconstruct(qb, calib, ReconConfig(**cfg, work_dir=str(tmp_path)), on_block_done=kill_after_1)
    assert sorted(p.name for p in tmp_path.glob("block_*.pt")) == ["block_000.pt", "block_001.pt"]
    rep = reconstruct(qc, calib, ReconConfig(**cfg, work_dir=str(tmp_path), resume=True))
    assert [b.get("loaded", False) for b in rep["blocks"]] == [True, True, False, False, False]
    _assert_same(_tensors(qa), _tensors(qc))


def test_resume_inside_a_block_from_optimizer_checkpoint(tmp_path, monkeypatch):
    qa, calib = _qmodel()
    qb, qc = copy.deepcopy(qa), copy.deepcopy(qa)
    cfg = dict(granularity="network", iters=20, batch_size=16, eval_samples=32, drop_prob=0.5,
               learn_weight_step=False, checkpoint_every=5)
    reconstruct(qa, calib, ReconConfig(**cfg))
    steps = {"n": 0}
    real_step = torch.optim.Adam.step

    def dying_step(self, *a, **k):
        steps["n"] += 1
        if steps["n"] == 13:
            raise _Killed
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", dying_step)
    with pytest.raises(_Killed):
        reconstruct(qb, calib, ReconConfig(**cfg, work_dir=str(tmp_path)))
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert (tmp_path / "block_000.partial.pt").exists()
    rep = reconstruct(qc, calib, ReconConfig(**cfg, work_dir=str(tmp_path), resume=True))
    assert rep["blocks"][0]["resumed_at"] == 10
    assert not (tmp_path / "block_000.partial.pt").exists()
    _assert_same(_tensors(qa), _tensors(qc))


def test_resume_refuses_state_of_another_run(tmp_path):
    qa, calib = _qmodel()
    reconstruct(copy.deepcopy(qa), calib, ReconConfig(granularity="layer", iters=2, work_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="different run"):
        reconstruct(qa, calib, ReconConfig(granularity="layer", iters=3, work_dir=str(tmp_path), resume=True))


KILL_SCRIPT = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_recon import _qmodel, FAST
from qmap.methods.recon import ReconConfig, reconstruct
qmodel, calib = _qmodel()
cfg = ReconConfig(granularity="layer", work_dir={work!r}, resume=True, **FAST)
reconstruct(qmodel, calib, cfg, on_block_done=lambda k: time.sleep(0.3))
torch.save(qmodel.state_dict(), {out!r})
"""


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A real SIGKILL of a subprocess after its second block, then resume in a fresh process."""
    work, out = tmp_path / "work", tmp_path / "final.pt"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), work=str(work), out=str(out))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.time() + 300
    while not (work / "block_001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "subprocess ended before block 1 was saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    resumed = torch.load(out, weights_only=True)
    qa, calib = _qmodel()
    reconstruct(qa, calib, ReconConfig(granularity="layer", **FAST))
    _assert_same(_tensors(qa), resumed)


def test_fp_reference_is_unquantized():
    qmodel, calib = _qmodel()
    fp = fp_reference(qmodel)
    assert all(not m.weight_quantizer.enabled and not m.input_quantizer.enabled for _, m in quant_layers(fp))
    assert not any(p.requires_grad for p in fp.parameters())


def test_lp_loss_sum_and_per_position():
    from qmap.methods.recon import lp_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 5, 6, generator=g), torch.randn(4, 3, 5, 6, generator=g)
    d = pred - target
    assert torch.allclose(lp_loss(pred, target, 2.0), (d ** 2).sum() / 4)
    assert torch.allclose(lp_loss(pred, target, 2.0, per_position=True), (d ** 2).sum(1).mean())
    assert torch.allclose(lp_loss(pred, target, 2.4), (d.abs() ** 2.4).sum() / 4)
    wide = torch.cat([pred, torch.ones(4, 2, 5, 6)], 1)  # OMR copies appended: compared on the first channels
    assert torch.equal(lp_loss(wide, target, 2.0), lp_loss(pred, target, 2.0))
