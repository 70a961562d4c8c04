"""The NumPy MXNet .params reader against genuine MXNet files and hand-built records."""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from psa_baseline.errors import InputError
from psa_baseline.mxnet_params import (load_params_dict, read_params, read_records, strip_prefix,
                                       write_params)

DATA = Path("/work/shared/data/mxnet-params")
# file -> (array count, record layout), per the data README
GENUINE = {
    "insightface_genderage-0000.params": (146, "v2"),
    "insightface_mtcnn_det1-0001.params": (13, "legacy"),
    "insightface_mtcnn_det2-0001.params": (16, "legacy"),
    "mxnet_legacy_ndarray.v0": (6, "legacy"),
}
SYMBOLS = {
    "insightface_genderage-0000.params": "insightface_genderage-symbol.json",
    "insightface_mtcnn_det1-0001.params": "insightface_mtcnn_det1-symbol.json",
    "insightface_mtcnn_det2-0001.params": "insightface_mtcnn_det2-symbol.json",
}
PARAM_SUFFIXES = ("weight", "bias", "gamma", "beta", "moving_mean", "moving_var")

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="genuine MXNet files not present")


def _copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copyfile(DATA / name, dst)
    dst.chmod(0o644)
    return dst


def _record_bytes(magic, body):
    """A file with one unnamed record."""
    return struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<I", magic) + body + struct.pack("<Q", 0)


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_genuine_files_parse_to_last_byte(name, tmp_path):
    count, layout = GENUINE[name]
    records = read_records(DATA / name)
    assert len(records) == count
    assert {r.layout for r in records} == {layout}
    assert all(r.array is not None and r.array.dtype == np.float32 and r.array.size > 0 for r in records)
    assert all(r.array.shape == r.shape for r in records)
    # The parser insists on ending at the last byte: one extra byte must be refused.
    p = _copy(tmp_path, name)
    with open(p, "ab") as f:
        f.write(b"\0")
    with pytest.raises(InputError, match=r"1 trailing bytes .* byte offset %d" % (DATA / name).stat().st_size):
        read_records(p)


@pytest.mark.parametrize("name", sorted(SYMBOLS))
def test_symbol_json_names_match_file(name):
    graph = json.loads((DATA / SYMBOLS[name]).read_text())
    params = {n["name"] for n in graph["nodes"]
              if n["op"] == "null" and n["name"].endswith(PARAM_SUFFIXES)}
    arrays, names = read_params(DATA / name)
    assert len(names) == len(arrays) == GENUINE[name][0]
    assert {strip_prefix(n) for n in names} == params
    # MXNet stores BatchNorm moving statistics as auxiliary states, everything else as arguments.
    for n in names:
        assert n.startswith("aux:" if n.endswith(("moving_mean", "moving_var")) else "arg:"), n
    d = load_params_dict(DATA / name)
    assert set(d) == params
    assert set(load_params_dict(DATA / name, strip=False)) == set(names)


def test_genderage_dead_bn_channel_and_shapes():
    d = load_params_dict(DATA / "insightface_genderage-0000.params")
    assert d["conv_1_conv2d_weight"].ndim == 4
    bn = [k for k in d if k.endswith("moving_var")]
    assert all(d[k].ndim == 1 and d[k].shape == d[k.replace("moving_var", "gamma")].shape for k in bn)
    assert sum(int((d[k] == 0).sum()) for k in bn) == 1  # the README's one dead channel


def test_legacy_v0_is_six_aranges():
    arrays, names = read_params(DATA / "mxnet_legacy_ndarray.v0")
    assert names is None
    assert len(arrays) == 6
    for a in arrays:
        assert a.dtype == np.float32 and a.shape == (128,)
        np.testing.assert_array_equal(a, np.arange(128, dtype=np.float32))
    with pytest.raises(InputError, match="no names"):
        load_params_dict(DATA / "mxnet_legacy_ndarray.v0")


@pytest.mark.parametrize("name", sorted(GENUINE))
def test_truncated_copies_refused(name, tmp_path):
    data = (DATA / name).read_bytes()
    p = tmp_path / name
    for cut in (0, 5, 16, 27, len(data) // 2, len(data) - 1):
        p.write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"truncated.*byte offset \d+") as e:
            read_records(p)
        assert str(p) in str(e.value)


def test_garbled_files_refused(tmp_path):
    det1 = bytearray((DATA / "insightface_mtcnn_det1-0001.params").read_bytes())
    p = tmp_path / "x.params"

    bad = bytearray(det1)
    bad[0] = 0x13
    p.write_bytes(bad)
    with pytest.raises(InputError, match=r"bad magic 0x113 .*byte offset 0"):
        read_records(p)

    # First record of det1 (legacy): ndim at 24, one dim, context at 32, dtype flag at 40.
    assert struct.unpack_from("<I", det1, 24)[0] == 1
    bad = bytearray(det1)
    struct.pack_into("<i", bad, 40, 13)
    p.write_bytes(bad)
    with pytest.raises(InputError, match=r"unknown dtype flag 13 .*byte offset 40"):
        read_records(p)

    bad = bytearray(det1)
    struct.pack_into("<I", bad, 24, 0xDEADBEEF)
    p.write_bytes(bad)
    with pytest.raises(InputError, match=r"0xDEADBEEF.*byte offset 24"):
        read_records(p)

    bad = bytearray(det1)
    struct.pack_into("<i", bad, 32, 77)  # device type
    p.write_bytes(bad)
    with pytest.raises(InputError, match=r"device type 77 .*byte offset 32"):
        read_records(p)

    gen = bytearray((DATA / "insightface_genderage-0000.params").read_bytes())
    assert struct.unpack_from("<I", gen, 24)[0] == 0xF993FAC9
    for stype, msg in ((1, "sparse storage \\(row_sparse\\)"), (2, "sparse storage \\(csr\\)"),
                       (9, "unknown storage type 9")):
        bad = bytearray(gen)
        struct.pack_into("<i", bad, 28, stype)
        p.write_bytes(bad)
        with pytest.raises(InputError, match=msg + r".*byte offset"):
            read_records(p)

    # Name count that is neither 0 nor the array count.
    arrays = {"arg:a": np.ones(3, np.float32), "arg:b": np.zeros(2, np.float32)}
    write_params(p, arrays, layout="v2")
    raw = bytearray(p.read_bytes())
    idx = raw.index(struct.pack("<Q", 2) + struct.pack("<Q", 5) + b"arg:a")
    struct.pack_into("<Q", raw, idx, 1)
    p.write_bytes(raw)
    with pytest.raises(InputError, match="name count 1"):
        read_records(p)


def test_missing_file_refused(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        read_params(tmp_path / "nope.params")


@pytest.mark.parametrize("layout", ["legacy", "v2"])
def test_write_read_round_trip(layout, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "arg:conv_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "arg:fc_bias": rng.standard_normal(5),                        # float64
        "aux:bn_moving_var": rng.random(7).astype(np.float16),
        "arg:u8": np.arange(10, dtype=np.uint8).reshape(2, 5),
        "arg:i64": np.array([-(2 ** 40), 3], np.int64),
        "arg:flags": np.array([True, False, True]),
        "arg:zero_size": np.zeros((0, 3), np.float32),
        "arg:empty": None,
    }
    p = tmp_path / f"rt_{layout}.params"
    write_params(p, arrays, layout=layout)
    records = read_records(p)
    assert {r.layout for r in records} == {layout}
    out, names = read_params(p)
    assert names == list(arrays)
    for (k, a), b in zip(arrays.items(), out):
        if a is None:
            assert b.size == 0 and b.dtype == np.float32
            continue
        assert b.dtype == a.dtype and b.shape == a.shape, k
        np.testing.assert_array_equal(a, b)
    d = load_params_dict(p)
    assert set(d) == {strip_prefix(k) for k in arrays}
    # unnamed files round-trip too
    write_params(p, [np.arange(4, dtype=np.int32)], layout=layout)
    out, names = read_params(p)
    assert names is None and out[0].tolist() == [0, 1, 2, 3]


def test_writer_refuses_scalars_and_bad_layout(tmp_path):
    with pytest.raises(ValueError):
        write_params(tmp_path / "a", {"x": np.float32(1)})
    with pytest.raises(ValueError):
        write_params(tmp_path / "a", {"x": np.ones(1)}, layout="v9")


def test_bfloat16_v1_v3_records(tmp_path):
    p = tmp_path / "h.params"
    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)  # exactly representable in bfloat16
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    # V2, dense, shape (2, 2), cpu, bfloat16
    p.write_bytes(_record_bytes(0xF993FAC9, struct.pack("<ii2qiii", 0, 2, 2, 2, 1, 0, 12) + bits))
    (a,), _ = read_params(p)
    assert a.dtype == np.float32 and a.shape == (2, 2)
    np.testing.assert_array_equal(a.ravel(), values)
    # V1: shape (i32 ndim + i64 dims), no storage type; int16 on gpu 0
    p.write_bytes(_record_bytes(0xF993FAC8, struct.pack("<iqiii", 1, 3, 2, 0, 8)
                                + np.array([-1, 0, 7], "<i2").tobytes()))
    (r,) = read_records(p)
    assert r.layout == "v1" and r.array.dtype == np.int16 and r.array.tolist() == [-1, 0, 7]
    # V3: ndim 0 is a scalar (one element); ndim -1 is an empty array that ends after its shape
    p.write_bytes(_record_bytes(0xF993FACA, struct.pack("<iiiii", 0, 0, 1, 0, 1) + struct.pack("<d", 2.5)))
    (r,) = read_records(p)
    assert r.layout == "v3" and r.array.shape == () and r.array.dtype == np.float64 and r.array == 2.5
    p.write_bytes(_record_bytes(0xF993FACA, struct.pack("<ii", 0, -1)))
    (r,) = read_records(p)
    assert r.shape is None and r.array.size == 0
    # V2 ndim 0 is empty too
    p.write_bytes(_record_bytes(0xF993FAC9, struct.pack("<ii", 0, 0)))
    (r,) = read_records(p)
    assert r.layout == "v2" and r.shape is None and r.array.size == 0


def test_all_dtype_flags(tmp_path):
    p = tmp_path / "d.params"
    expect = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
              6: np.int64, 7: np.bool_, 8: np.int16, 9: np.uint16, 10: np.uint32, 11: np.uint64,
              12: np.float32}
    for flag, dt in expect.items():
        size = 2 if flag == 12 else np.dtype(dt).itemsize
        p.write_bytes(_record_bytes(2, struct.pack("<IIiii", 2, 1, 1, 0, flag) + b"\x01" * (2 * size)))
        (a,), _ = read_params(p)
        assert a.dtype == dt and a.shape == (2, 1), flag
