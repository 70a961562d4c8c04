"""stages/registry.py is the one list of stages: each Spec says what its module has, and cli, pipeline, check and
costs follow it (no probing of modules)."""
import inspect

from stages import registry
from stages.cli import build_parser


def test_every_spec_matches_its_module():
    for name, spec in registry.SPECS.items():
        m = spec.load()
        assert callable(getattr(m, spec.entry, None)), f"{name}: {spec.module}.{spec.entry} missing"
        if spec.entry == "run":  # the subcommand calls run(cfg, force=...)
            assert "force" in inspect.signature(m.run).parameters, name
        assert hasattr(m, "add_arguments") == spec.options, f"{name}: options flag"
        if spec.check_config:
            assert callable(m.check_config), name
        assert hasattr(m, "enabled") == spec.optional, f"{name}: optional flag"
        assert (m.__doc__ or "").strip(), f"{name}: its docstring is its --help"


def test_the_parser_and_the_pipeline_follow_the_registry():
    assert list(build_parser(full=[]).stage_parsers) == []  # help alone imports no stage module
    parser = build_parser()
    assert set(parser.stage_parsers) == set(registry.SPECS)
    names = [s.stage for s in registry.PIPELINE]
    assert names == ["train-adv", "train-cam", "make-cam", "eval-cam", "make-crf", "train-aff", "make-pseudo",
                     "eval-seg", "train-seg", "make-seg", "eval-seg"]
    assert [s.stage for s in registry.steps("cam")] == names[:4]
    assert [s.stage for s in registry.steps("pseudo")] == names[:8]
    assert registry.PIPELINE[-1].kwargs == (("target", "seg"),)  # DeepLabV3+'s predictions scored
    for step in registry.PIPELINE:
        assert step.stage in registry.SPECS
    from stages.costs import TRAINING
    assert TRAINING == {"train-adv": "adv_pretrain", "train-cam": "cam_train", "train-aff": "aff_train"}
