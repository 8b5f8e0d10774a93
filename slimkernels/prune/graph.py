"""Find the coupled prunable units of a model from a trace of one forward pass.

Every entry of every dim of a parameter that the forward touches is an *atom*. A traced tensor
carries, for each of its dims, either nothing (the dim holds no prunable units: batch, tokens,
pixels, or a model input's channels) or a 1-D LongTensor saying which atom each position along that
dim comes from (-1: none). Layers start atoms (a conv's output channels are its weight's dim-0
atoms), consumers join them (a conv's input positions are joined, position by position, to its
weight's dim-1 atoms), and elementwise ops join their operands' atoms position by position. A
union-find over atoms then gives the connected components: one component is one removable unit,
and components touching the same parameter dims form a `Group`.

What keeps the groups right after units are physically removed:
* An op that mixes positions along a tracked dim (a reduction, softmax, a LayerNorm over it, a
  conv's spatial taps over a tracked spatial dim) joins every atom along that dim, so the dim keeps
  its width (`approximate=True` instead lets such dims be pruned and marks the groups with a note).
* An operand without atoms that is full-size on a tracked dim (a model input, a buffer, a literal
  tensor) joins every atom along that dim: its width is fixed by something the pruner cannot change.
* Indexing that depends on positions (slices, literal split sizes, roll, gather) joins every atom
  along the dim; a dim split by view/reshape into several (heads x head_dim) keeps one atom per
  index of the dim that view inferred (-1) or else its leading dim: whole heads are the units.
* Attention (matmul over heads, scaled_dot_product_attention) joins the heads of q, k and v, and
  with grouped-query attention a key/value head with all the query heads that read it.
Anything else that touches a tracked tensor raises `UnsupportedOperation` naming the op and the
module it ran in: a wrong group is never returned.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .group import Group, Member

__all__ = ["build_groups", "UnsupportedOperation"]


class UnsupportedOperation(ValueError):
    """The tracer met an operation it does not model on a tensor that carries prunable units."""


# ---- op tables (by __name__, which torch.X, Tensor.X and F.X share) ------------------------------
# One tensor in, same shape out, position by position (only the first tensor operand matters).
_UNARY = set("""
abs neg negative exp exp2 expm1 log log2 log10 log1p sqrt rsqrt square reciprocal sign sgn floor ceil round
trunc frac sin cos tan tanh sinh cosh asin acos atan erf erfc erfinv sigmoid logit relu relu6 gelu silu mish
hardswish hardsigmoid hardtanh hardshrink softshrink tanhshrink leaky_relu elu selu celu softplus softsign
threshold rrelu logsigmoid isnan isinf isfinite nan_to_num bitwise_not logical_not __neg__ __abs__ __invert__
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout to type type_as float half double
bfloat16 int long bool short char byte clone detach contiguous requires_grad_ cpu cuda pin_memory
zeros_like ones_like empty_like full_like rand_like randn_like randint_like fill_ zero_ normal_ uniform_
""".split())
# Several tensors broadcast together, position by position.
_ELEMENTWISE = set("""
add sub subtract mul multiply div divide true_divide floor_divide remainder fmod pow float_power rsub atan2
maximum minimum fmax fmin clamp clip clamp_min clamp_max where masked_fill lerp addcmul addcdiv hypot copysign
eq ne lt le gt ge equal greater less greater_equal less_equal not_equal logical_and logical_or logical_xor
bitwise_and bitwise_or bitwise_xor xlogy heaviside copy_
__add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__ __rtruediv__
__itruediv__ __div__ __rdiv__ __floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__ __ipow__
__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __and__ __rand__ __or__ __ror__ __xor__ __rxor__ __iand__ __ior__
""".split())
# Pure position movers: the tracer replays them on an index tensor to see where each position goes.
_MOVERS = set("""
view reshape view_as reshape_as flatten unflatten squeeze unsqueeze permute transpose swapaxes swapdims t
movedim moveaxis expand expand_as repeat tile flip fliplr flipud roll narrow select __getitem__ index_select
repeat_interleave split split_with_sizes tensor_split unbind unfold diagonal pixel_shuffle pixel_unshuffle
channel_shuffle native_channel_shuffle take_along_dim gather as_strided T mT H mH
""".split())
# Shape-keeping ops that mix the positions along one dim.
_MIX_ALONG = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "cummax", "cummin", "normalize", "logcumsumexp"}
_REDUCTIONS = set("""
sum mean nansum nanmean prod amax amin max min median nanmedian var std var_mean std_mean norm logsumexp all
any argmax argmin count_nonzero aminmax mode kthvalue topk sort argsort
""".split())
_SPATIAL = set("""
max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d
adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d
interpolate upsample upsample_nearest upsample_bilinear max_pool1d_with_indices max_pool2d_with_indices
""".split())
# Calls that read a tracked tensor but make a tensor unrelated to its units.
_FRESH = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros", "ones", "empty", "full",
          "arange", "tensor", "as_tensor"}
_HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads", "num_key_value_heads", "num_kv_heads",
                "all_head_size", "inner_dim")


def _op_name(func) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a Tensor property (.T, .mT, .data, .shape)
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _tensors(tree) -> list[torch.Tensor]:
    """Tensors in nested tuples/lists/dicts (HF ModelOutput is a dict)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


@dataclass
class _ParamDim:
    """One dim of one parameter (or buffer) and the atoms of its entries."""

    owners: list  # [(module_name, module, attribute)]: every module holding this tensor
    tensor: torch.Tensor
    dim: int
    start: int  # atoms start .. start + size - 1
    size: int
    role: str
    producer: bool  # its entries are units of their own (output channels), not readers of others'


@dataclass
class _Trace:
    """Union-find over atoms plus everything the recorded ops said about them."""

    approximate: bool
    parent: list = field(default_factory=list)
    pdims: list = field(default_factory=list)  # _ParamDim, in creation order (= by start)
    pdim_of: dict = field(default_factory=dict)  # (id(tensor), dim) -> _ParamDim
    maps: dict = field(default_factory=dict)  # id(tensor) -> (tensor, [map or None per dim])
    heads: set = field(default_factory=set)  # atoms joined across heads by attention
    approx: set = field(default_factory=set)  # atoms whose dims were mixed (approximate mode)

    # -- union-find -------------------------------------------------------------------------------
    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        if a < 0 or b < 0:
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_all(self, atoms: torch.Tensor) -> int:
        """Join every atom in `atoms` (-1 ignored); return one of them or -1."""
        found = atoms[atoms >= 0].unique().tolist()
        for a in found[1:]:
            self.union(found[0], a)
        return found[0] if found else -1

    def union_maps(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a is b or torch.equal(a, b):
            return
        for x, y in zip(a.tolist(), b.tolist()):
            self.union(x, y)

    def mix(self, m: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The positions along a dim are mixed together: in exact mode the dim keeps its width (all its
        atoms join); in approximate mode the atoms stay apart and their groups get a note."""
        if m is None:
            return None
        if self.approximate:
            self.approx.update(m[m >= 0].tolist())
            return m
        rep = self.union_all(m)
        return torch.where(m >= 0, torch.full_like(m, rep), m)

    def pin_dim(self, m: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The width of this dim is fixed from outside (input, literal, position-dependent index)."""
        if m is None:
            return None
        rep = self.union_all(m)
        return torch.where(m >= 0, torch.full_like(m, rep), m)

    # -- parameters -------------------------------------------------------------------------------
    def pdim(self, owners, tensor, dim, role, producer=False, force_role=False) -> torch.Tensor:
        key = (id(tensor), dim)
        pd = self.pdim_of.get(key)
        if pd is None:
            size = tensor.shape[dim]
            pd = _ParamDim(owners, tensor, dim, len(self.parent), size, role, producer)
            self.parent.extend(range(pd.start, pd.start + size))
            self.pdims.append(pd)
            self.pdim_of[key] = pd
        else:
            pd.producer = pd.producer or producer
            if force_role:  # a layer says what this dim is; a direct use only guesses ("out")
                pd.role = role
        return torch.arange(pd.start, pd.start + pd.size)



class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, trace: _Trace):
        super().__init__()
        self.trace = trace
        self.owners: dict[int, list] = {}  # id(param or buffer) -> [(module_name, module, attr)]
        self.params: set[int] = set()
        for mname, module in model.named_modules(remove_duplicate=False):
            for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
                if t is not None:
                    self.owners.setdefault(id(t), [])
                    if all(o[1] is not module or o[2] != attr for o in self.owners[id(t)]):
                        self.owners[id(t)].append((mname, module, attr))
                    if attr in module._parameters:
                        self.params.add(id(t))
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.stack: list[nn.Module] = [model]

    # -- bookkeeping ------------------------------------------------------------------------------
    def where(self) -> str:
        module = self.stack[-1]
        return f"module '{self.module_names.get(id(module), '?') or '<model>'}' ({type(module).__name__})"

    def unsupported(self, op: str, why: str):
        raise UnsupportedOperation(f"structured pruning cannot trace {op!r} in {self.where()}: {why}")

    def maps_of(self, t) -> Optional[list]:
        """The per-dim atom maps of a tensor; a parameter used directly gets its own atoms."""
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.trace.maps.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        if id(t) in self.params:
            maps = [self.trace.pdim(self.owners[id(t)], t, d, "out") if t.shape[d] > 1 else None
                    for d in range(t.dim())]
            self.set_maps(t, maps)
            return maps
        return None

    def tracked(self, t) -> bool:
        maps = self.maps_of(t)
        return maps is not None and any(m is not None for m in maps)

    def mixed_away(self, m) -> None:
        """A tracked dim that an op reduces away (pooling, conv taps): mixed, and gone from the output."""
        self.trace.mix(m)
        return None

    def involved(self, t) -> bool:
        entry = self.trace.maps.get(id(t))
        return (entry is not None and entry[0] is t) or id(t) in self.params

    def set_maps(self, t, maps) -> None:
        if isinstance(t, torch.Tensor) and maps is not None and any(m is not None for m in maps):
            self.trace.maps[id(t)] = (t, list(maps))

    def param_atoms(self, t, dim, role, producer=False, op="") -> torch.Tensor:
        if id(t) not in self.owners:
            self.unsupported(op, "its weight is not a parameter of a module (computed in forward?)")
        return self.trace.pdim(self.owners[id(t)], t, dim, role, producer, force_role=True)

    # -- coupling -----------------------------------------------------------------------------------
    def couple(self, entries) -> Optional[torch.Tensor]:
        """Operands meeting position by position on one dim: [(size, map or None)] with the dim's full
        size first. Broadcast operands (size 1) do not couple; an untracked full-size one pins the dim."""
        full = max(size for size, _ in entries)
        maps = [m for size, m in entries if size == full and m is not None]
        if not maps:
            return None
        for m in maps[1:]:
            self.trace.union_maps(maps[0], m)
        if full > 1 and any(m is None and size == full for size, m in entries):
            return self.trace.pin_dim(maps[0])
        return maps[0]

    def broadcast_maps(self, operands, ndim) -> list:
        out = []
        for k in range(ndim):
            entries = []
            for t in operands:
                d = t.dim() - ndim + k
                if d >= 0:
                    maps = self.maps_of(t)
                    entries.append((t.shape[d], maps[d] if maps else None))
            out.append(self.couple(entries) if entries else None)
        return out

    # -- the trace ----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func)
        inputs = _tensors(list(args) + list(kwargs.values()))
        if any(self.involved(t) for t in inputs):
            outs = _tensors(out)
            if name == "__setitem__" and self.tracked(args[0]):
                self.unsupported(name, "writing into a tensor that carries prunable units is not modelled")
            if outs:
                self.record(func, name, args, kwargs, out, outs)
        return out

    def record(self, func, name, args, kwargs, out, outs) -> None:
        base = name.rstrip("_") if name.endswith("_") and not name.startswith("__") else name
        first = next(t for t in _tensors(list(args) + list(kwargs.values())))
        tr = self.trace
        if base in _UNARY or name in _UNARY:
            for o in outs:
                if o.shape == first.shape:
                    self.set_maps(o, self.maps_of(first))
        elif base in _ELEMENTWISE or name in _ELEMENTWISE:
            operands = [t for t in _tensors(list(args) + list(kwargs.values())) if t.dim() > 0]
            self.set_maps(outs[0], self.broadcast_maps(operands, outs[0].dim()))
        elif base in _MOVERS:
            self.move(func, name, args, kwargs, out)
        elif base == "chunk":
            self.chunk(args, kwargs, outs)
        elif base == "glu":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
            halves = self.split_even(first, dim, 2)
            self.set_maps(outs[0], halves[0])
        elif base in ("cat", "concat", "concatenate", "stack", "hstack", "vstack"):
            self.cat(base, args, kwargs, outs[0])
        elif base in _MIX_ALONG or base in _REDUCTIONS:
            self.reduce(base, args, kwargs, first, outs)
        elif base in _SPATIAL:
            maps = self.maps_of(first)
            kept = [maps[0], maps[1]] + [self.mixed_away(m) for m in maps[2:]]
            for o in outs:
                if o.dim() == first.dim() and o.is_floating_point():
                    self.set_maps(o, kept)
        elif base == "pad":
            self.pad(args, kwargs, first, outs[0])
        elif base in ("matmul", "__matmul__", "__rmatmul__", "bmm", "mm"):
            a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
            self.set_maps(outs[0], self.matmul(a.shape, self.maps_of(a), b.shape, self.maps_of(b), name,
                                               a_param=a, b_param=b))
        elif base == "scaled_dot_product_attention":
            self.sdpa(args, kwargs, outs[0])
        elif base in ("conv1d", "conv2d", "conv3d"):
            self.conv(base, args, kwargs, outs[0])
        elif base in ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
            self.conv_transpose(base, args, kwargs, outs[0])
        elif base == "linear":
            self.linear(args, kwargs, outs[0])
        elif base == "embedding":
            self.embedding(args, kwargs, outs[0])
        elif base in ("batch_norm", "instance_norm"):
            self.batch_norm(base, args, kwargs, outs[0])
        elif base in ("layer_norm", "rms_norm"):
            self.layer_norm(base, args, kwargs, outs[0])
        elif base == "group_norm":
            self.group_norm(args, kwargs, outs[0])
        elif base == "prelu":
            self.prelu(args, outs[0])
        elif base in _FRESH or name in ("data", "shape", "dtype", "device", "__setstate__"):
            if name == "data":
                self.set_maps(outs[0], self.maps_of(first))
        else:
            self.unsupported(name, "this operation is not modelled by the dependency tracer")

    # -- movers --------------------------------------------------------------------------------------
    def move(self, func, name, args, kwargs, out) -> None:
        x = args[0]
        maps = self.maps_of(x)
        if maps is None:
            return
        probe = torch.arange(x.numel()).reshape(x.shape)  # replay the op on positions
        probe_out = func(probe, *args[1:], **kwargs)
        hint = self.inferred_dim(name, args, kwargs, out)
        outs, probes = _tensors(out), _tensors(probe_out)
        for o, p in zip(outs, probes):
            self.set_maps(o, self.moved_maps(name, x.shape, maps, p, hint))

    @staticmethod
    def inferred_dim(name, args, kwargs, out) -> Optional[int]:
        """The output dim a view/reshape/unflatten inferred (-1): where units go when a dim is split."""
        if name in ("view", "reshape"):
            sizes = args[1:] if len(args) > 2 or not isinstance(args[1] if len(args) > 1 else None,
                                                                   (tuple, list, torch.Size)) else args[1]
            sizes = list(sizes) if sizes else list(kwargs.get("shape", kwargs.get("size", ())))
            return sizes.index(-1) if -1 in sizes else None
        if name == "unflatten":
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            sizes = list(args[2] if len(args) > 2 else kwargs["sizes"])
            if -1 in sizes:
                return (dim % (out.dim() - len(sizes) + 1)) + sizes.index(-1)
        return None

    def moved_maps(self, name, in_shape, maps, probe, hint) -> list:
        tr = self.trace
        out_maps: list = [None] * probe.dim()
        strides = [1] * len(in_shape)
        for d in range(len(in_shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * in_shape[d + 1]
        for i, m in enumerate(maps):
            if m is None:
                continue
            src = (probe // strides[i]) % in_shape[i]  # the input coordinate along dim i, per out position
            varies = [j for j in range(probe.dim()) if probe.shape[j] > 1 and bool((src != src.narrow(j, 0, 1)).any())]
            covered = src.unique().numel() == in_shape[i] if src.numel() else False
            if not varies or not covered:  # a position-dependent selection: the dim keeps its width
                m = tr.pin_dim(m)
                if not varies:
                    continue
            if len(varies) == 1:
                j = varies[0]
                line = src
                for k in range(probe.dim()):  # the line along j, all other coordinates at 0
                    if k != j:
                        line = line.narrow(k, 0, 1)
                line = line.flatten()
                if not _order_kept(line, in_shape[i]):
                    m = tr.pin_dim(m)
                new = m[line]
            else:  # a dim split into several: one atom per index of the inferred (or leading) dim
                j = hint if hint in varies else varies[0]
                atoms = m[src].movedim(j, 0).reshape(probe.shape[j], -1)
                new = torch.tensor([tr.union_all(row) for row in atoms])
            out_maps[j] = new if out_maps[j] is None else self.couple([(len(new), out_maps[j]), (len(new), new)])
        return out_maps

    def split_even(self, x, dim, parts) -> list:
        """Equal chunks along a dim stay equal only if the same units go from each: join them."""
        maps = self.maps_of(x)
        dim = dim % x.dim()
        m = maps[dim]
        if m is None:
            return [maps] * parts
        size = x.shape[dim]
        if size % parts:
            m = self.trace.pin_dim(m)
            step = -(-size // parts)
            return [maps[:dim] + [m[k * step:(k + 1) * step]] + maps[dim + 1:] for k in range(parts)]
        step = size // parts
        for k in range(1, parts):
            self.trace.union_maps(m[:step], m[k * step:(k + 1) * step])
        return [maps[:dim] + [m[k * step:(k + 1) * step]] + maps[dim + 1:] for k in range(parts)]

    def chunk(self, args, kwargs, outs) -> None:
        x = args[0]
        parts = args[1] if len(args) > 1 else kwargs["chunks"]
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        for o, maps in zip(outs, self.split_even(x, dim, parts) if len(outs) == parts else []):
            self.set_maps(o, maps)
        if len(outs) != parts:  # torch.chunk made fewer chunks: sizes depend on the width
            self.set_maps_pinned(x, dim, outs)

    def set_maps_pinned(self, x, dim, outs) -> None:
        maps = list(self.maps_of(x))
        maps[dim % x.dim()] = self.trace.pin_dim(maps[dim % x.dim()])
        for o in outs:
            self.set_maps(o, maps[:dim % x.dim()] + [None] + maps[dim % x.dim() + 1:])

    def cat(self, base, args, kwargs, out) -> None:
        tensors = args[0] if args else kwargs["tensors"]
        tensors = [t for t in tensors if not (t.dim() == 1 and t.numel() == 0 and out.dim() > 1)]  # legacy empty
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if base in ("hstack", "vstack"):
            self.unsupported(base, "use torch.cat with an explicit dim")
        stack = base == "stack"
        dim = dim % (out.dim() if stack else tensors[0].dim())
        out_maps = []
        for k in range(out.dim()):
            if stack and k == dim:
                out_maps.append(None)
                continue
            d = k - 1 if stack and k > dim else k
            per = [(t.shape[d], (self.maps_of(t) or [None] * t.dim())[d]) for t in tensors]
            if k == dim:  # the concatenated dim: each input's atoms at its offset
                if all(m is None for _, m in per):
                    out_maps.append(None)
                else:
                    out_maps.append(torch.cat([m if m is not None else torch.full((size,), -1) for size, m in per]))
            else:
                out_maps.append(self.couple(per))
        self.set_maps(out, out_maps)

    def reduce(self, base, args, kwargs, x, outs) -> None:
        tr = self.trace
        maps = self.maps_of(x)
        if base in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
            self.set_maps(outs[0], self.broadcast_maps([args[0], args[1]], outs[0].dim()))
            return
        pos = 2 if base in ("norm", "normalize") else 1
        dim = args[pos] if len(args) > pos and not isinstance(args[pos], bool) else kwargs.get("dim")
        if base == "normalize" and dim is None:
            dim = 1
        if base in ("topk", "kthvalue", "sort", "argsort") and dim is None:
            dim = -1
        if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
            dims = set(range(x.dim()))
        else:
            dims = {d % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else [dim])}
        kept = []
        for d, m in enumerate(maps):
            if d in dims:
                m = tr.pin_dim(m) if base in ("topk", "kthvalue", "sort", "argsort") else tr.mix(m)
                kept.append(m if base in _MIX_ALONG else None)
            else:
                kept.append(m)
        for o in outs:
            if o.dim() == x.dim():
                self.set_maps(o, kept)
            elif o.dim() == x.dim() - len(dims):
                self.set_maps(o, [m for d, m in enumerate(kept) if d not in dims])

    def pad(self, args, kwargs, x, out) -> None:
        pads = list(args[1] if len(args) > 1 else kwargs["pad"])
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        maps = list(self.maps_of(x))
        for k in range(len(pads) // 2):
            d = x.dim() - 1 - k
            lo, hi = pads[2 * k], pads[2 * k + 1]
            if maps[d] is None or (lo == 0 and hi == 0):
                continue
            if mode != "constant" or lo < 0 or hi < 0:
                maps[d] = self.trace.pin_dim(maps[d])
            maps[d] = torch.cat([torch.full((max(lo, 0),), -1), maps[d][max(-lo, 0):len(maps[d]) - max(-hi, 0)],
                                 torch.full((max(hi, 0),), -1)])
        self.set_maps(out, maps)

    # -- matmul and attention ----------------------------------------------------------------------------
    def matmul(self, a_shape, a_maps, b_shape, b_maps, op, a_param=None, b_param=None) -> list:
        a_maps = a_maps or [None] * len(a_shape)
        b_maps = b_maps or [None] * len(b_shape)
        if len(a_shape) < 2 or len(b_shape) < 2:
            if any(m is not None for m in a_maps + b_maps):
                self.unsupported(op, "a matrix-vector product on a tensor with prunable units")
            return None
        for t, k_dim, other in ((a_param, -1, -2), (b_param, -2, -1)):  # a parameter used as a weight
            if isinstance(t, torch.Tensor) and id(t) in self.params and t.dim() == 2:
                pd_k = self.trace.pdim_of.get((id(t), t.dim() + k_dim))
                pd_o = self.trace.pdim_of.get((id(t), t.dim() + other))
                if pd_k is not None:
                    pd_k.role = "in"
                if pd_o is not None:
                    pd_o.producer = True
        self.couple([(a_shape[-1], a_maps[-1]), (b_shape[-2], b_maps[-2])])  # contraction
        batch = max(len(a_shape), len(b_shape)) - 2
        out = []
        for k in range(batch):
            entries = []
            for shape, maps in ((a_shape, a_maps), (b_shape, b_maps)):
                d = len(shape) - 2 - batch + k
                if d >= 0:
                    entries.append((shape[d], maps[d]))
            m = self.couple(entries)
            if m is not None:
                self.trace.heads.update(m[m >= 0].tolist())
            out.append(m)
        return out + [a_maps[-2], b_maps[-1]]

    def sdpa(self, args, kwargs, out) -> None:
        names = ("query", "key", "value")
        q, k, v = [args[i] if len(args) > i else kwargs[names[i]] for i in range(3)]
        maps = [list(self.maps_of(t) or [None] * t.dim()) for t in (q, k, v)]
        shapes = [list(t.shape) for t in (q, k, v)]
        if q.dim() >= 3 and k.shape[-3] != q.shape[-3]:  # grouped-query attention: each kv head serves a group
            rep = q.shape[-3] // k.shape[-3]
            for i in (1, 2):
                m = maps[i][-3]
                maps[i][-3] = None if m is None else m.repeat_interleave(rep)
                shapes[i][-3] = q.shape[-3]
        kt_shape = shapes[1][:-2] + [shapes[1][-1], shapes[1][-2]]
        kt_maps = maps[1][:-2] + [maps[1][-1], maps[1][-2]]
        scores = self.matmul(shapes[0], maps[0], kt_shape, kt_maps, "scaled_dot_product_attention")
        s_shape = shapes[0][:-1] + [shapes[1][-2]]
        scores = scores[:-1] + [self.trace.mix(scores[-1])]  # softmax over keys
        self.set_maps(out, self.matmul(s_shape, scores, shapes[2], maps[2], "scaled_dot_product_attention"))

    # -- layers ----------------------------------------------------------------------------------
    def _bias(self, bias, out_atoms, op) -> None:
        if isinstance(bias, torch.Tensor):
            self.trace.union_maps(self.param_atoms(bias, 0, "out", op=op), out_atoms)

    def conv(self, op, args, kwargs, out) -> None:
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        tr = self.trace
        maps = list(self.maps_of(x) or [None] * x.dim())
        c = 1 if x.dim() == weight.dim() else 0
        out_atoms = self.param_atoms(weight, 0, "out", producer=True, op=op)
        self._bias(bias, out_atoms, op)
        m_in = maps[c]
        if groups == 1:
            if m_in is not None:
                tr.union_maps(m_in, self.param_atoms(weight, 1, "in", op=op))
        else:  # a conv group's input and output channels go together (depthwise: one channel each)
            cin_g, cout_g = weight.shape[1], weight.shape[0] // groups
            if m_in is not None and cin_g == 1 and cout_g == 1:  # depthwise: channel c in is channel c out
                tr.union_maps(m_in, out_atoms)
            for j in range(groups if m_in is not None and (cin_g > 1 or cout_g > 1) else 0):
                block = torch.cat([m_in[j * cin_g:(j + 1) * cin_g], out_atoms[j * cout_g:(j + 1) * cout_g]])
                tr.union_all(block)
            if m_in is None:  # input channels that cannot go: neither can the groups
                tr.pin_dim(out_atoms)
        spatial = [self.mixed_away(m) for m in maps[c + 1:]]
        self.set_maps(out, maps[:c] + [out_atoms] + spatial)

    def conv_transpose(self, op, args, kwargs, out) -> None:
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
        maps = list(self.maps_of(x) or [None] * x.dim())
        c = 1 if x.dim() == weight.dim() else 0
        if groups != 1 and maps[c] is not None:
            self.unsupported(op, "grouped transposed convolutions are not modelled")
        out_atoms = self.param_atoms(weight, 1, "out", producer=True, op=op)
        self._bias(bias, out_atoms, op)
        if maps[c] is not None:
            self.trace.union_maps(maps[c], self.param_atoms(weight, 0, "in", op=op))
        spatial = [self.mixed_away(m) for m in maps[c + 1:]]
        self.set_maps(out, maps[:c] + [out_atoms] + spatial)

    def linear(self, args, kwargs, out) -> None:
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        maps = list(self.maps_of(x) or [None] * x.dim())
        out_atoms = self.param_atoms(weight, 0, "out", producer=True, op="linear")
        self._bias(bias, out_atoms, "linear")
        if maps[-1] is not None:
            self.trace.union_maps(maps[-1], self.param_atoms(weight, 1, "in", op="linear"))
        self.set_maps(out, maps[:-1] + [out_atoms])

    def embedding(self, args, kwargs, out) -> None:
        idx, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        if self.tracked(idx):
            self.unsupported("embedding", "the indices carry prunable units")
        atoms = self.param_atoms(weight, 1, "out", producer=True, op="embedding")
        self.set_maps(out, [None] * idx.dim() + [atoms])

    def _per_channel(self, op, tensors, m) -> Optional[torch.Tensor]:
        """Norm/PReLU tensors holding one entry per channel join the channel's atoms."""
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() > 1:
                atoms = self.param_atoms(t, 0, "out", op=op)
                if m is None:
                    m = atoms
                else:
                    self.trace.union_maps(m, atoms)
        return m

    def batch_norm(self, op, args, kwargs, out) -> None:
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias")
        tensors = [args[i + 1] if len(args) > i + 1 else kwargs.get(n) for i, n in enumerate(names)]
        maps = list(self.maps_of(x) or [None] * x.dim())
        c = 1 if x.dim() > 1 else 0
        had = maps[c]
        merged = self._per_channel(op, tensors, maps[c])
        maps[c] = merged if had is not None else None
        self.set_maps(out, maps)

    def layer_norm(self, op, args, kwargs, out) -> None:
        x = args[0]
        shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
        shape = [shape] if isinstance(shape, int) else list(shape)
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 and op == "layer_norm" else kwargs.get("bias")
        maps = list(self.maps_of(x) or [None] * x.dim())
        first = x.dim() - len(shape)
        for k in range(len(shape)):
            d = first + k
            maps[d] = self.trace.mix(maps[d])
            for t in (weight, bias):
                if isinstance(t, torch.Tensor) and shape[k] > 1:
                    atoms = self.param_atoms(t, k, "out", op=op)
                    if maps[d] is not None:
                        self.trace.union_maps(maps[d], atoms)
        self.set_maps(out, maps)

    def group_norm(self, args, kwargs, out) -> None:
        x = args[0]
        groups = args[1] if len(args) > 1 else kwargs["num_groups"]
        tensors = [args[i] if len(args) > i else kwargs.get(n) for i, n in ((2, "weight"), (3, "bias"))]
        maps = list(self.maps_of(x))
        m = maps[1]
        if m is not None:  # statistics are per norm group: a whole norm group is one unit
            per = x.shape[1] // groups
            for j in range(groups):
                self.trace.union_all(m[j * per:(j + 1) * per])
            maps[1] = self._per_channel("group_norm", tensors, m)
            for j in range(2, x.dim()):
                maps[j] = self.mixed_away(maps[j])
        self.set_maps(out, maps)

    def prelu(self, args, out) -> None:
        x, weight = args[0], args[1]
        maps = list(self.maps_of(x))
        c = 1 if x.dim() > 1 else 0
        if weight.numel() > 1 and maps[c] is not None:
            maps[c] = self._per_channel("prelu", [weight], maps[c])
        self.set_maps(out, maps)


def _order_kept(line: torch.Tensor, n: int) -> bool:
    """Positions that stay right when units are removed: the dim in order or reversed, each position
    repeated r times in a row, the whole repeated k times (expand, repeat, repeat_interleave, flip)."""
    if line.numel() % n:
        return False
    r = 1
    while r < line.numel() and line[r] == line[0]:
        r += 1
    if line.numel() % (n * r):
        return False
    k = line.numel() // (n * r)
    base = torch.arange(n)
    return any(torch.equal(line, b.repeat_interleave(r).repeat(k)) for b in (base, base.flip(0)))


def _call(model, example_inputs):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def build_groups(model: nn.Module, example_inputs, *, ignore: Iterable[str] = (),
                 approximate: bool = False) -> list[Group]:
    """Every group of coupled prunable units of `model`, from one traced forward on `example_inputs`
    (a tensor, a tuple of positional arguments, or a dict of keyword arguments).

    Units that reach a model output or a model input, and units of modules named in `ignore` (or
    inside them), are left out. approximate=False (the default) returns only groups whose removal
    keeps the outputs exactly equal once the units are zeroed (`shrink.zero_units`); approximate=True
    also returns groups whose dims pass through a normalization or reduction over them (LayerNorm,
    RMSNorm, softmax, mean over channels), each marked with a note: the hidden size of a transformer."""
    if isinstance(ignore, str):
        raise TypeError("ignore: expected an iterable of module names, got a single string")
    ignore = list(ignore)
    names = {n for n, _ in model.named_modules()}
    for n in ignore:
        if n not in names:
            raise ValueError(f"ignore: {n!r} is not a module of the model")
    trace = _Trace(approximate=approximate)
    tracer = _Tracer(model, trace)
    training = {m: m.training for m in model.modules()}

    def push(module, _args):
        tracer.stack.append(module)

    def pop(module, _args, _out):
        if tracer.stack and tracer.stack[-1] is module:
            tracer.stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(push),
               nn.modules.module.register_module_forward_hook(pop)]
    try:
        model.eval()
        with torch.no_grad(), tracer:
            out = _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in training.items():
            m.training = mode
    return _groups(model, trace, tracer, out, ignore)


def _groups(model, trace: _Trace, tracer: _Tracer, out, ignore) -> list[Group]:
    n = len(trace.parent)
    roots = torch.tensor([trace.find(a) for a in range(n)], dtype=torch.long)
    blocked = set()
    for t in _tensors(out):  # units that reach an output
        entry = trace.maps.get(id(t))
        for m in (entry[1] if entry and entry[0] is t else []):
            if m is not None:
                blocked.update(roots[m[m >= 0]].tolist())
    ignored = lambda name: any(name == p or name.startswith(p + ".") for p in ignore)  # noqa: E731
    for pd in trace.pdims:
        if any(ignored(o[0]) for o in pd.owners):
            blocked.update(roots[pd.start:pd.start + pd.size].tolist())

    components: dict[int, list[int]] = {}
    for a, r in enumerate(roots.tolist()):
        components.setdefault(r, []).append(a)
    by_key: dict[tuple, list[int]] = {}
    pd_of_atom = [i for i, pd in enumerate(trace.pdims) for _ in range(pd.size)]
    for r, atoms in components.items():
        if r in blocked:
            continue
        pds = sorted({pd_of_atom[a] for a in atoms})
        if any(trace.pdims[i].producer for i in pds):
            by_key.setdefault(tuple(pds), []).append(r)

    groups = []
    unit_of_root = torch.full((n,), -1, dtype=torch.long)  # each root is one unit of at most one group
    group_of_root = torch.full((n,), -1, dtype=torch.long)
    for gid, (key, comp_roots) in enumerate(by_key.items()):
        if len(comp_roots) < 2:  # one unit: removing it would leave nothing
            continue
        comp_roots.sort(key=lambda r: components[r][0])
        unit_of_root[torch.tensor(comp_roots)] = torch.arange(len(comp_roots))
        group_of_root[torch.tensor(comp_roots)] = gid
        group = _make_group(model, trace, key, comp_roots, components, roots, unit_of_root, group_of_root == gid)
        if group is not None:
            groups.append(group)
    groups.sort(key=lambda g: min(trace.pdims[i].start for i in g._key))
    for g in groups:
        del g._key
    return groups


def _make_group(model, trace, key, comp_roots, components, roots, unit_of_root, in_group) -> Optional[Group]:
    members = []
    for i in key:
        pd = trace.pdims[i]
        here = roots[pd.start:pd.start + pd.size]
        units = torch.where(in_group[here], unit_of_root[here], -1)
        positions = torch.nonzero(units >= 0).flatten()
        counts = torch.bincount(units[positions], minlength=len(comp_roots))
        if counts.min() != counts.max():  # not a rectangle: units of different widths
            return None
        order = torch.argsort(units[positions] * pd.size + positions)
        index = positions[order].reshape(len(comp_roots), -1)
        for mname, module, attr in pd.owners:
            members.append(Member(mname, module, attr, pd.dim, index, pd.role, extent=pd.size))
    producer = next(trace.pdims[i] for i in key if trace.pdims[i].producer)
    heads = not trace.heads.isdisjoint(components[comp_roots[0]])
    approx = any(not trace.approx.isdisjoint(components[r]) for r in comp_roots)
    group = Group(members=members, size=len(comp_roots), unit="head" if heads else "channel",
                  root=producer.owners[0][0])
    if approx:
        group.note = "approximate: a normalization or reduction reads these units; outputs change on removal"
    if heads:
        group.counters = _head_counters(model, group)
    group._key = key
    return group


def _head_counters(model, group: Group) -> dict:
    """Attributes of the attention modules that count heads (or head-sized widths) and so must drop
    when heads go: found on the parents of the query/key/value projections."""
    counters: dict = {}
    for m in group.outputs():
        parent_name = m.module_name.rpartition(".")[0]
        parent = model.get_submodule(parent_name)
        for attr in _HEAD_COUNTS:
            value = getattr(parent, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value % group.size == 0 and value > 0:
                counters.setdefault(parent_name, {})[attr] = value // group.size
    return counters
