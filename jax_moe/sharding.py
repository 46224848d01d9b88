"""Expert parallelism: experts sharded over a mesh axis, with JAX's own SPMD
machinery (`shard_map` over a `Mesh`, XLA collectives: NCCL on GPUs).

Each device holds E / D experts (D = size of the expert axis) and runs
`fp4_moe_routed` on them; the expert ids are shifted by the device's first
expert (a traced value), so one compiled program serves every device. Two modes:

* ``"replicated"``: every device of the expert axis sees the same tokens
  (replicated, or sharded only over a data axis), computes its experts'
  share and the shares are summed (`psum`, or `psum_scatter` with
  ``scatter_output=True``). Moves T x H per device; wins at small T (decode),
  where the all-to-all's fixed costs dominate.
* ``"all_to_all"``: tokens are sharded over the expert axis too; each device
  routes its tokens, sends every (token, k) pair to the device owning its
  expert (`all_to_all` with worst-case capacity: no pair is ever dropped),
  computes only its experts' rows and sends the rows back, then combines
  sum_k w * y in fp32 in k order (the single-device rounding). Compute per
  device falls by D; wins at large T (prefill) where replicated mode would
  run every token on every device.

Routing runs in jnp (`jax_moe.routing.route`, the reference's routing) on each
device's tokens. Data parallelism composes through `token_axis`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from jax_moe import ops, routing as routing_lib
from jax_moe.activation import GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT, Activation
from jax_moe.formats import QTensor
from jax_moe.routing import RoutingMethod

MODES = ("replicated", "all_to_all")


def _fail(name: str, expected: str, actual: Any) -> None:
    raise ValueError(f"{name}: expected {expected}, got {actual}")


def _split(x: Any, spec: P) -> tuple[dict, dict, Any]:
    """(arrays, specs, rebuild) for an array or a QTensor: shard_map gets plain
    dicts of arrays (a PartitionSpec inside a custom pytree node is not a leaf)."""
    if not isinstance(x, QTensor):
        return {"a": x}, {"a": spec}, lambda d: d["a"]
    arrays = {"data": x.data, "scale": x.scale}
    specs = {"data": spec, "scale": spec}
    if x.global_scale is not None:
        arrays["global_scale"] = x.global_scale
        # A per-expert global scale follows the experts; a per-tensor one is replicated.
        specs["global_scale"] = spec if (x.global_scale.ndim == 1 and spec != P()) else P()
    fmt, layout = x.fmt, x.layout
    return arrays, specs, lambda d: QTensor(d["data"], d["scale"], d.get("global_scale"), fmt, layout)


def expert_parallel_moe(
    hidden_states: Any,
    router_logits: jax.Array,
    w13: QTensor,
    w2: QTensor,
    *,
    mesh: Mesh,
    top_k: int,
    expert_axis: str = "ep",
    token_axis: str | None = None,
    mode: str = "replicated",
    scatter_output: bool = False,
    routing: RoutingMethod | str | int = RoutingMethod.RENORMALIZE,
    n_group: int = 0,
    topk_group: int = 0,
    routed_scaling_factor: float = 1.0,
    routing_bias: jax.Array | None = None,
    activation: Activation | str | int = Activation.SWIGLU,
    swiglu_alpha: float = GPT_OSS_ALPHA,
    swiglu_beta: float = GPT_OSS_BETA,
    swiglu_limit: float = GPT_OSS_LIMIT,
    b13: jax.Array | None = None,
    b2: jax.Array | None = None,
    routing_weight_on_input: bool | None = None,
    h_global_scale: Any = None,
    tactic: int | None = None,
) -> jax.Array:
    """`fp4_moe` with the experts sharded over `mesh`'s `expert_axis`.

    Args:
      hidden_states, router_logits, w13, w2, top_k, routing, ...: as `fp4_moe`,
        with ALL experts (global arrays; E = w13.shape[0] = router_logits.shape[-1]).
        Weights (and b13/b2) are laid out with their expert dimension over
        `expert_axis` (jit reshards them if they are not already).
      mesh: the device mesh; `expert_axis` (and `token_axis`) are its axis names.
      token_axis: an optional data-parallel axis the tokens are sharded over.
      mode: "replicated" or "all_to_all" (see the module docstring).
      scatter_output: "replicated" mode only: reduce-scatter the output's
        tokens over `expert_axis` instead of a psum (sequence-parallel output).

    Returns:
      bf16 [..., H], sharded over the token axes the mode uses.

    Raises:
      ValueError: unknown mode or axis, E not divisible by the expert-axis
        size, or a token count the token sharding cannot split.
    """
    if mode not in MODES:
        _fail("mode", f"one of {MODES}", repr(mode))
    for name, axis in (("expert_axis", expert_axis), ("token_axis", token_axis)):
        if axis is not None and axis not in mesh.shape:
            _fail(name, f"an axis of the mesh {dict(mesh.shape)}", repr(axis))
    D = int(mesh.shape[expert_axis])
    E = int(w13.shape[0])
    if int(router_logits.shape[-1]) != E:
        _fail("router_logits", f"last dim E={E} (all experts, as w13)", tuple(router_logits.shape))
    if E % D:
        _fail("w13", f"an expert count divisible by the '{expert_axis}' axis size {D}", f"E={E}")
    E_local = E // D
    method = RoutingMethod.parse(routing)
    if routing_weight_on_input is None:
        routing_weight_on_input = method == RoutingMethod.LLAMA4
    H = int(w13.shape[2])
    leading = tuple(hidden_states.shape[:-1])
    T = math.prod(leading)
    dp = int(mesh.shape[token_axis]) if token_axis else 1
    token_shards = dp * (D if mode == "all_to_all" or scatter_output else 1)
    if T % token_shards:
        _fail("hidden_states", f"a token count divisible by {token_shards} (the token sharding)", f"T={T}")
    if scatter_output and mode != "replicated":
        _fail("scatter_output", "False in all_to_all mode (its output is already token-sharded)", True)

    flat = (lambda a: a.reshape((T,) + a.shape[len(leading):]))
    hidden = jax.tree.map(lambda a: a if a.ndim == 0 else flat(a), hidden_states) \
        if isinstance(hidden_states, QTensor) else flat(hidden_states)
    logits = flat(router_logits)

    tok_in = P((token_axis, expert_axis) if token_axis else expert_axis) if mode == "all_to_all" \
        else P(token_axis)
    tok_out = P((token_axis, expert_axis) if token_axis else expert_axis) \
        if (mode == "all_to_all" or scatter_output) else P(token_axis)
    ep = P(expert_axis)
    moe_kw = dict(activation=activation, swiglu_alpha=swiglu_alpha, swiglu_beta=swiglu_beta,
                  swiglu_limit=swiglu_limit, routing_weight_on_input=bool(routing_weight_on_input),
                  h_global_scale=h_global_scale, tactic=tactic, num_experts=E)
    route_kw = dict(method=method, top_k=int(top_k), n_group=int(n_group), topk_group=int(topk_group),
                    routed_scaling_factor=routed_scaling_factor)

    # Optional operands travel in a dict holding only the present ones (shard_map
    # specs cannot name an absent operand).
    optional = {k: v for k, v in dict(b13=b13, b2=b2, bias=routing_bias).items() if v is not None}
    optional_specs = {k: (P() if k == "bias" else ep) for k in optional}

    h_arrays, h_specs, h_build = _split(hidden, tok_in)
    if isinstance(hidden, QTensor) and "global_scale" in h_specs:
        h_specs["global_scale"] = P()  # the activations' per-tensor scale
    w13_arrays, w13_specs, w13_build = _split(w13, ep)
    w2_arrays, w2_specs, w2_build = _split(w2, ep)

    def local(hidden, logits, w13, w2, opt):
        hidden, w13, w2 = h_build(hidden), w13_build(w13), w2_build(w2)
        ids, weights = routing_lib.route(logits, bias=opt.get("bias"), **route_kw)
        first = jax.lax.axis_index(expert_axis) * E_local
        kw = dict(moe_kw, b13=opt.get("b13"), b2=opt.get("b2"))
        if mode == "replicated":
            out = ops.fp4_moe_routed(hidden, ids - first, weights, w13, w2, **kw).astype(jnp.float32)
            if scatter_output:
                out = jax.lax.psum_scatter(out, expert_axis, scatter_dimension=0, tiled=True)
            else:
                out = jax.lax.psum(out, expert_axis)
            return out.astype(jnp.bfloat16)
        return _all_to_all_moe(hidden, ids, weights, w13, w2, kw, D=D, E_local=E_local,
                               axis=expert_axis, on_input=bool(routing_weight_on_input))

    shard = jax.shard_map(
        local, mesh=mesh,
        in_specs=(h_specs, tok_in, w13_specs, w2_specs, optional_specs),
        out_specs=tok_out, check_vma=False)
    out = shard(h_arrays, logits, w13_arrays, w2_arrays, optional)
    return out.reshape(leading + (H,))


def _rows(leaves: list, index: jax.Array) -> list:
    """Rows `index` (-1: a zero row) of each per-token leaf, as raw bytes for 1-byte
    dtypes (float8 data/scales travel as uint8); scalars (a global scale) pass."""
    def take(a):
        if a.ndim == 0:
            return a
        raw = jax.lax.bitcast_convert_type(a, jnp.uint8) if a.dtype.itemsize == 1 else a
        valid = (index >= 0)[(...,) + (None,) * (raw.ndim - 1)]
        return jnp.where(valid, raw[jnp.maximum(index, 0)], jnp.zeros((), raw.dtype))
    return [take(a) for a in leaves]


def _restore_dtypes(leaves: list, like: list) -> list:
    return [a if a.ndim == 0 or a.dtype == ref.dtype else jax.lax.bitcast_convert_type(a, ref.dtype)
            for a, ref in zip(leaves, like)]


def _all_to_all_moe(hidden, ids, weights, w13, w2, kw, *, D: int, E_local: int, axis: str,
                    on_input: bool) -> jax.Array:
    """Token dispatch: pairs -> owning device -> expert rows -> back -> sum_k w*y (fp32)."""
    T, K = ids.shape
    Pn = T * K
    dest = (ids // E_local).reshape(Pn)
    order = jnp.argsort(dest, stable=True)
    counts = jnp.bincount(dest, length=D)
    starts = jnp.cumsum(counts) - counts
    dest_sorted = dest[order]
    pos = jnp.arange(Pn) - starts[dest_sorted]
    # send[d, c]: the pair sent to device d in slot c (capacity Pn: nothing is dropped).
    send = jnp.full((D, Pn), -1, jnp.int32).at[dest_sorted, pos].set(order.astype(jnp.int32))
    token = jnp.where(send >= 0, send // K, -1)
    leaves, treedef = jax.tree.flatten(hidden)
    x_send = [a if a.ndim == 0 else a.reshape((D, Pn) + a.shape[1:]) for a in _rows(leaves, token.reshape(-1))]
    flat_ids, flat_w = ids.reshape(Pn), weights.reshape(Pn)
    local_id = jnp.where(send >= 0, flat_ids[jnp.maximum(send, 0)] % E_local, -1)
    w_send = jnp.where(send >= 0, flat_w[jnp.maximum(send, 0)], 0.0)

    a2a = lambda a: a if a.ndim == 0 else jax.lax.all_to_all(a, axis, 0, 0, tiled=False)
    x_recv = _restore_dtypes([a2a(a) for a in x_send], leaves)
    ids_recv, w_recv = a2a(local_id), a2a(w_send)
    x_rows = jax.tree.unflatten(
        treedef, [a if a.ndim == 0 else a.reshape((D * Pn,) + a.shape[2:]) for a in x_recv])
    # One routed row per received pair; with the weight on the input it scales GEMM1.
    y = ops.fp4_moe_routed(x_rows, ids_recv.reshape(-1, 1),
                           (w_recv if on_input else jnp.ones_like(w_recv)).reshape(-1, 1),
                           w13, w2, **kw)
    y_back = jax.lax.all_to_all(y.reshape(D, Pn, -1), axis, 0, 0, tiled=False)
    H = y_back.shape[-1]
    pairs = jnp.zeros((Pn, H), jnp.bfloat16).at[jnp.where(send >= 0, send, Pn).reshape(-1)].set(
        y_back.reshape(D * Pn, H), mode="drop")
    w = jnp.ones_like(weights) if on_input else weights
    out = jnp.zeros((T, H), jnp.float32)
    y3 = pairs.reshape(T, K, H).astype(jnp.float32)
    for k in range(K):  # k order, fp32: the single-device finalize's rounding
        out = out + w[:, k:k + 1] * y3[:, k]
    return out.astype(jnp.bfloat16)


__all__ = ["MODES", "expert_parallel_moe"]
