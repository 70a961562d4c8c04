"""Issue 10, safe inputs and no stale results: pickles from outside, partial work under another config,
two runs on one work dir, file modes, progress output, paths."""
import os
import stat

from conftest import ROOT


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    from psa_baseline.fileio import save_npy, write_json
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_npy(tmp_path / "b.npy", {0: [1.0]})
    finally:
        os.umask(old)
    for name in ("a.json", "b.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "c.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o644


def test_bench_crf_default_data_path_is_repository_relative():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_crf", ROOT / "scripts" / "bench_crf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.DEFAULT_VOC == ROOT.parent / "shared" / "data" / "VOCmini"
    assert "/work/shared" not in (ROOT / "scripts" / "bench_crf.py").read_text()


# ------------------------------------------------------------------ 1. pickles from outside run no code

class _Evil:
    """Unpickling this would create a file (any shell command would do)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mknod, (self.target,))


def _save_evil(path, target, wrap_in_dict=True):
    import numpy as np
    obj = {0: np.zeros((4, 5), np.float32), 1: _Evil(str(target))} if wrap_in_dict else _Evil(str(target))
    np.save(path, obj, allow_pickle=True)


def test_malicious_cam_file_is_refused_and_runs_nothing(tmp_path):
    import numpy as np
    import pytest
    from psa_baseline.errors import InputError
    from psa_baseline.evaluation import load_cam_dict
    target = tmp_path / "pwned"
    for i, wrap in enumerate((True, False)):
        p = tmp_path / f"evil{i}.npy"
        _save_evil(p, target, wrap)
        with pytest.raises(InputError, match="posix.mknod|os.mknod") as e:
            load_cam_dict(p)
        assert str(p) in str(e.value) and "refused" in str(e.value)
        assert not target.exists()
    # the danger is real: numpy's own loader creates the file
    np.load(tmp_path / "evil1.npy", allow_pickle=True)
    assert target.exists()


def test_every_psa_dict_reader_refuses_a_malicious_pickle(tmp_path, capsys):
    import pytest
    from demo import data as demo_data
    from psa_baseline.errors import InputError
    from psa_baseline.voc import load_cls_labels
    from stages.train_aff import load_crf_dict
    target = tmp_path / "pwned"
    p = tmp_path / "evil.npy"
    _save_evil(p, target)
    (tmp_path / "cls_labels.npy").write_bytes(p.read_bytes())
    readers = [lambda: load_cls_labels(p), lambda: load_crf_dict(p, (4, 5), "x"),
               lambda: demo_data.load_cls_labels(tmp_path),
               lambda: demo_data.part_recall_from_cams(tmp_path, tmp_path, ["evil"])]
    for read in readers:
        with pytest.raises(InputError, match="refused"):
            read()
    assert not target.exists()


def test_eval_cam_cli_exits_2_on_a_malicious_cam_folder(tmp_path, demo_root, capsys):
    from stages.cli import main
    ids = (demo_root / "ImageSets/Segmentation/val.txt").read_text().split()
    cams = tmp_path / "cams"
    cams.mkdir()
    import numpy as np
    from PIL import Image
    for i in ids:  # genuine CAMs, except the first one
        gt = np.array(Image.open(demo_root / "SegmentationClass" / f"{i}.png"))
        np.save(cams / f"{i}.npy", {int(c - 1): (gt == c).astype(np.float32) for c in np.unique(gt) if 0 < c < 255})
    target = tmp_path / "pwned"
    _save_evil(cams / f"{ids[0]}.npy", target)
    rc = main(["eval-cam", "--config", "demo", "--cam-dir", str(cams), "--voc-root", str(demo_root),
               "--split", "val", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{ids[0]}.npy" in err and "refused" in err, err
    assert not target.exists()


def test_genuine_psa_dicts_load(tmp_path):
    import numpy as np
    from psa_baseline.evaluation import load_cam_dict
    from psa_baseline.safe_npy import load_dict
    cams = {3: np.random.rand(4, 5).astype(np.float32), np.int64(7): np.ones((4, 5), np.float64)}
    np.save(tmp_path / "a.npy", cams)
    d = load_cam_dict(tmp_path / "a.npy", expect_shape=(4, 5))
    assert set(d) == {3, 7} and all(type(k) is int for k in d)
    assert np.array_equal(d[3], cams[3]) and d[7].dtype == np.float32
    np.save(tmp_path / "b.npy", {"2007_000032": np.array([1, 0], np.uint8)})
    assert load_dict(tmp_path / "b.npy", "labels", str, "{id: labels}")["2007_000032"].tolist() == [1, 0]


def test_psas_own_cls_labels_file_loads():
    import numpy as np
    import pytest
    from conftest import SHARED
    from psa_baseline.voc import load_cls_labels
    path = SHARED / "voc12" / "cls_labels.npy"  # PSA's file as published (a protocol-2 pickle)
    if not path.exists():
        pytest.skip(f"{path} not present")
    labels = load_cls_labels(path)
    reference = np.load(path, allow_pickle=True).item()
    assert len(labels) == len(reference) > 10000
    for k in list(reference)[:50]:
        assert np.array_equal(labels[k], reference[k])
    # the copy shipped in voc12/ too
    assert len(load_cls_labels(ROOT / "voc12" / "cls_labels.npy")) == len(reference)


def test_dict_values_must_be_numeric_arrays(tmp_path):
    import numpy as np
    import pytest
    from psa_baseline.errors import InputError
    from psa_baseline.safe_npy import load_dict
    np.save(tmp_path / "a.npy", {0: "text"})
    with pytest.raises(InputError, match="value of key 0 is a str"):
        load_dict(tmp_path / "a.npy", "CAM file", int, "{class: map}")
    np.save(tmp_path / "b.npy", {0: np.array([None, 1], dtype=object)})
    with pytest.raises(InputError, match="not a numeric array"):
        load_dict(tmp_path / "b.npy", "CAM file", int, "{class: map}")
    np.save(tmp_path / "c.npy", {True: np.zeros(2)})
    with pytest.raises(InputError, match="key True"):
        load_dict(tmp_path / "c.npy", "CAM file", int, "{class: map}")
