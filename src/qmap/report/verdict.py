"""The verdict of a run, read from its ``results.json``: one row per check with PASS / FAIL / SKIPPED / INFO.

Rows, in order: accuracy (quantized top-1, drop vs FP and vs the RTN baseline), integer model = fake-quant
(top-1 within ``INTEGER_TOL_PP``), each exported layer's golden model = files = integer model, the RTL
(PASS when every simulated layer matches the golden model in values and cycles; SKIPPED with the reason and
how to enable it), ONNX (arg-max agreement ≥ ``ONNX_MIN_AGREEMENT`` under onnxruntime's defaults) and the
whole network on the array (value mismatches, integer logits, cycles, utilisation). Absent stages give
SKIPPED rows, never errors: the verdict must render for a run cut short.
"""

from __future__ import annotations

INTEGER_TOL_PP = 0.1  # |top-1(integer) − top-1(fake-quant)| allowed: ≤ 1 LSB on rare outputs (docs/quantization.md)
ONNX_MIN_AGREEMENT = 0.999


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _row(check: str, status: str, detail: str) -> dict:
    return {"check": check, "status": status, "detail": detail}


def accuracy_row(res: dict) -> dict:
    m = res.get("metrics", {})
    if m.get("top1_quantized") is None:
        return _row("accuracy", "SKIPPED", "the run did not reach the quantized evaluation")
    cfg = res.get("config", {})
    q, method = cfg.get("quant", {}), cfg.get("method", {}).get("name", "?")
    parts = [f"{_pct(m['top1_quantized'])} ({method} W{q.get('w_bits')}A{q.get('a_bits')})"]
    if m.get("top1_fp") is not None:
        parts.append(f"{100 * (m['top1_quantized'] - m['top1_fp']):+.2f} pp vs FP {_pct(m['top1_fp'])}")
    if m.get("top1_rtn") is not None:
        parts.append(f"{100 * (m['top1_quantized'] - m['top1_rtn']):+.2f} pp vs RTN {_pct(m['top1_rtn'])}")
    prov = res.get("provenance", {})
    n = m.get("test_images")
    parts.append(f"test images: {n if n is not None else '?'} ({prov.get('test_data', 'unknown source')})")
    return _row("accuracy", "INFO", "; ".join(parts))


def integer_row(res: dict) -> dict:
    integer, m = res.get("integer", {}), res.get("metrics", {})
    if integer.get("skipped"):
        return _row("integer model = fake-quant", "SKIPPED", integer["skipped"])
    if m.get("top1_integer") is None:
        return _row("integer model = fake-quant", "SKIPPED", "the run did not reach the integer-model stage")
    d = m["top1_integer"] - m["top1_quantized"]
    status = "PASS" if abs(100 * d) <= INTEGER_TOL_PP else "FAIL"
    return _row("integer model = fake-quant", status, f"top-1 {_pct(m['top1_integer'])} vs fake-quant "
                f"{_pct(m['top1_quantized'])} ({100 * d:+.2f} pp; tolerance ±{INTEGER_TOL_PP} pp)")


def _by_layer(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r.get("layer", "?"), []).append(r)
    return out


def merge_group_passes(rows: list[dict]) -> list[dict]:
    """One row per (layer, image) of a run's target-layer rows: a grouped conv's per-group passes summed (every
    mismatch and cycle count; ``…_cycles_equal_golden`` only if it holds for every pass), ``passes`` their number."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r.get("layer"), r.get("image"))
        if key not in out:
            out[key] = {**r, "passes": 1}
            continue
        m = out[key]
        m["passes"] += 1
        for k, v in r.items():
            if k.endswith("_equal_golden"):
                m[k] = bool(m[k]) and bool(v)
            elif k.endswith(("mismatches", "cycles")) and isinstance(v, int) and isinstance(m[k], int):
                m[k] += v
    return list(out.values())


def _images(rows: list[dict]) -> str:
    """'2 image(s)', or for a grouped conv '1 image(s) × 96 group passes' (rows merged per image)."""
    passes = rows[0]["passes"]
    return f"{len(rows)} image(s)" + (f" × {passes} group passes" if passes > 1 else "")


def golden_rows(res: dict) -> list[dict]:
    hw = res.get("hardware", {})
    if hw.get("skipped") or not hw.get("layers"):
        why = hw.get("skipped") or ("hardware.enabled is off" if not hw else "no layer was exported")
        return [_row("golden = files = integer", "SKIPPED", why)]
    out = []
    for layer, rows in _by_layer(merge_group_passes(hw["layers"])).items():
        bad = sum(r.get(k, 0) for r in rows for k in ("files_vs_integer_mismatches", "golden_vs_files_psum_mismatches",
                                                      "golden_vs_integer_mismatches"))
        cycles = sorted({r.get("golden_cycles") for r in rows})
        out.append(_row(f"{layer}: golden = files = integer", "PASS" if bad == 0 else "FAIL",
                        f"{_images(rows)}, {bad} mismatching values, {', '.join(map(str, cycles))} cycles"))
    return out


def rtl_rows(res: dict) -> list[dict]:
    hw = res.get("hardware", {})
    if hw.get("skipped"):
        return [_row("RTL", "SKIPPED", hw["skipped"])]
    skip = hw.get("rtl_skipped")
    if skip:
        return [_row("RTL", "SKIPPED", f"{skip['reason']}; to enable: {skip['enable']}")]
    sims = hw.get("rtl_simulators") or []
    if not sims or not hw.get("layers"):
        return [_row("RTL", "SKIPPED", "no RTL simulation in this run" if hw else "hardware.enabled is off")]
    out = []
    for layer, rows in _by_layer(merge_group_passes(hw["layers"])).items():
        for s in sims:
            bad = sum(r.get(f"rtl_{s}_output_mismatches", 0) + r.get(f"rtl_{s}_psum_mismatches", 0) for r in rows)
            same_cycles = all(r.get(f"rtl_{s}_cycles_equal_golden") for r in rows)
            cycles = sorted({r.get(f"rtl_{s}_cycles") for r in rows})
            out.append(_row(f"{layer}: RTL ({s}) = golden", "PASS" if bad == 0 and same_cycles else "FAIL",
                            f"{_images(rows)}, {bad} mismatching values, {', '.join(map(str, cycles))} cycles "
                            f"({'=' if same_cycles else '≠'} golden)"))
    return out


def onnx_row(res: dict) -> dict:
    o = res.get("onnx")
    if not o:
        off = not res.get("config", {}).get("export", {}).get("onnx", False)
        return _row("ONNX = fake-quant", "SKIPPED", "export.onnx is off (qmap export onnx --run DIR exports it)"
                    if off else "the run did not reach the export stage")
    agree = o.get("top1_agreement", 0.0)
    return _row("ONNX = fake-quant", "PASS" if agree >= ONNX_MIN_AGREEMENT else "FAIL",
                f"{100 * agree:.2f} % arg-max agreement on {o.get('n')} test images, "
                f"{o.get('session', 'onnxruntime')} (goal ≥ {100 * ONNX_MIN_AGREEMENT:.1f} %)")


def network_row(res: dict) -> dict:
    hw = res.get("hardware", {})
    sm = hw.get("network_summary")
    if not sm:
        return _row("whole network on the array", "SKIPPED",
                    hw.get("network_skipped") or "hardware.network_cycles is off or the stage did not run")
    chained = sm.get("logits_match") is not None  # None: not one path, every layer ran on its traced input
    ok = sm.get("mismatches") == 0 and (sm.get("logits_match") or not chained)
    arr = sm.get("array", {})
    host = sm.get("host_layers") or []
    logits = (f"integer logits {'match' if sm.get('logits_match') else 'DIFFER'}" if chained else
              "each layer on its traced input (the model is not one path: no chained logits)")
    return _row("whole network on the array", "PASS" if ok else "FAIL",
                f"{sm.get('cycles', 0):,} cycles on {arr.get('rows')}×{arr.get('cols')}, utilisation "
                f"{_pct(sm.get('utilisation', 0.0))}, {sm.get('mismatches')} mismatching values, {logits}; "
                f"on the host: {', '.join(host) or 'none'}")


def verdict(res: dict) -> list[dict]:
    """Every check of the module docstring, in order."""
    return [accuracy_row(res), integer_row(res), *golden_rows(res), *rtl_rows(res), onnx_row(res), network_row(res)]


def rtl_summary(res: dict) -> str:
    """One line for the terminal: ``RTL: PASS (...)``, ``RTL: FAIL (...)`` or ``RTL: SKIPPED (reason; to enable)``."""
    rows = rtl_rows(res)
    status = "FAIL" if any(r["status"] == "FAIL" for r in rows) else rows[0]["status"]
    details = [r["detail"] if r["check"] == "RTL" else f"{r['check']}: {r['detail']}" for r in rows]
    return f"RTL: {status} ({'; '.join(details)})"
