"""Which jnp format function differs between the GPU and CPU backends?"""
import os, subprocess, sys
import jax, jax.numpy as jnp, numpy as np
from jax_moe import formats

cpu, gpu = jax.devices("cpu")[0], jax.devices("gpu")[0]
x = 3.0 * jax.random.normal(jax.random.key(0), (64, 768), jnp.float32)
x = x * jnp.exp2(jax.random.randint(jax.random.key(1), (64, 24, 1), -8, 8).astype(jnp.float32)).repeat(32, -1).reshape(64, 768)

def both(name, f, *a):
    rc = jax.jit(f)(*jax.device_put(a, cpu)); rg = jax.jit(f)(*jax.device_put(a, gpu))
    lc, lg = jax.tree.leaves(rc), jax.tree.leaves(rg)
    for i, (c, g) in enumerate(zip(lc, lg)):
        c = np.asarray(c).astype(np.float32) if c.dtype != np.uint8 else np.asarray(c)
        g = np.asarray(g).astype(np.float32) if g.dtype != np.uint8 else np.asarray(g)
        bad = ~((c == g) | (np.isnan(c.astype(np.float32)) & np.isnan(g.astype(np.float32))))
        print(f"{name}[{i}] {c.dtype} mismatches {bad.sum()}/{bad.size}", (c[bad][:4], g[bad][:4]) if bad.any() else "")

both("e4m3_encode", formats.e4m3_encode, x * 37)
both("e2m1_encode", formats.e2m1_encode, x)
both("ceil_log2", formats.ceil_log2, x)
both("exp2i", formats.exp2i, jnp.arange(-140, 128, dtype=jnp.int32))
both("mul_exp2", lambda a: formats.mul_exp2(a, jnp.full(a.shape, -9, jnp.int32)), x)
both("quantize_mxfp8", lambda a: (formats.quantize_mxfp8(a).data.view(jnp.uint8), formats.quantize_mxfp8(a).scale), x)
both("dequant_mxfp8", lambda a: formats.dequantize(formats.quantize_mxfp8(a)), x)
both("quantize_nvfp4", lambda a: (formats.quantize_nvfp4(a, 200.0).data, formats.quantize_nvfp4(a, 200.0).scale), x)
both("dequant_nvfp4", lambda a: formats.dequantize(formats.quantize_nvfp4(a, 200.0)), x)
both("e4m3 decode", lambda a: formats.e4m3_encode(a).astype(jnp.float32), x)
