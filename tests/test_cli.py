"""The command line itself: help, version, and which variants the pipeline runs."""
import pytest

from psa_baseline.errors import InputError
from stages.cli import main as cli_main
from stages.pipeline import variants_asked


def test_help_and_version_work(capsys):
    for argv in (["--help"], ["compare", "--help"], ["pipeline", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 0, argv
    out = capsys.readouterr().out
    assert "95%" in out and "default: both" in out.replace("\n", " ").replace("  ", " ")
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("psa-eader ")


@pytest.mark.parametrize("flag, overrides, want", [
    (None, [], "both"),                                   # the demo command shows the comparison
    (None, ["eader.enabled=true"], "on"), (None, ["eader.enabled=false"], "off"),
    ("off", [], "off"), ("both", ["cam_train.epochs=2"], "both"),
    ("on", ["eader.enabled=true"], "on"), (None, [("eader.enabled", True)], "on"),
])
def test_the_variants_follow_the_flag_or_the_key(flag, overrides, want):
    assert variants_asked(flag, overrides) == want


@pytest.mark.parametrize("flag, override", [("off", "eader.enabled=true"), ("both", "eader.enabled=false"),
                                            ("on", "eader.enabled=false")])
def test_a_flag_and_a_key_that_disagree_are_refused(flag, override, capsys):
    with pytest.raises(InputError, match=f"--eader {flag} and {override} disagree"):
        variants_asked(flag, [override])
    assert cli_main(["pipeline", "--eader", flag, override, "--work-dir", "/nonexistent/never-made"]) == 2
    assert "disagree" in capsys.readouterr().err


def test_config_prints_the_merged_config_and_it_loads_back(tmp_path, capsys):
    """`psa-eader config` prints the config a run would use (overrides applied, bf16 auto resolved), and that
    text is itself a config: --config on it gives the same dict."""
    import yaml
    from stages.config import load_config
    assert cli_main(["config", "--config", "demo", "cam_train.epochs=2", "--seed", "7"]) == 0
    text = capsys.readouterr().out
    cfg = yaml.safe_load(text)
    assert cfg["cam_train"]["epochs"] == 2 and cfg["seed"] == 7 and cfg["name"] == "demo"
    assert isinstance(cfg["cam_train"]["bf16"], bool)
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(str(tmp_path / "c.yaml")) == load_config("demo", ["cam_train.epochs=2", ("seed", 7)])


def test_every_run_records_its_config_command_and_versions(tmp_path, capsys):
    """A stage run leaves <work_dir>/logs/runs/<time>-<stage>-<pid>/ with the merged config, the command line
    and overrides, and the code and library versions, even when it then stops on bad input; `check` and
    `config` leave nothing."""
    import yaml
    from stages.config import load_config
    w = tmp_path / "w"
    argv = ["make-crf", "--config", "demo", "--work-dir", str(w), "--voc-root", str(tmp_path / "none"),
            "crf.scale_factor=2.0"]
    assert cli_main(argv) == 2          # no CAMs to read: refused, but the invocation is on record
    runs = list((w / "logs" / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.split("-")[1] == "make"
    rec = {f: yaml.safe_load((runs[0] / f"{f}.yaml").read_text()) for f in ("config", "command", "versions")}
    assert rec["config"] == load_config("demo", ["crf.scale_factor=2.0", ("work_dir", str(w)),
                                                 ("voc_root", str(tmp_path / "none"))])
    assert rec["command"]["overrides"] == ["crf.scale_factor=2.0"] and rec["command"]["argv"][1:] == argv
    assert rec["versions"]["libraries"]["torch"] and "CPU" in rec["versions"]["machine"]
    git = rec["versions"]["git"]
    assert git is None or (len(git["commit"]) == 40 and isinstance(git["dirty"], bool))
    w2 = tmp_path / "w2"
    cli_main(["check", "--config", "demo", "--work-dir", str(w2), "--voc-root", str(tmp_path / "none")])
    cli_main(["config", "--config", "demo", "--work-dir", str(w2)])
    assert not (w2 / "logs" / "runs").exists()


def test_pipeline_runs_its_pre_flight_check_before_any_stage(demo_root, tmp_path, capsys):
    """A weights file that is missing for the last stage stops `pipeline` before the first stage, naming the
    config key and how to fix it, not with a --voc-root hint."""
    w = tmp_path / "w"
    over = ["seg_train.encoder_weights=/nonexistent/resnet101.pth"]
    assert cli_main(["pipeline", "--voc-root", str(demo_root), "--work-dir", str(w), "--eader", "off", *over]) == 2
    err = capsys.readouterr().err
    assert "seg_train.encoder_weights" in err and "not found" in err and "--voc-root" not in err
    assert not (w / "baseline").exists()


def test_check_on_a_fresh_clone_knows_the_pipeline_writes_the_demo_data(tmp_path, capsys):
    """`check --config demo` before the demo data exists is not a problem (pipeline writes it first): a note,
    exit 0; a folder of other files at the demo root is still refused."""
    argv = ["check", "--config", "demo", "--work-dir", str(tmp_path / "w")]
    assert cli_main(argv + ["--voc-root", str(tmp_path / "not-yet")]) == 0
    out = capsys.readouterr().out
    assert "pipeline` writes it first" in out and "ready: every check passed" in out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("not a dataset")
    assert cli_main(argv + ["--voc-root", str(tmp_path / "other")]) == 2


def test_pipeline_keeps_its_summary_and_the_stages_their_curves(demo_root, tmp_path, capsys):
    """A finished `pipeline` run leaves its own story in logs/pipeline.log (the check, stage headers, the
    report, wall time) and each training stage a metrics.csv of its log lines; rerun, the summary gets a second
    section, not a new file."""
    import csv
    w = tmp_path / "w"
    argv = ["pipeline", "--voc-root", str(demo_root), "--work-dir", str(w), "--eader", "off", "--until", "cam",
            "net.width=0.125", "net.blocks=[1,1,1,1]", "cam_train.batch_size=4", "cam_train.epochs=2",
            "cam_train.crop=64", "cam_train.resize_long=[56,80]", "cam_train.log_every=2",
            "cam_infer.scales=[1.0]", "net.weights=random"]
    assert cli_main(argv) == 0
    text = (w / "logs" / "pipeline.log").read_text()
    for part in ("== pre-flight check", "ready: every check passed", "== train-cam [baseline] ==",
                 "== eval-cam [baseline] ==", "CAM mIoU", "wall time"):
        assert part in text, part
    rows = list(csv.DictReader(open(w / "baseline" / "train_cam" / "metrics.csv")))
    assert rows and int(rows[-1]["step"]) == 8 and float(rows[-1]["lr"]) >= 0
    assert cli_main(argv) == 0
    assert (w / "logs" / "pipeline.log").read_text().count("== psa-eader pipeline") == 2


def test_curves_draws_each_training_stages_metrics(tmp_path, capsys):
    """`psa-eader curves` turns every <variant>/<stage>/metrics.csv into curves.png beside it and prints each
    figure's first, last and lowest value; a work dir without curves is refused by name."""
    import cv2
    d = tmp_path / "w" / "baseline" / "train_cam"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("step,epoch,lr,loss,s_per_step\n10,0,0.1,0.9,0.2\n20,0,0.09,0.5,0.2\n"
                                   "30,1,0.08,0.6,0.21\n")
    assert cli_main(["curves", "--work-dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "first 0.9  last 0.6  lowest 0.5" in out
    img = cv2.imread(str(d / "curves.png"))
    assert img is not None and img.shape[0] >= 200 and (img < 250).any()
    assert cli_main(["curves", "--work-dir", str(tmp_path / "empty")]) == 2
