"""jax_moe: fused FP4 (NVFP4 / MXFP4) Mixture-of-Experts for JAX.

Public surface:
  fp4_moe, fp4_moe_routed      the fused MoE layer (one XLA custom call)
  valid_tactics, default_tactic, MoEProblem, Tactic   kernel configurations
  autotune, tune, bucket_of    jit-time tactic tuning per token bucket, persistent cache
  formats                      NVFP4/MXFP4/MXFP8 quantization and QTensor
  nn (import jax_moe.nn)       the Flax NNX MoE layer (needs flax)
  sharding                     expert parallelism over a mesh axis (expert_parallel_moe)
  reference                    the pure-jnp oracle (moe_reference, moe_reference_routed)
  RoutingMethod, Activation, Format   enums (mirrored from ffi_src/common/enums.h)
"""

from jax_moe import formats, reference, sharding
from jax_moe.autotune import autotune, bucket_of, tune
from jax_moe.activation import Activation
from jax_moe.formats import Format, QTensor
from jax_moe.ops import fp4_moe, fp4_moe_routed
from jax_moe.problem import MoEProblem
from jax_moe.routing import RoutingMethod
from jax_moe.tactics import Tactic, default_tactic, valid_tactics

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Format",
    "MoEProblem",
    "QTensor",
    "RoutingMethod",
    "Tactic",
    "autotune",
    "bucket_of",
    "default_tactic",
    "formats",
    "fp4_moe",
    "fp4_moe_routed",
    "reference",
    "sharding",
    "tune",
    "valid_tactics",
]
