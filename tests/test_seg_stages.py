"""Stage 3: export of the pseudo labels for a public DeepLabV3+ trainer, and the built-in DeepLabV3+
(train-seg, make-seg, eval-seg --target seg) on the demo data with a tiny random-init network. The pseudo
labels are faked from the ground truth (degraded) so that the tests need not run stages 1 and 2."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_cfg
from psa_baseline import voc
from psa_baseline.errors import InputError
from stages import eval_seg, export, make_seg, pipeline, train_seg
from stages.cli import main as cli_main

TRAIN, VAL = "ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"
SEG = {"seg_train.encoder": "resnet18", "seg_train.encoder_weights": "random", "seg_train.iterations": 4,
       "seg_train.batch_size": 2, "seg_train.crop": 64, "seg_train.scale_range": [0.75, 1.25],
       "seg_train.checkpoint_every": 2, "seg_train.log_every": 1, "seg_train.num_workers": 0,
       "seg_train.list": TRAIN}


def _ids(root, split):
    return (Path(root) / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()


def _gt(root, i):
    return np.array(Image.open(Path(root) / "SegmentationClass" / f"{i}.png"))


def fake_pseudo(cfg, root, ids, erase=None):
    """Pseudo labels as make-pseudo writes them (palette PNGs + DONE.json): the ground truth with its
    255 borders made background and the right quarter of every image set to background."""
    d = Path(cfg["work_dir"]) / "baseline" / "make_pseudo"
    for i in ids:
        lab = _gt(root, i).copy()
        lab[lab == 255] = 0
        lab[:, lab.shape[1] * 3 // 4:] = 0
        voc.save_label_png(d / "pseudo" / f"{i}.png", lab)
    (d / "DONE.json").write_text(json.dumps({"stage": "make_pseudo", "fingerprint": "fake-pseudo"}))
    return d / "pseudo"


@pytest.fixture
def seg_work(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path / "work", **SEG)
    fake_pseudo(cfg, demo_root, _ids(demo_root, "train") + _ids(demo_root, "val"))
    return cfg


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- built-in DeepLabV3+

def test_train_make_eval_seg_end_to_end(seg_work, demo_root):
    from stages.compare import load_run
    cfg, work = seg_work, Path(seg_work["work_dir"])
    net_path = train_seg.run(cfg)
    assert net_path == work / "baseline/train_seg/seg_net.pth" and not (net_path.parent / "PARTIAL.json").exists()
    pred = make_seg.run(cfg)
    res = eval_seg.run(cfg, target="seg")
    val = _ids(demo_root, "val")
    for i in val:  # palette PNGs of the image's size holding class indices
        im = Image.open(pred / f"{i}.png")
        assert im.mode == "P" and im.size[::-1] == _gt(demo_root, i).shape
        assert set(np.unique(np.array(im)).tolist()) <= set(range(21))
    seg = json.loads((work / "results.json").read_text())["baseline"]["seg"]
    assert seg["n_images"] == len(val) and seg["split"] == VAL and 0 <= seg["miou"] <= 100
    assert seg["miou"] == res["miou"] and "part_recall" in seg and set(seg["splits"]) == {VAL}
    # per-image confusions where compare's bootstrap looks for them
    per_image = load_run(work).per_image("seg")
    assert per_image is not None and len(per_image["ids"]) == len(val)
    assert (work / "baseline/eval_deeplab/seg_eval.json").is_file()
    # the qualitative figure: image | CAM (none here: grey) | pseudo labels | DeepLabV3+ | ground truth
    from stages import figure
    (work / "baseline/make_cam/cams").mkdir(parents=True)
    fig = np.array(Image.open(figure.draw(cfg, n=3)))
    assert fig.shape == (figure.HEADER + 3 * figure.TILE, 5 * figure.TILE, 3)
    assert (fig[figure.HEADER:, figure.TILE:2 * figure.TILE] == 160).all()  # no CAM file: a grey tile
    # a rerun skips every finished stage
    done = sorted(work.glob("baseline/*/DONE.json"))
    mtimes = [p.stat().st_mtime_ns for p in done]
    train_seg.run(cfg), make_seg.run(cfg), eval_seg.run(cfg, target="seg")
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    # a make-seg run cut short (PARTIAL.json, no DONE.json) redoes only the missing predictions
    done_rec = json.loads((pred.parent / "DONE.json").read_text())
    (pred.parent / "DONE.json").unlink()
    (pred.parent / "PARTIAL.json").write_text(json.dumps({"stage": "make_seg", "fingerprint": done_rec["fingerprint"]}))
    for i in val[:2]:
        (pred / f"{i}.png").unlink()
    kept = {i: (pred / f"{i}.png").stat().st_mtime_ns for i in val[2:]}
    make_seg.run(cfg)
    assert all((pred / f"{i}.png").is_file() for i in val[:2]) and (pred.parent / "DONE.json").is_file()
    assert {i: (pred / f"{i}.png").stat().st_mtime_ns for i in val[2:]} == kept
    # the command line: eval-seg --target seg scores the same predictions
    assert cli_main(["eval-seg", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", str(work),
                     "--target", "seg", "--force"] + [f"{k}={v}" for k, v in SEG.items()]) == 0
    assert json.loads((work / "results.json").read_text())["baseline"]["seg"]["miou"] == res["miou"]
    # new pseudo labels (another upstream fingerprint) retrain
    (work / "baseline/make_pseudo/DONE.json").write_text(json.dumps({"fingerprint": "other"}))
    train_seg.run(cfg)
    assert (work / "baseline/train_seg/DONE.json").stat().st_mtime_ns != mtimes[done.index(
        work / "baseline/train_seg/DONE.json")]


def test_train_seg_resume_after_stop_equals_unbroken_run(demo_root, tmp_path):
    ids = _ids(demo_root, "train")
    unbroken = tiny_cfg(demo_root, tmp_path / "a", **SEG)
    fake_pseudo(unbroken, demo_root, ids)
    broken = tiny_cfg(demo_root, tmp_path / "b", **SEG)
    fake_pseudo(broken, demo_root, ids)
    ref = _state(train_seg.run(unbroken))
    assert train_seg.run(broken, stop_after=3) is None  # mid-epoch, off the checkpoint grid
    ck = torch.load(tmp_path / "b/baseline/train_seg/checkpoint.pth", map_location="cpu", weights_only=False)
    assert ck["step"] == 3 and ck["optimizer"]["global_step"] == 3
    got = _state(train_seg.run(broken))
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_null_encoder_weights_refused_naming_the_key(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": None})
    fake_pseudo(cfg, demo_root, _ids(demo_root, "train"))
    # the download names the configured encoder's file (the demo's resnet18; xception65's own)
    with pytest.raises(InputError, match=r"'seg_train.encoder_weights' is null.*weights download resnet18 "):
        train_seg.run(cfg)
    assert not (tmp_path / "w/baseline/train_seg").exists()
    from stages.builders import null_weights_message
    x = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder": "xception65"})
    assert "weights download xception65 " in null_weights_message("seg_train.encoder_weights", "train-seg", x)
    from stages.config import load_config
    assert load_config("voc")["seg_train"]["encoder_weights"] is None  # the paper's config asks for the file


def test_encoder_weights_from_a_torchvision_file(demo_root, tmp_path):
    import torchvision
    from stages.deeplab import build_deeplab, init_encoder
    sd = torchvision.models.resnet18().state_dict()  # the layout of torchvision's ImageNet file, fc included
    torch.save(sd, tmp_path / "resnet18.pth")
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": str(tmp_path / "resnet18.pth")})
    net = build_deeplab(cfg)
    init_encoder(cfg, net)
    assert torch.equal(net.encoder.conv1.weight, sd["conv1.weight"])
    assert torch.equal(net.encoder.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")  # another architecture
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": str(tmp_path / "resnet34.pth")})
    with pytest.raises(InputError, match="does not fit the resnet18 encoder"):
        init_encoder(cfg, build_deeplab(cfg))


def test_inference_options(demo_root, tmp_path):
    from stages.deeplab import build_deeplab, predict_probs, probs_to_label
    cfg = tiny_cfg(demo_root, tmp_path / "w", **SEG)
    net = build_deeplab(cfg).eval()
    img = voc.VOCRoot(demo_root).read_image(_ids(demo_root, "val")[0])  # 64 x 80: not a multiple of 16
    one = predict_probs(net, img)
    many = predict_probs(net, img, scales=(0.5, 1.0, 1.5), flip=True)
    for p in (one, many):
        assert p.shape == (21,) + img.shape[:2] and np.allclose(p.sum(0), 1, atol=1e-4)
    assert not np.allclose(one, many)
    plain, crf = probs_to_label(many), probs_to_label(many, img, crf=True)
    assert plain.dtype == crf.dtype == np.uint8 and plain.shape == crf.shape == img.shape[:2]


def test_seg_config_checks(demo_root, tmp_path):
    for key, value, words in (("seg_train.crop", 100, "multiple of 32"), ("seg_train.batch_size", 1, "at least 2"),
                              ("seg_train.output_stride", 32, "8 or 16"), ("seg_infer.scales", [], "non-empty")):
        with pytest.raises(InputError, match=words):
            train_seg.check_config(tiny_cfg(demo_root, tmp_path, **{**SEG, key: value}))


def test_pipeline_runs_to_deeplab_by_default_and_until_stops_earlier():
    from stages.cli import parse_args
    from stages.registry import steps
    names = [s.stage for s in steps("seg")]
    assert names[:len(steps("pseudo"))] == [s.stage for s in steps("pseudo")]
    assert names[-3:] == ["train-seg", "make-seg", "eval-seg"]
    assert parse_args(["pipeline"]).until == "seg" and parse_args(["pipeline", "--until", "pseudo"]).until == "pseudo"
    assert parse_args(["check"]).until == "seg"  # the check plans what the pipeline would run


# ---------------------------------------------------------------------------- export

def _vainf_voc_items(data_root, image_set):
    """(image, mask) paths as VainF/DeepLabV3Plus-Pytorch's VOCSegmentation(root, year='2012_aug', image_set)
    finds them (datasets/voc.py): train from <root>/train_aug.txt and SegmentationClassAug, otherwise
    ImageSets/Segmentation/<image_set>.txt and SegmentationClass, under <root>/VOCdevkit/VOC2012."""
    voc_root = Path(data_root) / "VOCdevkit/VOC2012"
    if image_set == "train":
        mask_dir, split_f = voc_root / "SegmentationClassAug", Path(data_root) / "train_aug.txt"
    else:
        mask_dir, split_f = voc_root / "SegmentationClass", voc_root / "ImageSets/Segmentation" / f"{image_set}.txt"
    names = [x.strip() for x in split_f.read_text().splitlines()]
    return [(voc_root / "JPEGImages" / f"{n}.jpg", mask_dir / f"{n}.png") for n in names]


@pytest.mark.parametrize("copy", [False, True])
def test_export_layout_for_a_public_trainer(seg_work, demo_root, tmp_path, copy):
    out = tmp_path / "export"
    export.run(seg_work, out, copy=copy, say=lambda m: None)
    train, val = _ids(demo_root, "train"), _ids(demo_root, "val")
    pseudo = Path(seg_work["work_dir"]) / "baseline/make_pseudo/pseudo"
    items = _vainf_voc_items(out, "train")
    assert len(items) == len(train)
    for (img, mask), i in zip(items, train):
        assert img.is_symlink() != copy and img.read_bytes() == (demo_root / "JPEGImages" / f"{i}.jpg").read_bytes()
        with Image.open(mask) as m:
            assert m.mode == "P" and np.array_equal(np.array(m), np.array(Image.open(pseudo / f"{i}.png")))
    items = _vainf_voc_items(out, "val")
    assert [p.stem for p, _ in items] == val
    for (img, mask), i in zip(items, val):  # the official ground truth, 255 borders kept
        assert mask.is_symlink() != copy and np.array_equal(np.array(Image.open(mask)), _gt(demo_root, i))
        assert img.is_file()
    sets = out / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    assert (sets / "train_aug.txt").read_text().split() == train and (sets / "val.txt").read_text().split() == val
    rec = json.loads((out / "EXPORT.json").read_text())
    assert rec["complete"] and rec["n_train"] == len(train) and rec["variant"] == "baseline"
    export.run(seg_work, out, copy=copy, say=lambda m: None)  # an earlier export is replaced
    assert len(_vainf_voc_items(out, "train")) == len(train)


def test_export_refuses_incomplete_pseudo_labels(seg_work, demo_root, tmp_path):
    train = _ids(demo_root, "train")
    pseudo = Path(seg_work["work_dir"]) / "baseline/make_pseudo/pseudo"
    out = tmp_path / "export"
    def args(to):
        return ["export", "--config", "demo", "--voc-root", str(demo_root), "--work-dir", seg_work["work_dir"],
                "--out", str(to), f"seg_train.list={TRAIN}"]
    (pseudo / f"{train[3]}.png").unlink()
    with pytest.raises(InputError, match=rf"1 of {len(train)} ids .* no pseudo label .*{train[3]}"):
        export.run(seg_work, out)
    assert cli_main(args(out)) == 2 and not out.exists()  # nothing written
    assert cli_main(args(out)[:-3] + args(out)[-1:]) == 2  # no --out
    fake_pseudo(seg_work, demo_root, [train[3]])
    (pseudo / f"{train[5]}.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    with pytest.raises(InputError, match=rf"1 of {len(train)} pseudo labels .* cannot be used: {train[5]} "):
        export.run(seg_work, out)
    assert not out.exists()
    fake_pseudo(seg_work, demo_root, [train[5]])
    out.mkdir()
    (out / "mine.txt").write_text("not an export")
    with pytest.raises(InputError, match="not empty and holds no EXPORT.json"):
        export.run(seg_work, out)
    assert cli_main(args(out)) == 2 and (out / "mine.txt").is_file()
    assert cli_main(args(tmp_path / "ok")) == 0 and (tmp_path / "ok/train_aug.txt").is_file()


def test_check_plans_the_deeplab_stages(demo_root, tmp_path, native_bf16):  # costs measured in bf16
    import torchvision
    from stages.check import run_check
    lines = []
    run_check(tiny_cfg(demo_root, tmp_path / "w", **SEG), "off", "seg", out=lines.append)
    plan = "\n".join(lines)
    assert "train-seg" in plan and "make-seg" in plan and "ready" in plan
    wall = plan[plan.index("estimated wall time"):]  # from the measured demo costs: 4 iterations of 2, 8 images
    from stages.costs import COSTS, MEASURED_BATCH
    demo = COSTS[("demo", "cpu")]
    train_s = round(demo["train-seg"][True] * 4 * 2 / MEASURED_BATCH[("demo", "cpu")]["train-seg"])
    make_s = round(demo["make-seg"][True] * 8)
    assert re.search(rf"train-seg +{train_s} s\n", wall) and re.search(rf"make-seg +{make_s} s\n", wall), wall
    with pytest.raises(InputError, match="seg_train.encoder_weights' is null, so train-seg"):
        run_check(tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": None}), "off", "seg",
                  out=lambda m: None)
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")  # not the resnet18 encoder's
    with pytest.raises(InputError, match="seg_train.encoder_weights: .*resnet34.pth"):
        run_check(tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": str(tmp_path / "resnet34.pth")}),
                  "off", "seg", out=lambda m: None)
    with pytest.raises(InputError, match=r"16 ids of seg_train.list \S+ get no pseudo labels \(not in data.infer_lists\)"):
        run_check(tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "data.infer_lists": [VAL]}), "off", "seg",
                  out=lambda m: None)


def test_pipeline_refuses_null_encoder_weights_before_any_stage(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_weights": None})
    with pytest.raises(InputError, match="'seg_train.encoder_weights' is null, so train-seg"):
        pipeline.run_variants(cfg, "off", until="seg", log=lambda m: None)
    assert not (tmp_path / "w").exists()  # not after hours of the earlier stages


@pytest.mark.slow
def test_pipeline_until_seg_runs_to_deeplab_scores(demo_root, tmp_path):
    """The real wiring: CAM, affinity and DeepLabV3+ stages in order, on a seconds-long tiny config."""
    from test_aff_stages import AFF
    work = tmp_path / "work"
    pipeline.run_variants(tiny_cfg(demo_root, work, **AFF, **SEG), "off", until="seg", log=lambda m: None)
    res = json.loads((work / "results.json").read_text())["baseline"]
    assert {"cam", "pseudo", "seg"} <= set(res) and res["seg"]["n_images"] == len(_ids(demo_root, "val"))
    for stage in ("train_seg", "make_seg", "eval_deeplab", "eval_seg"):
        assert (work / "baseline" / stage / "DONE.json").is_file(), stage
    # Table 2's row has every column, DeepLabV3+ last
    assert re.search(r"\| baseline \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", (work / "report.md").read_text())



def _seg_two_ranks(rank, world, port, root, work, over):
    """One torchrun worker: its environment, the process group as psa-eader sets it up, the two stages."""
    import os
    from stages.distributed import process_group
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group("cpu"):
        cfg = tiny_cfg(root, work, **over)
        train_seg.run(cfg)
        written, save = [], voc.save_label_png
        voc.save_label_png = lambda path, label: (written.append(Path(path).name), save(path, label))
        make_seg.run(cfg)
        Path(work, f"written.{rank}.json").write_text(json.dumps(written))


@pytest.mark.slow
def test_two_processes_train_seg_and_write_every_prediction_once(demo_root, tmp_path):
    """Under torchrun (2 gloo processes): a global batch of 2 would give 1 image per process, on which
    DeepLabV3+'s BatchNorm cannot train, so it is refused; a batch of 4 trains and make-seg writes each
    prediction once."""
    import socket
    import torch.multiprocessing as mp

    def spawn(*args):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(_seg_two_ranks, args=(2, port, *args), nprocs=2, join=True)
    work = tmp_path / "w"
    fake_pseudo(tiny_cfg(demo_root, work, **SEG), demo_root, _ids(demo_root, "train"))
    with pytest.raises(Exception, match="at least 2 per process"):
        spawn(str(demo_root), str(work), SEG)
    spawn(str(demo_root), str(work), {**SEG, "seg_train.batch_size": 4})
    written = [n for r in (0, 1) for n in json.loads((work / f"written.{r}.json").read_text())]
    assert sorted(written) == sorted(f"{i}.png" for i in _ids(demo_root, "val"))
    assert (work / "baseline/make_seg/DONE.json").is_file()
    assert "world size 2" in (work / "logs/baseline.train_seg.log").read_text()


def test_sync_bn_on_cpu_processes_is_refused_before_the_stage_starts(monkeypatch, tmp_path):
    """Under torchrun on the CPU, seg_train.sync_bn=true stops in the config check (also run by `psa-eader
    check`), before train-seg writes its PARTIAL marker, naming the key; one process or false passes."""
    from psa_baseline.errors import InputError
    from stages import train_seg
    from stages.config import load_config
    cfg = load_config("demo", [("work_dir", str(tmp_path)), "seg_train.sync_bn=true"])
    train_seg.check_config(cfg)  # one process: no effect
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="seg_train.sync_bn=false"):
        train_seg.check_config(cfg)
    train_seg.check_config(load_config("demo", [("work_dir", str(tmp_path)), "seg_train.sync_bn=false"]))
    assert not any(tmp_path.iterdir())  # nothing written


# ---- stage 3 as the paper ran it: Xception-65, DeepLabV3+'s own recipe -------------------------------------

def test_voc_config_holds_deeplabv3plus_recipe_and_the_port_as_a_preset():
    from stages.config import load_config
    t = load_config("voc")["seg_train"]
    assert (t["lr"], t["encoder_lr_mult"], t["weight_decay"], t["momentum"], t["poly_power"]) == (0.007, 1.0, 4e-5, 0.9, 0.9)
    assert (t["iterations"], t["batch_size"], t["crop"], t["scale_range"], t["flip"]) == (30000, 16, 512, [0.5, 2.0], True)
    assert (t["output_stride"], t["atrous_rates"], t["encoder"]) == (16, [6, 12, 18], "resnet101")
    port = load_config("voc-seg-port")
    assert {k: port["seg_train"][k] for k in ("lr", "encoder_lr_mult", "weight_decay")} == \
        {"lr": 0.01, "encoder_lr_mult": 0.1, "weight_decay": 1e-4}
    # the preset changes stage 3 only
    voc = load_config("voc")
    assert {k: v for k, v in port.items() if k not in ("seg_train", "name")} == \
        {k: v for k, v in voc.items() if k not in ("seg_train", "name")}


def test_xception65_builds_at_stride_16_and_trains_a_step(demo_root, tmp_path):
    from stages.deeplab import SegTrainDataset, build_deeplab, input_stats, seg_loss, seg_optimizer
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder": "xception65"})
    net = build_deeplab(cfg)
    assert type(net.encoder).__name__ == "TimmUniversalEncoder" and net.encoder.output_stride == 16
    # DeepLab's TF Xception takes pixels in [-1, 1]: white is 1, black -1 (ResNets: ImageNet mean/std)
    assert input_stats("xception65") == ((0.5,) * 3, (0.5,) * 3)
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = 255
    x = voc.normalize(img, *input_stats("xception65"))
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 1.0] and x[:, 1, 1].tolist() == [-1.0, -1.0, -1.0]
    fake_pseudo(cfg, demo_root, _ids(demo_root, "train"))
    ds = SegTrainDataset(voc.VOCRoot(demo_root), _ids(demo_root, "train")[:2],
                         tmp_path / "w/baseline/make_pseudo/pseudo", 64, (1.0, 1.0), stats=input_stats("xception65"))
    xb = torch.stack([ds[i][1] for i in range(2)])
    yb = torch.stack([ds[i][2] for i in range(2)])
    opt = seg_optimizer(cfg, net, 10)
    before = net.encoder.model.stem_0.conv.weight.detach().clone()
    loss = seg_loss(net.train()(xb), yb)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, net.encoder.model.stem_0.conv.weight)


def test_xception65_imagenet_file_loads_and_a_wrong_one_is_refused(demo_root, tmp_path):
    """timm's xception65 file (its classifier names: stem.0..., blocks.N..., head.fc) fills every tensor of the
    encoder; check's dry load says the same; a ResNet file is refused by both, naming the key."""
    import timm
    from stages.check import load_report, meta_nets
    from stages.deeplab import build_deeplab, init_encoder
    torch.manual_seed(0)
    sd = timm.create_model("xception65").state_dict()
    torch.save(sd, tmp_path / "tf_xception_65.pth")
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder": "xception65",
                                                 "seg_train.encoder_weights": str(tmp_path / "tf_xception_65.pth")})
    net = build_deeplab(cfg)
    init_encoder(cfg, net)
    assert torch.equal(net.encoder.model.stem_0.conv.weight, sd["stem.0.conv.weight"])
    assert torch.equal(net.encoder.model.blocks_20.stack.conv3.bn_pw.running_var,
                       sd["blocks.20.stack.conv3.bn_pw.running_var"])
    assert load_report("seg_train.encoder_weights", meta_nets(cfg)["seg_train.encoder_weights"],
                       tmp_path / "tf_xception_65.pth", cfg) == []
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    bad = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder": "xception65",
                                                 "seg_train.encoder_weights": str(tmp_path / "resnet18.pth")})
    with pytest.raises(InputError, match="no tensor in .*resnet18.pth matches"):
        init_encoder(bad, build_deeplab(bad))


def test_weights_list_knows_the_xception65_file():
    from stages.weights_cmd import KNOWN
    e = KNOWN["xception65"]
    assert e.key == "seg_train.encoder_weights" and e.sha256_prefix == "c9ae96e8" and e.sha256_prefix in e.filename
    assert e.url.endswith(e.filename)


def test_narrow_resnet_encoder_takes_the_demo_pre_trained_resnet18(demo_root, tmp_path):
    """seg_train.encoder_width below 1 builds a ResNet encoder at that width (segmentation-models-pytorch has
    none), dilated for output stride 16, into which the demo's width-0.5 ResNet-18 loads whole; the paper's
    value is 1.0 and other encoders refuse a width."""
    from stages.config import load_config
    from stages.deeplab import build_deeplab, init_encoder
    assert load_config("voc")["seg_train"]["encoder_width"] == 1.0
    demo_file = "demo/weights/resnet18_demo.pth"
    cfg = tiny_cfg(demo_root, tmp_path / "w", **{**SEG, "seg_train.encoder_width": 0.5,
                                                  "seg_train.encoder_weights": demo_file})
    train_seg.check_config(cfg)
    net = build_deeplab(cfg)
    assert net.encoder.out_channels == [3, 32, 32, 64, 128, 256]
    assert net.encoder.layer4[0].conv1.stride == (1, 1) and net.encoder.layer4[0].conv1.dilation == (2, 2)
    init_encoder(cfg, net)
    sd = torch.load(Path(__file__).parents[1] / demo_file, weights_only=True)
    own = net.encoder.state_dict()
    assert set(own) == {k for k in sd if not k.startswith("fc.")}
    assert all(torch.equal(own[k], sd[k]) for k in own)
    out = net.eval()(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, 21, 64, 96)
    for key, value, words in (("seg_train.encoder_width", 0, r"in \(0, 1\]"),
                              ("seg_train.encoder_width", 1.5, r"in \(0, 1\]")):
        with pytest.raises(InputError, match=words):
            train_seg.check_config(tiny_cfg(demo_root, tmp_path, **{**SEG, key: value}))
    with pytest.raises(InputError, match="needs a ResNet encoder"):
        train_seg.check_config(tiny_cfg(demo_root, tmp_path, **{**SEG, "seg_train.encoder": "xception65",
                                                                "seg_train.encoder_width": 0.5}))
