"""The one list of stages: every `psa-eader` subcommand, and the pipeline's steps in order.

cli, pipeline, check and costs read what they need of a stage here, never by probing its module. To add a
stage: write stages/<module>.py with a docstring (its --help) and run(cfg, force=False) (or main(args) when its
command line does more than run it), add its Spec to SPECS, and, for a pipeline stage, a Step to PIPELINE in its
place. docs/architecture.md has the stage contract.
"""
import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Optional

from . import demo_module


@dataclass(frozen=True)
class Spec:
    name: str                     # the subcommand, and the stage's name in the pipeline's plan and logs
    module: str                   # stages/<module>.py
    entry: str = "run"            # what the subcommand calls: run(cfg, force=...) or main(args)
    options: bool = False         # the module adds its own options: add_arguments(p)
    check_config: bool = False    # the module's check_config(cfg) refuses a bad config before any stage runs
    optional: bool = False        # the module's enabled(cfg) says whether it runs for a variant (train-adv)
    alone: bool = False           # under torchrun, rank 0 runs it alone (scoring: quick, writes shared files)
    training: Optional[str] = None  # a training stage sized by epochs: its config section (costs)
    demo_default: bool = False    # the subcommand's config defaults to the CPU demo, not the paper's voc
    recorded: bool = True         # writes a run record (config, command, versions) into the work dir

    def load(self):
        return import_module(f".{self.module}", __package__)


SPECS = {s.name: s for s in (
    Spec("demo-data", "demo_data", entry="main", options=True, demo_default=True, recorded=False),
    Spec("train-adv", "train_adv", optional=True, training="adv_pretrain"),
    Spec("train-cam", "train_cam", training="cam_train"),
    Spec("make-cam", "make_cam", entry="main", options=True),
    Spec("eval-cam", "eval_cam", entry="main", options=True, alone=True),
    Spec("make-crf", "make_crf", entry="main", options=True, check_config=True),
    Spec("train-aff", "train_aff", check_config=True, training="aff_train"),
    Spec("make-pseudo", "make_pseudo", entry="main", options=True, check_config=True),
    Spec("eval-seg", "eval_seg", entry="main", options=True, alone=True),
    Spec("train-seg", "train_seg", check_config=True),
    Spec("make-seg", "make_seg"),
    Spec("export", "export", entry="main", options=True),
    Spec("pipeline", "pipeline", entry="main", options=True, demo_default=True),
    Spec("standalone", "train_standalone", entry="main", options=True, check_config=True),
    Spec("alpha-sweep", "alpha_sweep", entry="main", options=True),
    Spec("compare", "compare", entry="main", options=True),
    Spec("weights", "weights_cmd", entry="main", options=True, recorded=False),
    Spec("check", "check", entry="main", options=True, recorded=False),
    Spec("config", "config_cmd", entry="main", recorded=False),
    Spec("curves", "curves", entry="main", options=True, recorded=False),
    Spec("figure", "figure", entry="main", options=True, recorded=False),
)}


@dataclass(frozen=True)
class Step:
    """One stage of the pipeline: which --until group it belongs to, and run's extra keyword arguments."""
    stage: str
    group: str                    # cam, pseudo (the pseudo labels) or seg: `--until` runs its group and those before
    kwargs: tuple = ()            # e.g. (("target", "seg"),): eval-seg scoring DeepLabV3+'s predictions

    @property
    def spec(self):
        return SPECS[self.stage]

    def runs_for(self, cfg):
        return not self.spec.optional or self.spec.load().enabled(cfg)

    def check_config(self, cfg):
        if self.spec.check_config:
            self.spec.load().check_config(cfg)

    def run(self, cfg, force=False):
        return self.spec.load().run(cfg, force=force, **dict(self.kwargs))


PIPELINE = (
    Step("train-adv", "cam"), Step("train-cam", "cam"), Step("make-cam", "cam"), Step("eval-cam", "cam"),
    Step("make-crf", "pseudo"), Step("train-aff", "pseudo"), Step("make-pseudo", "pseudo"), Step("eval-seg", "pseudo"),
    Step("train-seg", "seg"), Step("make-seg", "seg"), Step("eval-seg", "seg", (("target", "seg"),)),
)
GROUPS = ("cam", "pseudo", "seg")
DEFAULT_UNTIL = "seg"  # the whole pipeline; `check` plans the same by default
# old names still accepted on the command line, with a notice, so that existing commands keep working
RENAMED = {"aff": "pseudo"}


def group_name(text):
    """argparse type of --until and --target: a group's name, an old one (RENAMED) read as its new name."""
    if text in RENAMED:
        print(f"psa-eader: '{text}' is deprecated, use '{RENAMED[text]}' (the same stages)", file=sys.stderr)
        return RENAMED[text]
    return text


def steps(until=DEFAULT_UNTIL):
    """The pipeline's steps up to and including the group `until`."""
    last = GROUPS.index(group_name(until))
    return [s for s in PIPELINE if GROUPS.index(s.group) <= last]


def dataset_identity(root):
    """What identifies the content of the dataset at `root`, for every stage's fingerprint (stages.stage.Stage):
    the demo generator's seed and parameters (its version included), None for a dataset on disk such as VOC.
    Another generated dataset adds its own reader here."""
    return demo_module("data").dataset_identity(root)
