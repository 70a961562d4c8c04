from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
VOCMINI = SHARED / "VOCmini"

# Two cores: one intra-op thread per test process avoids oversubscription (much faster on a 2-core CPU).
torch.set_num_threads(1)


def tiny_spec(**kw):
    from psa_baseline.resnet38 import Res38Spec
    base = dict(width=0.125, blocks=(1, 1, 1, 1), frozen_bn=False, frozen_stem=False)
    base.update(kw)
    return Res38Spec(**base)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset shared by the stage tests."""
    from demo.data import generate
    root = tmp_path_factory.mktemp("demo") / "data"
    generate(root, seed=3, n_train=16, n_val=8, size=(64, 80))
    return root


def tiny_cfg(voc_root, work_dir, **over):
    """Config for a seconds-long CPU run of the CAM stage on `voc_root`."""
    from stages.config import load_config
    o = [("voc_root", str(voc_root)), ("work_dir", str(work_dir)), "net.width=0.125", "net.blocks=[1,1,1,1]",
         "cam_train.batch_size=4", "cam_train.epochs=2", "cam_train.crop=64", "cam_train.resize_long=[56,80]",
         "cam_train.checkpoint_every=2", "cam_infer.scales=[1.0,0.5]", "cam_eval.sweep=[0.1,0.3,0.1]", "adv_pretrain.epochs=0",
         # random init said explicitly: a null weights key stops the training stages
         "net.weights=random", "eader.adv_weights=random", "standalone.weights=random"]
    o += [(k, v) for k, v in over.items()]
    return load_config("demo", o)


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU as one with native bf16 (AMX / AVX512-BF16), where `bf16: auto` means bf16: for tests of
    figures measured on such a CPU."""
    from psa_baseline import hardware
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
