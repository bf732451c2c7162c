"""The main job: checkpoint → fuse → quantize (method) → evaluate → integer model → hardware files → golden
model (+ RTL) → results.json, quantized model, report. ``qmap run`` is a thin wrapper around :func:`run`.

The whole config is checked first (:func:`qmap.preflight.preflight`: types, ranges, method options, target
layers, image indices, simulators, output folder) before any data is loaded or anything is written. The output
folder is then locked and claimed as a run folder (:mod:`qmap.runfolder`: ``run_id``, ``status``,
``config_fingerprint`` in ``results.json``). Each stage reads what earlier stages produced and writes into the
run folder; ``results.json`` is rewritten (atomically) after every stage, so an interrupted run leaves the
results of the stages that finished, and ``status`` says ``running`` / ``failed`` / ``complete``.

``results.json`` keeps what a rerun reproduces exactly (``metrics``, ``layers``, ``hardware``, ...) apart from
what depends on the machine: ``timings`` (seconds per stage), ``throughput`` (images/s, fake-quant slowdown)
and ``peak_rss_bytes``; the method report's ``seconds`` is the only wall-clock figure inside it.
"""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data import calibration_set, load_split, to_tensor
from .errors import ConfigError, HardwareError
from .evaluate import evaluate
from .export.quantized import save_quantized
from .hw.check import (
    check_layer,
    check_layer_width,
    layer_passes,
    network_view,
    offset_input,
    psum_widths,
    rtl_simulators,
)
from .methods import get_method
from .models.checkpoint import sha256_file
from .nn import get_module
from .preflight import Checked, check_forward, preflight
from .progress import Stages, set_quiet
from .quant import float_mode
from .quant.agreement import compare_with_fake_quant
from .quant.integer import to_integer_model
from .report.analysis import layer_output_mse
from .report.document import write_report
from .report.plots_outliers import plot_outlier_levels
from .report.provenance import provenance
from .report.run_plots import plot_activation_levels, plot_run, plot_weight_levels
from .runfolder import RunFolder, config_fingerprint

STAGES = ["load", "evaluate FP", "quantize", "evaluate quantized", "RTN baseline", "integer model", "hardware", "save",
          "report"]
ONNX_CHECK_IMAGES = 1000  # test images the run's ONNX check uses (benchmarks/onnx_export.py measures all 10k)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Run:
    """State shared by the stages of one run (config, folders, models, data, results)."""

    def __init__(self, cfg: RunConfig, out: Path, checked: Checked, quiet: bool, resume: bool):
        self.cfg, self.out, self.quiet, self.resume = cfg, out, quiet, resume
        self.stages = Stages(STAGES, quiet=quiet)
        self.checked, self.data_root = checked, checked.data_root
        self.device = pick_device(cfg.device)
        self.folder: RunFolder | None = None
        self.results: dict = {"name": cfg.name, "config": cfg.to_dict(), "metrics": {}, "throughput": {},
                              "timings": {}}

    def save_results(self, status: str | None = None) -> None:
        self.results["timings"] = dict(self.stages.timings)
        self.results["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if torch.cuda.is_available():
            self.results["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
        self.folder.save(self.results, status=status)

    def method_layer_rows(self) -> dict[str, dict]:
        """The method report's per-layer rows by layer name (methods report a dict by name or a list of rows)."""
        layers = self.results.get("method_report", {}).get("layers", {})
        if isinstance(layers, dict):
            return {k: v for k, v in layers.items() if isinstance(v, dict)}
        return {r["layer"]: r for r in layers if isinstance(r, dict) and "layer" in r}

    # ----- stages -----
    def load(self) -> None:
        cfg = self.cfg
        ckpt = self.checked.checkpoint
        self.fp_model, self.manifest = self.checked.model, self.checked.manifest
        self.mean, self.std = self.manifest.mean_std()
        folder, size = self.checked.folder, cfg.model.image_size
        test = load_split(self.data_root, cfg.data.test_split, folder, size)
        if cfg.data.test_limit is not None:
            test = test.head(cfg.data.test_limit)
        for k in cfg.hardware.images if cfg.hardware.enabled else []:
            if k >= len(test):
                raise ConfigError(f"hardware.images: image {k} is outside the test set (0..{len(test) - 1})")
        check_forward(self.fp_model, (3, *test.images.shape[1:3]), len(test.classes))
        self.test = test
        self.results["metrics"]["test_images"] = len(test)
        calib = calibration_set(load_split(self.data_root, "train", folder, size), n=cfg.data.calib_size,
                                seed=cfg.data.calib_seed)
        self.calib = to_tensor(calib.images, self.mean, self.std)
        self.results["provenance"] = provenance(
            seed=cfg.seed, checkpoint=str(ckpt), checkpoint_sha256=sha256_file(ckpt),
            test_data=test.source, test_data_sha256=test.checksum, calib_sha256=calib.checksum,
            config_sha256=config_fingerprint(cfg))
        self.stages.note(f"model {self.manifest.arch} width {self.manifest.width}; test {len(test)} images "
                         f"({test.source}); calibration {len(calib)} images")

    def evaluate_fp(self) -> None:
        r = evaluate(self.fp_model, self.test, self.mean, self.std, batch_size=self.cfg.data.batch_size,
                     device=self.device, progress=not self.quiet)
        self.results["metrics"]["top1_fp"] = r["top1"]
        self.results["throughput"]["fp_images_per_s"] = r["images_per_s"]
        self.stages.note(f"FP top-1 {100 * r['top1']:.2f} %")

    def quantize(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        options = dict(cfg.method.options)
        if cfg.method.name in ("adaround", "brecq", "qdrop", "domr"):
            options.setdefault("work_dir", str(self.out / "work"))
            options.setdefault("resume", self.resume)
        result = get_method(cfg.method.name)(self.fp_model, self.calib, cfg.quant, **options)
        self.qmodel = result.model.eval()
        self.results["method_report"] = result.report

    def evaluate_quantized(self) -> None:
        r = evaluate(self.qmodel, self.test, self.mean, self.std, batch_size=self.cfg.data.batch_size,
                     device=self.device, progress=not self.quiet)
        m = self.results["metrics"]
        m["top1_quantized"] = r["top1"]
        m["test_images"] = r["n"]
        speed = self.results["throughput"]
        speed["quantized_images_per_s"] = r["images_per_s"]
        speed["fakequant_slowdown"] = speed["fp_images_per_s"] / r["images_per_s"]
        self.results["layers"] = layer_output_mse(self.qmodel.cpu(), self.calib[:64])
        self.stages.note(f"quantized top-1 {100 * r['top1']:.2f} % (FP {100 * m['top1_fp']:.2f} %)")

    def rtn_baseline(self) -> None:
        """Top-1 of plain round-to-nearest at the same QuantConfig: what the method is measured against."""
        if self.cfg.method.name == "rtn":
            return
        base = get_method("rtn")(self.fp_model, self.calib, self.cfg.quant).model.eval()
        r = evaluate(base, self.test, self.mean, self.std, batch_size=self.cfg.data.batch_size,
                     device=self.device, progress=not self.quiet)
        self.results["metrics"]["top1_rtn"] = r["top1"]
        self.stages.note(f"RTN baseline top-1 {100 * r['top1']:.2f} %")

    def integer_model(self) -> None:
        try:
            self.imodel = to_integer_model(self.qmodel.cpu(), acc_bits=32, input_shape=tuple(self.calib.shape[1:]))
        except ConfigError as e:  # a graph the integer model cannot lower (e.g. OMR's OutlierShift module)
            self.imodel = None
            self.results["integer"] = {"skipped": str(e)}
            self.stages.note(f"integer model skipped: {e}")
            return
        r = evaluate(self.imodel.as_module(), self.test, self.mean, self.std, batch_size=self.cfg.data.batch_size,
                     device="cpu", progress=not self.quiet)
        m = self.results["metrics"]
        m["top1_integer"] = r["top1"]
        m["integer_vs_fakequant_pp"] = 100 * (r["top1"] - m["top1_quantized"])
        agree = compare_with_fake_quant(self.qmodel, self.imodel, self.calib[:32])
        self.results["integer"] = {"agreement": agree, "accumulators": self.imodel.accumulator_report()}
        self.stages.note(f"integer top-1 {100 * r['top1']:.2f} % "
                         f"({m['integer_vs_fakequant_pp']:+.2f} pp vs fake-quant)")

    def hardware(self) -> None:
        hw = self.cfg.hardware
        if not hw.enabled:
            return
        if self.imodel is None:
            self.results["hardware"] = {"skipped": "no integer model: " + self.results["integer"]["skipped"]}
            self.stages.note("hardware skipped: there is no integer model to export")
            return
        spec = hw.array
        simulators = rtl_simulators(hw.rtl)
        if not simulators:
            why = ("hardware.rtl is 'none'" if hw.rtl == "none"
                   else "Icarus Verilog (iverilog) is not on PATH")
            how = ("--set hardware.rtl=auto" if hw.rtl == "none"
                   else "bash scripts/setup.sh --rtl (or apt-get install iverilog), then rerun")
            rtl_skip = {"reason": why, "enable": how}
            self.stages.note(f"RTL: SKIPPED ({why}; to enable: {rtl_skip['enable']})")
        alphas = {name: row.get("alpha") for name, row in self.method_layer_rows().items()}
        images = []
        for k in hw.images:
            images.append(to_tensor(self.test.images[k:k + 1], self.mean, self.std))  # indices checked in load
        jobs = []  # every target layer of every image, validated and checked against psum_bits before any file
        for k, x in zip(hw.images, images, strict=True):
            traces = {t.name: t for t in self.imodel.run(x, return_intermediates=True).layers}
            for name in hw.target_layers:
                if name not in traces:
                    raise ConfigError(f"hardware.target_layers: no quantized layer {name!r}; layers: "
                                      f"{', '.join(traces)}")
                lay, t = self.imodel.layer(name), traces[name]
                if lay.kind != "conv":
                    raise ConfigError(f"hardware.target_layers: {name} is not a conv layer")
                psum = t.psum[0].numpy()
                for group, (part, x_t, w_t, out) in enumerate(layer_passes(lay, t.x_int[0].numpy())):
                    # a grouped conv runs one dense pass per group (hw.check.layer_passes)
                    psum_t, padding = psum[out], lay.padding[0]
                    extra = {"group": group, "groups": lay.groups} if lay.groups > 1 else {}
                    if lay.x_range[0] < 0:  # signed codes: the array runs on offset ones (hw.check.offset_input)
                        x_t, shift = offset_input(x_t, w_t, lay.x_bits, padding)
                        psum_t = psum_t + shift[:, None, None]
                        extra |= {"input_offset": 1 << (lay.x_bits - 1), "input_padding_by_host": padding,
                                  "psum_offset": shift.tolist()}
                        padding = 0
                    check_layer_width(x_t, w_t, spec, padding, lay.stride[0], part)
                    jobs.append((k, name, part, lay, x_t, w_t, psum_t, out, padding, extra))
        psum = psum_widths(self.imodel, images, spec) if images else []
        rows = []
        for k, name, part, lay, x_t, w_t, psum_t, out, padding, extra in jobs:
            meta = {"layer": name, "image_index": k, "label": int(self.test.labels[k]),
                    "x_step": lay.x_step, "w_step": lay.w_step[out].tolist(), "alpha": alphas.get(name),
                    "w_bits": lay.w_bits, "a_bits": lay.x_bits, "method": self.cfg.method.name,
                    "bias_int": lay.bias_int[out].tolist(), **extra}
            rows.append(check_layer(
                x_t, w_t, psum_t, spec, self.out / "hw" / part / f"image{k}", padding=padding,
                stride=lay.stride[0], meta=meta, simulators=simulators, build_root=self.out / "work" / "rtl"))
            rows[-1] |= {key: extra[key] for key in ("group", "input_offset") if key in extra}
            rows[-1]["folder"] = str(Path(rows[-1]["folder"]).relative_to(self.out))
            self.stages.note(f"{part} image {k}: golden vs integer mismatches "
                             f"{rows[-1]['golden_vs_integer_mismatches']}, {rows[-1]['golden_cycles']} cycles"
                             + "".join(f", RTL {s} mismatches {rows[-1][f'rtl_{s}_output_mismatches']} "
                                       f"cycles {rows[-1][f'rtl_{s}_cycles']}" for s in simulators))
        self.results["hardware"] = {"array": spec.to_dict(), "rtl_simulators": simulators, "layers": rows,
                                    "psum": psum}
        if not simulators:
            self.results["hardware"]["rtl_skipped"] = rtl_skip
        if (hw.network_cycles or hw.rtl_network) and images:
            k = hw.images[0]
            try:
                net = network_view(self.imodel, images[0], spec,
                                   rtl_work_dir=self.out / "work" / "rtl_network" if hw.rtl_network else None,
                                   rtl_simulator=hw.rtl if hw.rtl in ("icarus", "verilator") else None)
            except HardwareError as e:  # e.g. every conv input signed (GELU / h-swish nets): nothing to map
                self.results["hardware"]["network_skipped"] = str(e)
                self.stages.note(f"whole network on the array: SKIPPED ({e})")
                return
            self.results["hardware"]["network"] = net["layers"]
            self.results["hardware"]["network_summary"] = {**net["summary"], "image": k,
                                                           "host_layers": net["host_layers"], "array": net["array"]}
            sm = net["summary"]
            self.stages.note(f"whole network on {spec.rows}x{spec.cols}: {sm['cycles']:,} cycles, utilisation "
                             f"{100 * sm['utilisation']:.1f} %, value mismatches {sm['mismatches']}, "
                             f"integer logits match: {sm['logits_match']}")
            if hw.rtl_network:
                self.stages.note(f"whole network on the RTL ({sm['rtl_simulator']}, one build): "
                                 f"{sm['rtl_layers']} layers, {sm['rtl_cycles']:,} cycles (= golden: "
                                 f"{sm['rtl_cycles_equal_golden']}), RTL vs golden mismatches "
                                 f"{sm['rtl_mismatches']}, logits = integer model's: {sm['logits_match']}, "
                                 f"{sm['rtl_network_wall_s']:.1f} s")

    def save(self) -> None:
        if self.cfg.export.quantized_model:
            man, cfg = self.manifest, self.cfg
            path = save_quantized(self.qmodel, self.out / "quantized_model.safetensors", arch=man.arch,
                                  width=man.width, num_classes=man.num_classes, mean=self.mean, std=self.std,
                                  input_shape=tuple(self.calib.shape[1:]),
                                  quant=cfg.quant.to_dict(), method={"name": cfg.method.name,
                                                                     "options": dict(cfg.method.options)})
            self.results["files"] = {"quantized_model": path.name}
        if self.cfg.export.onnx:
            from .export.onnx import export_onnx, verify_onnx

            cfg = self.cfg
            meta = {"normalization": {"mean": list(self.mean), "std": list(self.std)}, "quant": cfg.quant.to_dict(),
                    "method": {"name": cfg.method.name, "options": dict(cfg.method.options)},
                    "model": {"arch": self.manifest.arch, "width": self.manifest.width}}
            rep = export_onnx(self.qmodel.cpu(), self.out / "model.onnx", self.calib[:1], metadata=meta)
            test = self.test.head(ONNX_CHECK_IMAGES)
            ver = verify_onnx(self.out / "model.onnx", self.qmodel.cpu(), to_tensor(test.images, self.mean, self.std),
                              torch.as_tensor(test.labels), optimize=True)
            self.results["onnx"] = {**rep, **ver, "session": "onnxruntime defaults", "data": test.source}
            self.stages.note(f"ONNX (onnxruntime defaults) vs fake-quant on {ver['n']} test images: arg-max "
                             f"agreement {100 * ver['top1_agreement']:.2f} %")
            self.results.setdefault("files", {})["onnx"] = "model.onnx"

    def report(self) -> None:
        plot_run(self.results, self.out / "plots")
        alpha_rows = self.method_layer_rows()
        for name in self.cfg.hardware.target_layers:
            layer = get_module(self.qmodel, name)
            wq = layer.weight_quantizer
            if wq.step.numel() != 1:
                continue  # per-channel steps: no single level set to draw
            row = alpha_rows.get(name, {})
            step = float(wq.step)
            grid_step = float(np.ravel(row.get("grid_step", step))[0])
            plot_weight_levels(layer.fp_weight.cpu().numpy(), grid_step, step, wq.spec.qmin,
                               wq.spec.qmax, row.get("alpha"), name, self.out / "plots" / f"weight_hist.{name}.png")
        self.activation_plots()
        write_report(self.out)

    @torch.no_grad()
    def target_inputs(self, name: str) -> torch.Tensor:
        """The FP input of target layer ``name`` on 64 calibration images (original channels only: OMR copies
        come after them), with every quantizer off."""
        layer = get_module(self.qmodel, name)
        seen: list[torch.Tensor] = []
        hook = layer.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
        try:
            with float_mode(self.qmodel):
                self.qmodel(self.calib[:64])
        finally:
            hook.remove()
        original = self.fp_model.get_submodule(name).in_channels
        return seen[0][:, :original].flatten().cpu()

    def activation_plots(self) -> None:
        """Each target layer's input histogram with its activation levels; for OMR/OCS runs also the plain
        b-bit and the OMR (b-bit + copy) levels — the seed's Figure 1 on this run's layer."""
        for name in self.cfg.hardware.target_layers:
            iq = get_module(self.qmodel, name).input_quantizer
            if iq.step.numel() != 1:
                continue
            values = self.target_inputs(name).numpy()
            plot_activation_levels(values, float(iq.step), float(iq.zero_point), iq.spec.qmin, iq.spec.qmax, name,
                                   self.out / "plots" / f"act_hist.{name}.png")
            if self.cfg.method.name in ("domr", "ocs") and not iq.spec.signed:
                plot_outlier_levels(values, float(iq.step), iq.spec.bits, None,
                                    self.out / "plots" / f"levels.{name}.png",
                                    title=f"input of {name}, {iq.spec.bits}-bit activations ({self.cfg.method.name})")


def run(cfg: RunConfig, out_dir: str | Path, data: str | None = None, overwrite: bool = False,
        resume: bool = False, quiet: bool = False) -> dict:
    """Run every stage of ``cfg`` into ``out_dir``; returns the results dict (also in ``results.json``).

    Everything that can be checked without data is checked before anything is read or written; the output
    folder is only cleared (``overwrite``) once the checkpoint and data have loaded."""
    out = Path(out_dir)
    checked = preflight(cfg, data, out=out, overwrite=overwrite, resume=resume)
    set_quiet(quiet)
    with RunFolder(out, checked.fingerprint, overwrite=overwrite, resume=resume) as folder:
        r = Run(cfg, out, checked, quiet, resume)
        with r.stages.stage("load"):
            r.load()
        r.folder = folder
        r.results = folder.begin(r.results)
        r.save_results()
        steps = [("evaluate FP", r.evaluate_fp), ("quantize", r.quantize),
                 ("evaluate quantized", r.evaluate_quantized), ("RTN baseline", r.rtn_baseline),
                 ("integer model", r.integer_model), ("hardware", r.hardware), ("save", r.save), ("report", r.report)]
        for name, fn in steps:
            with r.stages.stage(name):
                fn()
            r.save_results()
        r.save_results(status="complete")
    return r.results
