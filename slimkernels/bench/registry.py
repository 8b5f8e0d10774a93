"""The suite registry. A suite says, for one case (device, N, K, M, options), what is timed: a list of
entries ("ours" and "anchor"), each with a builder that makes its per-layer calls on a weight stack.
`slimkernels bench` and the pytest-benchmark files (bench/) both read suites from here; importing
`slimkernels.bench.suites` registers them (one file per op family).

A suite, in its own file under suites/ (plus one import line in suites/__init__.py):

    @register("my_op", family="my_family", op="my_op", description="ours vs torch on ...")
    def my_op(case: Case) -> list[EntrySpec]:
        ours = lambda i: Work([functools.partial(ops.my_op, i.x, w) for w in i.stack.weights], bytes=...)
        torch_anchor = lambda i: Work([functools.partial(F.linear, i.x, w) for w in i.stack.weights], bytes=...)
        return case.ours("ours:native", "ours_native", ours, impl="native", backend="native") + \\
            case.anchor("fp32 F.linear", "fp32_linear", torch_anchor)
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
from typing import Callable, Optional, Sequence

import torch

from .stacks import Stack, float_dtype

# The pure-torch reference of a GEMM unpacks the weight and multiplies in float or int64 (~0.5 s for
# one 4096x4096 layer at M=1 on a 2-core CPU): it is timed only up to this many multiply-adds per
# layer, unless asked for (--include-reference).
REFERENCE_MAX_MACS = 2**26

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
DTYPE_TAG = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
AMX_MODES = ("auto", "on", "off")


# ---- what a run asks for -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Options:
    """Run-wide choices that change the entries of a case (the CLI's and pytest's options).

    isas:    CPU ISAs our native entries run on; None: every one this CPU has but scalar. The best
             one is unlabeled, the others are extra rows tagged '[avx2]'.
    amx:     AMX modes of our native low-bit entries (auto | on | off); None: the process's mode.
             Modes other than auto are rows tagged '[amx-off]', '[amx-on]' (best ISA only).
    dtypes:  activation dtypes of our entries; None: the device's float dtype (fp32 on CPU, bf16 on
             GPU), the one the anchors use. Others are rows tagged '[bf16]', '[fp32]', ...
    include_reference: time the pure-torch reference above REFERENCE_MAX_MACS too.
    """

    isas: Optional[tuple[str, ...]] = None
    amx: Optional[tuple[str, ...]] = None
    dtypes: Optional[tuple[torch.dtype, ...]] = None
    include_reference: bool = False


@dataclasses.dataclass
class Work:
    """What an entry's builder returns: one callable per layer of the stack, and the bytes one call
    must move (inputs read once, output written once). ops: operations per call (default 2*M*N*K)."""

    calls: list
    bytes: int
    ops: Optional[int] = None


@dataclasses.dataclass
class Inputs:
    """What a builder gets: the stack, M rows of random input x in the entry's dtype, and the
    generator that drew x (for further inputs, e.g. int8 activations)."""

    stack: Stack
    x: torch.Tensor
    gen: torch.Generator
    m: int
    n: int
    k: int
    device: str
    dtype: torch.dtype

    @property
    def fsize(self) -> int:
        """Bytes per element of x (and of float outputs)."""
        return torch.finfo(self.dtype).bits // 8


@dataclasses.dataclass
class EntrySpec:
    """One timed thing of a case, known before any weight is built (pytest parametrizes on these)."""

    suite: str
    name: str  # shown in tables: "ours:native", "fp32 F.linear", "w4a16:native[avx2]", ...
    id: str  # pytest id part: "ours_native", "fp32_linear", "w4a16_native_avx2", ...
    kind: str  # "ours" | "anchor"
    backend: Optional[str] = None  # forced through slimkernels.use_backend while timing; None: default
    skip: Optional[str] = None  # why it is not timed here
    isa: Optional[str] = None  # CPU: force this ISA of the native kernels (slimkernels.use_cpu_isa)
    amx: Optional[str] = None  # CPU: force this AMX mode of the low-bit kernels (slimkernels.use_cpu_amx)
    dtype: Optional[torch.dtype] = None  # activation dtype; None: the stack's float dtype
    build: Optional[Callable[[Inputs], Work]] = dataclasses.field(default=None, repr=False, compare=False)

    @contextlib.contextmanager
    def switches(self):
        """Inference mode and this entry's backend, ISA and AMX mode, while it is built and timed."""
        from ..backends import use_backend, use_cpu_amx, use_cpu_isa

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(use_backend(self.backend))
            if self.isa:
                stack.enter_context(use_cpu_isa(self.isa))
            if self.amx:
                stack.enter_context(use_cpu_amx(self.amx))
            yield


@dataclasses.dataclass
class Entry:
    spec: EntrySpec
    calls: list  # one callable per layer of the stack
    bytes: int  # bytes one call must move (inputs read once, output written once)
    ops: int  # operations per call (multiply-adds x 2 for a GEMM)


# ---- a case, as a suite's entry function sees it -----------------------------------------------------
@dataclasses.dataclass
class Case:
    suite: str
    device: str
    n: int
    k: int
    m: int
    options: Options

    def implementations(self, op: str) -> list[str]:
        """Implementations of `op` worth timing on the device (Triton on CPU is the interpreter: never)."""
        from ..backends import implementations

        return [i for i in implementations(op, self.device) if not (self.device == "cpu" and i == "triton")]

    def resolve(self, op: str) -> str:
        """The implementation the default dispatch picks for `op` (what a user gets)."""
        from ..backends import resolve

        return resolve(op, self.device)

    def reference_skip(self, impl: Optional[str]) -> Optional[str]:
        if impl == "reference" and not self.options.include_reference and self.m * self.n * self.k > REFERENCE_MAX_MACS:
            return (f"the pure-torch reference is not timed above {REFERENCE_MAX_MACS} multiply-adds per layer "
                    "(--include-reference times it)")
        return None

    def _isas(self) -> list[Optional[str]]:
        """[None (the best ISA, unlabeled) or a forced ISA, ...] for native CPU entries."""
        from .. import _native

        if self.device != "cpu" or _native._C is None:
            return [None]
        supported = list(_native._C.supported_isas())
        wanted = self.options.isas or [isa for isa in supported if isa != "scalar"]
        return [None if isa == supported[0] else isa for isa in wanted]

    def _dtypes(self) -> list[Optional[torch.dtype]]:
        default = float_dtype(self.device)
        return [None if d == default else d for d in (self.options.dtypes or [None])]

    def _variants(self, native: bool, amx: bool, dtypes: bool) -> list[tuple[list[str], dict]]:
        out = []
        for isa in self._isas() if native else [None]:
            modes = self.options.amx if (native and amx and isa is None and self.options.amx) else [None]
            for mode in modes:
                amx_tag = f"amx-{mode}" if mode not in (None, "auto") else None
                for dt in self._dtypes() if dtypes else [None]:
                    tags = [t for t in (isa, amx_tag, dt and DTYPE_TAG[dt]) if t]
                    out.append((tags, {"isa": isa, "amx": mode, "dtype": dt}))
        return out

    def _expand(self, name, id, kind, build, backend, skip, native, amx, dtypes) -> list[EntrySpec]:
        specs = []
        for tags, fields in self._variants(native, amx, dtypes):
            label = f"{name}[{','.join(tags)}]" if tags else name
            ident = "_".join([id] + [t.replace("-", "_") for t in tags])
            specs.append(EntrySpec(self.suite, label, ident, kind, backend, skip, build=build, **fields))
        return specs

    def ours(self, name: str, id: str, build: Callable[[Inputs], Work], *, impl: Optional[str] = None,
             backend: Optional[str] = None, skip: Optional[str] = None, isa: bool = True, amx: bool = False,
             dtypes: bool = True, skip_large_reference: bool = True) -> list[EntrySpec]:
        """Our entry and its variants. impl: the implementation it runs (forced with `backend`, or the
        default dispatch's); 'native' on CPU gets a row per ISA (isa=True) and per AMX mode (amx=True:
        the low-bit kernels); every entry gets a row per activation dtype (dtypes=True). The reference
        is skipped on large problems (skip_large_reference: a GEMM's reference; not for cheap ops)."""
        native = impl == "native" and isa
        if skip is None and skip_large_reference:
            skip = self.reference_skip(impl)
        return self._expand(name, id, "ours", build, backend, skip, native, amx, dtypes)

    def anchor(self, name: str, id: str, build: Callable[[Inputs], Work], *, backend: Optional[str] = None,
               skip: Optional[str] = None, dtypes: bool = False, dtype: Optional[torch.dtype] = None) -> list[EntrySpec]:
        """An anchor (not ours), in the device's float dtype, or in `dtype` (untagged: say it in the
        name), or once per activation dtype asked for (dtypes=True, tagged)."""
        if dtype is not None:
            dt = None if dtype == float_dtype(self.device) else dtype
            return [EntrySpec(self.suite, name, id, "anchor", backend, skip, dtype=dt, build=build)]
        return self._expand(name, id, "anchor", build, backend, skip, False, False, dtypes)

    def dtypes(self) -> list[torch.dtype]:
        """The activation dtypes asked for (--act-dtype), the device's float dtype by default."""
        return [d or float_dtype(self.device) for d in self._dtypes()]


# ---- suites ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Suite:
    name: str
    family: str  # the op family (slimkernels.backends.FAMILIES) whose kernels it times
    op: str  # what the table's title calls the timed thing: "int8_scaled_mm_packed", "QuantLinear", ...
    description: str
    make: Callable[[Case], list[EntrySpec]] = dataclasses.field(repr=False)
    aliases: tuple[str, ...] = ()
    default: bool = True  # run when no --suite is given
    weights: bool = True  # False: x only (no weight stack), one case per K

    def entries(self, device: str, n: int, k: int, m: int, options: Optional[Options] = None) -> list[EntrySpec]:
        return self.make(Case(self.name, device, n, k, m, options or Options()))

    def shape_key(self, n: int, k: int) -> tuple:
        """Shapes with the same key are the same case for this suite (x-only suites: the same K)."""
        return (n, k) if self.weights else (k,)

    def build(self, spec: EntrySpec, stack: Stack, m: int) -> Entry:
        """The per-layer callables of one entry on `stack` with M rows of input, and its byte count."""
        if spec.build is None:
            raise ValueError(f"no builder for entry {spec.suite}/{spec.id}")
        dev = stack.device
        dtype = spec.dtype or stack.dtype
        gen = torch.Generator(device=dev).manual_seed(1000 + m)
        x = torch.randn(m, stack.k, generator=gen, device=dev).to(dtype)
        with torch.inference_mode():  # built under the default dispatch: forms are shared by entries
            work = spec.build(Inputs(stack, x, gen, m, stack.n, stack.k, dev, dtype))
        ops = work.ops if work.ops is not None else 2 * m * stack.n * stack.k
        return Entry(spec, work.calls, work.bytes, ops)


_SUITES: dict[str, Suite] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, family: str, op: str, description: str, aliases: Sequence[str] = (),
             default: bool = True, weights: bool = True):
    """Decorator: `fn(case) -> [EntrySpec, ...]` becomes the suite `name` (returned in its place)."""

    def deco(fn: Callable[[Case], list[EntrySpec]]) -> Suite:
        for key in (name, *aliases):
            if key in _SUITES or key in _ALIASES:
                raise ValueError(f"bench suite name {key!r} is taken")
        suite = Suite(name, family, op, description, fn, tuple(aliases), default, weights)
        _SUITES[name] = suite
        _ALIASES.update({a: name for a in aliases})
        return suite

    return deco


def load() -> None:
    """Import every suite file (each registers itself)."""
    importlib.import_module(f"{__package__}.suites")


def suites() -> list[Suite]:
    load()
    return list(_SUITES.values())


def names() -> list[str]:
    return [s.name for s in suites()]


def get(name: str) -> Suite:
    load()
    key = _ALIASES.get(name, name)
    if key not in _SUITES:
        known = ", ".join(f"{s.name}" + (f" (alias {', '.join(s.aliases)})" if s.aliases else "") for s in _SUITES.values())
        raise ValueError(f"unknown bench suite {name!r}; known: {known}")
    return _SUITES[key]


def select(spec: Optional[str]) -> list[Suite]:
    """'default' (or None): the suites marked default; 'all': every suite; else a comma list of names
    or aliases, in that order, without repeats."""
    load()
    if spec in (None, "", "default"):
        return [s for s in _SUITES.values() if s.default]
    if spec == "all":
        return list(_SUITES.values())
    out: list[Suite] = []
    for item in spec.split(","):
        suite = get(item.strip())
        if suite not in out:
            out.append(suite)
    return out


def parse_options(isa: Optional[str] = None, amx: Optional[str] = None, dtype: Optional[str] = None,
                  include_reference: bool = False) -> Options:
    """Options from comma lists as the CLI and pytest take them; ValueError on bad values."""
    def split(text):
        return [v.strip() for v in text.split(",") if v.strip()] if text else []

    isas = split(isa)
    if isas:
        from .. import _native
        from ..backends import CPU_ISAS

        bad = [v for v in isas if v not in CPU_ISAS]
        if bad:
            raise ValueError(f"--isa: unknown {bad}; expected some of {', '.join(CPU_ISAS)}")
        if _native._C is not None:
            missing = [v for v in isas if v not in _native._C.supported_isas()]
            if missing:
                raise ValueError(f"--isa: this CPU cannot run {missing}; it supports {list(_native._C.supported_isas())}")
    modes = split(amx)
    bad = [v for v in modes if v not in AMX_MODES]
    if bad:
        raise ValueError(f"--amx: unknown {bad}; expected some of {', '.join(AMX_MODES)}")
    dts = split(dtype)
    bad = [v for v in dts if v not in DTYPES]
    if bad:
        raise ValueError(f"--act-dtype: unknown {bad}; expected some of fp32, bf16, fp16")
    return Options(isas=tuple(isas) or None, amx=tuple(modes) or None,
                   dtypes=tuple(dict.fromkeys(DTYPES[v] for v in dts)) or None, include_reference=include_reference)
