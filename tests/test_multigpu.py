"""Expert parallelism on real GPUs (issue "Multi-GPU run"): marked `multigpu`,
skipped with fewer than two GPUs."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jax_moe
from jax_moe import sharding
from jax_moe.routing import RoutingMethod
from moe_cases import assert_close, make_case

pytestmark = pytest.mark.multigpu


@pytest.fixture
def gpus():
    devices = [d for d in jax.devices() if d.platform == "gpu"]
    if len(devices) < 2:
        pytest.skip(f"needs >= 2 GPUs, found {len(devices)}")
    return devices


@pytest.mark.parametrize("mode", sharding.MODES)
@pytest.mark.parametrize("method", [RoutingMethod.RENORMALIZE, RoutingMethod.DEEPSEEK_V3])
def test_sharded_equals_single_gpu(gpus, mode, method):
    D = 2 if len(gpus) < 4 else 4
    case = make_case(T=64 * D, H=1024, I=512, E=32, top_k=4, routing=method)
    single = jax.jit(lambda h, l, a, b: jax_moe.fp4_moe(h, l, a, b, **case.kwargs))(
        case.hidden, case.logits, case.w13, case.w2)
    mesh = Mesh(np.array(gpus[:D]), ("ep",))
    kw = {k: v for k, v in case.kwargs.items() if k != "local_expert_offset"}
    out = jax.jit(lambda h, l, a, b: sharding.expert_parallel_moe(h, l, a, b, mesh=mesh, mode=mode, **kw))(
        case.hidden, case.logits, case.w13, case.w2)
    assert_close(out, single, rel=5e-3)
