import pytest

from psa_baseline.errors import InputError
from stages.config import load_config, variant_name


def test_voc_config_is_the_paper_setting():
    cfg = load_config("voc")
    t = cfg["cam_train"]
    assert (t["batch_size"], t["epochs"], t["crop"], t["lr"], t["weight_decay"]) == (16, 15, 448, 0.1, 5e-4)
    assert t["resize_long"] == [256, 512] and t["momentum_quirk"] is True
    assert cfg["cam_infer"]["scales"] == [1.0, 0.5, 1.5, 2.0] and cfg["cam_infer"]["flip"]
    assert cfg["net"]["width"] == 1.0 and cfg["net"]["blocks"] == [2, 2, 5, 2] and cfg["net"]["frozen_bn"]
    e = cfg["eader"]
    assert (e["alpha"], e["beta"], e["omega"], e["psi"], e["phase_steps"]) == (0.05, 1e-5, 100.0, 0.5, 200)
    assert variant_name(cfg) == "baseline"


def test_demo_overrides_and_dotted_overrides():
    cfg = load_config("demo", ["cam_train.epochs=3", "eader.enabled=true", "net.blocks=[1,1,1,1]",
                               "eader.alpha=1"])
    assert cfg["cam_train"]["epochs"] == 3 and cfg["net"]["width"] == 0.125
    assert cfg["eader"]["alpha"] == 1.0 and isinstance(cfg["eader"]["alpha"], float)
    assert variant_name(cfg) == "eader"


@pytest.mark.parametrize("over, words", [
    ("cam_train.epochz=3", "unknown config key 'cam_train.epochz'"),
    ("cam_train.epochs=many", "cam_train.epochs"),
    ("eader.enabled=3", "eader.enabled"),
    ("net.blocks=7", "net.blocks"),
    ("device=tpu", "device"),
    ("cam_train=3", "is a section"),
    ("epochs", "key=value"),
])
def test_bad_overrides_are_named(over, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        load_config("demo", [over])


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cam_train:\n  lr: fast\n")
    with pytest.raises(InputError, match="cam_train.lr"):
        load_config(str(bad))
    (tmp_path / "x.yaml").write_text("nett: {}\n")
    with pytest.raises(InputError, match="unknown config key 'nett'"):
        load_config(str(tmp_path / "x.yaml"))
    with pytest.raises(InputError, match="unknown config 'nosuch'"):
        load_config("nosuch")
    (tmp_path / "y.yaml").write_text("a: [1,\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(str(tmp_path / "y.yaml"))
    ok = tmp_path / "ok.yaml"
    ok.write_text("base: demo\ncam_train:\n  epochs: 1\n")
    cfg = load_config(str(ok))
    assert cfg["cam_train"]["epochs"] == 1 and cfg["net"]["width"] == 0.125
