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
