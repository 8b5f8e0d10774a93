"""Shared pytest setup for the slimkernels tests.

Keep this file short: it is imported before any test module, which is what the line below needs.
"""

import os

import torch

# Without a CUDA device, run Triton kernels in Triton's CPU interpreter. This must happen before
# anything imports triton (triton.jit reads it when a kernel is defined), hence here, at the top of
# the first file pytest imports. A value already set in the environment wins.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# transformers imports torchvision when it is installed, and the CUDA-built torchvision wheel of the
# package index cannot import on a CPU-only torch unless two op schemas exist first (.ci/run installs it
# for the structured-pruning tests); import it the way that works, once, before any test module.
try:
    from slimkernels.testing import import_torchvision

    import_torchvision()
except ImportError:
    pass


def pytest_report_header(config):
    import slimkernels

    info = slimkernels.info()
    return [
        f"slimkernels {slimkernels.__version__} from {slimkernels.__file__}",
        f"cpu isa {info['cpu_isa']}, cuda extension {info['cuda_extension']}, triton {info['triton']}",
    ]


def pytest_sessionstart(session):
    # The tests are about the compiled package: without its CPU extension they would silently test
    # only the reference path. Install it first (pip install ".[test]").
    import slimkernels

    if slimkernels._native._C is None and not os.environ.get("SLIMKERNELS_ALLOW_NO_EXTENSION"):
        raise SystemExit(
            f"slimkernels at {slimkernels.__file__} has no compiled CPU extension "
            f"({slimkernels._native._C_ERROR}); install it first (`pip install .`, README: Install), then `pip install -r tests/requirements.txt`"
        )
