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
