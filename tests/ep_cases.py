"""Expert-parallel cases on 8 host CPU devices, run by tests/test_sharding.py in a
subprocess (XLA_FLAGS must be set before JAX starts). Prints one JSON object:
case name -> relative L2 error vs the single-device fp4_moe (or an error string)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import jax_moe  # noqa: E402
from jax_moe import sharding  # noqa: E402
from jax_moe.activation import Activation  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from jax_moe.routing import RoutingMethod  # noqa: E402
from moe_cases import make_case, rel_l2  # noqa: E402


def single_device(case):
    f = jax.jit(lambda h, l, a, b: jax_moe.fp4_moe(h, l, a, b, **case.kwargs))
    return f(case.hidden, case.logits, case.w13, case.w2)


def sharded(case, mesh, **kw):
    args = {k: v for k, v in case.kwargs.items() if k != "local_expert_offset"}
    f = jax.jit(lambda h, l, a, b: sharding.expert_parallel_moe(h, l, a, b, mesh=mesh, **args, **kw))
    return f(case.hidden, case.logits, case.w13, case.w2)


def run(results, name, fn):
    try:
        results[name] = fn()
    except Exception as exc:  # reported per case, so one failure does not hide the others
        results[name] = f"{type(exc).__name__}: {exc}"[:400]


def main():
    results = {}
    devices = jax.devices()
    assert len(devices) == 8, devices
    for method in RoutingMethod:
        case = make_case(T=48, H=128, I=64, E=16, top_k=4, routing=method)
        base = single_device(case)
        for D in (1, 2, 4, 8):
            mesh = Mesh(np.array(devices[:D]), ("ep",))
            for mode in sharding.MODES:
                run(results, f"{method.name.lower()}-ep{D}-{mode}",
                    lambda: rel_l2(sharded(case, mesh, mode=mode), base))
    # Formats, biases and the gpt-oss activation; MXFP8 activations travel quantized.
    case = make_case(T=40, H=128, I=64, E=8, top_k=2, activation=Activation.SWIGLU_OAI, biases=True,
                     weight_format=Format.MXFP4, act_format=Format.MXFP8)
    base = single_device(case)
    mesh = Mesh(np.array(devices[:4]), ("ep",))
    for mode in sharding.MODES:
        run(results, f"mxfp8-biases-ep4-{mode}", lambda: rel_l2(sharded(case, mesh, mode=mode), base))
    run(results, "reduce-scatter-ep4", lambda: rel_l2(sharded(case, mesh, scatter_output=True), base))
    # Data parallelism on a second axis: 2 (dp) x 4 (ep).
    case = make_case(T=64, H=128, I=64, E=16, top_k=4)
    base = single_device(case)
    mesh2 = Mesh(np.array(devices).reshape(2, 4), ("dp", "ep"))
    for mode in sharding.MODES:
        run(results, f"dp2-ep4-{mode}", lambda: rel_l2(sharded(case, mesh2, mode=mode, token_axis="dp"), base))
    # Uneven experts: a clear ValueError, never a wrong answer.
    bad = make_case(T=8, H=128, I=64, E=6, top_k=2)
    mesh4 = Mesh(np.array(devices[:4]), ("ep",))
    run(results, "uneven-experts", lambda: sharded(bad, mesh4) and "no error")
    # The Flax layer with expert_axis="ep".
    try:
        from flax import nnx

        from jax_moe import nn

        layer = nn.MoE(num_experts=16, top_k=2, hidden_size=128, intermediate_size=64, rngs=nnx.Rngs(0))
        sharded_layer = nn.MoE(num_experts=16, top_k=2, hidden_size=128, intermediate_size=64,
                               expert_axis="ep", mesh=mesh4, ep_mode="all_to_all", rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(3), (2, 16, 128), jnp.bfloat16)
        step = nnx.jit(lambda m, x: m(x))
        run(results, "flax-layer-ep4", lambda: rel_l2(step(sharded_layer, x), step(layer, x)))
    except ImportError:
        results["flax-layer-ep4"] = "skipped: no flax"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
