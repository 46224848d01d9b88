"""Flax NNX MoE layer built on `jax_moe.fp4_moe`.

`MoE` holds a trainable router (`nnx.Param`, fp32 [H, E]) and FP4 expert
weights as non-trainable state (`QuantizedWeight` variables: packed codes,
block scales, global scales, as stored by the op), optional expert biases,
an optional DeepSeek-style shared expert (a dense bf16 SwiGLU MLP added to the
output) and a `backend` switch: "ffi" (the custom call: CUDA on GPUs, the C++
handler on the CPU) or "reference" (pure jnp, the same function).

Build one with the constructor (random experts, for tests and new models),
`MoE.from_dense` (quantizes dense expert weights; `MoE.from_fused` for fused gate/up tensors in gate-up, up-gate or interleaved order), `MoE.from_gpt_oss` (takes
gpt-oss's MXFP4 tensors as they are) or `from_hf_moe_block` (Mixtral,
Qwen3-MoE and DeepSeek-V3 tensors as numpy arrays).

    layer = jax_moe.nn.MoE.from_dense(router, w_gate, w_up, w_down, top_k=2, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(layer, x)          # x: [..., H] -> [..., H]
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_moe import formats, ops, reference
from jax_moe.activation import GPT_OSS_ALPHA, GPT_OSS_BETA, GPT_OSS_LIMIT, Activation
from jax_moe.formats import Format, QTensor
from jax_moe.routing import RoutingMethod


class QuantizedWeight(nnx.Variable):
    """Non-trainable state: quantized expert weights (packed FP4, scales) and expert biases."""


_BACKENDS = ("ffi", "reference")


def _fail(name: str, expected: str, actual: Any, exc: type = ValueError):
    raise exc(f"{name}: expected {expected}, got {actual}")


class MoE(nnx.Module):
    """A Mixture-of-Experts block with FP4 experts: y = MoE(x) (+ shared expert(x)).

    Args:
      num_experts, top_k, hidden_size, intermediate_size: E, K, H, I.
      routing: "renormalize" (Mixtral, Qwen3, gpt-oss), "default", "topk",
        "llama4" or "deepseek_v3"; n_group, topk_group, routed_scaling_factor
        and correction_bias (bool: hold an fp32 [E] e_score_correction_bias)
        are DeepSeek-V3's.
      router_bias: hold an fp32 [E] bias added to the router logits (gpt-oss).
      activation: "swiglu", "geglu" or "swiglu_oai" (gpt-oss; swiglu_alpha,
        swiglu_beta, swiglu_limit); expert_biases: hold b13 [E, 2I] and b2 [E, H].
      weight_format: "nvfp4" or "mxfp4"; act_format: "bf16", "mxfp8" or "nvfp4"
        (hidden states are quantized on the fly; h_global_scale is NVFP4's h scale).
      shared_intermediate_size: > 0 adds a dense SwiGLU expert of that width.
      dtype: dtype of the output and of the shared expert's weights.
      backend: "ffi" (default) or "reference"; tactic: None (autotuner/default) or an id.
      expert_axis, mesh, ep_mode, token_axis: expert parallelism: the experts are
        sharded over `mesh`'s `expert_axis` and the layer runs
        `jax_moe.sharding.expert_parallel_moe` (mode "replicated" or "all_to_all";
        `token_axis`: a data-parallel axis). E must divide by the axis size.
      rngs: nnx.Rngs for the router and the random experts.
    """

    def __init__(self, *, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 routing: str | RoutingMethod = "renormalize", n_group: int = 0, topk_group: int = 0,
                 routed_scaling_factor: float = 1.0, correction_bias: bool = False,
                 router_bias: bool = False, activation: str | Activation = "swiglu",
                 swiglu_alpha: float = GPT_OSS_ALPHA, swiglu_beta: float = GPT_OSS_BETA,
                 swiglu_limit: float = GPT_OSS_LIMIT, expert_biases: bool = False,
                 weight_format: str | Format = "nvfp4", act_format: str | Format = "bf16",
                 h_global_scale: float | None = None, shared_intermediate_size: int = 0,
                 dtype: Any = jnp.bfloat16, backend: str = "ffi", tactic: int | None = None,
                 expert_axis: str | None = None, mesh: Any = None, ep_mode: str = "replicated",
                 token_axis: str | None = None,
                 rngs: nnx.Rngs, _experts: tuple[QTensor, QTensor] | None = None):
        E, K, H, I = (int(num_experts), int(top_k), int(hidden_size), int(intermediate_size))
        self.routing = RoutingMethod.parse(routing)
        self.activation = Activation.parse(activation)
        self.weight_format = Format.parse(weight_format)
        self.act_format = Format.parse(act_format)
        if E < 1 or not 1 <= K <= E:
            _fail("top_k", f"1 <= top_k <= num_experts ({E})", K)
        if self.routing == RoutingMethod.LLAMA4 and K != 1:
            _fail("top_k", "1 for llama4 routing", K)
        if self.weight_format not in (Format.NVFP4, Format.MXFP4):
            _fail("weight_format", "nvfp4 or mxfp4", self.weight_format.name)
        if self.act_format not in (Format.BF16, Format.MXFP8, Format.NVFP4):
            _fail("act_format", "bf16, mxfp8 or nvfp4", self.act_format.name)
        for fmt in {self.weight_format, self.act_format} - {Format.BF16}:
            block = formats.BLOCK_SIZE[fmt]
            if H % block or I % block:
                _fail("hidden_size/intermediate_size", f"multiples of the {fmt.name} block {block}",
                      f"H={H}, I={I}")
        if backend not in _BACKENDS:
            _fail("backend", f"one of {_BACKENDS}", repr(backend))
        if expert_axis is not None:
            if mesh is None or expert_axis not in mesh.shape:
                _fail("mesh", f"a jax.sharding.Mesh with an axis {expert_axis!r}", mesh)
            if E % mesh.shape[expert_axis]:
                _fail("num_experts", f"a multiple of the {expert_axis!r} axis size {mesh.shape[expert_axis]}", E)
            if backend != "ffi":
                _fail("backend", "'ffi' with expert_axis (the reference has no expert sharding)", repr(backend))
        self.expert_axis, self.mesh, self.ep_mode, self.token_axis = expert_axis, mesh, ep_mode, token_axis
        self.num_experts, self.top_k, self.hidden_size, self.intermediate_size = E, K, H, I
        self.n_group, self.topk_group = int(n_group), int(topk_group)
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.swiglu = (float(swiglu_alpha), float(swiglu_beta), float(swiglu_limit))
        self.h_global_scale = h_global_scale
        self.dtype, self.backend, self.tactic = dtype, backend, tactic

        self.router = nnx.Param(jax.random.normal(rngs.params(), (H, E), jnp.float32) / np.sqrt(H))
        self.router_bias = nnx.Param(jnp.zeros((E,), jnp.float32)) if router_bias else None
        self.correction_bias = (QuantizedWeight(jnp.zeros((E,), jnp.float32))
                                if correction_bias else None)
        if _experts is None:
            k13, k2 = jax.random.split(rngs.params())
            quant = _quantizer(self.weight_format)
            _experts = (quant(jax.random.normal(k13, (E, 2 * I, H), jnp.float32) / np.sqrt(H)),
                        quant(jax.random.normal(k2, (E, H, I), jnp.float32) / np.sqrt(I)))
        w13, w2 = _experts
        if w13.shape != (E, 2 * I, H) or w2.shape != (E, H, I) or w13.fmt != self.weight_format:
            _fail("experts", f"{self.weight_format.name} w13 {(E, 2 * I, H)} and w2 {(E, H, I)}",
                  f"{w13.fmt.name} {w13.shape} and {w2.shape}")
        self.w13 = _store(w13)
        self.w2 = _store(w2)
        self.b13 = QuantizedWeight(jnp.zeros((E, 2 * I), jnp.float32)) if expert_biases else None
        self.b2 = QuantizedWeight(jnp.zeros((E, H), jnp.float32)) if expert_biases else None
        if shared_intermediate_size:
            S = int(shared_intermediate_size)
            ks = jax.random.split(rngs.params(), 2)
            self.shared_w13 = nnx.Param((jax.random.normal(ks[0], (H, 2 * S)) / np.sqrt(H)).astype(dtype))
            self.shared_w2 = nnx.Param((jax.random.normal(ks[1], (S, H)) / np.sqrt(S)).astype(dtype))
        else:
            self.shared_w13 = self.shared_w2 = None

    # ---- forward -------------------------------------------------------------

    def experts(self) -> tuple[QTensor, QTensor]:
        """The expert weights as QTensors (w13 [E, 2I, H] gate;up rows, w2 [E, H, I])."""
        return _load(self.w13, self.weight_format), _load(self.w2, self.weight_format)

    def router_logits(self, x: jax.Array) -> jax.Array:
        logits = jnp.dot(x.astype(jnp.float32), self.router.get_value(), precision=jax.lax.Precision.HIGHEST)
        return logits + self.router_bias.get_value() if self.router_bias is not None else logits

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., H] -> [..., H] in `dtype`."""
        if x.shape[-1:] != (self.hidden_size,):
            _fail("x", f"shape [..., {self.hidden_size}]", tuple(x.shape))
        w13, w2 = self.experts()
        hidden: Any = x
        if self.act_format == Format.MXFP8:
            hidden = formats.quantize_mxfp8(x.astype(jnp.float32))
        elif self.act_format == Format.NVFP4:
            hidden = formats.quantize_nvfp4(x.astype(jnp.float32))
        kw = dict(top_k=self.top_k, routing=self.routing, n_group=self.n_group,
                  topk_group=self.topk_group, routed_scaling_factor=self.routed_scaling_factor,
                  routing_bias=None if self.correction_bias is None else self.correction_bias.get_value(),
                  activation=self.activation, swiglu_alpha=self.swiglu[0], swiglu_beta=self.swiglu[1],
                  swiglu_limit=self.swiglu[2],
                  b13=None if self.b13 is None else self.b13.get_value(),
                  b2=None if self.b2 is None else self.b2.get_value(),
                  h_global_scale=self.h_global_scale if self.act_format == Format.NVFP4 else None)
        logits = self.router_logits(x)
        if self.expert_axis is not None:
            from jax_moe import sharding

            y = sharding.expert_parallel_moe(hidden, logits, w13, w2, mesh=self.mesh,
                                             expert_axis=self.expert_axis, token_axis=self.token_axis,
                                             mode=self.ep_mode, tactic=self.tactic, **kw)
        elif self.backend == "ffi":
            y = ops.fp4_moe(hidden, logits, w13, w2, **kw, tactic=self.tactic)
        else:
            y = reference.moe_reference(hidden, logits, w13, w2, **kw)
        y = y.astype(self.dtype)
        if self.shared_w13 is not None:
            y = y + self._shared(x)
        return y

    def _shared(self, x: jax.Array) -> jax.Array:
        g = jnp.dot(x.astype(self.dtype), self.shared_w13.get_value(), preferred_element_type=jnp.float32)
        S = g.shape[-1] // 2
        h = (jax.nn.silu(g[..., :S]) * g[..., S:]).astype(self.dtype)
        return jnp.dot(h, self.shared_w2.get_value(), preferred_element_type=jnp.float32).astype(self.dtype)

    # ---- constructors ----------------------------------------------------------

    @classmethod
    def from_dense(cls, router: Any, w_gate: Any, w_up: Any, w_down: Any, *, top_k: int,
                   weight_format: str | Format = "nvfp4", router_bias: Any = None,
                   correction_bias: Any = None, b_gate: Any = None, b_up: Any = None,
                   b_down: Any = None, shared: tuple[Any, Any, Any] | None = None,
                   rngs: nnx.Rngs | None = None, **kwargs: Any) -> "MoE":
        """Quantizes dense expert weights (Hugging Face orientation) into a layer.

        Args:
          router: [E, H] router weight (logits = x @ router.T), as in HF `gate.weight`.
          w_gate, w_up: [E, I, H] (HF `gate_proj` / `w1`, `up_proj` / `w3`);
          w_down: [E, H, I] (HF `down_proj` / `w2`).
          router_bias [E], correction_bias [E] (DeepSeek-V3), b_gate/b_up [E, I],
          b_down [E, H]: optional.
          shared: (gate [S, H], up [S, H], down [H, S]) of a shared expert.
          kwargs: the other `MoE` arguments (routing, activation, formats, ...).
        """
        router, w_gate, w_up, w_down = (jnp.asarray(a, jnp.float32) for a in (router, w_gate, w_up, w_down))
        if w_gate.ndim != 3 or w_up.shape != w_gate.shape:
            _fail("w_gate/w_up", "two [E, I, H] arrays", f"{tuple(w_gate.shape)} and {tuple(w_up.shape)}")
        E, I, H = w_gate.shape
        if router.shape != (E, H):
            _fail("router", f"shape {(E, H)} ([E, H], HF orientation)", tuple(router.shape))
        if w_down.shape != (E, H, I):
            _fail("w_down", f"shape {(E, H, I)}", tuple(w_down.shape))
        fmt = Format.parse(weight_format)
        quant = _quantizer(fmt)
        experts = (quant(jnp.concatenate([w_gate, w_up], axis=1)), quant(w_down))
        return cls._assemble(router, experts, top_k=top_k, weight_format=fmt, router_bias=router_bias,
                             correction_bias=correction_bias,
                             b13=None if b_gate is None else jnp.concatenate(
                                 [jnp.asarray(b_gate, jnp.float32), jnp.asarray(b_up, jnp.float32)], axis=1),
                             b2=b_down, shared=shared, rngs=rngs, **kwargs)

    @classmethod
    def from_fused(cls, router: Any, w13: Any, w_down: Any, *, top_k: int, order: str = "gate_up",
                   **kwargs: Any) -> "MoE":
        """`from_dense` for checkpoints that fuse gate and up into one [E, 2I, H] tensor.

        Args:
          order: row order of `w13`: "gate_up" (gate rows then up rows, this
            library's order), "up_gate" (FlashInfer / TRT-LLM) or "interleaved"
            (gpt-oss: even rows gate, odd rows up).
          Others: as `from_dense`.
        """
        w13 = jnp.asarray(w13, jnp.float32)
        convert = {"gate_up": lambda w: w, "up_gate": formats.w13_from_up_first,
                   "interleaved": formats.w13_from_interleaved}
        if order not in convert:
            _fail("order", f"one of {sorted(convert)}", repr(order))
        if w13.ndim != 3 or w13.shape[1] % 2:
            _fail("w13", "[E, 2I, H] with an even row count", tuple(w13.shape))
        w13 = convert[order](w13)
        I = w13.shape[1] // 2
        return cls.from_dense(router, w13[:, :I], w13[:, I:], w_down, top_k=top_k, **kwargs)

    @classmethod
    def from_gpt_oss(cls, tensors: Mapping[str, Any], *, top_k: int = 4,
                     rngs: nnx.Rngs | None = None, **kwargs: Any) -> "MoE":
        """A gpt-oss MoE block from its checkpoint tensors, without re-quantizing.

        `tensors` holds (prefix-free) `router.weight` [E, H], `router.bias` [E],
        `experts.gate_up_proj_blocks` [E, 2I, H/32, 16], `..._scales`,
        `experts.gate_up_proj_bias` [E, 2I] (gate/up rows interleaved),
        `experts.down_proj_blocks` [E, H, I/32, 16], `..._scales`, `experts.down_proj_bias`.
        """
        t = {k.split("mlp.")[-1]: v for k, v in tensors.items()}
        need = ["router.weight", "router.bias", "experts.gate_up_proj_blocks", "experts.gate_up_proj_scales",
                "experts.gate_up_proj_bias", "experts.down_proj_blocks", "experts.down_proj_scales",
                "experts.down_proj_bias"]
        missing = [k for k in need if k not in t]
        if missing:
            _fail("tensors", f"the gpt-oss MoE tensors {need}", f"a mapping without {missing}", KeyError)
        w13 = formats.w13_from_interleaved(formats.from_gpt_oss_mxfp4(
            t["experts.gate_up_proj_blocks"], t["experts.gate_up_proj_scales"]))
        w2 = formats.from_gpt_oss_mxfp4(t["experts.down_proj_blocks"], t["experts.down_proj_scales"])
        b13 = formats.w13_from_interleaved(jnp.asarray(t["experts.gate_up_proj_bias"], jnp.float32))
        kwargs = dict(dict(routing="renormalize", activation="swiglu_oai"), **kwargs)
        return cls._assemble(jnp.asarray(t["router.weight"], jnp.float32), (w13, w2), top_k=top_k,
                             weight_format=Format.MXFP4, router_bias=t["router.bias"], b13=b13,
                             b2=t["experts.down_proj_bias"], rngs=rngs, **kwargs)

    @classmethod
    def _assemble(cls, router, experts, *, top_k, weight_format, router_bias=None, correction_bias=None,
                  b13=None, b2=None, shared=None, rngs=None, **kwargs) -> "MoE":
        w13, w2 = experts
        E, two_i, H = w13.shape
        S = 0 if shared is None else int(np.shape(shared[0])[0])
        layer = cls(num_experts=E, top_k=top_k, hidden_size=H, intermediate_size=two_i // 2,
                    weight_format=weight_format, router_bias=router_bias is not None,
                    correction_bias=correction_bias is not None, expert_biases=b13 is not None,
                    shared_intermediate_size=S, rngs=rngs or nnx.Rngs(0), _experts=experts, **kwargs)
        layer.router.set_value(jnp.asarray(router, jnp.float32).T)
        if router_bias is not None:
            layer.router_bias.set_value(jnp.asarray(router_bias, jnp.float32).reshape(E))
        if correction_bias is not None:
            layer.correction_bias.set_value(jnp.asarray(correction_bias, jnp.float32).reshape(E))
        if b13 is not None:
            layer.b13.set_value(jnp.asarray(b13, jnp.float32).reshape(E, two_i))
            layer.b2.set_value(jnp.asarray(b2, jnp.float32).reshape(E, H))
        if shared is not None:
            gate, up, down = (jnp.asarray(a, jnp.float32) for a in shared)
            layer.shared_w13.set_value(jnp.concatenate([gate, up], axis=0).T.astype(layer.dtype))
            layer.shared_w2.set_value(down.T.astype(layer.dtype))
        return layer


def from_hf_moe_block(arch: str, tensors: Mapping[str, np.ndarray], *, weight_format: str = "nvfp4",
                      rngs: nnx.Rngs | None = None, **kwargs: Any) -> MoE:
    """Maps one Hugging Face MoE block's tensors (numpy arrays) to a `MoE` layer.

    Keys may carry any prefix (e.g. "model.layers.3.mlp."); per architecture:
      mixtral:     block_sparse_moe.gate.weight, block_sparse_moe.experts.{e}.w1/w3/w2.weight
      qwen3_moe:   mlp.gate.weight, mlp.experts.{e}.gate_proj/up_proj/down_proj.weight
      deepseek_v3: mlp.gate.weight, mlp.gate.e_score_correction_bias,
                   mlp.experts.{e}.gate_proj/up_proj/down_proj.weight,
                   mlp.shared_experts.gate_proj/up_proj/down_proj.weight
    kwargs override the architecture defaults (top_k, routing, n_group, ...).
    """
    def find(suffix: str) -> np.ndarray:
        hits = [k for k in tensors if k.endswith(suffix)]
        if len(hits) != 1:
            _fail("tensors", f"exactly one key ending in {suffix!r}", f"{len(hits)} ({hits[:3]})", KeyError)
        return np.asarray(tensors[hits[0]])

    def stack(fmt: str) -> np.ndarray:
        out, e = [], 0
        while any(k.endswith(fmt.format(e=e)) for k in tensors):
            out.append(find(fmt.format(e=e)))
            e += 1
        if not out:
            _fail("tensors", f"expert tensors ending in {fmt.format(e=0)!r}", "none", KeyError)
        return np.stack(out)

    arch = arch.lower().replace("-", "_")
    if arch == "mixtral":
        p = "block_sparse_moe."
        router = find(p + "gate.weight")
        gate, up, down = (stack(p + "experts.{e}." + n + ".weight") for n in ("w1", "w3", "w2"))
        defaults, extra = dict(top_k=2, routing="renormalize"), {}
    elif arch in ("qwen3_moe", "deepseek_v3"):
        router = find("mlp.gate.weight")
        gate, up, down = (stack("mlp.experts.{e}." + n + ".weight") for n in ("gate_proj", "up_proj", "down_proj"))
        if arch == "qwen3_moe":
            defaults, extra = dict(top_k=8, routing="renormalize"), {}
        else:
            defaults = dict(top_k=8, routing="deepseek_v3", n_group=8, topk_group=4, routed_scaling_factor=2.5)
            extra = dict(correction_bias=find("mlp.gate.e_score_correction_bias"))
            if any(".shared_experts." in k for k in tensors):
                extra["shared"] = tuple(find(f"mlp.shared_experts.{n}.weight")
                                        for n in ("gate_proj", "up_proj", "down_proj"))
    else:
        raise ValueError(f"arch: expected 'mixtral', 'qwen3_moe' or 'deepseek_v3', got {arch!r}")
    return MoE.from_dense(router, gate, up, down, weight_format=weight_format, rngs=rngs,
                          **{**defaults, **extra, **kwargs})


# ---- quantized state <-> QTensor -----------------------------------------------

def _quantizer(fmt: Format):
    if fmt == Format.NVFP4:
        return lambda w: formats.quantize_nvfp4(w, per_expert=True)
    return formats.quantize_mxfp4


def _store(q: QTensor) -> dict[str, QuantizedWeight]:
    d = dict(data=QuantizedWeight(q.data), scale=QuantizedWeight(q.scale))
    if q.global_scale is not None:
        d["global_scale"] = QuantizedWeight(q.global_scale)
    return nnx.Dict(d) if hasattr(nnx, "Dict") else d


def _load(d: Any, fmt: Format) -> QTensor:
    g = d["global_scale"].get_value() if "global_scale" in d else None
    return QTensor(d["data"].get_value(), d["scale"].get_value(), g, fmt)


# ---- exact save / restore ------------------------------------------------------

def save_state(layer: MoE, path: str) -> None:
    """Writes every variable of `layer` (packed FP4 and float8 scales included,
    bit-exact) to an .npz file; float8 arrays are stored as their bytes."""
    flat = {"/".join(map(str, k)): np.asarray(jax.device_get(v))
            for k, v in _flatten(nnx.to_pure_dict(nnx.state(layer)))}
    arrays, dtypes = {}, {}
    for name, a in flat.items():
        dtypes[name] = str(a.dtype)
        arrays[name] = a.view(np.uint8) if a.dtype.itemsize == 1 and a.dtype != np.uint8 else a
    np.savez(path, __dtypes__=np.asarray(json.dumps(dtypes)), **arrays)


def load_state(layer: MoE, path: str) -> None:
    """Restores what `save_state` wrote into a layer of the same configuration."""
    with np.load(path) as f:
        dtypes = json.loads(str(f["__dtypes__"]))
        flat = {k: f[k].view(jnp.dtype(dtypes[k])) if dtypes[k] != str(f[k].dtype) else f[k]
                for k in dtypes}
    state = nnx.state(layer)
    pure = nnx.to_pure_dict(state)
    for key, _ in _flatten(pure):
        name = "/".join(map(str, key))
        if name not in flat:
            raise KeyError(f"{path}: no saved value for {name}")
        node = pure
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = jnp.asarray(flat[name])
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(layer, state)


def _flatten(d: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(d, Mapping):
        return [kv for k in sorted(d, key=str) for kv in _flatten(d[k], prefix + (k,))]
    return [(prefix, d)]


__all__ = ["MoE", "QuantizedWeight", "from_hf_moe_block", "load_state", "save_state"]
