"""Export one conv layer as course-testbench files, and read such a folder back.

Files (single tile; with several tiles the psum/out names gain ``_itile{i}_otile{o}`` / ``_otile{o}``):

- ``activation_tile{it}.txt``: Hp·Wp lines (padded input, row-major nij), R unsigned a_bits values.
- ``weight_itile{it}_otile{ot}_kij{k}.txt``: C lines (output channels), R signed w_bits values.
- ``psum_kij{k}.txt``: Hp·Wp lines, C signed psum_bits values: psum[nij, c] = Σ_r W[c, r]·x[r, nij].
- ``out.txt``: Ho·Wo lines (row-major), C values: ReLU(bias + Σ_it Σ_kij psum[nij(kij, p)]).
- ``acc_address.txt``: K lines per output position p (in kij order), one addr_bits value kij·Hp·Wp + nij;
  no header lines (the template reads it with ``$fscanf("%11b")`` from the first line): N·K lines in all.

Every other file starts with three one-token ``#...#`` header lines (skipped by the template's three
``$fscanf("%s")``).
- ``bias_otile{o}.txt``: one line, C signed psum_bits values (the SFU's starting accumulator), only when the
  layer has a bias; ``qmap_layer.txt``: the layer's runtime configuration for the one-build RTL core
  ("name value" lines, see :data:`LAYER_KEYS`; the course template does not read it).
- ``dump_decimal.txt``: the same integers in decimal; ``manifest.json``: spec, geometry, meta (scales, α,
  image index, ...) and the SHA-256 of every file.

``reference=False`` writes only what the core reads, *packed*: ``activation.txt`` (the activation tiles'
lines one after the other), ``weight.txt`` (every weight file's lines in fold order (otile, itile, kij)) and
``bias.txt`` (one line per otile), the same line format with three header lines, plus qmap_layer.txt. The
whole-network RTL run uses it (three files per layer instead of up to 9,000), with the expected values coming
from the golden model instead of files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HardwareError
from ..io import atomic_write_json, atomic_write_text
from .formats import format_vectors, parse_vectors
from .mapping import ConvGeometry, MappedConv, fold_input_indices, map_conv
from .spec import ArraySpec

FORMAT = "qmap-hw-course-v1"
MANIFEST = "manifest.json"
MIN_ADDR_BITS = 11
LAYER_FILE = "qmap_layer.txt"
LAYER_KEYS = ("wp", "npad", "wo", "n", "kh", "kw", "stride", "itiles", "otiles", "saturate", "bias", "reference",
              "addr_bits", "os", "cin", "cout", "packed")


@dataclass(frozen=True)
class FileSpec:
    """One exported file: ``kind`` in activation/weight/psum/out/address, its tile/kij index and format."""

    name: str
    kind: str
    index: tuple[int, ...]
    n_values: int
    bits: int
    signed: bool
    n_lines: int

    @property
    def headered(self) -> bool:
        """The address file is read from its first line; every other file has three header lines."""
        return self.kind != "address"


def address_bits(geom: ConvGeometry) -> int:
    return max(MIN_ADDR_BITS, int(geom.n_kij * geom.n_padded - 1).bit_length())


def layer_files(geom: ConvGeometry, spec: ArraySpec, n_itiles: int, n_otiles: int, *, bias: bool = False,
                reference: bool = True) -> list[FileSpec]:
    """Every data file of a layer export, in a fixed order (``reference``: the course layout with psum, out and
    address files; else the packed files the core reads)."""
    R, C, P = spec.rows, spec.cols, spec.psum_bits
    if not reference:
        files = [FileSpec("activation.txt", "activations", (), R, spec.a_bits, False, n_itiles * geom.n_padded),
                 FileSpec("weight.txt", "weights", (), R, spec.w_bits, True, n_otiles * n_itiles * geom.n_kij * C)]
        return files + ([FileSpec("bias.txt", "biases", (), C, P, True, n_otiles)] if bias else [])
    single = n_itiles == 1 and n_otiles == 1
    files = [FileSpec(f"activation_tile{it}.txt", "activation", (it,), R, spec.a_bits, False, geom.n_padded)
             for it in range(n_itiles)]
    for ot in range(n_otiles):
        for it in range(n_itiles):
            for k in range(geom.n_kij):
                files.append(FileSpec(f"weight_itile{it}_otile{ot}_kij{k}.txt", "weight", (ot, it, k), R,
                                      spec.w_bits, True, C))
                psum = f"psum_kij{k}.txt" if single else f"psum_itile{it}_otile{ot}_kij{k}.txt"
                files.append(FileSpec(psum, "psum", (ot, it, k), C, P, True, geom.n_padded))
        if bias:
            files.append(FileSpec(f"bias_otile{ot}.txt", "bias", (ot,), C, P, True, 1))
        files.append(FileSpec("out.txt" if n_otiles == 1 else f"out_otile{ot}.txt", "out", (ot,), C, P, True,
                              geom.n_positions))
    files.append(FileSpec("acc_address.txt", "address", (), 1, address_bits(geom), False,
                          geom.n_positions * geom.n_kij))
    return files


def layer_config_text(geom: ConvGeometry, spec: ArraySpec, n_itiles: int, n_otiles: int, *, bias: bool,
                      reference: bool) -> str:
    """``qmap_layer.txt``: one "name value" line per :data:`LAYER_KEYS` entry, in that order."""
    values = (geom.padded_w, geom.n_padded, geom.out_w, geom.n_positions, geom.kh, geom.kw, geom.stride, n_itiles,
              n_otiles, int(spec.overflow == "saturate"), int(bias), int(reference), address_bits(geom),
              int(spec.dataflow == "os"), geom.in_channels, geom.out_channels, int(not reference))
    return "".join(f"{k} {v}\n" for k, v in zip(LAYER_KEYS, values, strict=True))


@dataclass(frozen=True)
class LayerVectors:
    """The integers of an export. ``psums[ot, it, k, nij, c]``, ``outputs[ot, p, c]``, ``acc_address[p·K + k]``."""

    mapped: MappedConv
    psums: np.ndarray
    outputs: np.ndarray
    acc_address: np.ndarray


def compute_vectors(mapped: MappedConv) -> LayerVectors:
    """Reference psums and outputs by plain matrix products (independent of the systolic schedule)."""
    g = mapped.geom
    psums = np.einsum("oikcr,irn->oiknc", mapped.w_tiles, mapped.x_tiles)
    idx = fold_input_indices(g)
    gathered = psums[:, :, np.arange(g.n_kij)[:, None], idx, :]  # [ot, it, k, p, c]
    acc = gathered.sum(axis=(1, 2)) + mapped.bias_tiles[:, None, :]
    addr = (np.arange(g.n_kij)[None, :] * g.n_padded + idx.T).reshape(-1)
    return LayerVectors(mapped, psums, np.maximum(acc, 0), addr)


def _file_data(vec: LayerVectors, f: FileSpec) -> np.ndarray:
    m = vec.mapped
    if f.kind == "activation":
        return m.x_tiles[f.index].T
    if f.kind == "weight":
        return m.w_tiles[f.index]
    if f.kind == "psum":
        return vec.psums[f.index]
    if f.kind == "out":
        return vec.outputs[f.index]
    if f.kind == "bias":
        return m.bias_tiles[f.index][None, :]
    if f.kind == "activations":
        return m.x_tiles.transpose(0, 2, 1).reshape(-1, m.spec.rows)
    if f.kind == "weights":
        return m.w_tiles.reshape(-1, m.spec.rows)
    if f.kind == "biases":
        return m.bias_tiles
    return vec.acc_address[:, None]



def _headers(f: FileSpec, image: str) -> tuple[str, ...]:
    if not f.headered:
        return ()
    layout = f"{f.n_lines}x{f.n_values}x{f.bits}b_{'signed' if f.signed else 'unsigned'}_msb=v{f.n_values - 1}"
    return (f.name.removesuffix(".txt"), layout, f"qmap_image={image}")


def export_conv(x_int: np.ndarray, w_int: np.ndarray, spec: ArraySpec, out_dir: str | Path, *, padding: int = 1,
                stride: int = 1, bias: np.ndarray | None = None, meta: dict | None = None,
                reference: bool = True) -> dict:
    """Tile a conv (``x_int[I,H,W]`` unsigned, ``w_int[O,I,kh,kw]`` signed) and write every file of it to
    ``out_dir`` (``reference=False``: only the files the core reads). ``meta`` (layer name, image index, scales,
    α, ...) goes into the manifest. Returns the manifest."""
    return export_mapped(map_conv(x_int, w_int, spec, padding, stride, bias), out_dir, has_bias=bias is not None,
                         meta=meta, reference=reference, shapes={"x": list(np.shape(x_int)),
                                                                 "w": list(np.shape(w_int))})


def export_mapped(mapped: MappedConv, out_dir: str | Path, *, has_bias: bool, meta: dict | None = None,
                  reference: bool = True, shapes: dict | None = None) -> dict:
    """Write the files of an already tiled conv (see :func:`export_conv`)."""
    spec = mapped.spec
    vec = compute_vectors(mapped) if reference else LayerVectors(mapped, None, None, None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    image = "".join(ch for ch in str(meta.get("image_index", "na")) if not ch.isspace() and ch != "#") or "na"
    checksums, dump = {}, []
    files = layer_files(mapped.geom, spec, mapped.n_itiles, mapped.n_otiles, bias=has_bias, reference=reference)
    for f in files:
        data = _file_data(vec, f)
        text = format_vectors(data, f.bits, f.signed, _headers(f, image), f.name)
        atomic_write_text(out / f.name, text)
        checksums[f.name] = hashlib.sha256(text.encode()).hexdigest()
        if reference:
            dump.append(f"== {f.name} [{f.n_lines} x {f.n_values}], value {f.n_values - 1} first ==")
            dump += [" ".join(str(int(v)) for v in row[::-1]) for row in data]
    config = layer_config_text(mapped.geom, spec, mapped.n_itiles, mapped.n_otiles, bias=has_bias,
                               reference=reference)
    atomic_write_text(out / LAYER_FILE, config)
    checksums[LAYER_FILE] = hashlib.sha256(config.encode()).hexdigest()
    if reference:
        atomic_write_text(out / "dump_decimal.txt", "\n".join(dump) + "\n")
    g = mapped.geom
    manifest = {"format": FORMAT, "spec": spec.to_dict(), "geometry": g.to_dict(), "reference": reference,
                "has_bias": has_bias, "n_itiles": mapped.n_itiles, "n_otiles": mapped.n_otiles,
                "bias": mapped.bias.tolist(),
                "shapes": {**(shapes or {}), "out": [g.out_channels, g.out_h, g.out_w]},
                "meta": meta, "sha256": checksums}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    p = Path(folder) / MANIFEST
    try:
        manifest = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise HardwareError(f"cannot read {p}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise HardwareError(f"{p}: not a {FORMAT} manifest")
    return manifest


MAX_VALUES = 1 << 27  # psum values a manifest may declare (1 GiB as int64): refuse absurd geometries up front


def check_layout(spec: ArraySpec, geom: ConvGeometry, n_it: int, n_ot: int, bias: np.ndarray, sha256,
                 where: Path) -> None:
    """Refuse a manifest whose numbers cannot describe a real layer, before anything is allocated."""
    g = geom.to_dict()
    for k, v in [*g.items(), ("n_itiles", n_it), ("n_otiles", n_ot)]:
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "padding" else 1):
            raise HardwareError(f"{where}: {k} must be an integer >= {0 if k == 'padding' else 1}, got {v!r}")
    if geom.kh > geom.padded_h or geom.kw > geom.padded_w:
        raise HardwareError(f"{where}: a {geom.kh}x{geom.kw} kernel does not fit the padded "
                            f"{geom.padded_h}x{geom.padded_w} input")
    if n_it != -(-geom.in_channels // spec.rows) or n_ot != -(-geom.out_channels // spec.cols):
        raise HardwareError(f"{where}: n_itiles/n_otiles {n_it}/{n_ot} do not match {geom.in_channels} input and "
                            f"{geom.out_channels} output channels on a {spec.rows}x{spec.cols} array")
    if n_ot * n_it * geom.n_kij * geom.n_padded * spec.cols > MAX_VALUES:
        raise HardwareError(f"{where}: the declared geometry needs more than {MAX_VALUES:,} partial sums")
    if bias.shape != (geom.out_channels,):
        raise HardwareError(f"{where}: bias has {bias.size} values for {geom.out_channels} output channels")
    if not isinstance(sha256, dict) or not all(isinstance(v, str) for v in sha256.values()):
        raise HardwareError(f"{where}: 'sha256' must map every file name to its SHA-256")


def read_export(folder: str | Path, verify_checksums: bool = True) -> LayerVectors:
    """Parse every file of an exported folder back into integers (strict format, optional checksum check)."""
    folder = Path(folder)
    man = read_manifest(folder)
    try:
        spec = ArraySpec(**man["spec"])
        geom = ConvGeometry(**man["geometry"])
        n_it, n_ot = int(man["n_itiles"]), int(man["n_otiles"])
        bias = np.asarray(man["bias"], dtype=np.int64)
        has_bias, reference = bool(man.get("has_bias", False)), bool(man.get("reference", True))
    except (KeyError, TypeError, ValueError) as e:
        raise HardwareError(f"{folder / MANIFEST}: bad field ({e})") from None
    except HardwareError as e:  # the array's own checks
        raise HardwareError(f"{folder / MANIFEST}: {e}") from None
    check_layout(spec, geom, n_it, n_ot, bias, man.get("sha256"), folder / MANIFEST)
    R, C, K = spec.rows, spec.cols, geom.n_kij
    x = np.zeros((n_it, R, geom.n_padded), dtype=np.int64)
    w = np.zeros((n_ot, n_it, K, C, R), dtype=np.int64)
    psums = np.zeros((n_ot, n_it, K, geom.n_padded, C), dtype=np.int64)
    outputs = np.zeros((n_ot, geom.n_positions, C), dtype=np.int64)
    addr = np.zeros(geom.n_positions * K, dtype=np.int64)
    bias_rows = np.zeros((n_ot, C), dtype=np.int64)
    for f in layer_files(geom, spec, n_it, n_ot, bias=has_bias, reference=reference):
        path = folder / f.name
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise HardwareError(f"cannot read {path}: {e.strerror}") from None
        if verify_checksums and hashlib.sha256(raw).hexdigest() != man["sha256"].get(f.name):
            raise HardwareError(f"{path}: SHA-256 does not match the manifest")
        data = parse_vectors(raw, f.name, f.n_values, f.bits, f.signed, f.n_lines, f.headered)
        if f.kind == "activation":
            x[f.index] = data.T
        elif f.kind == "weight":
            w[f.index] = data
        elif f.kind == "psum":
            psums[f.index] = data
        elif f.kind == "out":
            outputs[f.index] = data
        elif f.kind == "bias":
            bias_rows[f.index] = data[0]
        elif f.kind == "activations":
            x[:] = data.reshape(n_it, geom.n_padded, R).transpose(0, 2, 1)
        elif f.kind == "weights":
            w[:] = data.reshape(w.shape)
        elif f.kind == "biases":
            bias_rows[:] = data
        else:
            addr[:] = data[:, 0]
    if has_bias:
        bias = bias_rows.reshape(-1)[: geom.out_channels]
    mapped = MappedConv(geom, spec, x, w, bias)
    return LayerVectors(mapped, psums, outputs, addr) if reference else LayerVectors(mapped, None, None, None)


def assemble_output(outputs: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """``outputs[ot, p, c]`` → ``[O, Ho, Wo]`` (drops the zero channels of the last otile)."""
    flat = outputs.transpose(0, 2, 1).reshape(-1, geom.n_positions)[: geom.out_channels]
    return flat.reshape(geom.out_channels, geom.out_h, geom.out_w)
