"""The bench suites, one file per op family (slimkernels.backends.FAMILIES). Importing this package
imports every module in it, and each registers its suites with slimkernels.bench.registry: a new
family's suite is one new file here, `<family>.py`, and nothing else."""
import importlib
import pkgutil

from ...backends import FAMILIES


def _load() -> None:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    # the families' order first (the order of `--suite all`), then any other file
    for name in [f for f in FAMILIES if f in found] + sorted(found - set(FAMILIES)):
        importlib.import_module(f"{__name__}.{name}")


_load()
