"""JAX function -> ONNX graph, by translating its jaxpr one primitive at a time.

Working at the jaxpr level exports exactly what JAX computes, for every
model configuration: the TF1 "replace" attention mask, the IB-BERT teacher,
NoNorm, the trigram embedding, and the int8 fake-quant forward pass, none of
which an export through HF's PyTorch classes could express. The graph has
the static shapes it was traced with (batch and sequence length are fixed,
as on-device inference pads to a fixed length anyway); parameters become
initializers. Needs the `export` extra (`onnx`; `onnxruntime` to run it).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mobilebert_jax.errors import ConfigError

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # the extra is optional
    raise ConfigError("ONNX export needs the `export` extra: pip install 'mobilebert-jax[export]'") from e

OPSET = 18
_ELEMENTWISE = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "exp": "Exp",
                "log": "Log", "tanh": "Tanh", "erf": "Erf", "logistic": "Sigmoid", "neg": "Neg", "abs": "Abs",
                "sqrt": "Sqrt", "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "round": "Round", "pow": "Pow",
                "lt": "Less", "gt": "Greater", "le": "LessOrEqual", "ge": "GreaterOrEqual", "eq": "Equal",
                "and": "And", "or": "Or", "not": "Not", "stop_gradient": "Identity", "copy": "Identity",
                "copy_p": "Identity", "reduce_precision": "Identity"}


class UnsupportedPrimitive(NotImplementedError):
    """The jaxpr uses a primitive this exporter does not translate; the message names it."""


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Graph:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names = (f"t{i}" for i in itertools.count())

    def fresh(self) -> str:
        return next(self._names)

    def const(self, value: np.ndarray) -> str:
        name = self.fresh()
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.fresh()
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out


def _einsum_equation(lhs_rank: int, rhs_rank: int, dimension_numbers) -> str:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in range(lhs_rank)]
    rhs = [None] * rhs_rank
    for l, r in zip(lhs_contract, rhs_contract):
        rhs[r] = lhs[l]
    for l, r in zip(lhs_batch, rhs_batch):
        rhs[r] = lhs[l]
    rhs = [c if c is not None else next(letters) for c in rhs]
    out = [lhs[d] for d in lhs_batch]
    out += [lhs[d] for d in range(lhs_rank) if d not in lhs_contract and d not in lhs_batch]
    out += [rhs[d] for d in range(rhs_rank) if d not in rhs_contract and d not in rhs_batch]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def _emit(g: _Graph, eqn, ins: list[str], in_avals: list[Any]) -> list[str]:
    """ONNX node(s) for one jaxpr equation; returns the output names."""
    name, p = eqn.primitive.name, eqn.params
    out_aval = eqn.outvars[0].aval
    if name in _ELEMENTWISE:
        return [g.node(_ELEMENTWISE[name], ins)]
    if name == "ne":
        return [g.node("Not", [g.node("Equal", ins)])]
    if name == "erfc":
        return [g.node("Sub", [g.const(np.ones((), in_avals[0].dtype)), g.node("Erf", ins)])]
    if name == "square":
        return [g.node("Mul", [ins[0], ins[0]])]
    if name == "rsqrt":
        return [g.node("Reciprocal", [g.node("Sqrt", ins)])]
    if name == "integer_pow":
        exponent = g.const(np.asarray(p["y"], in_avals[0].dtype))
        return [g.node("Pow", [ins[0], exponent])]
    if name == "convert_element_type":
        return [g.node("Cast", ins, to=_onnx_type(p["new_dtype"]))]
    if name == "dot_general":
        return [_dot_general(g, ins, len(in_avals[0].shape), len(in_avals[1].shape), p["dimension_numbers"])]
    if name == "reshape":
        return [g.node("Reshape", [ins[0], g.const(np.asarray(out_aval.shape, np.int64))])]
    if name == "broadcast_in_dim":
        shape = list(p["shape"])
        kept = [1] * len(shape)
        for src, dst in enumerate(p["broadcast_dimensions"]):
            kept[dst] = in_avals[0].shape[src]
        reshaped = g.node("Reshape", [ins[0], g.const(np.asarray(kept, np.int64))])
        return [g.node("Expand", [reshaped, g.const(np.asarray(shape, np.int64))])]
    if name == "squeeze":
        return [g.node("Squeeze", [ins[0], g.const(np.asarray(p["dimensions"], np.int64))])]
    if name == "expand_dims":
        return [g.node("Unsqueeze", [ins[0], g.const(np.asarray(p["dimensions"], np.int64))])]
    if name == "transpose":
        return [g.node("Transpose", ins, perm=list(p["permutation"]))]
    if name in ("reduce_sum", "reduce_max", "reduce_min"):
        op = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}[name]
        return [g.node(op, [ins[0], g.const(np.asarray(p["axes"], np.int64))], keepdims=0)]
    if name == "concatenate":
        return [g.node("Concat", ins, axis=int(p["dimension"]))]
    if name == "slice":
        starts, limits = np.asarray(p["start_indices"], np.int64), np.asarray(p["limit_indices"], np.int64)
        steps = np.asarray(p["strides"] or [1] * len(starts), np.int64)
        return [g.node("Slice", [ins[0], g.const(starts), g.const(limits),
                                 g.const(np.arange(len(starts), dtype=np.int64)), g.const(steps)])]
    if name == "select_n":
        if len(ins) != 3:
            raise UnsupportedPrimitive(f"select_n with {len(ins) - 1} cases (only 2 are translated)")
        predicate = ins[0] if in_avals[0].dtype == np.bool_ else g.node("Cast", [ins[0]], to=TensorProto.BOOL)
        return [g.node("Where", [predicate, ins[2], ins[1]])]
    if name == "clamp":  # clamp(lo, x, hi)
        return [g.node("Min", [g.node("Max", [ins[1], ins[0]]), ins[2]])]
    if name == "iota":
        dim, shape = p["dimension"], p["shape"]
        values = np.arange(shape[dim], dtype=p["dtype"]).reshape([-1 if i == dim else 1 for i in range(len(shape))])
        return [g.const(np.broadcast_to(values, shape).copy())]
    if name == "gather":
        return [_gather(g, eqn, ins, in_avals)]
    raise UnsupportedPrimitive(f"jaxpr primitive {name!r} has no ONNX translation (params {sorted(p)})")


def _dot_general(g: _Graph, ins: list[str], lhs_rank: int, rhs_rank: int, dimension_numbers) -> str:
    """MatMul where the contraction is one (possibly batched) matrix product, as runtimes fuse it best; else Einsum."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if not lhs_batch and rhs_rank == 2 and lhs_contract == (lhs_rank - 1,) and rhs_contract == (0,):
        return g.node("MatMul", ins)  # a Dense layer: [..., K] x [K, N]
    lhs_free = [d for d in range(lhs_rank) if d not in lhs_contract and d not in lhs_batch]
    rhs_free = [d for d in range(rhs_rank) if d not in rhs_contract and d not in rhs_batch]
    if len(lhs_contract) == 1 and len(lhs_free) == 1 and len(rhs_free) == 1:
        # [batch..., M, K] x [batch..., K, N] -> [batch..., M, N], dot_general's own output order.
        lhs = g.node("Transpose", [ins[0]], perm=[*lhs_batch, *lhs_free, *lhs_contract])
        rhs = g.node("Transpose", [ins[1]], perm=[*rhs_batch, *rhs_contract, *rhs_free])
        return g.node("MatMul", [lhs, rhs])
    return g.node("Einsum", ins, equation=_einsum_equation(lhs_rank, rhs_rank, dimension_numbers))


def _gather(g: _Graph, eqn, ins, in_avals) -> str:
    """The row lookup `jnp.take(table, ids, axis=0)` lowers to (an embedding); other gathers are refused."""
    dn, operand, indices = eqn.params["dimension_numbers"], in_avals[0], in_avals[1]
    row_lookup = (dn.collapsed_slice_dims == (0,) and dn.start_index_map == (0,) and indices.shape[-1] == 1
                  and tuple(eqn.params["slice_sizes"]) == (1, *operand.shape[1:])
                  and not getattr(dn, "operand_batching_dims", ()))
    if not row_lookup:
        raise UnsupportedPrimitive(f"gather with dimension numbers {dn} (only row lookups are translated)")
    squeezed = g.node("Squeeze", [ins[1], g.const(np.asarray([indices.ndim - 1], np.int64))])
    return g.node("Gather", [ins[0], squeezed], axis=0)


def _closed_jaxpr_of(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    return None


def _translate(g: _Graph, jaxpr, consts: Sequence[Any], in_names: Sequence[str]) -> list[str]:
    env: dict[Any, str] = {}

    def read(atom) -> str:
        if isinstance(atom, jax.extend.core.Literal):
            return g.const(np.asarray(atom.val, atom.aval.dtype))
        return env[atom]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = g.const(np.asarray(value))
    for var, name in zip(jaxpr.invars, in_names):
        env[var] = name
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        inner = _closed_jaxpr_of(eqn)
        if inner is not None:  # jit, custom_jvp_call, custom_vjp_call: inline the body
            closed = inner if hasattr(inner, "consts") else jax.extend.core.ClosedJaxpr(inner, ())
            outs = _translate(g, closed.jaxpr, closed.consts, ins)
        else:
            outs = _emit(g, eqn, ins, [v.aval for v in eqn.invars])
        for var, name in zip(eqn.outvars, outs):
            env[var] = name
    return [read(v) for v in jaxpr.outvars]


def export(fn: Callable[..., dict], example_inputs: dict[str, np.ndarray], path: str | None = None,
           *, opset: int = OPSET) -> "onnx.ModelProto":
    """ONNX model of `fn(**inputs) -> dict of arrays`, traced at the example inputs' shapes and dtypes.

    Graph inputs and outputs keep the dict keys as names. Written to `path` when given.
    """
    input_names = list(example_inputs)
    closed, out_shapes = jax.make_jaxpr(lambda *args: fn(**dict(zip(input_names, args))), return_shape=True)(
        *example_inputs.values())
    if not isinstance(out_shapes, dict):
        raise TypeError(f"the exported function must return a dict of arrays, got {type(out_shapes).__name__}")
    g = _Graph()
    outs = _translate(g, closed.jaxpr, closed.consts, input_names)
    output_names = list(out_shapes)  # make_jaxpr flattens dicts in sorted key order, as list(dict) is here
    for name, out in zip(sorted(output_names), outs):
        g.nodes.append(helper.make_node("Identity", [out], [name]))
    graph = helper.make_graph(
        g.nodes, "mobilebert_jax",
        [helper.make_tensor_value_info(k, _onnx_type(v.dtype), list(v.shape)) for k, v in example_inputs.items()],
        [helper.make_tensor_value_info(k, _onnx_type(out_shapes[k].dtype), list(out_shapes[k].shape))
         for k in sorted(output_names)],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="mobilebert_jax")
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save_model(model, path)
    return model
