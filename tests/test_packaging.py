"""`pip install .` gives a working CLI: the wheel carries the configs, PSA's split lists and the demo's weights,
puts nothing generic (stages, demo) at the top of site-packages, and runs a stage from outside any checkout."""
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what a wheel is built from (pyproject.toml); copied so that the build leaves nothing in the checkout
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "psa_baseline", "psa_eader", "stages", "demo", "configs", "voc12")

pytestmark = pytest.mark.slow


def run(cmd, cwd, timeout=600):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: the test's own setuptools builds it, with no registry needed
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, src], cwd=src)
    (whl,) = out.glob("psa_eader-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed; torch & co. come from this interpreter's site-packages through a
    .pth file (a path added that way is not a site dir, so this checkout's editable install is not seen)."""
    env = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True)
    py = env / "bin" / "python"
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", wheel], cwd=env)
    return env, Path(purelib)


def test_wheel_has_one_namespace_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"psa_baseline", "psa_eader"}, top
    for need in ("psa_eader/configs/voc.yaml", "psa_eader/configs/demo.yaml", "psa_eader/voc12/train_aug.txt",
                 "psa_eader/voc12/cls_labels.npy", "psa_eader/demo/weights/manifest.json",
                 "psa_eader/demo/weights/wrn38_demo.pth", "psa_eader/demo/weights/resnet18_demo.pth",
                 "psa_eader/stages/cli.py", "psa_eader/demo/data.py"):
        assert need in names, need


def test_installed_cli_runs_a_stage_outside_the_checkout(venv, tmp_path):
    env, purelib = venv
    exe = env / "bin" / "psa-eader"
    assert run([exe, "--version"], cwd=tmp_path).strip().startswith("psa-eader ")
    assert "train-cam" in run([exe, "--help"], cwd=tmp_path)
    # the generic names are not importable: they live under psa_eader
    r = subprocess.run([env / "bin" / "python", "-c", "import stages"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'stages'" in r.stderr
    where = run([env / "bin" / "python", "-c", "import psa_eader.stages.config as c; print(c.PROJECT_DIR)"],
                cwd=tmp_path).strip()
    assert Path(where) == purelib / "psa_eader"
    # the voc config's split list resolves to the packaged copy
    assert "voc12/train_aug.txt" in run([exe, "config", "--config", "voc"], cwd=tmp_path)

    run([exe, "demo-data", "--voc-root", "data", "--n-train", "8", "--n-val", "4"], cwd=tmp_path)
    out = run([exe, "train-cam", "--config", "demo", "--voc-root", "data", "--work-dir", "w",
               "cam_train.epochs=1", "cam_train.batch_size=4", "cam_train.crop=64", "cam_train.resize_long=[56,80]"],
              cwd=tmp_path)
    # the demo config's pre-trained start is found in the package, verified against its manifest
    assert str(purelib / "psa_eader" / "demo" / "weights" / "wrn38_demo.pth") in out
    assert (tmp_path / "w" / "baseline" / "train_cam" / "DONE.json").is_file()
    record = next((tmp_path / "w" / "logs" / "runs").glob("*-train-cam-*"))
    assert (record / "config.yaml").is_file() and (record / "versions.yaml").is_file()
