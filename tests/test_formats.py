"""Tests for jax_moe.formats: element formats, block quantizers, converters.

The reference numerics come from ``ml_dtypes`` casts and small numpy
re-implementations of the spec written here, independent of the module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jax_moe import formats as F

E2M1 = ml_dtypes.float4_e2m1fn
E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _bits32(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def _assert_bitwise_equal(a, b) -> None:
    """Equal values *and* equal sign of zero (NaNs compared by position)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    assert a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(_bits32(a[~nan]), _bits32(b[~nan]))


def _ml_e2m1_codes(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(E2M1).view(np.uint8)


def _ref_ceil_log2(r: np.ndarray) -> np.ndarray:
    """Spec rule via numpy's frexp (correct for subnormals)."""
    m, p = np.frexp(np.asarray(r, np.float32))
    return np.where(m == 0.5, p - 1, p).astype(np.int32)


def _ref_quantize_nvfp4(x: np.ndarray, g: np.ndarray):
    """Numpy NVFP4 reference: returns (codes [..., K], sf bytes [..., K/16])."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(*x.shape[:-1], -1, 16)
    a = np.abs(xb).max(-1)
    g = np.asarray(g, np.float32)
    gb = g.reshape(g.shape + (1,) * (a.ndim - g.ndim))
    sf = np.clip((gb * a) / np.float32(6), -448, 448).astype(E4M3)
    sf32 = sf.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(sf32 == 0, np.float32(0), gb / sf32).astype(np.float32)
    codes = _ml_e2m1_codes(xb * r[..., None])
    return codes.reshape(x.shape), sf.view(np.uint8)


def _ref_quantize_mx(x: np.ndarray, element_max: float, element_dtype):
    """Numpy MXFP4/MXFP8 reference: returns (element bytes, scale bytes)."""
    x = np.asarray(x, np.float32)
    xb = x.reshape(*x.shape[:-1], -1, 32)
    a = np.abs(xb).max(-1)
    with np.errstate(divide="ignore"):
        e = np.clip(_ref_ceil_log2(a / np.float32(element_max)), -127, 127)
    e = np.where(a == 0, -127, e)
    scaled = np.ldexp(xb, -e[..., None]).astype(np.float32)
    q = np.clip(scaled, -448, 448).astype(element_dtype).view(np.uint8)
    if element_dtype is E2M1:
        q = np.where((a == 0)[..., None], 0, q).astype(np.uint8)
    return q.reshape(x.shape), (e + 127).astype(np.uint8)


def _random_blocks(seed: int, shape, block: int, spread: float = 3.0) -> np.ndarray:
    """Normal data whose per-block magnitude varies over 10**+-spread."""
    rng = _rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    nb = shape[-1] // block
    mag = 10.0 ** rng.uniform(-spread, spread, shape[:-1] + (nb, 1))
    return (x.reshape(*shape[:-1], nb, block) * mag).reshape(shape).astype(np.float32)


def _leaf_bytes(a) -> np.ndarray:
    """Raw bytes of an array leaf, for bit-exact comparisons of any dtype."""
    return np.ascontiguousarray(np.atleast_1d(np.asarray(a))).view(np.uint8)


def _assert_same_leaves(tree_a, tree_b) -> None:
    leaves_a = jax.tree_util.tree_leaves(tree_a)
    leaves_b = jax.tree_util.tree_leaves(tree_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(_leaf_bytes(a), _leaf_bytes(b))


def _codes(q: F.QTensor) -> np.ndarray:
    return np.asarray(F.unpack_fp4(q.data))


QUANTIZERS = {
    F.Format.NVFP4: F.quantize_nvfp4,
    F.Format.MXFP4: F.quantize_mxfp4,
    F.Format.MXFP8: F.quantize_mxfp8,
}
QUANT_FORMATS = list(QUANTIZERS)


# ---------------------------------------------------------------------------
# Format enum
# ---------------------------------------------------------------------------


def test_format_values_and_blocks():
    assert [int(f) for f in F.Format] == [0, 1, 2, 3]
    assert [f.name for f in F.Format] == ["BF16", "NVFP4", "MXFP4", "MXFP8"]
    assert F.BLOCK_SIZE == {F.Format.NVFP4: 16, F.Format.MXFP4: 32, F.Format.MXFP8: 32}


@pytest.mark.parametrize(
    "value, expected",
    [
        (F.Format.MXFP4, F.Format.MXFP4),
        (1, F.Format.NVFP4),
        (np.int32(3), F.Format.MXFP8),
        ("nvfp4", F.Format.NVFP4),
        ("MxFp8", F.Format.MXFP8),
        ("bf16", F.Format.BF16),
    ],
)
def test_format_parse(value, expected):
    assert F.Format.parse(value) is expected
    assert F.as_format(value) is expected


@pytest.mark.parametrize("bad", ["fp4", 7, -1, True, None, 1.0])
def test_format_parse_rejects(bad):
    with pytest.raises(ValueError, match="valid choices.*nvfp4"):
        F.Format.parse(bad)


# ---------------------------------------------------------------------------
# e2m1
# ---------------------------------------------------------------------------


def test_e2m1_all_codes_match_ml_dtypes():
    codes = np.arange(16, dtype=np.uint8)
    expected = codes.view(E2M1).astype(np.float32)
    decoded = np.asarray(F.e2m1_decode(jnp.asarray(codes)))
    _assert_bitwise_equal(decoded, expected)  # includes -0.0 for code 8
    np.testing.assert_array_equal(np.asarray(F.e2m1_encode(decoded)), codes)


def _e2m1_sweep() -> np.ndarray:
    grid = np.arange(8, dtype=np.uint8).view(E2M1).astype(np.float32)
    mids = (grid[:-1] + grid[1:]) / 2  # every tie
    near = np.concatenate(
        [np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))]
    )
    tiny = np.array([0.0, 1e-30, 1e-40, 1.4e-45, np.float32(2.0**-127)], np.float32)
    pos = np.concatenate([np.linspace(0, 6, 2401, dtype=np.float32), grid, mids, near, tiny])
    return np.concatenate([pos, -pos]).astype(np.float32)  # -pos includes -0.0


@pytest.mark.parametrize("jit", [False, True])
def test_e2m1_sweep_matches_ml_dtypes(jit):
    x = _e2m1_sweep()
    enc = jax.jit(F.e2m1_encode) if jit else F.e2m1_encode
    codes = np.asarray(enc(jnp.asarray(x)))
    ours = np.asarray(F.e2m1_decode(codes))
    ref = x.astype(E2M1).astype(np.float32)
    _assert_bitwise_equal(ours, ref)  # same value and same sign bit
    np.testing.assert_array_equal(codes, _ml_e2m1_codes(x))


def test_e2m1_ties_to_even():
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    expected = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0], np.float32)
    got = np.asarray(F.e2m1_decode(F.e2m1_encode(jnp.asarray(ties))))
    np.testing.assert_array_equal(got, expected)
    got_neg = np.asarray(F.e2m1_decode(F.e2m1_encode(jnp.asarray(-ties))))
    _assert_bitwise_equal(got_neg, -expected)  # -0.25 -> -0.0


def test_e2m1_negative_zero():
    codes = np.asarray(F.e2m1_encode(jnp.array([-0.0, -0.1, -1e-30, 0.0, 0.1], jnp.float32)))
    np.testing.assert_array_equal(codes, [8, 8, 8, 0, 0])


def test_e2m1_saturation_and_nan():
    big = np.array([6.0, 6.0001, 7.0, 100.0, 1e30, np.inf, 3.4e38], np.float32)
    x = np.concatenate([big, -big])
    codes = np.asarray(F.e2m1_encode(jnp.asarray(x)))
    np.testing.assert_array_equal(codes, [7] * 7 + [15] * 7)
    # ml_dtypes' float4_e2m1fn has no inf/NaN and also clamps out-of-range
    # finite values and +-inf to +-6, so the two agree here.
    np.testing.assert_array_equal(_ml_e2m1_codes(x), codes)
    # NaN: ours saturates to 7 | sign (ml_dtypes instead gives -0.0, code 8).
    nan = np.array([np.nan, -np.nan], np.float32)
    np.testing.assert_array_equal(np.asarray(F.e2m1_encode(jnp.asarray(nan))), [7, 15])


def test_e2m1_encode_accepts_bf16_and_rejects_ints():
    x = jnp.array([0.75, -2.5, 6.5], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(F.e2m1_encode(x)), [2, 12, 7])
    with pytest.raises(TypeError, match="x"):
        F.e2m1_encode(jnp.array([1, 2], jnp.int32))
    with pytest.raises(TypeError, match="codes"):
        F.e2m1_decode(jnp.array([1.0]))


# ---------------------------------------------------------------------------
# e4m3
# ---------------------------------------------------------------------------


def test_e4m3_all_codes_round_trip():
    codes = np.arange(256, dtype=np.uint8)
    ref = codes.view(E4M3).astype(np.float32)
    ours = np.asarray(jax.lax.bitcast_convert_type(jnp.asarray(codes), jnp.float8_e4m3fn))
    _assert_bitwise_equal(ours.astype(np.float32), ref)
    finite = ~np.isnan(ref)
    enc = np.asarray(F.e4m3_encode(jnp.asarray(ref[finite]))).view(np.uint8)
    np.testing.assert_array_equal(enc, codes[finite])


@pytest.mark.parametrize("jit", [False, True])
def test_e4m3_sweep_with_ties(jit):
    codes = np.arange(0x7F, dtype=np.uint8)  # +0 .. 448
    grid = codes.view(E4M3).astype(np.float32)
    mids = (grid[:-1] + grid[1:]) / 2
    inf = np.float32(np.inf)
    # Slightly-off-tie values catch a double rounding through a wider float8/16.
    near = [np.nextafter(mids, inf), np.nextafter(mids, np.float32(0)),
            mids + mids * np.float32(2.0**-20), mids - mids * np.float32(2.0**-20)]
    rng_vals = _rng(1).uniform(-448, 448, 2000).astype(np.float32)
    small = (_rng(2).standard_normal(500) * 2.0**-8).astype(np.float32)
    pos = np.concatenate([grid, mids, *near]).astype(np.float32)
    x = np.concatenate([pos, -pos, rng_vals, small]).astype(np.float32)
    enc = jax.jit(F.e4m3_encode) if jit else F.e4m3_encode
    ours = np.asarray(enc(jnp.asarray(x))).view(np.uint8)
    np.testing.assert_array_equal(ours, x.astype(E4M3).view(np.uint8))


def test_e4m3_saturation():
    big = np.array([448.0, 449.0, 464.0, 465.0, 500.0, 1e30, np.inf], np.float32)
    ours = np.asarray(F.e4m3_encode(jnp.asarray(np.concatenate([big, -big])))).view(np.uint8)
    np.testing.assert_array_equal(ours, [0x7E] * 7 + [0xFE] * 7)
    # Why the clamp exists: a plain cast overflows to NaN (e4m3fn has no inf).
    assert np.isnan(np.float32(500.0).astype(E4M3).astype(np.float32))
    assert np.isnan(float(jnp.float32(500.0).astype(jnp.float8_e4m3fn)))
    assert np.isnan(float(F.e4m3_encode(jnp.float32(np.nan))))


# ---------------------------------------------------------------------------
# e8m0 and powers of two
# ---------------------------------------------------------------------------


def test_e8m0_bytes_match_ml_dtypes():
    b = np.arange(255, dtype=np.uint8)
    ref = b.view(E8M0).astype(np.float32)  # 2**(b - 127); byte 0 is subnormal
    exps = jnp.asarray(b.astype(np.int32) - 127)
    s = F.e8m0_from_exponent(exps)
    assert s.dtype == jnp.float8_e8m0fnu
    np.testing.assert_array_equal(np.asarray(F.scale_bits(s)), b)
    _assert_bitwise_equal(np.asarray(F.exp2i(exps)), ref)
    _assert_bitwise_equal(np.asarray(jax.jit(F.exp2i)(exps)), ref)
    np.testing.assert_array_equal(np.asarray(F.e8m0_to_exponent(s)), b.astype(np.int32) - 127)
    back = F.scale_from_bits(jnp.asarray(b), F.Format.MXFP4)
    assert back.dtype == jnp.float8_e8m0fnu
    np.testing.assert_array_equal(np.asarray(F.scale_bits(back)), b)
    # Exponents outside the scale range clip to bytes 0 and 254, never 255 (NaN).
    np.testing.assert_array_equal(
        np.asarray(F.scale_bits(F.e8m0_from_exponent(jnp.array([-300, 300])))), [0, 254]
    )


def test_ceil_log2_exact_at_and_around_powers_of_two():
    k = np.arange(-149, 128)
    p = np.ldexp(np.float32(1), k).astype(np.float32)
    below = np.nextafter(p, np.float32(0))
    above = np.nextafter(p, np.float32(np.inf))
    rand = (10.0 ** _rng(3).uniform(-44, 38, 3000)).astype(np.float32)
    x = np.concatenate([p, below[below > 0], above[np.isfinite(above)], rand])
    for fn in (F.ceil_log2, jax.jit(F.ceil_log2)):
        got = np.asarray(fn(jnp.asarray(x)))
        np.testing.assert_array_equal(got, _ref_ceil_log2(x))
    np.testing.assert_array_equal(np.asarray(F.ceil_log2(jnp.asarray(p))), k)
    special = np.asarray(F.ceil_log2(jnp.array([0.0, np.inf, -4.0], jnp.float32)))
    np.testing.assert_array_equal(special, [-150, 128, 2])


def test_mul_exp2_exact_with_extreme_exponents():
    x = jnp.array([2.0**100, 2.0**-100, 1.5, 6.0, -3.0], jnp.float32)
    e = jnp.array([-127, 127, 10, -1, 5], jnp.int32)
    expected = np.array([2.0**-27, 2.0**27, 1536.0, 3.0, -96.0], np.float32)
    np.testing.assert_array_equal(np.asarray(F.mul_exp2(x, e)), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(F.mul_exp2)(x, e)), expected)
    assert _bits32(F.exp2i(jnp.int32(-127))) == 0x00400000
    assert float(F.exp2i(jnp.int32(127))) == 2.0**127


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


def test_pack_fp4_explicit_bytes():
    packed = F.pack_fp4(jnp.array([1, 2, 3, 4, 9, 7, 5, 0], jnp.uint8))
    np.testing.assert_array_equal(np.asarray(packed), [0x21, 0x43, 0x79, 0x05])
    np.testing.assert_array_equal(np.asarray(F.unpack_fp4(packed)), [1, 2, 3, 4, 9, 7, 5, 0])


def test_pack_unpack_round_trip():
    codes = _rng(4).integers(0, 16, (3, 5, 64), dtype=np.uint8)
    packed = jax.jit(F.pack_fp4)(jnp.asarray(codes))
    assert packed.shape == (3, 5, 32) and packed.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(jax.jit(F.unpack_fp4)(packed)), codes)
    byte_vals = _rng(5).integers(0, 256, (4, 16), dtype=np.uint8)
    np.testing.assert_array_equal(
        np.asarray(F.pack_fp4(F.unpack_fp4(jnp.asarray(byte_vals)))), byte_vals
    )


def test_pack_rejects_odd_k():
    with pytest.raises(ValueError, match="codes.*even"):
        F.pack_fp4(jnp.zeros((2, 7), jnp.uint8))
    with pytest.raises(ValueError, match="x.*even"):
        F.fp4_to_packed(jnp.zeros((3,), jnp.float4_e2m1fn))
    with pytest.raises(TypeError, match="x"):
        F.fp4_to_packed(jnp.zeros((4,), jnp.float32))


def test_float4_interop():
    x = _rng(6).uniform(-7, 7, (2, 3, 32)).astype(np.float32)
    x_f4 = x.astype(E2M1)
    packed = F.fp4_to_packed(jnp.asarray(x_f4))
    assert packed.shape == (2, 3, 16) and packed.dtype == jnp.uint8
    # Low nibble first, same as pack_fp4 on the ml_dtypes codes.
    np.testing.assert_array_equal(
        np.asarray(packed), np.asarray(F.pack_fp4(jnp.asarray(x_f4.view(np.uint8))))
    )
    back = jax.jit(F.packed_to_fp4)(packed)
    assert back.dtype == jnp.float4_e2m1fn and back.shape == x.shape
    np.testing.assert_array_equal(np.asarray(back).view(np.uint8), x_f4.view(np.uint8))
    np.testing.assert_array_equal(np.asarray(jax.jit(F.fp4_to_packed)(back)), packed)


# ---------------------------------------------------------------------------
# Block quantizers against the numpy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_expert", [False, True])
def test_nvfp4_matches_reference(per_expert):
    x = _random_blocks(10 + per_expert, (3, 4, 64), 16, spread=1.5)
    q = jax.jit(F.quantize_nvfp4, static_argnames="per_expert")(x, per_expert=per_expert)
    amax = np.abs(x).reshape(3, -1).max(-1) if per_expert else np.abs(x).max()
    g = (np.float32(2688) / amax).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(q.global_scale), g)
    codes, sf = _ref_quantize_nvfp4(x, g)
    np.testing.assert_array_equal(_codes(q), codes)
    np.testing.assert_array_equal(np.asarray(F.scale_bits(q)), sf)


@pytest.mark.parametrize("fmt", [F.Format.MXFP4, F.Format.MXFP8])
def test_mx_matches_reference(fmt):
    x = _random_blocks(20 + int(fmt), (3, 4, 128), 32)
    q = jax.jit(QUANTIZERS[fmt])(jnp.asarray(x))
    if fmt == F.Format.MXFP4:
        q_ref, s_ref = _ref_quantize_mx(x, 6.0, E2M1)
        data = _codes(q)
    else:
        q_ref, s_ref = _ref_quantize_mx(x, 448.0, E4M3)
        data = np.asarray(q.data).view(np.uint8)
    np.testing.assert_array_equal(data, q_ref)
    np.testing.assert_array_equal(np.asarray(F.scale_bits(q)), s_ref)


def _per_element_scale(q: F.QTensor) -> np.ndarray:
    """Effective dequantization step s for every element, in float64."""
    if q.fmt == F.Format.NVFP4:
        s = np.asarray(q.scale.astype(jnp.float32), np.float64)
        g = np.asarray(q.global_scale, np.float64)
        s = s / g.reshape(g.shape + (1,) * (s.ndim - g.ndim))
    else:
        s = np.ldexp(1.0, np.asarray(F.e8m0_to_exponent(q.scale)))
    return np.repeat(s, q.block_size, axis=-1)


# Error bounds (per element, with s the block's dequantization step):
# * e2m1 (NVFP4, MXFP4): the grid 0, .5, 1, 1.5, 2, 3, 4, 6 has half steps
#   .25 on [0, 2), .5 on [2, 4), 1 on [4, 6], i.e. at most 1/4 of the lower
#   end of each binade from 1 up, and .25 absolute below 1. So
#   |x - y| <= max(|x| / 4, s / 4). Block scaling keeps |x| / s <= 6 (MXFP4)
#   or <= 6 * 16/15 for NVFP4, where the e4m3 scale rounding (<= 1/16
#   relative) can push the block max up to 6.4 and saturation then costs
#   <= 6.25% < 25% of |x|.
# * e4m3 (MXFP8): 3 mantissa bits, half ulp <= 2**-4 relative for normal
#   values; subnormals (|x| / s < 2**-6) have step 2**-9, so
#   |x - y| <= max(|x| / 16, s / 1024).
_BOUNDS = {
    F.Format.NVFP4: (0.25, 0.25),
    F.Format.MXFP4: (0.25, 0.25),
    F.Format.MXFP8: (2.0**-4, 2.0**-10),
}


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_round_trip_error_bounds(fmt):
    x = (_rng(30 + int(fmt)).standard_normal((4, 8, 128)) * 3).astype(np.float32)
    q = F.quantize(jnp.asarray(x), fmt)
    y = np.asarray(F.dequantize(q), np.float64)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    rel, absolute = _BOUNDS[fmt]
    s = _per_element_scale(q)
    bound = np.maximum(rel * np.abs(x), absolute * s) * (1 + 1e-6)
    assert np.all(np.abs(x - y) <= bound)
    # Sanity on the aggregate: normal data loses a few percent at most.
    rms = np.sqrt(np.mean((x - y) ** 2) / np.mean(x.astype(np.float64) ** 2))
    assert rms < (0.12 if fmt != F.Format.MXFP8 else 0.04)


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_idempotent(fmt):
    x = jnp.asarray(_random_blocks(40 + int(fmt), (2, 4, 64), 32, spread=1.0))
    q = F.quantize(x, fmt)
    y = F.dequantize(q)
    # NVFP4 needs the same G: the default G recomputed from y is 2688 /
    # fl(2688 / G), which may differ from G in the last bit.
    kwargs = {"global_scale": q.global_scale} if fmt == F.Format.NVFP4 else {}
    y2 = F.dequantize(F.quantize(y, fmt, **kwargs))
    _assert_bitwise_equal(y2, y)


def test_idempotent_nvfp4_per_expert():
    x = jnp.asarray(_random_blocks(45, (3, 4, 32), 16, spread=1.0))
    q = F.quantize_nvfp4(x, per_expert=True)
    y = F.dequantize(q)
    y2 = F.dequantize(F.quantize_nvfp4(y, q.global_scale, per_expert=True))
    _assert_bitwise_equal(y2, y)


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_zero_blocks(fmt):
    x = (_rng(50 + int(fmt)).standard_normal((2, 3, 64))).astype(np.float32)
    x[0, 1, :32] = 0.0
    x[1, 2, 32:] = -0.0
    q = F.quantize(jnp.asarray(x), fmt)
    y = np.asarray(F.dequantize(q))
    assert not np.any(np.isnan(y))
    assert np.all(y[0, 1, :32] == 0) and np.all(y[1, 2, 32:] == 0)
    scale_bytes = np.asarray(F.scale_bits(q))
    per_scale = 32 // q.block_size  # scales covering one 32-element zero run
    assert np.all(scale_bytes[0, 1, :per_scale] == 0)
    assert np.all(scale_bytes[1, 2, -per_scale:] == 0)
    # Entirely zero tensors stay finite too (NVFP4 then uses G = 1).
    zq = F.quantize(jnp.zeros((2, 64)), fmt)
    assert np.all(np.asarray(F.dequantize(zq)) == 0)
    if fmt == F.Format.NVFP4:
        assert float(zq.global_scale) == 1.0


def test_mxfp4_zero_block_codes_are_zero():
    x = np.zeros((1, 64), np.float32)
    x[0, :32] = -0.0
    x[0, 32:] = _rng(55).standard_normal(32)
    x[0, 33] = -0.0
    q = F.quantize_mxfp4(jnp.asarray(x))
    codes = _codes(q)
    assert np.all(codes[0, :32] == 0)  # canonical zero block, sign dropped
    assert codes[0, 33] == 8  # -0.0 inside a live block keeps its sign
    assert np.asarray(F.scale_bits(q))[0, 0] == 0


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_negative_zero_in_live_block(fmt):
    x = (_rng(60 + int(fmt)).standard_normal((1, 32)) + 3.0).astype(np.float32)
    x[0, 5] = -0.0
    q = F.quantize(jnp.asarray(x), fmt)
    y = np.asarray(F.dequantize(q))
    assert y[0, 5] == 0 and np.signbit(y[0, 5])
    if fmt == F.Format.MXFP8:
        assert np.asarray(q.data).view(np.uint8)[0, 5] == 0x80
    else:
        assert _codes(q)[0, 5] == 8


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_outlier_block(fmt):
    rng = _rng(70 + int(fmt))
    x = rng.standard_normal((2, 128)).astype(np.float32)
    x[0, 40] = 1.0e4
    q = F.quantize(jnp.asarray(x), fmt)
    y = np.asarray(F.dequantize(q))
    assert np.all(np.isfinite(y))
    rel = 0.25 if fmt != F.Format.MXFP8 else 2.0**-4
    assert abs(y[0, 40] - 1.0e4) <= rel * 1.0e4
    block = q.block_size
    start = 40 // block * block
    if fmt != F.Format.MXFP8:
        # Everything below a quarter of the block's step collapses to zero.
        neighbours = np.delete(np.arange(start, start + block), 40 - start)
        assert np.all(y[0, neighbours] == 0)
    if fmt != F.Format.NVFP4:
        # MX blocks are independent: other blocks are unchanged by the outlier.
        clean = x.copy()
        clean[0, start:start + block] = 1.0
        y_clean = np.asarray(F.dequantize(F.quantize(jnp.asarray(clean), fmt)))
        mask = np.ones_like(x, bool)
        mask[0, start:start + block] = False
        np.testing.assert_array_equal(y[mask], y_clean[mask])


def test_nvfp4_per_expert_scale():
    rng = _rng(80)
    x = rng.standard_normal((3, 4, 32)).astype(np.float32)
    x[0] *= 1e-3
    x[1] *= 1e3
    x[2] = 0.0
    q = F.quantize_nvfp4(jnp.asarray(x), per_expert=True)
    assert q.global_scale.shape == (3,)
    g = np.asarray(q.global_scale)
    for e in range(2):
        assert g[e] == np.float32(2688) / np.abs(x[e]).max()
        assert np.asarray(q.scale.astype(jnp.float32))[e].max() == 448.0
    assert g[2] == 1.0
    y = np.asarray(F.dequantize(q))
    s = _per_element_scale(q)
    assert np.all(np.abs(x - y) <= np.maximum(np.abs(x), s) * 0.25 * (1 + 1e-6))
    np.testing.assert_array_equal(np.asarray(F.nvfp4_global_scale(x, per_expert=True)), g)
    # A single per-tensor G cannot serve the 1e-3 expert: its scales underflow.
    y_tensor = np.asarray(F.dequantize(F.quantize_nvfp4(jnp.asarray(x))))
    assert np.abs(x[0] - y_tensor[0]).max() > np.abs(x[0] - y[0]).max()


def test_nvfp4_scale_saturation():
    x = (_rng(90).standard_normal((2, 32)) * 5).astype(np.float32)
    g = F.nvfp4_global_scale(x) * 100  # far larger than the default
    q = F.quantize_nvfp4(jnp.asarray(x), g)
    sf = np.asarray(F.scale_bits(q))
    assert np.all(sf == 0x7E)  # every block's scale saturates to 448
    codes = _codes(q)
    assert np.all(codes[np.abs(x) * float(g) / 448 > 6] & 7 == 7)
    y = np.asarray(F.dequantize(q))
    assert np.all(np.isfinite(y))
    assert np.abs(y).max() <= 6 * 448 / float(g) * (1 + 1e-6)


# ---------------------------------------------------------------------------
# Hand-computed examples
# ---------------------------------------------------------------------------

# Block A (16 values), amax 12.
_HAND_A = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.25, 0.75, -1.25, 1.75, 2.5, -3.5, 5, 12]
# With a step of 2 the scaled values are A / 2 =
#   0 .25 .5 .75 1 1.5 2 3 -.125 .375 -.625 .875 1.25 -1.75 2.5 6
# rounding (ties to even code): .25->0 (c0), .75->1 (c2), 1.25->1 (c2),
# -1.75->-2 (c4|8=12), 2.5->2 (c4); -.125->-0 (c8); .375->.5; -.625->-.5 (c9).
_HAND_A_CODES = [0, 0, 1, 2, 2, 3, 4, 5, 8, 1, 9, 2, 2, 12, 4, 7]


def test_hand_computed_nvfp4():
    # Block 0 = A, block 1 = A / 8 (amax 1.5).
    # G = 448 * 6 / 12 = 224 exactly.
    # Block 0: SF = e4m3(224 * 12 / 6 = 448) = 448 = 1.75 * 2**8 -> 0_1111_110
    #   = 0x7E; r = 224 / 448 = 0.5, so scaled = A / 2 -> _HAND_A_CODES.
    # Block 1: SF = e4m3(224 * 1.5 / 6 = 56) = 1.75 * 2**5 -> 0_1100_110 = 0x66;
    #   r = 224 / 56 = 4, scaled = (A / 8) * 4 = A / 2 -> the same codes.
    a = np.array(_HAND_A, np.float32)
    x = np.concatenate([a, a / 8])[None]
    q = F.quantize_nvfp4(jnp.asarray(x))
    assert float(q.global_scale) == 224.0
    np.testing.assert_array_equal(np.asarray(F.scale_bits(q)), [[0x7E, 0x66]])
    np.testing.assert_array_equal(_codes(q), [_HAND_A_CODES * 2])
    np.testing.assert_array_equal(
        np.asarray(q.data)[0, :8], [0x00, 0x21, 0x32, 0x54, 0x18, 0x29, 0xC2, 0x74]
    )
    # Dequant: code value * 448 / 224 = 2 * value, and * 56 / 224 = value / 4.
    v = np.asarray(F.e2m1_decode(jnp.array(_HAND_A_CODES, jnp.uint8)))
    _assert_bitwise_equal(np.asarray(F.dequantize(q))[0], np.concatenate([v * 2, v / 4]))


def test_hand_computed_mxfp4():
    # Block 0: A followed by
    #   -12 7 .1 -.1 9 10 11 2.2 and eight zeros with a final -0.0.
    #   amax 12: 12 / 6 = 2 -> e = ceil_log2(2) = 1 -> byte 128 = 0x80; x / 2:
    #   -6 -> c15; 3.5 -> tie -> 4 (c6); .05 -> c0; -.05 -> -0 (c8);
    #   4.5 -> 4 (c6); 5 -> tie -> 4 (c6); 5.5 -> 6 (c7); 1.1 -> 1 (c2); -0 -> c8.
    # Block 1: .7 -.2 .05 then zeros. amax .7: .7 / 6 = .1167 lies in
    #   (2**-4, 2**-3] -> e = -3 -> byte 124 = 0x7C; x * 8:
    #   5.6 -> 6 (c7); -1.6 -> -1.5 (c11); .4 -> .5 (c1).
    # Block 2: all zeros -> byte 0, codes 0.
    tail = [-12, 7, 0.1, -0.1, 9, 10, 11, 2.2] + [0.0] * 7 + [-0.0]
    block1 = [0.7, -0.2, 0.05] + [0.0] * 29
    x = np.array([_HAND_A + tail + block1 + [0.0] * 32], np.float32)
    q = F.quantize_mxfp4(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(F.scale_bits(q)), [[0x80, 0x7C, 0x00]])
    tail_codes = [15, 6, 0, 8, 6, 6, 7, 2] + [0] * 7 + [8]
    expected = _HAND_A_CODES + tail_codes + [7, 11, 1] + [0] * 29 + [0] * 32
    np.testing.assert_array_equal(_codes(q), [expected])
    y = np.asarray(F.dequantize(q))[0]
    np.testing.assert_array_equal(y[:4], [0, 0, 1, 2])
    np.testing.assert_array_equal(y[32:35], [0.75, -0.1875, 0.0625])  # 6/8, -1.5/8, .5/8


def test_hand_computed_mxfp8():
    # amax 896: 896 / 448 = 2 -> e = 1 -> byte 0x80; x / 2 = 448 -> 0x7E,
    # -0.5 -> 0xB0 (sign, exponent field 6), 1.0625 -> tie between 1 and
    # 1.125 -> 1 (even mantissa) -> 0x38.
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [896, -1, 2.125]
    q = F.quantize_mxfp8(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(F.scale_bits(q)), [[0x80]])
    np.testing.assert_array_equal(np.asarray(q.data).view(np.uint8)[0, :3], [0x7E, 0xB0, 0x38])
    np.testing.assert_array_equal(np.asarray(F.dequantize(q))[0, :3], [896, -1, 2])


# ---------------------------------------------------------------------------
# jit, pytree behaviour and validation
# ---------------------------------------------------------------------------


def test_functions_under_jit():
    x = jnp.asarray(_random_blocks(100, (2, 4, 64), 32, spread=1.0))
    cases = [
        (F.e2m1_encode, (x,)),
        (F.e4m3_encode, (x,)),
        (F.ceil_log2, (jnp.abs(x),)),
        (F.nvfp4_global_scale, (x,)),
        (lambda v: F.quantize_nvfp4(v, per_expert=True), (x,)),
        (F.quantize_mxfp4, (x,)),
        (F.quantize_mxfp8, (x,)),
        (lambda v: F.quantize(v, "nvfp4"), (x,)),
        (lambda v: F.dequantize(F.quantize_nvfp4(v), jnp.bfloat16), (x,)),
        (lambda v: F.w13_from_interleaved(F.quantize_mxfp4(v)), (x,)),
        (lambda v: F.w13_to_up_first(v), (x,)),
    ]
    for fn, args in cases:
        _assert_same_leaves(fn(*args), jax.jit(fn)(*args))


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
def test_qtensor_through_jit(fmt):
    x = jnp.asarray(_random_blocks(110 + int(fmt), (2, 64), 32, spread=1.0))
    q = jax.jit(F.quantize, static_argnums=1)(x, fmt)
    assert isinstance(q, F.QTensor) and q.fmt is fmt and q.layout == "linear"
    assert q.shape == (2, 64) and q.ndim == 2 and q.block_size == F.BLOCK_SIZE[fmt]
    n_leaves = 3 if fmt == F.Format.NVFP4 else 2
    assert len(jax.tree_util.tree_leaves(q)) == n_leaves
    same = jax.jit(lambda t: t)(q)
    assert isinstance(same, F.QTensor) and same.fmt is fmt
    np.testing.assert_array_equal(np.asarray(jax.jit(F.dequantize)(q)), np.asarray(F.dequantize(q)))
    # vmap over the leading axis rebuilds QTensors from batched leaves.
    vq = jax.vmap(QUANTIZERS[fmt])(x[:, None])
    assert vq.shape == (2, 1, 64)


def test_qtensor_unflatten_with_placeholders():
    q = F.quantize_nvfp4(jnp.ones((2, 16)))
    treedef = jax.tree_util.tree_structure(q)
    rebuilt = jax.tree_util.tree_unflatten(treedef, [object()] * 3)
    assert rebuilt.fmt is F.Format.NVFP4
    F.QTensor(None, None, None, F.Format.MXFP4)  # nothing to validate


def test_qtensor_in_gradient_trees():
    # Gradients w.r.t. a tree holding quantized weights carry float0 data.
    q = F.quantize_nvfp4(jnp.asarray(_random_blocks(115, (2, 32), 16, spread=1.0)))
    grads = jax.grad(lambda p: jnp.sum(F.dequantize(p["w"])) * p["a"], allow_int=True)(
        {"w": q, "a": 1.0}
    )
    assert isinstance(grads["w"], F.QTensor) and grads["w"].data.dtype == jax.dtypes.float0


def test_qtensor_validation():
    data = jnp.zeros((2, 16), jnp.uint8)
    e8 = F.scale_from_bits(jnp.zeros((2, 1), jnp.uint8), "mxfp4")
    F.QTensor(data, e8, None, F.Format.MXFP4)  # valid
    assert F.QTensor(data, e8, None, 2).fmt is F.Format.MXFP4  # int normalized
    with pytest.raises(TypeError, match="QTensor.data.*uint8.*float32"):
        F.QTensor(jnp.zeros((2, 16)), e8, None, F.Format.MXFP4)
    with pytest.raises(TypeError, match="QTensor.scale.*float8_e8m0fnu"):
        F.QTensor(data, jnp.zeros((2, 1), jnp.float8_e4m3fn), None, F.Format.MXFP4)
    with pytest.raises(ValueError, match=r"QTensor.scale.*\(2, 1\).*\(2, 2\)"):
        F.QTensor(data, jnp.concatenate([e8, e8], -1), None, F.Format.MXFP4)
    with pytest.raises(ValueError, match="global_scale.*None"):
        F.QTensor(data, e8, jnp.float32(1), F.Format.MXFP4)
    with pytest.raises(ValueError, match="BF16"):
        F.QTensor(data, e8, None, F.Format.BF16)
    e4 = jnp.zeros((2, 2), jnp.float8_e4m3fn)
    F.QTensor(data, e4, jnp.ones((2,), jnp.float32), F.Format.NVFP4)  # valid
    with pytest.raises(ValueError, match="global_scale.*required"):
        F.QTensor(data, e4, None, F.Format.NVFP4)
    with pytest.raises(ValueError, match=r"global_scale.*\(3,\)"):
        F.QTensor(data, e4, jnp.ones((3,), jnp.float32), F.Format.NVFP4)
    with pytest.raises(TypeError, match="global_scale.*float32"):
        F.QTensor(data, e4, jnp.ones((), jnp.bfloat16), F.Format.NVFP4)
    with pytest.raises(TypeError, match="QTensor.data.*float8_e4m3fn"):
        F.QTensor(data, e8, None, F.Format.MXFP8)


@pytest.mark.parametrize(
    "fn, k, block",
    [(F.quantize_nvfp4, 24, 16), (F.quantize_mxfp4, 48, 32), (F.quantize_mxfp8, 16, 32)],
)
def test_quantize_rejects_bad_k(fn, k, block):
    with pytest.raises(ValueError, match=rf"x\.shape\[-1\].*{block}.*K={k}"):
        fn(jnp.ones((2, k)))


def test_quantize_argument_errors():
    with pytest.raises(TypeError, match="x"):
        F.quantize_mxfp4(jnp.ones((2, 32), jnp.int32))
    with pytest.raises(ValueError, match="BF16"):
        F.quantize(jnp.ones((2, 32)), F.Format.BF16)
    with pytest.raises(ValueError, match=r"global_scale.*\(2,\)"):
        F.quantize_nvfp4(jnp.ones((2, 16)), jnp.float32(1.0), per_expert=True)
    with pytest.raises(ValueError, match="x.*per_expert"):
        F.nvfp4_global_scale(jnp.ones((16,)), per_expert=True)
    q = F.quantize_mxfp4(jnp.ones((2, 32)))
    with pytest.raises(ValueError, match="layout"):
        F.dequantize(F.QTensor(q.data, q.scale, None, q.fmt, "swizzled"))


def test_bf16_input():
    x = jnp.asarray(_rng(120).standard_normal((2, 64)), jnp.bfloat16)
    for fmt in QUANT_FORMATS:
        _assert_same_leaves(F.quantize(x, fmt), F.quantize(x.astype(jnp.float32), fmt))


# ---------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------


def _labelled_rows() -> tuple[np.ndarray, np.ndarray]:
    """One expert, I = 2, H = 2; gate rows are 1x, up rows are 10x."""
    gate = np.array([[1, 1], [2, 2]], np.float32)
    up = np.array([[10, 10], [20, 20]], np.float32)
    return gate, up


def test_w13_row_placement():
    gate, up = _labelled_rows()
    logical = np.concatenate([gate, up])[None]  # [gate; up]
    up_first = np.concatenate([up, gate])[None]
    interleaved = np.stack([gate, up], axis=1).reshape(4, 2)[None]
    np.testing.assert_array_equal(interleaved[0, :, 0], [1, 10, 2, 20])
    np.testing.assert_array_equal(np.asarray(F.w13_from_up_first(up_first)), logical)
    np.testing.assert_array_equal(np.asarray(F.w13_from_interleaved(interleaved)), logical)
    np.testing.assert_array_equal(np.asarray(F.w13_to_up_first(logical)), up_first)
    np.testing.assert_array_equal(np.asarray(F.w13_to_interleaved(logical)), interleaved)


def test_w13_array_round_trips():
    w = jnp.asarray(_rng(130).standard_normal((2, 6, 4)), jnp.float32)
    np.testing.assert_array_equal(F.w13_to_up_first(F.w13_from_up_first(w)), w)
    np.testing.assert_array_equal(F.w13_to_interleaved(F.w13_from_interleaved(w)), w)
    np.testing.assert_array_equal(F.w13_from_interleaved(F.w13_to_interleaved(w)), w)
    with pytest.raises(ValueError, match="even number of rows"):
        F.w13_from_up_first(jnp.ones((2, 3, 4)))


@pytest.mark.parametrize("fmt", QUANT_FORMATS)
@pytest.mark.parametrize(
    "fwd, inv",
    [(F.w13_from_up_first, F.w13_to_up_first), (F.w13_from_interleaved, F.w13_to_interleaved)],
)
def test_w13_qtensor(fmt, fwd, inv):
    w = jnp.asarray(_random_blocks(140 + int(fmt), (2, 6, 64), 32, spread=1.0))
    kwargs = {"per_expert": True} if fmt == F.Format.NVFP4 else {}
    q = F.quantize(w, fmt, **kwargs)
    moved = fwd(q)
    assert moved.fmt is fmt and moved.shape == q.shape
    # Quantization is row-wise (and G per expert), so permuting rows commutes.
    _assert_bitwise_equal(F.dequantize(moved), fwd(F.dequantize(q)))
    _assert_same_leaves(inv(moved), q)


def test_w13_qtensor_2d_per_row_global_scale():
    w = jnp.asarray(_random_blocks(150, (4, 32), 16, spread=1.0))
    q = F.quantize_nvfp4(w, per_expert=True)  # G per row of a 2-D tensor
    moved = F.w13_from_interleaved(q)
    _assert_bitwise_equal(F.dequantize(moved), F.w13_from_interleaved(F.dequantize(q)))


def _numpy_decode_gpt_oss(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Independent decode: low nibble first, value * 2**(byte - 127)."""
    lut = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                   np.float32)
    nibbles = np.stack([blocks & 0x0F, blocks >> 4], axis=-1)  # [..., G, 16, 2]
    values = lut[nibbles].reshape(*blocks.shape[:-1], 32)
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127).astype(np.float32)
    return values.reshape(*blocks.shape[:-2], -1)


def test_from_gpt_oss_mxfp4():
    rng = _rng(160)
    e, n, groups = 2, 4, 2  # K = 64
    blocks = rng.integers(0, 256, (e, n, groups, 16), dtype=np.uint8)
    scales = rng.integers(118, 136, (e, n, groups), dtype=np.uint8)
    q = F.from_gpt_oss_mxfp4(blocks, scales)
    assert q.fmt is F.Format.MXFP4 and q.shape == (e, n, 64)
    assert q.data.shape == (e, n, 32) and q.scale.dtype == jnp.float8_e8m0fnu
    ref = _numpy_decode_gpt_oss(blocks, scales)
    _assert_bitwise_equal(F.dequantize(q), ref)
    q_jax = F.from_gpt_oss_mxfp4(jnp.asarray(blocks), jnp.asarray(scales))
    np.testing.assert_array_equal(np.asarray(q_jax.data), np.asarray(q.data))
    # gate_up_proj rows are interleaved (even = gate, odd = up).
    gate_up = F.w13_from_interleaved(q)
    ref_gate_up = np.concatenate([ref[:, 0::2], ref[:, 1::2]], axis=1)
    _assert_bitwise_equal(F.dequantize(gate_up), ref_gate_up)


def test_from_gpt_oss_mxfp4_rejects_bad_inputs():
    blocks = np.zeros((1, 2, 2, 16), np.uint8)
    with pytest.raises(TypeError, match="blocks"):
        F.from_gpt_oss_mxfp4(blocks.astype(np.int32), np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="scales"):
        F.from_gpt_oss_mxfp4(blocks, np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="blocks"):
        F.from_gpt_oss_mxfp4(np.zeros((1, 2, 2, 8), np.uint8), np.zeros((1, 2, 2), np.uint8))


def test_qtensor_from_float4():
    rng = _rng(170)
    x_f4 = rng.uniform(-6, 6, (2, 64)).astype(np.float32).astype(E2M1)
    values = x_f4.astype(np.float32)
    e8_bytes = rng.integers(120, 134, (2, 2), dtype=np.uint8)
    q = F.qtensor_from_float4(jnp.asarray(x_f4), F.scale_from_bits(jnp.asarray(e8_bytes), 2))
    assert q.fmt is F.Format.MXFP4 and q.global_scale is None
    expected = np.ldexp(values.reshape(2, 2, 32), e8_bytes.astype(np.int32)[..., None] - 127)
    _assert_bitwise_equal(F.dequantize(q), expected.reshape(2, 64))

    sf = rng.uniform(0.5, 400, (2, 4)).astype(np.float32).astype(E4M3)
    g = np.float32(3.0)
    q4 = F.qtensor_from_float4(jnp.asarray(x_f4), jnp.asarray(sf), g)
    assert q4.fmt is F.Format.NVFP4
    expected4 = (values.reshape(2, 4, 16) * sf.astype(np.float32)[..., None]) / g
    _assert_bitwise_equal(F.dequantize(q4), expected4.reshape(2, 64))
    with pytest.raises(ValueError, match="fmt"):
        F.qtensor_from_float4(jnp.asarray(x_f4), jnp.asarray(e8_bytes))


def test_nvfp4_dequantize_divides_exactly():
    # Dequantization is (value * SF) / G with a true division: XLA would
    # otherwise rewrite "/ broadcast(G)" as "* (1 / G)" and be off by an ulp.
    rng = _rng(180)
    e = 3
    x_f4 = rng.uniform(-6, 6, (e, 4, 32)).astype(np.float32).astype(E2M1)
    sf = rng.uniform(0.1, 448, (e, 4, 2)).astype(np.float32).astype(E4M3)
    g = rng.uniform(0.5, 900, (e,)).astype(np.float32)
    q = F.qtensor_from_float4(jnp.asarray(x_f4), jnp.asarray(sf), jnp.asarray(g))
    prod = x_f4.astype(np.float32).reshape(e, 4, 2, 16) * sf.astype(np.float32)[..., None]
    expected = (prod / g[:, None, None, None]).reshape(e, 4, 32)
    _assert_bitwise_equal(F.dequantize(q), expected)
    _assert_bitwise_equal(jax.jit(lambda t: F.dequantize(t))(q), expected)


@pytest.mark.parametrize("jit", [False, True])
def test_e4m3_decode_all_codes_match_ml_dtypes(jit):
    codes = np.arange(256, dtype=np.uint8)
    expected = codes.view(E4M3).astype(np.float32)
    f = jax.jit(F.e4m3_decode) if jit else F.e4m3_decode
    for arg in (jnp.asarray(codes), jnp.asarray(codes.view(E4M3))):
        got = np.asarray(f(arg))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        ok = ~np.isnan(expected)
        np.testing.assert_array_equal(got[ok], expected[ok])
        assert (np.signbit(got[ok]) == np.signbit(expected[ok])).all()
