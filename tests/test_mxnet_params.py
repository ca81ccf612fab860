"""The numpy-only MXNet ``.params`` reader/writer against MXNet-written fixtures and malformed files."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from dff.utils.mxnet_params import (
    LAYOUTS,
    V1_MAGIC,
    MXNetParamsError,
    encode_params,
    inspect_params,
    load_param,
    parse_params,
    process_test_params,
    read_params,
    write_params,
)

V2_FILE = "params/dff_tiny-0001.params"
LEGACY_FILE = "params/dff_tiny_legacy-0001.params"


@pytest.fixture(scope="module")
def expected(reference_dir):
    with np.load(reference_dir / "params/dff_tiny-0001_expected.npz") as z:
        return {k: z[k] for k in z.files}  # npz keeps the order mx.nd.load returned


@pytest.fixture(scope="module")
def layout_json(reference_dir):
    return json.loads((reference_dir / "params/dff_tiny-0001_layout.json").read_text())


@pytest.fixture(scope="module")
def v2_bytes(reference_dir):
    return (reference_dir / V2_FILE).read_bytes()


def _assert_same_arrays(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert np.array_equal(got[k], want[k]), k


# ---------------------------------------------------------------- fixtures written by MXNet
@pytest.mark.parametrize("fname", [V2_FILE, LEGACY_FILE])
def test_fixture_files_read_like_mx_nd_load(reference_dir, expected, fname):
    # the legacy file holds the same 14 tensors as the V2 one (README section 5)
    got = read_params(reference_dir / fname)
    assert len(got) == 14
    _assert_same_arrays(got, expected)


def test_v2_layout_matches_layout_json(reference_dir, layout_json):
    parsed = inspect_params(reference_dir / V2_FILE)
    assert parsed.size == layout_json["file_size"] == layout_json["parsed_bytes"]
    assert parsed.reserved == layout_json["reserved"]
    assert parsed.layout == "v2"
    assert [r.key for r in parsed.records] == layout_json["key_order_in_file"]
    assert len(parsed.records) == layout_json["num_arrays"] == layout_json["num_names"]
    for rec in parsed.records:
        want = layout_json["records"][rec.key]
        assert rec.offset == want["offset"], rec.key
        assert list(rec.shape) == want["shape"], rec.key
        assert list(rec.ctx) == want["ctx"], rec.key
        assert rec.type_flag == want["type_flag"], rec.key
        assert rec.stype == want["stype"], rec.key
        assert f"0x{rec.magic:x}" == want["magic"], rec.key


def test_legacy_fixture_is_detected_as_legacy(reference_dir):
    parsed = inspect_params(reference_dir / LEGACY_FILE)
    assert parsed.layout == "legacy"
    assert all(r.magic is None for r in parsed.records)
    # V2 spends 8 more bytes per array (magic, storage type) and 4 more per dim (int64 dims)
    ndims = sum(len(r.shape) for r in parsed.records)
    assert inspect_params(reference_dir / V2_FILE).size - parsed.size == 8 * len(parsed.records) + 4 * ndims


@pytest.mark.parametrize("fname,layout", [(V2_FILE, "v2"), (LEGACY_FILE, "legacy")])
def test_rewrite_is_byte_identical(reference_dir, tmp_path, fname, layout):
    original = (reference_dir / fname).read_bytes()
    out = tmp_path / "rewritten.params"
    write_params(out, read_params(reference_dir / fname), layout=layout)
    assert out.read_bytes() == original


def test_process_test_params_matches_reference_load_param(reference_dir, layout_json):
    raw = read_params(reference_dir / V2_FILE)
    processed = process_test_params(raw)
    want = layout_json["load_param_process_True"]
    assert [k[4:] for k in processed if k.startswith("arg:")] == want["arg_keys"]
    assert [k[4:] for k in processed if k.startswith("aux:")] == want["aux_keys"]
    assert want["arg:rfcn_bbox_weight_is_former_test"] and want["arg:rfcn_bbox_bias_is_former_test"]
    assert np.array_equal(processed["arg:rfcn_bbox_weight"], raw["arg:rfcn_bbox_weight_test"])
    assert np.array_equal(processed["arg:rfcn_bbox_bias"], raw["arg:rfcn_bbox_bias_test"])
    assert not np.array_equal(processed["arg:rfcn_bbox_weight"], raw["arg:rfcn_bbox_weight"])
    arg, aux = load_param(reference_dir / V2_FILE, process=True)
    assert list(arg) == want["arg_keys"] and list(aux) == want["aux_keys"]
    arg_raw, _ = load_param(reference_dir / V2_FILE, process=False)
    assert "rfcn_bbox_weight_test" in arg_raw
    assert np.array_equal(arg_raw["rfcn_bbox_weight"], raw["arg:rfcn_bbox_weight"])


# ---------------------------------------------------------------- synthetic files
def _all_dtypes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "arg:f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "arg:f64": rng.standard_normal((5,)).astype(np.float64),
        "arg:f16": rng.standard_normal((3, 3)).astype(np.float16),
        "aux:u8": rng.integers(0, 256, (7,)).astype(np.uint8),
        "aux:i32": rng.integers(-2**31, 2**31 - 1, (2, 2)).astype(np.int32),
        "aux:i8": rng.integers(-128, 127, (1, 1, 1, 4)).astype(np.int8),
        "aux:i64": np.array([-2**62, 2**62 + 1, 0], dtype=np.int64),
        "arg:empty": np.zeros((0, 3), np.float32),
        "arg:noncontig": rng.standard_normal((4, 6)).astype(np.float32).T,
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_every_dtype_and_layout(tmp_path, layout):
    arrays = _all_dtypes()
    path = tmp_path / "all.params"
    write_params(path, arrays, layout=layout)
    parsed = inspect_params(path)
    assert parsed.layout == layout
    assert [r.type_flag for r in parsed.records] == [0, 1, 2, 3, 4, 5, 6, 0, 0]
    _assert_same_arrays(parsed.arrays, arrays)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in parsed.arrays.values())


def test_v3_supports_scalars(tmp_path):
    arrays = {"arg:s": np.array(2.5, np.float32), "arg:v": np.arange(3, dtype=np.int64)}
    write_params(tmp_path / "s.params", arrays, layout="v3")
    got = read_params(tmp_path / "s.params")
    _assert_same_arrays(got, arrays)
    assert got["arg:s"].shape == ()


def test_hand_built_v1_and_legacy_files_are_read():
    # built field by field from the README's description, independent of encode_params
    data = np.arange(6, dtype="<f4")
    names = struct.pack("<Q", 2) + struct.pack("<Q", 5) + b"arg:a" + struct.pack("<Q", 5) + b"aux:b"
    v1_array = struct.pack("<IIqqiii", V1_MAGIC, 2, 2, 3, 1, 0, 0) + data.tobytes()
    legacy_array = struct.pack("<IIIiii", 2, 3, 2, 2, 0, 0) + data.tobytes()  # gpu ctx: ignored
    blob = struct.pack("<QQQ", 0x112, 0, 2) + v1_array + legacy_array + names
    parsed = parse_params(blob, "hand.params")
    assert [r.layout for r in parsed.records] == ["v1", "legacy"]
    assert parsed.layout == "mixed"
    assert parsed.arrays["arg:a"].shape == (2, 3) and parsed.arrays["aux:b"].shape == (3, 2)
    assert np.array_equal(parsed.arrays["arg:a"].ravel(), data)
    assert parsed.records[1].ctx == (2, 0)


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "w.params"
    write_params(path, {"arg:x": np.ones(3, np.float32)})
    write_params(path, {"arg:y": np.zeros(2, np.float32)})
    assert list(read_params(path)) == ["arg:y"]
    before = path.read_bytes()
    with pytest.raises(ValueError, match="bool"):
        write_params(path, {"arg:z": np.ones(2, bool)})
    assert path.read_bytes() == before  # a failed write leaves the old file intact
    assert os.listdir(tmp_path) == ["w.params"]  # and no temp file behind


@pytest.mark.parametrize("arrays,layout,match", [
    ({"arg:b": np.ones(2, bool)}, "v2", "no MXNet type flag"),
    ({"arg:c": np.ones(2, np.complex64)}, "v2", "no MXNet type flag"),
    ({"arg:s": np.array(1.0, np.float32)}, "v2", "0-d array"),
    ({"arg:s": np.array(1.0, np.float32)}, "legacy", "0-d array"),
    ({"arg:x": np.ones(2, np.float32)}, "v4", "unknown .params layout"),
])
def test_write_rejects_what_mxnet_cannot_hold(arrays, layout, match):
    with pytest.raises(ValueError, match=match):
        encode_params(arrays, layout)


# ---------------------------------------------------------------- malformed files
def _expect_error(blob: bytes, match: str, at: int | None = None) -> str:
    with pytest.raises(MXNetParamsError) as info:
        parse_params(blob, "/some/dir/bad.params")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("/some/dir/bad.params: byte ")
    assert match in msg, msg
    if at is not None:
        assert msg.startswith(f"/some/dir/bad.params: byte {at}:"), msg
    return msg


def test_empty_file(tmp_path):
    (tmp_path / "e.params").write_bytes(b"")
    with pytest.raises(MXNetParamsError, match=r"e\.params: byte 0: empty file"):
        read_params(tmp_path / "e.params")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(MXNetParamsError, match="nope.params: byte 0: cannot read"):
        read_params(tmp_path / "nope.params")


@pytest.mark.parametrize("cut", [1, 7, 8, 16, 23, 24, 27, 31, 40, 100, 37_711, 1_000_000, -1_000, -300, -20, -1])
def test_truncated_fixture_at_many_cut_points(v2_bytes, cut):
    _expect_error(v2_bytes[:cut], "truncated file")


@pytest.mark.parametrize("cut", [50, 400, -40, -1])
def test_truncated_legacy_fixture(reference_dir, cut):
    _expect_error((reference_dir / LEGACY_FILE).read_bytes()[:cut], "truncated file")


def test_bad_file_magic(v2_bytes):
    _expect_error(struct.pack("<Q", 0x113) + v2_bytes[8:], "bad file magic 0x113", at=0)


def test_bad_array_magic(v2_bytes):
    blob = v2_bytes[:24] + struct.pack("<I", 0xDEADBEEF) + v2_bytes[28:]
    _expect_error(blob, "bad magic 0xDEADBEEF", at=24)


def test_trailing_bytes(v2_bytes):
    _expect_error(v2_bytes + b"\0\0\0", "3 trailing bytes", at=len(v2_bytes))


def _two_arrays(layout: str = "v2") -> bytes:
    return encode_params({"arg:a": np.ones((2, 2), np.float32), "aux:b": np.ones(3, np.float32)}, layout)


def test_count_mismatch_between_arrays_and_names():
    blob = _two_arrays()
    names_at = len(blob) - (8 + 2 * 8 + 5 + 5)
    assert struct.unpack_from("<Q", blob, names_at)[0] == 2
    _expect_error(blob[:names_at] + struct.pack("<Q", 1) + blob[names_at + 8:], "1 names for 2 arrays", at=names_at)
    _expect_error(blob[:names_at] + struct.pack("<Q", 0) + blob[names_at + 8:], "2 unnamed arrays", at=names_at)


def test_absurd_array_count():
    blob = _two_arrays()
    _expect_error(blob[:16] + struct.pack("<Q", 2**60) + blob[24:], "absurd array count", at=16)


def test_absurd_ndim_and_dims():
    blob = _two_arrays()  # first array at 24: magic, stype, ndim at 32, dims at 36
    _expect_error(blob[:32] + struct.pack("<I", 1000) + blob[36:], "absurd ndim 1000", at=32)
    _expect_error(blob[:36] + struct.pack("<q", -1) + blob[44:], "absurd dims", at=36)
    # a huge dim must fail on the size check, before any allocation
    _expect_error(blob[:36] + struct.pack("<q", 2**40) + blob[44:], "truncated file")
    _expect_error(blob[:32] + struct.pack("<I", 0) + blob[36:], "ndim 0", at=32)


def test_sparse_storage_is_rejected():
    blob = _two_arrays()
    _expect_error(blob[:28] + struct.pack("<i", 1) + blob[32:], "storage type 1 (row_sparse)", at=28)


def test_bad_type_flag_and_device():
    blob = _two_arrays()  # first array: 24 magic, 28 stype, 32 ndim, 36 dims (2x int64), 52 ctx, 60 type flag
    _expect_error(blob[:60] + struct.pack("<i", 9) + blob[64:], "unsupported type flag 9", at=60)
    _expect_error(blob[:52] + struct.pack("<i", 77) + blob[56:], "absurd device type 77", at=52)


def test_duplicate_and_non_utf8_names():
    blob = encode_params({"arg:a": np.ones(1, np.float32), "arg:b": np.ones(1, np.float32)})
    _expect_error(blob.replace(b"arg:b", b"arg:a"), "duplicate name 'arg:a'")
    _expect_error(blob.replace(b"arg:b", b"arg:\xff"), "not valid UTF-8")


# ---------------------------------------------------------------- load_param(process=True)
def test_process_test_params_rules():
    a, b, c, d = (np.full(1, v, np.float32) for v in range(4))
    params = {"arg:w_test": a, "arg:w": b, "aux:m_test": c, "arg:x_test_y_test": d, "other:z": a}
    out = process_test_params(params)
    # the plain key keeps its position and takes the _test value; a new key is appended;
    # aux keys are never renamed; keys that are neither arg nor aux are dropped (as the reference does)
    assert list(out) == ["arg:w", "arg:x_y", "aux:m_test"]
    assert out["arg:w"] is a and out["arg:x_y"] is d and out["aux:m_test"] is c
    plain = {"arg:w": b, "aux:m": c}
    assert process_test_params(plain) == plain  # no _test keys: nothing folded, no stds applied
    with pytest.raises(ValueError, match="'conv1_weight' has no 'arg:'/'aux:' prefix"):
        process_test_params({"conv1_weight": a})


# ---------------------------------------------------------------- parity rows (tools/parity.py)
def test_parity_cases_pass_on_the_fixtures(reference_dir):
    from dff.parity.params import cases

    rows = list(cases(str(reference_dir), "fallback"))
    assert {r.case for r in rows} == {"params/dff_tiny-0001", "params/dff_tiny_legacy-0001"}
    assert [r.line() for r in rows if not r.passed] == []
    tensors = {r.tensor for r in rows if r.case == "params/dff_tiny_legacy-0001"}
    assert {"arg:conv1_weight", "key_order", "rewrite_bytes[legacy]", "load_param_process_keys",
            "do_checkpoint:rfcn_bbox_weight_test", "recipe:aux:bn_conv1_moving_var"} <= tensors
    assert "layout_records" in {r.tensor for r in rows if r.case == "params/dff_tiny-0001"}


def test_parity_cases_flag_a_damaged_file(reference_dir, tmp_path):
    from dff.parity.params import cases

    (tmp_path / "params").mkdir()
    for name in ("dff_tiny-0001_expected.npz", "dff_tiny-0001_layout.json"):
        (tmp_path / "params" / name).write_bytes((reference_dir / "params" / name).read_bytes())
    data = bytearray((reference_dir / V2_FILE).read_bytes())
    data[100] ^= 0x01  # one bit of arg:conv1_weight's data
    (tmp_path / "params/dff_tiny-0001.params").write_bytes(bytes(data))
    (tmp_path / "params/dff_tiny_legacy-0001.params").write_bytes(b"\x12\x01")
    rows = list(cases(str(tmp_path), "fallback"))
    failed = {(r.case, r.tensor) for r in rows if not r.passed}
    assert failed == {("params/dff_tiny-0001", "arg:conv1_weight"),
                      ("params/dff_tiny-0001", "recipe:arg:conv1_weight"),
                      ("params/dff_tiny_legacy-0001", "read")}
