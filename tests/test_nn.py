"""jax_moe.nn.MoE (Flax NNX) against a hand-written dense jnp layer, its
constructors, the backend switch, save/restore, and configuration errors."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

nnx = pytest.importorskip("flax.nnx")

import jax_moe  # noqa: E402
from jax_moe import formats, nn  # noqa: E402
from jax_moe.routing import route  # noqa: E402
from moe_cases import assert_close  # noqa: E402

REL = 1e-2  # the dense layer keeps h in fp32; the op rounds h (and y) to bf16


def dense_layer(x, router, w13, w2, *, top_k, routing="renormalize", router_bias=None, b13=None, b2=None,
                shared=None, **route_kw):
    """Every expert on every token in fp32 from the dequantized weights, then the top-k mix."""
    x32 = x.astype(jnp.bfloat16).astype(jnp.float32)
    # HIGHEST as the layer does: on the GPU a default-precision f32 matmul runs in
    # tf32/bf16 and flips near-tied expert choices, which no tolerance absorbs.
    logits = jnp.dot(x.astype(jnp.float32), router, precision="highest")
    if router_bias is not None:
        logits = logits + router_bias
    ids, w = route(logits.reshape(-1, logits.shape[-1]), top_k=top_k, method=routing, **route_kw)
    W13, W2 = formats.dequantize(w13), formats.dequantize(w2)
    xf = x32.reshape(-1, x.shape[-1])
    g = jnp.einsum("th,enh->ten", xf, W13, precision="highest")
    if b13 is not None:
        g = g + b13[None]
    I = W13.shape[1] // 2
    h = jax.nn.silu(g[..., :I]) * g[..., I:]
    y = jnp.einsum("tei,ehi->teh", h, W2, precision="highest")
    if b2 is not None:
        y = y + b2[None]
    picked = jnp.take_along_axis(y, ids[..., None], axis=1)
    out = (w[..., None] * picked).sum(1)
    if shared is not None:
        gate, up, down = shared
        mm = lambda a, b: jnp.dot(a, b, precision="highest")
        out = out + mm(jax.nn.silu(mm(xf, gate.T)) * mm(xf, up.T), down.T)
    return out.reshape(x.shape)


def _dense_weights(E=8, H=128, I=64, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(k[0], (E, H)) / np.sqrt(H), jax.random.normal(k[1], (E, I, H)) / np.sqrt(H),
            jax.random.normal(k[2], (E, I, H)) / np.sqrt(H), jax.random.normal(k[3], (E, H, I)) / np.sqrt(I))


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_from_dense_matches_dense_layer_with_leading_dims(fmt):
    router, gate, up, down = _dense_weights()
    layer = nn.MoE.from_dense(router, gate, up, down, top_k=2, weight_format=fmt)
    x = jax.random.normal(jax.random.key(7), (3, 5, 128), jnp.bfloat16)
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    assert y.shape == x.shape and y.dtype == jnp.bfloat16
    w13, w2 = layer.experts()
    assert_close(y, dense_layer(x, router.T, w13, w2, top_k=2), rel=REL)


def test_backends_agree_and_reference_backend_is_plain_jnp():
    router, gate, up, down = _dense_weights(seed=1)
    ffi = nn.MoE.from_dense(router, gate, up, down, top_k=2)
    ref = nn.MoE.from_dense(router, gate, up, down, top_k=2, backend="reference")
    x = jax.random.normal(jax.random.key(2), (16, 128), jnp.bfloat16)
    assert_close(ffi(x), ref(x), rel=5e-3)
    assert "custom_call" not in jax.jit(lambda x: ref(x)).lower(x).as_text()


def test_biases_router_bias_and_shared_expert():
    router, gate, up, down = _dense_weights(seed=3)
    k = jax.random.split(jax.random.key(4), 6)
    E, H, I, S = 8, 128, 64, 96
    rb, bg, bu, bd = (0.1 * jax.random.normal(k[i], s) for i, s in enumerate([(E,), (E, I), (E, I), (E, H)]))
    shared = (jax.random.normal(k[4], (S, H)) / np.sqrt(H), jax.random.normal(k[5], (S, H)) / np.sqrt(H),
              jax.random.normal(k[0], (H, S)) / np.sqrt(S))
    layer = nn.MoE.from_dense(router, gate, up, down, top_k=2, router_bias=rb, b_gate=bg, b_up=bu, b_down=bd,
                              shared=shared, dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(5), (20, H), jnp.bfloat16)
    w13, w2 = layer.experts()
    shared_bf16 = tuple(a.astype(jnp.bfloat16).astype(jnp.float32) for a in shared)
    expected = dense_layer(x, router.T, w13, w2, top_k=2, router_bias=rb,
                           b13=jnp.concatenate([bg, bu], 1), b2=bd, shared=shared_bf16)
    assert_close(layer(x), expected, rel=REL)


def test_deepseek_routing_with_correction_bias_and_mxfp8_acts():
    router, gate, up, down = _dense_weights(E=16, seed=6)
    bias = 0.1 * jax.random.normal(jax.random.key(8), (16,))
    kw = dict(top_k=4, routing="deepseek_v3", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    ffi = nn.MoE.from_dense(router, gate, up, down, correction_bias=bias, act_format="mxfp8", **kw)
    ref = nn.MoE.from_dense(router, gate, up, down, correction_bias=bias, act_format="mxfp8",
                            backend="reference", **kw)
    x = jax.random.normal(jax.random.key(9), (12, 128), jnp.bfloat16)
    assert_close(ffi(x), ref(x), rel=5e-3)


def test_from_gpt_oss_takes_the_checkpoint_tensors_as_they_are():
    E, H, I = 4, 64, 32
    k = jax.random.split(jax.random.key(10), 6)
    rng = np.random.default_rng(0)
    t = {
        "model.layers.0.mlp.router.weight": np.asarray(jax.random.normal(k[0], (E, H)) / 8),
        "model.layers.0.mlp.router.bias": np.asarray(0.1 * jax.random.normal(k[1], (E,))),
        "model.layers.0.mlp.experts.gate_up_proj_blocks": rng.integers(0, 256, (E, 2 * I, H // 32, 16), np.uint8),
        "model.layers.0.mlp.experts.gate_up_proj_scales": rng.integers(120, 125, (E, 2 * I, H // 32), np.uint8),
        "model.layers.0.mlp.experts.gate_up_proj_bias": np.asarray(0.1 * jax.random.normal(k[2], (E, 2 * I))),
        "model.layers.0.mlp.experts.down_proj_blocks": rng.integers(0, 256, (E, H, I // 32, 16), np.uint8),
        "model.layers.0.mlp.experts.down_proj_scales": rng.integers(120, 125, (E, H, I // 32), np.uint8),
        "model.layers.0.mlp.experts.down_proj_bias": np.asarray(0.1 * jax.random.normal(k[3], (E, H))),
    }
    layer = nn.MoE.from_gpt_oss(t, top_k=2)
    w13, w2 = layer.experts()
    # Bytes kept (no re-quantization); gate/up rows de-interleaved.
    blocks = t["model.layers.0.mlp.experts.gate_up_proj_blocks"].reshape(E, 2 * I, H // 2)
    np.testing.assert_array_equal(np.asarray(w13.data[:, :I]), blocks[:, 0::2])
    np.testing.assert_array_equal(np.asarray(w13.data[:, I:]), blocks[:, 1::2])
    np.testing.assert_array_equal(np.asarray(w2.data),
                                  t["model.layers.0.mlp.experts.down_proj_blocks"].reshape(E, H, I // 2))
    x = jax.random.normal(k[4], (9, H), jnp.bfloat16)
    ref = nn.MoE.from_gpt_oss(t, top_k=2, backend="reference")
    assert_close(layer(x), ref(x), rel=5e-3)


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "deepseek_v3"])
def test_from_hf_moe_block(arch):
    E, H, I = 8, 64, 32
    router, gate, up, down = (np.asarray(a) for a in _dense_weights(E, H, I, seed=11))
    p, names = (("model.layers.1.block_sparse_moe.", ("w1", "w3", "w2")) if arch == "mixtral"
                else ("model.layers.1.mlp.", ("gate_proj", "up_proj", "down_proj")))
    t = {p + "gate.weight": router}
    for e in range(E):
        t.update({p + f"experts.{e}.{n}.weight": w[e] for n, w in zip(names, (gate, up, down))})
    kw, expect = {}, dict(top_k=2 if arch == "mixtral" else 8)
    if arch == "deepseek_v3":
        t[p + "gate.e_score_correction_bias"] = np.zeros(E, np.float32)
        for n, s in (("gate_proj", (16, H)), ("up_proj", (16, H)), ("down_proj", (H, 16))):
            t[p + f"shared_experts.{n}.weight"] = np.ones(s, np.float32) / 64
        kw = dict(top_k=4, n_group=4, topk_group=2)
        expect = dict(top_k=4)
    layer = nn.from_hf_moe_block(arch, t, **kw)
    assert layer.top_k == expect["top_k"] and layer.num_experts == E
    direct = nn.MoE.from_dense(router, gate, up, down, top_k=layer.top_k, routing=layer.routing,
                               n_group=layer.n_group, topk_group=layer.topk_group,
                               routed_scaling_factor=layer.routed_scaling_factor,
                               correction_bias=None if layer.correction_bias is None else np.zeros(E),
                               shared=None if layer.shared_w13 is None else tuple(
                                   t[p + f"shared_experts.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj")))
    x = jax.random.normal(jax.random.key(12), (10, H), jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(layer(x), np.float32), np.asarray(direct(x), np.float32))


def test_save_and_restore_round_trip_exactly(tmp_path):
    router, gate, up, down = _dense_weights(seed=13)
    a = nn.MoE.from_dense(router, gate, up, down, top_k=2, router_bias=np.ones(8) * 0.1)
    b = nn.MoE(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, router_bias=True,
               rngs=nnx.Rngs(99))
    x = jax.random.normal(jax.random.key(14), (6, 128), jnp.bfloat16)
    assert not np.array_equal(np.asarray(a(x), np.float32), np.asarray(b(x), np.float32))
    path = str(tmp_path / "moe.npz")
    nn.save_state(a, path)
    nn.load_state(b, path)
    for (ka, va), (kb, vb) in zip(jax.tree_util.tree_leaves_with_path(nnx.state(a)),
                                  jax.tree_util.tree_leaves_with_path(nnx.state(b))):
        assert ka == kb and va.dtype == vb.dtype
        np.testing.assert_array_equal(np.asarray(va).view(np.uint8), np.asarray(vb).view(np.uint8))
    np.testing.assert_array_equal(np.asarray(a(x), np.float32), np.asarray(b(x), np.float32))


def test_inside_a_model_jitted_as_a_whole_and_with_the_autotuner():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.proj = nnx.Linear(128, 128, rngs=rngs)
            self.moe = nn.MoE(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64, rngs=rngs)

        def __call__(self, x):
            return x + self.moe(self.proj(x).astype(jnp.bfloat16)).astype(x.dtype)

    model = Block(nnx.Rngs(0))
    at = importlib.import_module("jax_moe.autotune")
    at.clear_cache()
    x = jax.random.normal(jax.random.key(15), (2, 10, 128))
    with jax_moe.autotune():
        y = nnx.jit(lambda m, x: m(x))(model, x)
    assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()
    assert at.stats()["tuned"] == 1
    at.clear_cache()


@pytest.mark.parametrize("kw,match", [
    (dict(top_k=9), "top_k"),
    (dict(hidden_size=120), "multiples of the NVFP4 block"),
    (dict(weight_format="mxfp4", intermediate_size=48), "multiples of the MXFP4 block"),
    (dict(routing="softmax_top2"), "RoutingMethod"),
    (dict(backend="triton"), "backend"),
    (dict(routing="llama4", top_k=2), "llama4"),
])
def test_bad_configurations_are_rejected(kw, match):
    base = dict(num_experts=8, top_k=2, hidden_size=128, intermediate_size=64)
    with pytest.raises((ValueError, KeyError), match=match):
        nn.MoE(**{**base, **kw}, rngs=nnx.Rngs(0))


def test_wrong_input_width_is_a_clear_error():
    layer = nn.MoE(num_experts=4, top_k=2, hidden_size=64, intermediate_size=32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x: expected shape \[\.\.\., 64\]"):
        layer(jnp.ones((3, 32), jnp.bfloat16))


def test_example_decoder_block_runs(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "decoder_block.py")
    out = subprocess.run([sys.executable, script, "--tokens", "8"], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
                         check=True).stdout
    err = float(out.split("fused vs reference:")[1].split()[0])
    assert err < 1e-2, out


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_layer_on_the_gpu_matches_the_dense_layer(fmt):
    router, gate, up, down = _dense_weights(E=32, H=1024, I=512, seed=21)
    layer = nn.MoE.from_dense(router, gate, up, down, top_k=4, weight_format=fmt)
    x = jax.random.normal(jax.random.key(22), (4, 50, 1024), jnp.bfloat16)
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    w13, w2 = layer.experts()
    assert_close(y, dense_layer(x, router.T, w13, w2, top_k=4), rel=REL)


@pytest.mark.parametrize("order", ["gate_up", "up_gate", "interleaved"])
def test_from_fused_orders_match_from_dense(order):
    router, gate, up, down = _dense_weights(seed=31)
    if order == "gate_up":
        w13 = np.concatenate([gate, up], axis=1)
    elif order == "up_gate":
        w13 = np.concatenate([up, gate], axis=1)
    else:
        w13 = np.stack([gate, up], axis=2).reshape(gate.shape[0], -1, gate.shape[2])
    fused = nn.MoE.from_fused(router, w13, down, top_k=2, order=order)
    direct = nn.MoE.from_dense(router, gate, up, down, top_k=2)
    x = jax.random.normal(jax.random.key(32), (9, 128), jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(fused(x), np.float32), np.asarray(direct(x), np.float32))
    with pytest.raises(ValueError, match="order"):
        nn.MoE.from_fused(router, w13, down, top_k=2, order="gate_then_up")
