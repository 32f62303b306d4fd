"""FLOPs of a jitted function, counted from its lowered HLO, before any backend rewrites.

XLA's ``compiled.cost_analysis()`` runs over the *optimised* module, after the backend has
replaced ops with its own kernels. On GPU the convolutions become cuDNN custom calls, which
the cost analysis does not see (the issue measured 0.1-0.26 TFLOP for a 4.5 TFLOP step),
and ``Lowered.cost_analysis()`` is not implemented behind the PJRT C API that the GPU plugin
uses. So this module reads the HLO that JAX lowers the function to
(``lowered.as_text(dialect="hlo")``: StableHLO converted to HLO, no backend pass) and counts
it with the rules of XLA's ``HloCostAnalysis``, which makes the count the same on every
backend and comparable with XLA's CPU numbers:

* ``convolution``: 2 x multiply-adds, counting only the kernel taps that land on the input
  (zero padding and the holes of a dilated input are not counted), divided by the feature
  and batch group counts -- ``HloCostAnalysis::GetConvolutionFlops``;
* ``dot``: 2 x output elements x the product of the contracting dimensions;
* elementwise arithmetic (add, multiply, divide, compare, select, convert, bitcast-convert,
  bit operations, ...): 1 per output element; the transcendental ops (exp, log, tanh, rsqrt,
  sqrt, power, sin, ...) are counted apart in ``transcendentals``, not in the FLOPs, as XLA
  does;
* ``reduce``: (input elements - output elements) x the FLOPs of the reducer;
  ``reduce-window``: (window size - 1) x output elements x the reducer's FLOPs; ``map``:
  output elements x the mapped computation's FLOPs;
* ``call``/``fusion`` count their computation; ``conditional`` the most expensive branch;
  ``while`` its body and condition once by default, as ``HloCostAnalysis`` does (it cannot
  know the trip count), or times the trip count with ``while_loops="trip_count"`` where it
  can be read (a known_trip_count backend config, or ``i < N`` from a constant start);
* data movement (broadcast, reshape, transpose, slice, pad, concatenate, gather, copy,
  parameters, constants, tuples) is free.

Custom calls carry no FLOPs in XLA's model. They are listed in ``FlopCount.custom_calls``
(target: count) so that nothing is dropped silently; cuDNN's fused attention
(``__cudnn$fmha...``, what ``jax.nn.dot_product_attention(implementation="cudnn")`` lowers
to) is estimated from its operand shapes (4 B N T S H forward, 10 B N T S H for a backward
call: the five matmuls) and kept apart in ``attention_custom_call``.

The lowered module of a jit over a multi-device mesh is the global program, before SPMD
partitioning, so its count is the FLOPs of the whole step on all devices together.

``tests/runtime/test_flops.py`` checks the count against ``Lowered.cost_analysis()`` (exactly:
the same rules on the same module) and ``Compiled.cost_analysis()`` on CPU (within 2%:
the optimiser changes the elementwise work a little, never the convolutions or dots).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any

__all__ = ["FlopCount", "count_hlo_text", "lowered_flops", "jit_flops", "xla_cost_flops"]

# HloCostAnalysis::HandleElementwiseOp: these count as transcendentals, not FLOPs.
TRANSCENDENTAL = frozenset({
    "exponential", "exponential-minus-one", "log", "log-plus-one", "logistic", "power", "sqrt", "cbrt",
    "rsqrt", "tanh", "sine", "cosine", "tan", "atan2", "erf",
})
# One FLOP per output element.
ELEMENTWISE = frozenset({
    "add", "subtract", "multiply", "divide", "remainder", "maximum", "minimum", "negate", "abs", "sign",
    "compare", "select", "clamp", "convert", "bitcast-convert", "and", "or", "xor", "not", "shift-left",
    "shift-right-logical", "shift-right-arithmetic", "is-finite", "floor", "ceil", "round-nearest-afz",
    "round-nearest-even", "count-leading-zeros", "popcnt", "reduce-precision", "real", "imag", "complex",
    "stochastic-convert",
})
# No arithmetic.
FREE = frozenset({
    "parameter", "constant", "iota", "broadcast", "reshape", "transpose", "copy", "copy-start", "copy-done",
    "slice", "dynamic-slice", "dynamic-update-slice", "concatenate", "pad", "gather", "get-tuple-element",
    "tuple", "bitcast", "reverse", "rng-bit-generator", "rng-get-and-update-state", "after-all",
    "partition-id", "replica-id", "optimization-barrier", "opt-barrier", "domain", "get-dimension-size",
    "set-dimension-size", "add-dependency", "infeed", "outfeed", "send", "send-done", "recv", "recv-done",
    "all-gather", "all-to-all", "collective-permute", "collective-broadcast", "rng",
})

_SHAPE_RE = re.compile(r"([a-z]+[0-9]*)\[([^\]]*)\]")
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*(->.*)?\{\s*$")
_NAME_RE = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


@dataclasses.dataclass
class FlopCount:
    """FLOPs of one HLO module, by kind. ``total`` is what XLA's cost analysis calls flops."""

    conv: float = 0.0
    dot: float = 0.0
    elementwise: float = 0.0
    reduce: float = 0.0
    other: float = 0.0  # map, reduce-window, scatter, select-and-scatter, sort: their computations
    transcendentals: float = 0.0
    attention_custom_call: float = 0.0  # estimated from cuDNN fused-attention custom calls' shapes
    matmul_by_dtype: dict[str, float] = dataclasses.field(default_factory=dict)  # conv + dot, by lhs dtype
    by_opcode: dict[str, float] = dataclasses.field(default_factory=dict)
    custom_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    unknown_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    while_loops: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def matmul(self) -> float:
        """Convolutions and dots: the tensor-core/MXU work."""
        return self.conv + self.dot

    @property
    def total(self) -> float:
        """All FLOPs as ``HloCostAnalysis`` counts them (transcendentals apart; custom calls 0)."""
        return self.conv + self.dot + self.elementwise + self.reduce + self.other

    @property
    def total_with_attention(self) -> float:
        return self.total + self.attention_custom_call

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(matmul=self.matmul, total=self.total, total_with_attention=self.total_with_attention)
        return out


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _match_paren(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced brackets in {text[:200]!r}")


def _parse_instr(line: str) -> _Instr | None:
    m = _NAME_RE.match(line)
    if not m:
        return None
    root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
    if rest.startswith("("):
        end = _match_paren(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    opcode = om.group(1)
    open_idx = om.end() - 1
    close_idx = _match_paren(rest, open_idx)
    operands = [op.split()[-1].lstrip("%") for op in _split_top(rest[open_idx + 1 : close_idx]) if op]
    attrs = rest[close_idx + 1 :]
    return _Instr(name, shape, opcode, operands, attrs, root)


def _array_dims(shape: str) -> tuple[str, list[int]]:
    """dtype and dims of an array shape (the first array of a tuple shape)."""
    m = _SHAPE_RE.search(shape)
    if not m:
        return "", []
    dims = [int(d.lstrip("<=")) for d in m.group(2).split(",") if d.strip()]
    return m.group(1), dims


def _elements(shape: str) -> int:
    return math.prod(_array_dims(shape)[1])


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(r"(?:^|[\s,])" + re.escape(key) + r"=", attrs)
    if not m:
        return None
    start = m.end()
    if start < len(attrs) and attrs[start] == "{":
        return attrs[start + 1 : _match_paren(attrs, start)]
    if start < len(attrs) and attrs[start] == '"':
        return attrs[start + 1 : attrs.index('"', start + 1)]
    end = start
    while end < len(attrs) and attrs[end] not in ", ":
        end += 1
    return attrs[start:end]


def _int_list(value: str | None) -> list[int]:
    if not value:
        return []
    return [int(v) for v in value.replace("{", "").replace("}", "").split(",") if v.strip()]


def _conv_flops(ins: _Instr, shapes: dict[str, str]) -> tuple[float, str]:
    """``HloCostAnalysis::GetConvolutionFlops``: 2 x valid multiply-adds."""
    lhs_dtype, lhs = _array_dims(shapes[ins.operands[0]])
    _, rhs = _array_dims(shapes[ins.operands[1]])
    _, out = _array_dims(ins.shape)
    labels = _attr(ins.attrs, "dim_labels")
    lhs_l, rest = labels.split("_", 1)
    rhs_l, out_l = rest.split("->")
    nsp = sum(c.isdigit() for c in lhs_l)
    window: dict[str, list[Any]] = {}
    wtext = _attr(ins.attrs, "window") or ""
    for item in wtext.split():
        key, _, val = item.partition("=")
        if key == "pad":
            window[key] = [tuple(int(x) for x in re.findall(r"-?\d+", p)) for p in val.split("x")]
        else:
            window[key] = [int(x) for x in val.split("x")]
    valid = []
    for d in range(nsp):
        in_lim = lhs[lhs_l.index(str(d))]
        k_lim = rhs[rhs_l.index(str(d))]
        out_lim = out[out_l.index(str(d))]
        stride = window.get("stride", [1] * nsp)[d]
        pad_lo, _pad_hi = window.get("pad", [(0, 0)] * nsp)[d]
        base = window.get("lhs_dilate", [1] * nsp)[d]
        wdil = window.get("rhs_dilate", [1] * nsp)[d]
        count = 0
        for k in range(k_lim):
            for o in range(out_lim):
                undilated = o * stride - pad_lo + k * wdil
                if base > 1:
                    idx = int(undilated / base)  # C++ integer division truncates toward zero
                    if idx * base != undilated:
                        continue
                else:
                    idx = undilated
                if 0 <= idx < in_lim:
                    count += 1
        valid.append(count)
    fgc = int(_attr(ins.attrs, "feature_group_count") or 1)
    bgc = int(_attr(ins.attrs, "batch_group_count") or 1)
    in_feature = lhs[lhs_l.index("f")]
    out_feature = out[out_l.index("f")]
    batch = lhs[lhs_l.index("b")]
    macs = (in_feature // fgc) * out_feature * (batch // bgc) * math.prod(valid)
    return 2.0 * macs, lhs_dtype


def _dot_flops(ins: _Instr, shapes: dict[str, str]) -> tuple[float, str]:
    lhs_dtype, lhs = _array_dims(shapes[ins.operands[0]])
    contracting = math.prod(lhs[i] for i in _int_list(_attr(ins.attrs, "lhs_contracting_dims")))
    return 2.0 * _elements(ins.shape) * contracting, lhs_dtype


def _attention_custom_call_flops(ins: _Instr, shapes: dict[str, str]) -> float:
    """cuDNN fused attention: q [B, T, N, H], k [B, S, N, H] (jax's BTNH layout)."""
    _, q = _array_dims(shapes.get(ins.operands[0], ""))
    _, k = _array_dims(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else ("", [])
    if len(q) != 4 or len(k) != 4:
        return 0.0
    b, t, n, h = q
    s = k[1]
    matmuls = 5 if "backward" in (_attr(ins.attrs, "custom_call_target") or "").lower() else 2
    return 2.0 * matmuls * b * n * t * s * h


class _Module:
    def __init__(self, text: str):
        self.computations: dict[str, list[_Instr]] = {}
        self.entry: str | None = None
        current: list[_Instr] | None = None
        for line in text.splitlines():
            if not line.strip() or line.startswith("HloModule"):
                continue
            if not line[0].isspace():
                if line.strip() == "}":
                    current = None
                    continue
                m = _HEADER_RE.match(line.strip())
                if m:
                    current = self.computations.setdefault(m.group(2), [])
                    if m.group(1):
                        self.entry = m.group(2)
                continue
            if current is not None:
                ins = _parse_instr(line)
                if ins is not None:
                    current.append(ins)
        if self.entry is None:
            raise ValueError("no ENTRY computation in the HLO text")
        self.shapes = {ins.name: ins.shape for body in self.computations.values() for ins in body}


def _scalar_constant(ins: _Instr) -> int | None:
    if ins.opcode != "constant" or not ins.operands:
        return None
    try:
        return int(float(ins.operands[0]))
    except ValueError:
        return None


def _trip_count(module: _Module, ins: _Instr, by_name: dict[str, _Instr]) -> int | None:
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.attrs)
    if known:
        return int(known.group(1))
    cond = module.computations.get(_attr(ins.attrs, "condition") or "")
    if not cond:
        return None
    local = {i.name: i for i in cond}
    root = next((i for i in cond if i.root), cond[-1])
    if root.opcode != "compare" or _attr(root.attrs, "direction") != "LT":
        return None
    counter, limit = (local.get(o) for o in root.operands)
    if counter is None or limit is None or counter.opcode != "get-tuple-element":
        return None
    n = _scalar_constant(limit)
    index = int(_attr(counter.attrs, "index") or -1)
    init = by_name.get(ins.operands[0])
    if n is None or init is None or init.opcode != "tuple" or index >= len(init.operands):
        return None
    start = _scalar_constant(by_name.get(init.operands[index]) or _Instr("", "", "", [], "", False))
    return None if start is None else max(0, n - start)


def _count(module: _Module, name: str, out: FlopCount, scale: float, while_loops: str, memo: dict) -> None:
    body = module.computations[name.lstrip("%")]
    by_name = {i.name: i for i in body}
    for ins in body:
        op = ins.opcode
        flops = 0.0
        kind = None
        if op == "convolution":
            flops, dtype = _conv_flops(ins, module.shapes)
            kind = "conv"
            out.matmul_by_dtype[dtype] = out.matmul_by_dtype.get(dtype, 0.0) + scale * flops
        elif op == "dot":
            flops, dtype = _dot_flops(ins, module.shapes)
            kind = "dot"
            out.matmul_by_dtype[dtype] = out.matmul_by_dtype.get(dtype, 0.0) + scale * flops
        elif op in ELEMENTWISE:
            flops, kind = float(_elements(ins.shape)), "elementwise"
        elif op in TRANSCENDENTAL:
            out.transcendentals += scale * _elements(ins.shape)
        elif op in FREE:
            pass
        elif op in ("reduce", "all-reduce", "reduce-scatter"):
            sub = _sub_flops(module, _attr(ins.attrs, "to_apply"), while_loops, memo)
            in_elems = _elements(module.shapes[ins.operands[0]])
            n = in_elems - _elements(ins.shape) if op == "reduce" else _elements(ins.shape)
            flops, kind = sub.total * n, "reduce"
            out.transcendentals += scale * sub.transcendentals * n
        elif op == "reduce-window":
            sub = _sub_flops(module, _attr(ins.attrs, "to_apply"), while_loops, memo)
            size = math.prod(int(v) for v in re.search(r"size=([\dx]+)", _attr(ins.attrs, "window")).group(1).split("x"))
            flops, kind = sub.total * (size - 1) * _elements(ins.shape), "other"
        elif op == "map":
            sub = _sub_flops(module, _attr(ins.attrs, "to_apply"), while_loops, memo)
            flops, kind = sub.total * _elements(ins.shape), "other"
        elif op in ("scatter", "select-and-scatter"):
            key = "to_apply" if op == "scatter" else "scatter"
            sub = _sub_flops(module, _attr(ins.attrs, key), while_loops, memo)
            updates = module.shapes[ins.operands[-1]] if op == "scatter" else module.shapes[ins.operands[1]]
            flops, kind = sub.total * _elements(updates), "other"
        elif op in ("call", "fusion", "async-start"):
            _count(module, _attr(ins.attrs, "to_apply") or _attr(ins.attrs, "calls"), out, scale, while_loops, memo)
        elif op == "while":
            trips = _trip_count(module, ins, by_name) if while_loops == "trip_count" else None
            times = trips if trips is not None else 1
            out.while_loops.append(dict(name=ins.name, trip_count=trips, counted=times))
            for key in ("body", "condition"):
                _count(module, _attr(ins.attrs, key), out, scale * times, while_loops, memo)
        elif op == "conditional":
            names = _attr(ins.attrs, "branch_computations")
            names = [n.strip().lstrip("%") for n in names.split(",")] if names else [
                _attr(ins.attrs, "true_computation"), _attr(ins.attrs, "false_computation")]
            subs = [_sub_flops(module, n, while_loops, memo) for n in names]
            best = max(subs, key=lambda s: s.total)
            for field in ("conv", "dot", "elementwise", "reduce", "other", "transcendentals", "attention_custom_call"):
                setattr(out, field, getattr(out, field) + scale * getattr(best, field))
            for key, val in best.matmul_by_dtype.items():
                out.matmul_by_dtype[key] = out.matmul_by_dtype.get(key, 0.0) + scale * val
        elif op == "custom-call":
            target = _attr(ins.attrs, "custom_call_target") or "?"
            out.custom_calls[target] = out.custom_calls.get(target, 0) + 1
            if "fmha" in target.lower():
                out.attention_custom_call += scale * _attention_custom_call_flops(ins, module.shapes)
        else:
            out.unknown_ops[op] = out.unknown_ops.get(op, 0) + 1
        if kind is not None and flops:
            setattr(out, kind, getattr(out, kind) + scale * flops)
            out.by_opcode[op] = out.by_opcode.get(op, 0.0) + scale * flops


def _sub_flops(module: _Module, name: str | None, while_loops: str, memo: dict) -> FlopCount:
    """The count of a computation applied once (reducers, mapped functions, branches)."""
    name = (name or "").lstrip("%")
    if name not in memo:
        sub = FlopCount()
        _count(module, name, sub, 1.0, while_loops, memo)
        memo[name] = sub
    return memo[name]


def count_hlo_text(text: str, *, while_loops: str = "once") -> FlopCount:
    """Count the FLOPs of an HLO module's text (``lowered.as_text(dialect="hlo")`` or a
    compiled module's ``as_text()``). ``while_loops``: ``"once"`` (as XLA's cost analysis)
    or ``"trip_count"``."""
    if while_loops not in ("once", "trip_count"):
        raise ValueError(f"while_loops must be 'once' or 'trip_count', not {while_loops!r}")
    module = _Module(text)
    out = FlopCount()
    _count(module, module.entry, out, 1.0, while_loops, {})
    return out


def lowered_flops(lowered, *, while_loops: str = "once") -> FlopCount:
    """The count of a ``jax.stages.Lowered`` (``jax.jit(f).lower(...)``), before compilation."""
    return count_hlo_text(lowered.as_text(dialect="hlo"), while_loops=while_loops)


def jit_flops(fn, *args, while_loops: str = "once", **kwargs) -> FlopCount:
    """Lower ``fn`` (jitted if it is not) at ``args`` (arrays or ``jax.ShapeDtypeStruct``)
    and count it. Nothing is compiled."""
    import jax

    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return lowered_flops(jitted.lower(*args, **kwargs), while_loops=while_loops)


def xla_cost_flops(stage) -> float:
    """``cost_analysis()['flops']`` of a ``Lowered`` or ``Compiled`` (XLA's own count; XLA
    leaves the key out when it is 0)."""
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def summarize_by_opcode(count: FlopCount, top: int = 8) -> list[tuple[str, float]]:
    return Counter(count.by_opcode).most_common(top)
