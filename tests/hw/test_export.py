import json

import numpy as np
import pytest

from qmap.errors import HardwareError
from qmap.hw.export import assemble_output, export_conv, read_export
from qmap.hw.mapping import map_conv, reference_conv
from qmap.hw.spec import ArraySpec


def test_course_layout_of_the_8x8_layer(tmp_path, make_conv):
    x, w = make_conv(8, 8, 4, 4)
    man = export_conv(x, w, ArraySpec(), tmp_path, meta={"image_index": 7, "alpha": 1.25, "layer": "features.27"})
    act = (tmp_path / "activation_tile0.txt").read_text().splitlines()
    assert len(act) == 3 + 36 and all(h.startswith("#") and h.endswith("#") and " " not in h for h in act[:3])
    # padded position (1, 1) = input (0, 0); channel 7 in the 4 MSBs
    assert act[3 + 7] == "".join(format(int(v), "04b") for v in x[::-1, 0, 0])
    assert set(act[3]) == {"0"} and len(act[3]) == 32
    w0 = (tmp_path / "weight_itile0_otile0_kij4.txt").read_text().splitlines()[3:]
    assert len(w0) == 8 and w0[2] == "".join(format(int(v) & 15, "04b") for v in w[2, ::-1, 1, 1])
    assert len((tmp_path / "psum_kij0.txt").read_text().splitlines()) == 3 + 36
    out = (tmp_path / "out.txt").read_text().splitlines()[3:]
    ref = np.maximum(reference_conv(x, w), 0)
    assert len(out) == 16 and out[5] == "".join(format(int(v), "016b") for v in ref[::-1, 1, 1])
    addr = [int(a, 2) for a in (tmp_path / "acc_address.txt").read_text().splitlines()]  # no header lines
    assert len(addr) == 144 and addr[:9] == [k * 36 + (k // 3) * 6 + k % 3 for k in range(9)]
    assert all(len(a) == 11 for a in (tmp_path / "acc_address.txt").read_text().splitlines())
    assert man["meta"]["alpha"] == 1.25 and json.loads((tmp_path / "manifest.json").read_text())["sha256"]
    assert "features.27" not in act[2]  # the meta stays in the manifest; headers stay one token


@pytest.mark.parametrize("shape,spec", [
    ((8, 8, 4, 4), ArraySpec()),
    ((8, 8, 4, 4), ArraySpec(a_bits=2)),
    ((19, 13, 5, 3), ArraySpec(rows=8, cols=4, psum_bits=20)),
    ((6, 5, 3, 3), ArraySpec(rows=16, cols=16)),
])
def test_roundtrip_gives_identical_integers(tmp_path, make_conv, shape, spec):
    x, w = make_conv(*shape, spec=spec)
    export_conv(x, w, spec, tmp_path)
    back = read_export(tmp_path)
    mapped = map_conv(x, w, spec)
    assert np.array_equal(back.mapped.x_tiles, mapped.x_tiles)
    assert np.array_equal(back.mapped.w_tiles, mapped.w_tiles)
    assert np.array_equal(assemble_output(back.outputs, mapped.geom), np.maximum(reference_conv(x, w), 0))
    assert back.psums.shape == (mapped.n_otiles, mapped.n_itiles, 9, mapped.geom.n_padded, spec.cols)


def test_tiled_file_names(tmp_path, make_conv):
    x, w = make_conv(10, 9, 2, 2)
    export_conv(x, w, ArraySpec(), tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"activation_tile1.txt", "weight_itile1_otile1_kij8.txt", "psum_itile1_otile0_kij3.txt",
            "out_otile1.txt"} <= names and "out.txt" not in names


def test_psum_overflow_is_an_error_naming_the_file(tmp_path):
    x = np.full((64, 4, 4), 15)
    w = np.full((8, 64, 3, 3), -8)
    with pytest.raises(HardwareError, match=r"psum_kij0\.txt line 11: value -7680 .* 12-bit signed"):
        export_conv(x, w, ArraySpec(psum_bits=12, rows=64), tmp_path)


def test_out_of_range_inputs_and_tampered_files_are_rejected(tmp_path, make_conv):
    x, w = make_conv(8, 8, 4, 4)
    with pytest.raises(HardwareError, match="weights"):
        export_conv(x, w * 2, ArraySpec(), tmp_path)
    export_conv(x, w, ArraySpec(), tmp_path)
    p = tmp_path / "weight_itile0_otile0_kij0.txt"
    p.write_text(p.read_text().replace("#weight_itile0_otile0_kij0#", "#w#"))
    with pytest.raises(HardwareError, match="SHA-256"):
        read_export(tmp_path)
    assert read_export(tmp_path, verify_checksums=False).mapped.w_tiles.shape == (1, 1, 9, 8, 8)
