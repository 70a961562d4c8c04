"""Pipeline stages: each module has run(cfg) and talks to the others only through files on disk."""
from importlib import import_module

# A checkout has `stages` and `demo` side by side at the top; an installed wheel puts them under psa_eader
# (psa_eader.stages, psa_eader.demo) so that nothing generic lands in site-packages.
_PARENT = __name__.rpartition(".")[0]


def demo_module(name):
    """The demo package's module `name` (data, pretrain) beside this package, checkout or wheel."""
    return import_module(f"{_PARENT}.demo.{name}" if _PARENT else f"demo.{name}")
