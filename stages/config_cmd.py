"""Print the merged config (YAML chain + overrides, bf16 auto resolved) that a subcommand would run with.

    psa-eader config --config demo cam_train.epochs=2      # what `pipeline` would use with that override
    psa-eader config --config voc > my.yaml                # a full copy to edit, then --config my.yaml

Every run also keeps its own copy under <work_dir>/logs/runs/ (stages/record.py).
"""


def main(args):
    from .cli import config_from_args
    from .record import dump_config
    print(dump_config(config_from_args(args)), end="")
