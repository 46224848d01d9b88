"""MoE layer shapes of the models we target (DESIGN.md section 8)."""

from __future__ import annotations

import dataclasses

from jax_moe.activation import Activation
from jax_moe.routing import RoutingMethod


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """One MoE layer's configuration as `fp4_moe` takes it."""

    name: str
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    routing: RoutingMethod
    activation: Activation = Activation.SWIGLU
    n_group: int = 0
    topk_group: int = 0
    routed_scaling_factor: float = 1.0
    biases: bool = False

    def routing_kwargs(self) -> dict:
        """The routing/activation keyword arguments of `fp4_moe` for this model."""
        kw = dict(top_k=self.top_k, routing=self.routing, activation=self.activation)
        if self.routing == RoutingMethod.DEEPSEEK_V3:
            kw.update(n_group=self.n_group, topk_group=self.topk_group,
                      routed_scaling_factor=self.routed_scaling_factor)
        return kw


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        ModelShape("qwen3-30b-a3b", 128, 8, 2048, 768, RoutingMethod.RENORMALIZE),
        ModelShape("gpt-oss-120b", 128, 4, 2880, 2880, RoutingMethod.RENORMALIZE,
                   Activation.SWIGLU_OAI, biases=True),
        ModelShape("deepseek-v3", 256, 8, 7168, 2048, RoutingMethod.DEEPSEEK_V3, n_group=8,
                   topk_group=4, routed_scaling_factor=2.5),
        ModelShape("mixtral-8x7b", 8, 2, 4096, 14336, RoutingMethod.RENORMALIZE),
    )
}
