"""Is the op captured into XLA's CUDA graph? Prints handler stats and HLO hints."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import jax, jax.numpy as jnp
import jax_moe
from jax_moe import _extension
from moe_cases import make_case
case = make_case(T=64, H=512, I=256, E=16, top_k=4)
kw = case.kwargs
@jax.jit
def layer(h, l, w13, w2):
    l = l * 1.0001 + 0.001
    out = jax_moe.fp4_moe(h, l, w13, w2, **kw)
    return (out.astype(jnp.float32) * 2.0).astype(jnp.bfloat16)
args = (case.hidden, case.logits, case.w13, case.w2)
for _ in range(3): layer(*args).block_until_ready()
text = layer.lower(*args).compile().as_text()
print(os.environ.get("XLA_FLAGS"), _extension.module().cuda_handler_stats(), "command_buffer" in text)
