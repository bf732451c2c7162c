"""Hostile inputs against every sub-command (issue 16): each case exits non-zero with one line on stderr, no
traceback, and leaves the sandbox exactly as it was (nothing written, nothing destroyed). Cases fail during
validation, before any data is decoded, except the data cases, which use a tiny data root.

The ids name the issue item they cover: i1 overwrite, i3 lock/resume, i4 typing and OS errors, i5 late
errors, i6 YAML, i8 archives and images, i9 checkpoints, i12 small ones; cli: usage of each command."""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from hostile_kit import DROP, refused
from PIL import Image

from qmap.cli import main
from qmap.errors import CheckpointError  # noqa: F401 - documents the exit code family of the i9 cases

CONFIG, DATA, CKPT, HW, OUTPUT = 2, 3, 4, 5, 6


def _set(*pairs: str):
    """A run case overriding config keys with ``--set``."""
    return lambda b: b.run_args("out", *[a for p in pairs for a in ("--set", p)])


SET_CASES = [
    # i4: values of the wrong type or out of range, each refused before any data is loaded
    ("i4-rows-abc", "hardware.array.rows=abc", "hardware.array.rows"),
    ("i4-rows-float", "hardware.array.rows=3.5", "hardware.array.rows"),
    ("i4-rows-zero", "hardware.array.rows=0", "hardware.array.rows"),
    ("i4-rows-negative", "hardware.array.rows=-4", "hardware.array.rows"),
    ("i4-rows-huge", "hardware.array.rows=100000", "hardware.array.rows"),
    ("i4-cols-bool", "hardware.array.cols=true", "hardware.array.cols"),
    ("i4-psum-bits", "hardware.array.psum_bits=100", "hardware.array.psum_bits"),
    ("i4-array-wbits", "hardware.array.w_bits=12", "hardware.array.w_bits"),
    ("i4-dataflow", "hardware.array.dataflow=xy", "dataflow"),
    ("i4-dataflow-os-in-run", "hardware.array.dataflow=os", "dataflow"),
    ("i4-array-scalar", "hardware.array=5", "hardware.array"),
    ("i4-hardware-list", "hardware=[]", "hardware"),
    ("i4-calib-abc", "data.calib_size=abc", "data.calib_size"),
    ("i4-calib-zero", "data.calib_size=0", "data.calib_size"),
    ("i4-calib-negative", "data.calib_size=-5", "data.calib_size"),
    ("i4-calib-float", "data.calib_size=1.5", "data.calib_size"),
    ("i4-calib-seed", "data.calib_seed=-1", "data.calib_seed"),
    ("i4-batch-zero", "data.batch_size=0", "data.batch_size"),
    ("i4-batch-abc", "data.batch_size=abc", "data.batch_size"),
    ("i4-device-tpu", "device=tpu", "device"),
    ("i4-device-number", "device=3", "device"),
    ("i4-quant-scalar", "quant=5", "quant"),
    ("i4-quant-null", "quant=null", "quant"),
    ("i4-checkpoint-int", "model.checkpoint=123", "model.checkpoint"),
    ("i4-width-wide", "model.width=wide", "model.width"),
    ("i4-width-negative", "model.width=-1", "model.width"),
    ("i4-wbits-abc", "quant.w_bits=abc", "quant.w_bits"),
    ("i4-wbits-9", "quant.w_bits=9", "quant.w_bits"),
    ("i4-abits-1", "quant.a_bits=1", "quant.a_bits"),
    ("i4-observer", "quant.w_observer=median", "quant.w_observer"),
    ("i4-rounding", "quant.rounding=up", "quant.rounding"),
    ("i4-seed-abc", "seed=abc", "seed"),
    ("i4-seed-negative", "seed=-1", "seed"),
    ("i4-enabled-maybe", "hardware.enabled=maybe", "hardware.enabled"),
    ("i4-onnx-int", "export.onnx=2", "export.onnx"),
    ("i4-images-abc", "hardware.images=abc", "hardware.images"),
    ("i4-images-item", "hardware.images=[a]", "hardware.images"),
    ("i4-images-negative", "hardware.images=[-1]", "hardware.images"),
    ("i4-split", "data.test_split=val", "data.test_split"),
    ("i4-method-name-list", "method.name=[1]", "method.name"),
    ("i4-method-options-list", "method.options=[1]", "method.options"),
    ("i4-method-option-bogus", "method.options.bogus=1", "bogus"),
    ("i4-unknown-section", "nosuch.key=1", "nosuch"),
    ("i4-unknown-key", "data.nope=1", "nope"),
    ("i4-section-scalar", "data=3", "data"),
    ("i4-name-list", "name=[a]", "name"),
    # i1: a name that would put the default output folder outside runs/
    ("i1-name-dotdot", "name=../../victim", "name"),
    ("i1-name-absolute", "name=/tmp/victim", "name"),
    ("i1-name-hidden", "name=.hidden", "name"),
    ("i1-name-empty", "name=''", "name"),
    # i5: errors that used to surface after loading data and a full FP evaluation
    ("i5-target-missing", "hardware.target_layers=[features.99]", "features.99"),
    ("i5-target-linear", "hardware.target_layers=[classifier]", "not a conv layer"),
    ("i5-target-first", "hardware.target_layers=[features.0]", "is the first layer"),
    ("i5-images-5000", "hardware.images=[50000]", "hardware.images"),
    ("i5-rtl-modelsim", "hardware.rtl=modelsim", "hardware.rtl"),
    ("i5-first-last-100", "quant.first_last_bits=100", "quant.first_last_bits"),
    ("i5-layer-bits-range", "quant.layer_bits={features.3: [9, 4]}", "quant.layer_bits"),
    ("i5-layer-bits-length", "quant.layer_bits={features.3: [4]}", "quant.layer_bits"),
    ("i5-layer-bits-unknown", "quant.layer_bits={nosuch: [4, 4]}", "nosuch"),
    ("i5-skip-unknown", "quant.skip=[nosuch]", "nosuch"),
    ("i5-array-too-narrow", "hardware.array.w_bits=2", "2-bit weights"),
    ("i5-calib-zero-debris", "data.calib_size=0", "calib_size"),
    ("i5-limit-vs-image", "data.test_limit=5", "hardware.images=[7]"),
    # i12: small ones
    ("i12-test-limit-zero", "data.test_limit=0", "data.test_limit"),
    ("i12-per-channel-maybe", "quant.w_per_channel=maybe", "quant.w_per_channel"),
    ("i12-target-string", "hardware.target_layers=features.3", "hardware.target_layers"),
]


@pytest.mark.parametrize("case, setting, says", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_config_values(sandbox, capsys, case, setting, says):
    argv = sandbox.run_args("out", "--set", setting)
    if case == "i5-limit-vs-image":
        argv += ["--set", "hardware.images=[7]"]
        says = "hardware.images"
    refused(argv, sandbox, capsys, code=CONFIG, says=says)


METHOD_OPTION_CASES = [
    ("i4-alpha-criterion", "alpha", "criterion=bogus", "criterion"),
    ("i4-alpha-grid-length", "alpha", "grid=[1]", "grid"),
    ("i4-alpha-points-abc", "alpha", "points=abc", "points"),
    ("i4-alpha-layers-string", "alpha", "layers=features.3", "layers"),
    ("i4-ocs-target", "ocs", "target=bogus", "target"),
    ("i4-ocs-ratio", "ocs", "expand_ratio=abc", "expand_ratio"),
    ("i4-ocs-ratio-range", "ocs", "expand_ratio=5", "expand_ratio"),
    ("i4-brecq-granularity", "brecq", "granularity=bogus", "granularity"),
    ("i4-adaround-iters", "adaround", "iters=abc", "iters"),
    ("i4-qdrop-drop", "qdrop", "drop_prob=2", "drop_prob"),
    ("i4-qdrop-drop-one", "qdrop", "drop_prob=1", "drop_prob"),
    ("i4-brecq-lr-negative", "brecq", "lr_rounding=-0.001", "lr_rounding"),
    ("i4-brecq-warmup-beyond", "brecq", "warmup=2", "warmup"),
    ("i4-adaround-weight-negative", "adaround", "round_weight=-1", "round_weight"),
    ("i4-qdrop-seed-negative", "qdrop", "seed=-1", "seed"),
    ("i4-domr-checkpoint-negative", "domr", "checkpoint_every=-5", "checkpoint_every"),
    ("i4-domr-memory-negative", "domr", "memory_limit_mb=-1", "memory_limit_mb"),
    ("i4-brecq-p-zero", "brecq", "p_norm=0", "p_norm"),
    ("i4-domr-omr-bool", "domr", "omr=maybe", "omr"),
    ("i4-domr-omr-bogus", "domr", "omr_options.bogus=1", "bogus"),
    ("i4-domr-omr-form", "domr", "omr_options.form=bogus", "form"),
    ("i4-rtn-unknown", "rtn", "iters=5", "iters"),
]


@pytest.mark.parametrize("case, method, option, says", METHOD_OPTION_CASES, ids=[c[0] for c in METHOD_OPTION_CASES])
def test_bad_method_options(sandbox, capsys, case, method, option, says):
    argv = sandbox.run_args("out", "--method", method, "--set", f"method.options.{option}")
    refused(argv, sandbox, capsys, code=CONFIG, says=says)


def _bomb(levels: int) -> str:
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    tail = f"\nmodel: {{checkpoint: CKPT}}\nmethod: {{name: rtn, options: {{bomb: *l{levels - 1}}}}}\n"
    return "\n".join(lines) + tail


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no pixel data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _png(size=(32, 32), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _mirror_tar(box, members: dict[str, bytes], name="hostile_data") -> str:
    """A data root whose JPEG-mirror tar holds exactly ``members`` (no order index, no md5)."""
    tar = box.path / name / "cifar10-jpeg-q75" / "cifar10_jpeg_q75.tar"
    tar.parent.mkdir(parents=True)
    with tarfile.open(tar, "w") as tf:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(tar.parents[1])


def _cifar_members(per_class=(1, 1), bad: dict[str, bytes] | None = None) -> dict[str, bytes]:
    from datafakes import CLASSES

    out = {}
    for split, n in zip(("train", "test"), per_class):
        for c in CLASSES:
            for i in range(n):
                out[f"cifar10_jpeg/{split}/{c}/{i:04d}.png"] = _png(seed=i)
    return out | (bad or {})


def _cut_at_last_member(box) -> str:
    """The mirror tar cut exactly at the header of its last member (no end-of-archive blocks): tarfile reads
    it silently with one image fewer."""
    root = _mirror_tar(box, _cifar_members())
    tar = box.path / "hostile_data" / "cifar10-jpeg-q75" / "cifar10_jpeg_q75.tar"
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1].offset
    tar.write_bytes(tar.read_bytes()[:last])
    return root


def _ckpt(box, **manifest_changes):
    ck = box.checkpoint_copy()
    if manifest_changes:
        box.manifest_edit(ck, **manifest_changes)
    return ck


def _ckpt_state(box, edit):
    """A checkpoint whose tensors are edited by ``edit(state)``, saved with a matching sha256 in the manifest."""
    from safetensors.torch import load_file, save_file

    from qmap.models.checkpoint import sha256_file
    ck = box.checkpoint_copy()
    state = load_file(str(ck))
    edit(state)
    save_file(state, str(ck))
    box.manifest_edit(ck, sha256=sha256_file(ck))
    return ck


def _run_ckpt(box, ck):
    return box.run_args("out", "-c", str(ck))


def _hw(box, **geometry):
    folder = box.hw_copy()
    man = json.loads((folder / "manifest.json").read_text())
    for k, v in geometry.items():
        if k == "spec":
            man["spec"].update(v)
        elif k in ("n_itiles", "n_otiles", "sha256", "bias"):
            if v is DROP:
                man.pop(k)
            else:
                man[k] = v
        else:
            man["geometry"][k] = v
    (folder / "manifest.json").write_text(json.dumps(man))
    return ["sim", str(folder)]


def _results(box, content: str, name="r1") -> str:
    box.file(f"{name}/results.json", content)
    return str(box.path / name)


def _read_only(box, name="ro"):
    d = box.path / name
    d.mkdir()
    d.chmod(0o555)
    return d


def _evil_pickle(box) -> str:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {box.path}/pwned",))
    path = box.file("evil/model.pt", pickle.dumps({"w": Evil()}))
    return str(path)


# (id, exit code, text the line contains, argv builder). Builders may create inputs inside the sandbox.
CASES = [
    # ---- i1: --overwrite never deletes before the checks pass, never a foreign folder
    ("i1-overwrite-foreign-folder", CONFIG, "not a qmap run folder",
     lambda b: (b.file("p/keep", "x"), b.run_args("p", "--overwrite", "--data", "/nonexistent"))[1]),
    ("i1-overwrite-run-folder-bad-data", DATA, "nonexistent",
     lambda b: (b.run_folder("p"), b.run_args("p", "--overwrite", "--data", "/nonexistent"))[1]),
    ("i1-overwrite-run-folder-bad-config", CONFIG, "quant.w_bits",
     lambda b: (b.run_folder("p"), b.run_args("p", "--overwrite", "--set", "quant.w_bits=9"))[1]),
    ("i1-overwrite-run-folder-missing-ckpt", CKPT, "not found",
     lambda b: (b.run_folder("p"), b.run_args("p", "--overwrite", "-c", "/nonexistent.safetensors"))[1]),
    ("i1-overwrite-run-folder-bad-target", CONFIG, "x.99",
     lambda b: (b.run_folder("p"), b.run_args("p", "--overwrite", "--set", "hardware.target_layers=[x.99]"))[1]),
    ("i1-overwrite-foreign-entry", CONFIG, "no qmap run writes",
     lambda b: (b.run_folder("p"), b.file("p/notes.txt", "mine"), b.run_args("p", "--overwrite"))[2]),
    ("i1-overwrite-checkpoint-inside", CONFIG, "lies inside",
     lambda b: (b.run_folder("p"), b.run_args("p", "-c", str(b.checkpoint_copy("p/work")), "--overwrite"))[1]),
    ("i1-overwrite-config-inside", CONFIG, "lies inside",
     lambda b: (b.run_folder("p"), ["run", b.config("model: {checkpoint: CKPT}\n", "p/work/cfg.yaml"), "-o",
                                    str(b.path / "p"), "--overwrite", "-q"])[1]),
    ("i1-overwrite-and-resume", CONFIG, "exclude each other",
     lambda b: (b.run_folder("p"), b.run_args("p", "--overwrite", "--resume"))[1]),
    ("i1-no-flag-existing", CONFIG, "--overwrite", lambda b: (b.run_folder("p"), b.run_args("p"))[1]),
    ("i1-config-name-escape", CONFIG, "name",
     lambda b: ["run", b.config("name: ../../victim\nmodel: {checkpoint: CKPT}\n"), "-q"]),
    # ---- i3: --resume refuses another config; a locked folder is refused
    ("i3-resume-other-config", CONFIG, "different config",
     lambda b: (b.run_folder("p"), b.run_args("p", "--resume"))[1]),
    ("i3-resume-foreign-folder", CONFIG, "not a qmap run folder",
     lambda b: (b.file("p/x.txt", "x"), b.run_args("p", "--resume"))[1]),
    # ---- i4: output locations that cannot be used
    ("i4-out-is-file", CONFIG, "not a folder", lambda b: (b.file("f.txt", "x"), b.run_args("f.txt"))[1]),
    ("i4-out-under-file", OUTPUT, "not a folder", lambda b: (b.file("f.txt", "x"), b.run_args("f.txt/sub"))[1]),
    ("i4-out-proc", OUTPUT, "not writable", lambda b: b.run_args("/proc/qmap_hostile_out")),
    ("i4-out-read-only", OUTPUT, "not writable", lambda b: (_read_only(b), b.run_args("ro/out"))[1]),
    ("i4-out-read-only-itself", OUTPUT, "not writable", lambda b: (_read_only(b), b.run_args("ro"))[1]),
    # ---- run: usage
    ("cli-run-no-config", CONFIG, "config file or --checkpoint", lambda b: ["run", "-q"]),
    ("cli-run-missing-config", CONFIG, "not found", lambda b: ["run", "nosuch.yaml"]),
    ("cli-run-config-is-dir", CONFIG, "is a folder", lambda b: (b.file("d/x", "x"), ["run", "d"])[1]),
    ("cli-run-config-is-device", CONFIG, "is not a regular file", lambda b: ["run", "/dev/zero"]),
    ("cli-eval-ckpt-is-device", CKPT, "is not a regular file", lambda b: ["eval", "-c", "/dev/zero"]),
    ("cli-run-unknown-method", CONFIG, "unknown method", lambda b: b.run_args("out", "--method", "foo")),
    ("cli-run-wbits-flag", CONFIG, "--w-bits", lambda b: b.run_args("out", "--w-bits", "9")),
    ("cli-run-wbits-flag-abc", CONFIG, "--w-bits", lambda b: b.run_args("out", "--w-bits", "abc")),
    ("cli-run-calib-size-flag", CONFIG, "--calib-size", lambda b: b.run_args("out", "--calib-size", "0")),
    ("cli-run-device-flag", CONFIG, "--device", lambda b: b.run_args("out", "--device", "tpu")),
    ("cli-run-set-no-equals", CONFIG, "KEY=VALUE", lambda b: b.run_args("out", "--set", "novalue")),
    ("cli-run-set-empty-key", CONFIG, "KEY=VALUE", lambda b: b.run_args("out", "--set", "=3")),
    ("cli-run-set-bad-key", CONFIG, "malformed", lambda b: b.run_args("out", "--set", "a..b=1")),
    ("cli-run-set-bad-yaml", CONFIG, "--set", lambda b: b.run_args("out", "--set", "quant.skip=[unclosed")),
    ("cli-run-unknown-flag", CONFIG, "unrecognized", lambda b: b.run_args("out", "--bogus")),
    ("cli-run-optional-out-of-range", CONFIG, "out of range", lambda b: b.run_args("out", "--set",
                                                                                 "data.test_limit=0")),
    ("cli-run-nested-optional-section", CONFIG, "budget", lambda b: b.run_args(
        "out", "--set", "method.name=domr", "--set", "method.options.omr_options={budget: 2}")),
    ("cli-run-no-data", DATA, "data root", lambda b: b.run_args("out", "--data", str(b.path / "nodata"))),
    # ---- i6: YAML and config files
    ("i6-alias-bomb", CONFIG, "alias", lambda b: ["run", b.config(_bomb(9)), "-o", "out", "-q"]),
    ("i6-alias-bomb-deeper", CONFIG, "alias", lambda b: ["run", b.config(_bomb(12)), "-o", "out", "-q"]),
    ("i6-too-many-aliases", CONFIG, "aliases",
     lambda b: ["run", b.config("a: &a 1\nb: [" + ", ".join(["*a"] * 200) + "]\nmodel: {checkpoint: CKPT}\n")]),
    ("i6-deep-json", CONFIG, "", lambda b: ["run", b.file("deep.json", "[" * 100_000 + "]" * 100_000)]),
    ("i6-deep-yaml", CONFIG, "", lambda b: ["run", b.config("a: " + "[" * 5000 + "]" * 5000 + "\n")]),
    ("i6-huge-config", CONFIG, "KiB", lambda b: ["run", b.config("# " + "x" * (2 << 20) + "\n")]),
    ("i6-python-tag", CONFIG, "cannot parse",
     lambda b: ["run", b.config("model: !!python/object/apply:os.system ['touch pwned']\n")]),
    ("i6-binary-config", CONFIG, "", lambda b: ["run", b.file("bin.yaml", bytes(range(256)) * 4)]),
    ("i6-config-list", CONFIG, "mapping", lambda b: ["run", b.config("- a\n- b\n")]),
    ("i6-config-empty", CONFIG, "model", lambda b: ["run", b.config("")]),
    ("i6-config-unknown-section", CONFIG, "bogus",
     lambda b: ["run", b.config("model: {checkpoint: CKPT}\nbogus: 1\n")]),
    ("i6-bad-json", CONFIG, "cannot parse", lambda b: ["run", b.file("c.json", "{model: }")]),
    ("i6-set-deep", CONFIG, "", lambda b: b.run_args("out", "--set", "method.options.x=" + "[" * 3000)),
    # ---- i8: archives and images (a data root inside the sandbox; the cache lives outside it)
    ("i8-tar-cut-at-member", DATA, "truncated", lambda b: b.run_args("out", "--data", _cut_at_last_member(b))),
    ("i8-tar-cut-mid-member", DATA, "",
     lambda b: (lambda root: (_truncate_tar(b, 0.6), b.run_args("out", "--data", root))[1])(
         _mirror_tar(b, _cifar_members()))),
    ("i8-png-bomb", DATA, "", lambda b: b.run_args("out", "--data", _mirror_tar(
        b, _cifar_members(bad={"cifar10_jpeg/test/cat/9999.png": _png_header(100_000, 100_000)})))),
    ("i8-wrong-size-image", DATA, "expected 32x32", lambda b: b.run_args("out", "--data", _mirror_tar(
        b, _cifar_members(bad={"cifar10_jpeg/test/cat/9999.png": _png((64, 48))})))),
    ("i8-garbage-image", DATA, "cannot decode", lambda b: b.run_args("out", "--data", _mirror_tar(
        b, _cifar_members(bad={"cifar10_jpeg/test/cat/9999.png": b"not an image"})))),
    ("i8-missing-class", DATA, "classes", lambda b: b.run_args("out", "--data", _mirror_tar(
        b, {k: v for k, v in _cifar_members().items() if "/truck/" not in k}))),
    ("i8-not-a-tar", DATA, "tar", lambda b: b.run_args("out", "--data", _mirror_garbage(b))),
    ("i8-data-prepare-cut", DATA, "truncated", lambda b: ["data", "prepare", "--data", _cut_at_last_member(b)]),
    # ---- i9: checkpoints
    ("i9-sha256-mismatch", CKPT, "sha256", lambda b: _run_ckpt(b, _ckpt(b, sha256="0" * 64))),
    ("i9-sha256-malformed", CKPT, "sha256", lambda b: _run_ckpt(b, _ckpt(b, sha256="xyz"))),
    ("i9-bn-negative-var", CKPT, "running_var", lambda b: _run_ckpt(b, _ckpt_state(
        b, lambda s: s["features.1.running_var"].fill_(-1.0)))),
    ("i9-nan-weight", CKPT, "NaN", lambda b: _run_ckpt(b, _ckpt_state(
        b, lambda s: s["features.0.weight"].fill_(float("nan"))))),
    ("i9-missing-tensor", CKPT, "missing", lambda b: _run_ckpt(b, _ckpt_state(
        b, lambda s: s.pop("classifier.bias")))),
    ("i9-zero-std", CKPT, "normalize_std", lambda b: _run_ckpt(b, _ckpt(b, normalize_std=[0.0, 1.0, 1.0]))),
    ("i9-negative-std", CKPT, "normalize_std", lambda b: _run_ckpt(b, _ckpt(b, normalize_std=[-1, 1, 1]))),
    ("i9-two-value-mean", CKPT, "normalize_mean", lambda b: _run_ckpt(b, _ckpt(b, normalize_mean=[0.5, 0.5]))),
    ("i9-string-mean", CKPT, "normalize_mean", lambda b: _run_ckpt(b, _ckpt(b, normalize_mean="abc"))),
    ("i9-width-wide", CKPT, "width", lambda b: _run_ckpt(b, _ckpt(b, width="wide"))),
    ("i9-width-zero", CKPT, "width", lambda b: _run_ckpt(b, _ckpt(b, width=0))),
    ("i9-classes-zero", CKPT, "num_classes", lambda b: _run_ckpt(b, _ckpt(b, num_classes=0))),
    ("i9-arch-unknown", CKPT, "unknown model", lambda b: _run_ckpt(b, _ckpt(b, arch="resnet9000"))),
    ("i9-arch-number", CKPT, "arch", lambda b: _run_ckpt(b, _ckpt(b, arch=5))),
    ("i9-arch-missing", CKPT, "arch", lambda b: _run_ckpt(b, _ckpt(b, arch=DROP))),
    ("i9-manifest-binary", CKPT, "manifest", lambda b: _run_ckpt(b, _manifest_bytes(b, bytes(range(256))))),
    ("i9-manifest-list", CKPT, "JSON object", lambda b: _run_ckpt(b, _manifest_bytes(b, b"[1, 2]"))),
    ("i9-manifest-deep", CKPT, "manifest", lambda b: _run_ckpt(b, _manifest_bytes(b, b"[" * 100_000))),
    ("i9-garbage-safetensors", CKPT, "cannot read", lambda b: _run_ckpt(b, _garbage_ckpt(b))),
    ("i9-evil-pickle", CKPT, "weights_only",
     lambda b: ["eval", "tiny_cnn", "-c", _evil_pickle(b), "--data", str(b.world.root)]),
    ("i9-eval-sha256", CKPT, "sha256",
     lambda b: ["eval", "-c", _ckpt(b, sha256="1" * 64), "--data", str(b.world.root), "-q"]),
    ("i9-eval-zero-std", CKPT, "normalize_std",
     lambda b: ["eval", "-c", _ckpt(b, normalize_std=[0, 0, 0]), "--data", str(b.world.root), "-q"]),
    # ---- eval
    ("cli-eval-batch-zero", CONFIG, "--batch-size", lambda b: ["eval", "-c", b.world.ckpt, "--batch-size", "0"]),
    ("cli-eval-device-tpu", CONFIG, "--device", lambda b: ["eval", "-c", b.world.ckpt, "--device", "tpu"]),
    ("cli-eval-limit-zero", CONFIG, "--limit", lambda b: ["eval", "-c", b.world.ckpt, "--limit", "0"]),
    ("cli-eval-split", CONFIG, "--split", lambda b: ["eval", "-c", b.world.ckpt, "--split", "val"]),
    ("cli-eval-missing-ckpt", CKPT, "not found", lambda b: ["eval", "-c", "nosuch.safetensors"]),
    ("cli-eval-wrong-arch", CKPT, "vgg16_bn", lambda b: ["eval", "vgg16_bn", "-c", b.world.ckpt]),
    ("cli-eval-no-checkpoint", CONFIG, "--checkpoint", lambda b: ["eval"]),
    # ---- export onnx: output checked before any work
    ("i4-export-out-dir", CONFIG, "is a folder",
     lambda b: (b.file("d/x", "x"), ["export", "onnx", "-c", b.world.ckpt, "-o", "d"])[1]),
    ("cli-export-out-exists", CONFIG, "already exists",
     lambda b: (b.file("m.onnx", "mine"), ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx"])[1]),
    ("cli-export-out-suffix", CONFIG, ".onnx", lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.txt"]),
    ("cli-export-out-under-file", OUTPUT, "not a folder",
     lambda b: (b.file("f", "x"), ["export", "onnx", "-c", b.world.ckpt, "-o", "f/m.onnx"])[1]),
    ("cli-export-read-only", OUTPUT, "not writable",
     lambda b: (_read_only(b), ["export", "onnx", "-c", b.world.ckpt, "-o", "ro/m.onnx"])[1]),
    ("cli-export-wbits", CONFIG, "--w-bits", lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx",
                                                        "--w-bits", "9"]),
    ("cli-export-first-last", CONFIG, "", lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx",
                                                     "--first-last-bits", "100"]),
    ("cli-export-first-last-abc", CONFIG, "--first-last-bits",
     lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx", "--first-last-bits", "abc"]),
    ("cli-export-opset", CONFIG, "opset", lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx",
                                                     "--opset", "5"]),
    ("cli-export-calib-zero", CONFIG, "--calib-size",
     lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx", "--calib-size", "0"]),
    ("cli-export-method", CONFIG, "--method", lambda b: ["export", "onnx", "-c", b.world.ckpt, "-o", "m.onnx",
                                                         "--method", "foo"]),
    ("cli-export-no-format", CONFIG, "", lambda b: ["export"]),
    ("cli-export-missing-ckpt", CKPT, "not found", lambda b: ["export", "onnx", "-c", "no.safetensors",
                                                              "-o", "m.onnx"]),
    # ---- compare
    ("i4-compare-not-json", 2, "cannot read", lambda b: ["compare", _results(b, "{not json")]),
    ("i4-compare-json-list", 2, "not a qmap results.json", lambda b: ["compare", _results(b, "[1, 2]")]),
    ("i4-compare-metrics-string", 2, "not a qmap results.json",
     lambda b: ["compare", _results(b, json.dumps({"config": {}, "metrics": "x"}))]),
    ("i4-compare-binary", 2, "cannot read",
     lambda b: ["compare", (b.file("rb/results.json", bytes(range(256))), str(b.path / "rb"))[1]]),
    ("i4-compare-missing", 2, "cannot read", lambda b: ["compare", "nosuch"]),
    ("i4-compare-plot-read-only", OUTPUT, "not writable",
     lambda b: (_read_only(b), ["compare", b.run_folder("p"), "--plot", "ro/c.png"])[1]),
    ("i12-compare-plot-dir", CONFIG, "is a folder",
     lambda b: (b.file("d/x", "x"), ["compare", b.run_folder("p"), "--plot", "d"])[1]),
    ("i12-compare-plot-suffix", CONFIG, ".png", lambda b: ["compare", b.run_folder("p"), "-o", "plot"]),
    # ---- sim: hostile manifests and options
    ("i4-sim-no-sha256", HW, "sha256", lambda b: _hw(b, sha256=DROP)),
    ("cli-sim-rows-huge", HW, "array must be", lambda b: _hw(b, spec={"rows": 10**9})),
    ("cli-sim-bits-string", HW, "w_bits must be an integer", lambda b: _hw(b, spec={"w_bits": "x"})),
    ("i4-sim-sha256-list", HW, "sha256", lambda b: _hw(b, sha256=[1])),
    ("i4-sim-stride-zero", HW, "stride", lambda b: _hw(b, stride=0)),
    ("i4-sim-height-negative", HW, "height", lambda b: _hw(b, height=-4)),
    ("i4-sim-height-string", HW, "height", lambda b: _hw(b, height="4")),
    ("i4-sim-kh-100", HW, "kernel", lambda b: _hw(b, kh=100)),
    ("i4-sim-itiles-negative", HW, "n_itiles", lambda b: _hw(b, n_itiles=-1)),
    ("i4-sim-itiles-wrong", HW, "n_itiles", lambda b: _hw(b, n_itiles=5)),
    ("i4-sim-huge-geometry", HW, "partial sums", lambda b: _hw(b, height=100_000, width=100_000)),
    ("i4-sim-bias-length", HW, "bias", lambda b: _hw(b, bias=[1, 2])),
    ("i4-sim-tampered-file", HW, "SHA-256", lambda b: _sim_tampered(b)),
    ("i4-sim-manifest-garbage", HW, "", lambda b: (b.file("hwg/manifest.json", b"\x00\xff"), ["sim", "hwg"])[1]),
    ("i4-sim-manifest-list", HW, "manifest", lambda b: (b.file("hwl/manifest.json", "[]"), ["sim", "hwl"])[1]),
    ("i4-sim-not-folder", HW, "not a folder", lambda b: ["sim", "nosuch"]),
    ("i12-sim-layers-negative", CONFIG, "--layers", lambda b: ["sim", "--random", "--layers", "-1"]),
    ("i12-sim-layers-zero", CONFIG, "--layers", lambda b: ["sim", "--random", "--layers", "0"]),
    ("cli-sim-layers-huge", CONFIG, "--layers", lambda b: ["sim", "--random", "--layers", "1000000000"]),
    ("cli-sim-nothing", CONFIG, "--random", lambda b: ["sim"]),
    ("cli-sim-both", CONFIG, "not both", lambda b: ["sim", str(b.world.hw), "--random"]),
    ("cli-sim-out-not-empty", CONFIG, "not empty",
     lambda b: (b.file("o/x", "x"), ["sim", "--random", "-o", "o"])[1]),
    ("cli-sim-rtl-bogus", CONFIG, "--rtl", lambda b: ["sim", str(b.world.hw), "--rtl", "modelsim"]),
    ("cli-sim-build-inside", CONFIG, "--build-dir",
     lambda b: ["sim", str(b.world.hw), "--rtl", "icarus", "--build-dir", str(b.world.hw / "build")]),
    # ---- train and data
    ("cli-train-out-suffix", CONFIG, ".safetensors", lambda b: ["train", "tiny_cnn", "-o", "m.pt"]),
    ("cli-train-out-dir", CONFIG, "is a folder",
     lambda b: (b.file("d.safetensors/x", "x"), ["train", "tiny_cnn", "-o", "d.safetensors"])[1]),
    ("cli-train-out-exists", CONFIG, "already exists",
     lambda b: (b.checkpoint_copy("mine"), ["train", "tiny_cnn", "-o", str(b.path / "mine" / "tiny.safetensors")])[1]),
    ("cli-train-out-exists-resume-without-state", CONFIG, "no training state",
     lambda b: (b.checkpoint_copy("mine"), ["train", "tiny_cnn", "-o", str(b.path / "mine" / "tiny.safetensors"),
                                            "--resume"])[1]),
    ("cli-train-epochs-zero", CONFIG, "--epochs", lambda b: ["train", "tiny_cnn", "-o", "m.safetensors",
                                                             "--epochs", "0"]),
    ("cli-train-width", CONFIG, "--width", lambda b: ["train", "tiny_cnn", "-o", "m.safetensors", "--width", "-1"]),
    ("cli-train-model", CONFIG, "unknown model", lambda b: ["train", "resnet9000", "-o", "m.safetensors"]),
    ("cli-train-lr-negative", CONFIG, "lr: -1.0 is out of range; allowed: > 0",
     lambda b: ["train", "tiny_cnn", "-o", "m.safetensors", "--lr", "-1"]),
    ("cli-train-warmup-zero", CONFIG, "warmup",
     lambda b: ["train", "tiny_cnn", "-o", "m.safetensors", "--warmup", "0"]),
    ("cli-train-decay-nan", CONFIG, "weight_decay",
     lambda b: ["train", "tiny_cnn", "-o", "m.safetensors", "--weight-decay", "nan"]),
    ("cli-data-action", CONFIG, "invalid choice", lambda b: ["data", "explode"]),
    ("cli-data-no-root", DATA, "not a folder", lambda b: ["data", "info", "--data", "/nonexistent"]),
    # ---- top level
    ("cli-no-command", CONFIG, "give a command", lambda b: []),
    ("cli-unknown-command", CONFIG, "invalid choice", lambda b: ["explode"]),
    ("cli-log-level", CONFIG, "--log-level", lambda b: ["eval", "-c", b.world.ckpt, "--log-level", "loud"]),
]


def _truncate_tar(box, fraction: float) -> None:
    tar = box.path / "hostile_data" / "cifar10-jpeg-q75" / "cifar10_jpeg_q75.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * fraction) // 512 * 512 + 100])


def _mirror_garbage(box) -> str:
    tar = box.path / "garbage_data" / "cifar10-jpeg-q75" / "cifar10_jpeg_q75.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes(os.urandom(3000))
    return str(tar.parents[1])


def _manifest_bytes(box, content: bytes):
    ck = box.checkpoint_copy()
    ck.with_suffix(".json").write_bytes(content)
    return ck


def _garbage_ckpt(box):
    ck = box.checkpoint_copy()
    ck.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage" + os.urandom(64))
    box.manifest_edit(ck, sha256=DROP)
    return ck


def _sim_tampered(box):
    folder = box.hw_copy()
    victim = sorted(p for p in folder.iterdir() if p.suffix == ".txt")[0]
    victim.write_text(victim.read_text().replace("0", "1", 1))
    return ["sim", str(folder)]


@pytest.mark.parametrize("case, code, says, build", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(sandbox, capsys, case, code, says, build):
    argv = build(sandbox)
    refused(argv, sandbox, capsys, code=code, says=says or None)
    assert not (sandbox.path / "pwned").exists()


def test_locked_output_folder_is_refused(sandbox, capsys):
    """i3: a second run into a folder another run holds is refused at once, the folder untouched."""
    out = sandbox.path / "locked"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(sandbox.run_args("locked"), sandbox, capsys, code=CONFIG, says="in use")
    finally:
        os.close(fd)


def test_case_count():
    """The issue asks for at least 100 hostile cases."""
    assert len(SET_CASES) + len(METHOD_OPTION_CASES) + len(CASES) + 1 >= 100


def test_cuda_device_refused_without_cuda(sandbox, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is valid")
    refused(sandbox.run_args("out", "--set", "device=cuda"), sandbox, capsys, code=CONFIG, says="CUDA")


def test_overwrite_replaces_an_existing_checkpoint_or_onnx_file(sandbox, capsys):
    """The refusals above are lifted by --overwrite only: the existing file is then replaced."""
    ck = sandbox.checkpoint_copy("mine")
    before = ck.read_bytes()
    images = sandbox.world.root / "cifar10-jpeg-q75" / "cifar10_jpeg"
    assert main(["train", "tiny_cnn", "-o", str(ck), "--image-folder", str(images), "--epochs", "1", "--batch-size",
                 "8", "--overwrite", "-q"]) == 0
    assert ck.read_bytes() != before
    onnx = sandbox.file("m.onnx", "mine")
    pytest.importorskip("onnxruntime", reason="optional 'onnx' extra (onnxruntime) not installed")
    assert main(["export", "onnx", "-c", str(ck), "-o", str(onnx), "--image-folder", str(images), "--calib-size", "8",
                 "--verify-limit", "4", "--overwrite", "-q"]) == 0
    assert onnx.read_bytes() != b"mine"
