"""ONNX export of a fake-quant model, and its verification in onnxruntime.

``export_onnx`` reads the model's :class:`~qmap.nn.ModelGraph` (traced once, normalised: a functional op is
exported as the module it equals, ``x.view(x.size(0), -1)`` as a flatten), checks that every quantizer is
calibrated and that its output is exactly ``(to_int(x) − z)·s'`` on an example input, and writes one ONNX
node group per graph node (see :mod:`qmap.export.onnx_graph` for the Q/DQ form
and :mod:`qmap.export.onnx_ops` for the supported modules). The ONNX model then computes the same function
as the fake-quant model: integer codes, clipping and dequantization are identical, biases are int32 in
accumulator units plus their float fraction (:func:`qmap.export.onnx_ops._bias`); only the float
accumulation order of Conv/Gemm differs, so logits agree to float rounding — except where such a rounding
difference moves an activation across a rounding boundary of the next quantizer (one step in one element;
rare, measured by :func:`verify_onnx`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.fx
from torch import nn

from .. import __version__
from ..errors import ConfigError, QmapError
from ..io import atomic_write_bytes
from ..nn import ModelGraph, require_module
from ..nn.ops import as_module, describe
from ..quant import Quantizer
from .onnx_graph import GraphBuilder, onnx_modules
from .onnx_ops import FUNCTION_HANDLERS, MODULE_HANDLERS
from .onnx_ops import quantizer as quantizer_handler

DEFAULT_OPSET = 21
MIN_OPSET = 13  # per-axis DequantizeLinear
INPUT_NAME, OUTPUT_NAME = "input", "logits"
FLOAT_REL_TOL = 1e-4  # |Δlogit| / max|logit| reachable by float summation order alone


@torch.no_grad()
def check_quantizers(model: nn.Module, example_input: torch.Tensor, rtol: float = 1e-6) -> None:
    """Every enabled quantizer must be calibrated and compute exactly ``dequantize(to_int(x))`` (what ONNX
    Q/DQ computes); a subclass with other numerics (e.g. soft rounding) is rejected, naming the quantizer."""
    errors: list[tuple[Quantizer, float]] = []

    def compare(q: Quantizer, args, out: torch.Tensor) -> None:
        # here, not after the forward: a later in-place op (Hardswish(inplace=True)) may overwrite both tensors
        ref = q.dequantize(q.to_int(args[0]))
        err = float((out - ref).abs().max()) if out.numel() else 0.0
        if err > rtol * float(ref.abs().max().clamp_min(1e-30)):
            errors.append((q, err))

    hooks = []
    for name, q in model.named_modules():
        if isinstance(q, Quantizer) and q.enabled:
            if q.observer is not None or not bool(q.initialized):
                raise ConfigError(f"quantizer {q.name or name} is not calibrated: run calibrate() before export")
            hooks.append(q.register_forward_hook(compare))
    try:
        model(example_input)
    finally:
        for h in hooks:
            h.remove()
    if errors:
        q, err = errors[0]
        raise ConfigError(f"quantizer {q.name} ({type(q).__name__}) is not plain round-to-nearest: its output "
                          f"differs from dequantize(to_int(x)) by {err:.3g}; finalise it before export")


def _handler(graph: ModelGraph, node: torch.fx.Node):
    m = as_module(node, graph.modules)
    if m is not None:
        fn = MODULE_HANDLERS.get(type(m)) or (quantizer_handler if isinstance(m, Quantizer) else None)
        return fn, m, describe(node, graph.modules), sorted(t.__name__ for t in MODULE_HANDLERS)
    return FUNCTION_HANDLERS.get(node.target), None, describe(node, graph.modules), \
        sorted({getattr(f, "__name__", str(f)) for f in FUNCTION_HANDLERS})


def build_graph(graph: ModelGraph, g: GraphBuilder) -> str:
    """Emit ONNX nodes for every graph node; returns the ONNX name of the model output."""
    env: dict[torch.fx.Node, str] = {}
    out_name = None
    for node in graph.gm.graph.nodes:
        if node.op == "placeholder":
            if env:
                raise ConfigError("only models with a single input tensor are exportable")
            env[node] = INPUT_NAME
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node):
                raise ConfigError("only models returning a single tensor are exportable")
            out_name = env[out]
        else:
            fn, m, what, supported = _handler(graph, node)
            if fn is None:
                raise ConfigError(f"ONNX export does not support {what}; supported: {', '.join(supported)}")
            inputs = [env[a] for a in node.all_input_nodes]
            base = node.target if node.op == "call_module" else node.name
            env[node] = fn(g, m, inputs, node, base)
    g.node("Identity", [out_name], OUTPUT_NAME)
    return OUTPUT_NAME


def export_onnx(qmodel: nn.Module, path: str | Path, example_input: torch.Tensor, opset: int = DEFAULT_OPSET,
                low_bit_types: bool = True, metadata: dict | None = None) -> dict:
    """Write ``qmodel`` (fake-quant or float) as an ONNX file at ``path`` (atomically); return a report.

    ``example_input``: one batch of the model's input (shape [N, C, H, W]; the batch dimension is dynamic in
    the file). ``low_bit_types``: store 4-bit ranges as INT4/UINT4 where ``opset`` ≥ 21 allows.
    ``metadata``: {key: JSON-able value} written to the model's ``metadata_props`` as ``qmap.<key>`` = JSON
    (e.g. ``normalization`` = {"mean": [...], "std": [...]}, ``quant`` = the QuantConfig, ``method``).
    """
    require_module(qmodel, "qmodel")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise ConfigError(f"example_input must be a float tensor (one batch of the model's input), not "
                          f"{type(example_input).__name__}")
    onnx, helper, tp, _ = onnx_modules()
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(f"opset {opset} is not supported: use {MIN_OPSET}..{onnx.defs.onnx_opset_version()}")
    was_training = qmodel.training
    qmodel.eval()
    try:
        example_input = example_input.to(next(qmodel.parameters()).device)
        graph = ModelGraph(qmodel, example_input)  # first: a model that cannot run on the example is one line
        check_quantizers(qmodel, example_input)
        g = GraphBuilder(opset, low_bit_types)
        output = build_graph(graph, g)
        out_shape = list(graph.shape(graph.output.args[0]))
    finally:
        qmodel.train(was_training)
    in_shape = ["N", *example_input.shape[1:]]
    onnx_graph = helper.make_graph(
        g.nodes, type(qmodel).__name__, [helper.make_tensor_value_info(INPUT_NAME, tp.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output, tp.FLOAT, ["N", *out_shape[1:]])], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="qmap", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(model, {f"qmap.{k}": json.dumps(v) for k, v in (metadata or {}).items()})
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    return {"path": str(path), "opset": opset, "bytes": len(data), "low_bit_types": low_bit_types,
            "input_shape": in_shape, "output_shape": ["N", *out_shape[1:]], "nodes": len(g.nodes),
            "op_counts": dict(sorted(Counter(n.op_type for n in g.nodes).items())), "layers": g.layers,
            "metadata": sorted(f"qmap.{k}" for k in (metadata or {}))}


def ort_session(path: str | Path, threads: int | None = None, optimize: bool = False):
    """An onnxruntime CPU session (``threads`` intra-op threads; default: torch's thread count)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX verification needs the optional 'onnx' extra: pip install 'qmap[onnx]'") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """(float CPU logits, seconds) of ``model`` in eval mode on its own device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        out = torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                         for i in range(0, len(inputs), batch_size)])
        return out, time.perf_counter() - t0
    finally:
        model.train(was_training)


def ort_logits(path: str | Path, inputs: torch.Tensor, batch_size: int = 256, threads: int | None = None,
               optimize: bool = False) -> tuple[torch.Tensor, float]:
    """(logits, seconds spent in ``session.run``) of the ONNX file on CPU. onnxruntime's own exception types
    (a missing or damaged file, inputs the graph does not take) become one QmapError / ConfigError line."""
    try:
        sess = ort_session(path, threads, optimize)
    except ConfigError:
        raise
    except Exception as e:  # onnxruntime raises NoSuchFile, InvalidProtobuf, Fail ... (no common public base)
        raise QmapError(f"cannot load ONNX file {path}: {_first_line(e)}") from None
    outs, seconds = [], 0.0
    for i in range(0, len(inputs), batch_size):
        x = np.ascontiguousarray(inputs[i:i + batch_size].cpu().numpy())
        t0 = time.perf_counter()
        try:
            outs.append(torch.from_numpy(sess.run(None, {INPUT_NAME: x})[0]))
        except Exception as e:
            raise ConfigError(f"ONNX file {path} cannot run on inputs of shape {tuple(x.shape)} "
                              f"({x.dtype}): {_first_line(e)}") from None
        seconds += time.perf_counter() - t0
    return torch.cat(outs), seconds


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def compare_logits(reference: torch.Tensor, onnx_out: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """``max_abs_diff`` = max |onnx − reference|, ``max_rel_diff`` = that / max |reference|, ``images_close`` =
    fraction of rows whose max |Δ| ≤ FLOAT_REL_TOL·max |reference| (no quantization step flipped on the way),
    ``top1_agreement`` = fraction of rows with the same arg-max; with ``labels`` the top-1 accuracies
    ``top1_torch`` / ``top1_onnx``."""
    diff = (onnx_out - reference).abs().amax(1)
    max_abs, max_ref = float(diff.max()), float(reference.abs().max())
    pred_t, pred_o = reference.argmax(1), onnx_out.argmax(1)
    report = {"n": len(reference), "max_abs_diff": max_abs, "max_rel_diff": max_abs / max_ref if max_ref else 0.0,
              "images_close": float((diff <= FLOAT_REL_TOL * max_ref).float().mean()),
              "top1_agreement": float((pred_t == pred_o).float().mean())}
    if labels is not None:
        y = labels.cpu()
        report |= {"top1_torch": float((pred_t == y).float().mean()), "top1_onnx": float((pred_o == y).float().mean())}
    return report


def verify_onnx(path: str | Path, qmodel: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                batch_size: int = 256, threads: int | None = None, optimize: bool = False) -> dict:
    """Run ``inputs`` through the ONNX file (onnxruntime, CPU; by default every node as written, the file's
    semantics; ``optimize=True``: onnxruntime's default graph optimisations, see docs/onnx.md)
    and through ``qmodel`` (fake-quant, on its device); :func:`compare_logits` of the two plus
    ``ort_images_per_s`` (``session.run`` time only)."""
    require_module(qmodel, "qmodel")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise ConfigError(f"inputs must be a float tensor [N, C, H, W], not {type(inputs).__name__}")
    out, seconds = ort_logits(path, inputs, batch_size, threads, optimize)  # first: it says what the file takes
    reference, _ = torch_logits(qmodel, inputs, batch_size)
    return compare_logits(reference, out, labels) | {"ort_images_per_s": len(inputs) / seconds}
