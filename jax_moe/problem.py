"""The static description of one MoE call (`MoEProblem`).

Everything a tactic's validity, the workspace size and the autotuner's cache
key depend on, and nothing that depends on array values. Built from the
operands' shapes at trace time by `jax_moe.ops`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax_moe.activation import Activation
from jax_moe.formats import Format
from jax_moe.routing import RoutingMethod


@dataclasses.dataclass(frozen=True)
class MoEProblem:
    """Shapes, formats and static options of one `fp4_moe` call.

    Attributes:
      num_tokens: T, tokens in the call (leading dims flattened).
      hidden_size: H.
      intermediate_size: I (w13 has 2*I rows: gate then up).
      num_experts: E, experts addressed by the router (global).
      num_local_experts: experts whose weights this call holds.
      top_k: experts per token.
      weight_format: NVFP4 or MXFP4.
      act_format: BF16, MXFP8 or NVFP4 (format of the hidden states and of h).
      routing_method, n_group, topk_group: routing (ignored when `routed`).
      activation: gated activation of GEMM1.
      local_expert_offset: first global expert id held here.
      routed: precomputed top-k ids/weights instead of router logits.
      has_routing_bias, has_b13, has_b2: optional operands present.
      routing_weight_on_input: the routing weight scales GEMM1 (Llama-4).
      do_finalize: reduce over k inside the op.
    """

    num_tokens: int
    hidden_size: int
    intermediate_size: int
    num_experts: int
    num_local_experts: int
    top_k: int
    weight_format: Format = Format.NVFP4
    act_format: Format = Format.BF16
    routing_method: RoutingMethod = RoutingMethod.RENORMALIZE
    n_group: int = 0
    topk_group: int = 0
    activation: Activation = Activation.SWIGLU
    local_expert_offset: int = 0
    routed: bool = False
    has_routing_bias: bool = False
    has_b13: bool = False
    has_b2: bool = False
    routing_weight_on_input: bool = False
    do_finalize: bool = True

    def to_dict(self) -> dict[str, int]:
        """Flat int dict in the form the C++ planning functions read."""
        return {f.name: int(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_tokens(self, num_tokens: int) -> "MoEProblem":
        """The same problem at another token count (autotuning buckets)."""
        return dataclasses.replace(self, num_tokens=int(num_tokens))

    def key_fields(self) -> dict[str, Any]:
        """Every field except the token count, for cache keys."""
        d = dataclasses.asdict(self)
        d.pop("num_tokens")
        return {k: (v.name if hasattr(v, "name") else v) for k, v in d.items()}
