"""A small end-to-end run of every CUDA kernel, for compute-sanitizer.

Run by benchmarks/gpu_check.sh as
  compute-sanitizer --tool memcheck|racecheck --kernel-name kns=jax_moe python3 tests/gpu_sanitizer_case.py
with XLA's platform allocator (every buffer its own cudaMalloc), so an
out-of-bounds access leaves its buffer instead of landing in XLA's pool.
Covers: every CUDA tactic, both weight formats, the three activation
formats, a K tail / unaligned rows (H = 1040), partial tiles, local experts,
do_finalize=False and both finalize kernels. Exits non-zero on a mismatch.
"""

import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
os.environ.setdefault("JAX_MOE_POISON_OUTPUTS", "1")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

import jax_moe  # noqa: E402
from jax_moe.formats import Format  # noqa: E402
from moe_cases import assert_close, make_case, run_op_and_reference  # noqa: E402


def main() -> None:
    assert jax.default_backend() == "gpu", jax.default_backend()
    runs = 0
    for tactic in jax_moe.valid_tactics(jax_moe.MoEProblem(37, 1040, 160, 12, 12, 3), "cuda"):
        case = make_case(T=37, H=1040, I=160, E=12, top_k=3, E_local=9, local_expert_offset=2)
        assert_close(*run_op_and_reference(case, tactic=tactic.id), rel=1e-2)
        runs += 1
    for wfmt in (Format.NVFP4, Format.MXFP4):
        for afmt in (Format.BF16, Format.MXFP8, Format.NVFP4):
            for T in (5, 40):  # scalar / vectorized finalize
                case = make_case(T=T, H=320, I=192, E=8, top_k=2, weight_format=wfmt, act_format=afmt)
                assert_close(*run_op_and_reference(case), rel=1e-2)
                runs += 1
    case = make_case(T=20, H=256, I=128, E=8, top_k=3, E_local=5, local_expert_offset=3)
    (y, _, _), (ry, _, _) = run_op_and_reference(case, do_finalize=False)
    assert_close(y, ry, rel=1e-2)
    print(f"sanitizer case: {runs + 1} runs matched the reference")


if __name__ == "__main__":
    main()
