"""Every op of slimkernels, one file per op family (`slimkernels.backends.FAMILIES`): its
`torch.library` contracts (schema, argument checks, fake kernel, autograd) and the typed public
functions over `torch.ops.slimkernels.*`, all re-exported here.

Which implementation runs is chosen per device (slimkernels.backends.DEFAULT_ORDER) unless forced
with slimkernels.set_backend / use_backend. A family `f` has ops/f.py (contracts), backends/f.py
(implementations), triton/f.py, csrc/.../f*, tests/ops/test_f.py and bench suite f.
"""
import importlib

from .. import backends

__all__ = []
for _family in backends.FAMILIES:
    _module = importlib.import_module(f"{__name__}.{_family}")
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
backends.load_families()
del _family, _module
