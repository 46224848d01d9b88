"""Quantized tensor formats for the fused FP4 Mixture-of-Experts kernels.

This module is the numerical reference for every quantized format the project
uses. The C++ and CUDA kernels reproduce these functions bit for bit, so each
rounding step below is spelled out exactly (operation order included) and is
written with plain ``jnp`` operations that are ``jax.jit``-able.

Formats (quantization blocks always run along the last axis, K):

* ``NVFP4``: e2m1 values, one e4m3 scale per 16 elements, plus an fp32 global
  *encode* scale ``G`` (per tensor, or per expert along axis 0).
* ``MXFP4``: e2m1 values, one ue8m0 (power of two) scale per 32 elements.
* ``MXFP8``: e4m3 values, one ue8m0 scale per 32 elements (activations).

Denormals: XLA's CPU backend flushes fp32 subnormals to zero in arithmetic
(inputs and results). The helpers here never *rely* on subnormal arithmetic
for normal-range data: powers of two are built from bit patterns and
multiplied in two normal-range steps, and ``ceil_log2`` reads the IEEE fields
directly. Results that are themselves fp32 subnormals (e.g. a value times
2^-127) are exact on backends that keep subnormals (GPU) and flushed to zero
on the CPU backend.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_moe._enums import parse_enum

__all__ = [
    "BLOCK_SIZE",
    "E2M1_MAX",
    "E4M3_MAX",
    "Format",
    "QTensor",
    "as_format",
    "ceil_log2",
    "dequantize",
    "e2m1_decode",
    "e2m1_encode",
    "e4m3_decode",
    "e4m3_encode",
    "e8m0_from_exponent",
    "e8m0_to_exponent",
    "exp2i",
    "fp4_to_packed",
    "from_gpt_oss_mxfp4",
    "mul_exp2",
    "nvfp4_global_scale",
    "pack_fp4",
    "packed_to_fp4",
    "qtensor_from_float4",
    "quantize",
    "quantize_mxfp4",
    "quantize_mxfp8",
    "quantize_nvfp4",
    "scale_bits",
    "scale_from_bits",
    "unpack_fp4",
    "w13_from_interleaved",
    "w13_from_up_first",
    "w13_to_interleaved",
    "w13_to_up_first",
]


class Format(enum.IntEnum):
    """Activation / weight formats. Values are mirrored by a C++ header."""

    BF16 = 0  # plain bf16 activations (no quantization)
    NVFP4 = 1  # e2m1 values, e4m3 scale per 16 along K, fp32 global encode scale
    MXFP4 = 2  # e2m1 values, ue8m0 scale per 32 along K
    MXFP8 = 3  # e4m3 values, ue8m0 scale per 32 along K

    @classmethod
    def parse(cls, value: Any) -> "Format":
        """Converts a Format, its integer value, or its name to a Format.

        Args:
            value: A ``Format``, an integer such as ``1``, or a
                case-insensitive name such as ``"nvfp4"``.

        Returns:
            The matching ``Format``.

        Raises:
            ValueError: If ``value`` names no format.
        """
        return parse_enum(cls, value, {})


def as_format(value: Any) -> Format:
    """Module-level alias of :meth:`Format.parse`."""
    return Format.parse(value)


BLOCK_SIZE: dict[Format, int] = {Format.NVFP4: 16, Format.MXFP4: 32, Format.MXFP8: 32}

E2M1_MAX = 6.0
E4M3_MAX = 448.0
# Default NVFP4 global scale maps the tensor amax onto the largest
# representable product e4m3_max * e2m1_max.
_NVFP4_RANGE = E4M3_MAX * E2M1_MAX  # 2688, exact in fp32

# e2m1 magnitudes for codes 0..7; codes 8..15 are the negated values (code 8
# is -0.0 so that the sign of zero survives a round trip).
_E2M1_MAGNITUDES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)
_E2M1_TABLE = np.concatenate([_E2M1_MAGNITUDES, -_E2M1_MAGNITUDES])
# Decision thresholds between magnitude code i-1 and i (i = 1..7). At an exact
# tie round-to-nearest-even picks the code whose mantissa bit (code & 1) is 0,
# i.e. it rounds *up* into even codes 2, 4, 6 and *down* into code 0, 2, 4, 6
# from odd codes 1, 3, 5, 7.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)

_E8M0_BIAS = 127
_EXP_MIN = -127  # exponent of scale byte 0
_EXP_MAX = 127  # exponent of scale byte 254 (255 is NaN in e8m0)
# ceil_log2 result for a zero input: below every exponent a scale can hold.
_CEIL_LOG2_OF_ZERO = -150

_PACKED_FORMATS = (Format.NVFP4, Format.MXFP4)
_DATA_DTYPE = {
    Format.NVFP4: jnp.uint8,
    Format.MXFP4: jnp.uint8,
    Format.MXFP8: jnp.float8_e4m3fn,
}
_SCALE_DTYPE = {
    Format.NVFP4: jnp.float8_e4m3fn,
    Format.MXFP4: jnp.float8_e8m0fnu,
    Format.MXFP8: jnp.float8_e8m0fnu,
}


# ---------------------------------------------------------------------------
# Small validation helpers
# ---------------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _require_float(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {_dtype_name(x.dtype)}")


def _require_dtype(x: Any, dtype: Any, name: str) -> None:
    if np.dtype(x.dtype) != np.dtype(dtype):
        raise TypeError(
            f"{name} must have dtype {_dtype_name(dtype)}, got {_dtype_name(x.dtype)}"
        )


def _require_int(x: jax.Array, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {_dtype_name(x.dtype)}")


def _require_block_multiple(x: jax.Array, block: int, fmt: Format, name: str) -> None:
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (K last), got a scalar")
    k = x.shape[-1]
    if k % block != 0:
        raise ValueError(
            f"{name}.shape[-1] (K) must be a multiple of the {fmt.name} block size "
            f"{block}, got K={k} (shape {tuple(x.shape)})"
        )


def _exact_div(numerator: jax.Array, denominator: jax.Array | float) -> jax.Array:
    """IEEE fp32 division that XLA may not turn into a reciprocal multiply.

    XLA's algebraic simplifier rewrites ``a / broadcast(b)`` (and ``a / c``
    for a constant c) as ``a * (1 / b)``, which differs from true division in
    the last bit (e.g. 1344 / 224 becomes 6.0000005). The kernels divide, so
    the divisor is broadcast to the full shape and hidden behind an
    optimization barrier.
    """
    numerator = jnp.asarray(numerator, jnp.float32)
    denominator = jnp.asarray(denominator, jnp.float32)
    shape = jnp.broadcast_shapes(numerator.shape, denominator.shape)
    denominator = jax.lax.optimization_barrier(jnp.broadcast_to(denominator, shape))
    return numerator / denominator


def _as_float_input(x: Any, name: str) -> jax.Array:
    x = jnp.asarray(x)
    _require_float(x, name)
    if x.dtype == jnp.float8_e4m3fn:
        return e4m3_decode(x)
    return x.astype(jnp.float32)


# ---------------------------------------------------------------------------
# Element formats
# ---------------------------------------------------------------------------


@jax.jit
def e2m1_encode(x: jax.Array) -> jax.Array:
    """Rounds values to 4-bit e2m1 codes (round to nearest, ties to even).

    Code layout: bit 3 is the sign, bits 0..2 index the magnitudes
    0, 0.5, 1, 1.5, 2, 3, 4, 6. Magnitudes above 6 (and +-inf) saturate to 6.
    The sign bit is ``signbit(x)``, so -0.0 and small negatives that round to
    zero give code 8 (negative zero). NaN saturates as well: it becomes code
    ``7 | sign`` (+-6), matching the saturating conversion the kernels use;
    note ``ml_dtypes.float4_e2m1fn`` differs here (it maps NaN to -0.0).

    Args:
        x: Array of any float dtype; rounding is done on its fp32 value.

    Returns:
        uint8 array of codes in [0, 15], same shape as ``x``.
    """
    x = _as_float_input(x, "x")
    mag = jnp.abs(x)
    code = jnp.zeros(x.shape, jnp.uint8)
    for upper_code, midpoint in enumerate(_E2M1_MIDPOINTS, start=1):
        # A tie belongs to whichever neighbour has an even code.
        passed = mag >= midpoint if upper_code % 2 == 0 else mag > midpoint
        code = code + passed.astype(jnp.uint8)
    code = jnp.where(jnp.isnan(x), jnp.uint8(7), code)
    sign = jnp.signbit(x).astype(jnp.uint8) << 3
    return code | sign


@jax.jit
def e2m1_decode(codes: jax.Array) -> jax.Array:
    """Decodes 4-bit e2m1 codes (only the low nibble is read) to fp32."""
    codes = jnp.asarray(codes)
    _require_int(codes, "codes")
    table = jnp.asarray(_E2M1_TABLE)
    return table[(codes & 0xF).astype(jnp.int32)]


@jax.jit
def e4m3_decode(x: jax.Array) -> jax.Array:
    """Exact fp32 values of float8_e4m3fn data (NaN for the NaN codes).

    Computed from the bits, never with ``astype``: XLA's GPU backend converts
    float8_e4m3fn to fp32 inexactly (we measured 80 -> 77.89 on an H100 with
    jax 0.11.2), which silently corrupted every MXFP8 / NVFP4 dequantization.

    Args:
        x: ``jnp.float8_e4m3fn`` array (or its uint8 bit patterns).

    Returns:
        float32 array of the same shape.
    """
    x = jnp.asarray(x)
    bits = x if x.dtype == jnp.uint8 else jax.lax.bitcast_convert_type(x, jnp.uint8)
    b = bits.astype(jnp.int32)
    e, m = (b >> 3) & 15, b & 7
    # Both products are exact: small integers times powers of two in normal range.
    normal = (m + 8).astype(jnp.float32) * exp2i(e - 10)
    subnormal = m.astype(jnp.float32) * jnp.float32(2.0**-9)
    mag = jnp.where(e == 0, subnormal, normal)
    mag = jnp.where((b & 0x7F) == 0x7F, jnp.float32(jnp.nan), mag)
    return jnp.where((b & 0x80) != 0, -mag, mag)


def e4m3_encode(x: jax.Array) -> jax.Array:
    """Rounds to float8_e4m3fn (nearest, ties to even), saturating at +-448.

    The clamp comes first because XLA's conversion maps out-of-range values
    (including +-inf) to NaN. NaN stays NaN.

    Args:
        x: Array of any float dtype; rounding is done on its fp32 value.

    Returns:
        ``jnp.float8_e4m3fn`` array of the same shape.
    """
    x = _as_float_input(x, "x")
    return jnp.clip(x, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn)


# ---------------------------------------------------------------------------
# Powers of two and the ue8m0 scale
# ---------------------------------------------------------------------------


@jax.jit
def ceil_log2(r: jax.Array) -> jax.Array:
    """Exact ``ceil(log2(|r|))`` of fp32 values, as int32.

    This is the frexp rule (``r = m * 2**p`` with m in [0.5, 1): ``p - 1`` if
    ``m == 0.5`` else ``p``) evaluated on the IEEE bit fields rather than with
    ``jnp.frexp``, because the latter mis-handles subnormals when the backend
    flushes denormals (XLA CPU). Never uses a floating-point log2.

    Special values: 0 gives -150 (below any scale exponent), +-inf gives 128,
    NaN gives 129; callers clamp to the scale's exponent range.

    Args:
        r: Array of any float dtype, evaluated on its fp32 value; the sign is
            ignored.

    Returns:
        int32 array of the same shape.
    """
    r = _as_float_input(r, "r")
    bits = jax.lax.bitcast_convert_type(r, jnp.uint32) & jnp.uint32(0x7FFFFFFF)
    biased = (bits >> 23).astype(jnp.int32)
    mantissa = bits & jnp.uint32(0x7FFFFF)
    normal = biased - 127 + (mantissa != 0).astype(jnp.int32)
    # A subnormal is mantissa * 2**-149; ceil(log2(n)) = bit_length(n - 1).
    bit_length = 32 - jax.lax.clz(mantissa - jnp.uint32(1)).astype(jnp.int32)
    subnormal = bit_length - 149
    result = jnp.where(biased > 0, normal, subnormal)
    return jnp.where(bits == 0, jnp.int32(_CEIL_LOG2_OF_ZERO), result)


@jax.jit
def exp2i(e: jax.Array) -> jax.Array:
    """Builds ``2.0**e`` exactly in fp32 from its bit pattern.

    Args:
        e: Integer array with values in [-149, 127]; -127..-149 give fp32
            subnormals (2**-127 is the value of e8m0 byte 0).

    Returns:
        float32 array of the same shape.
    """
    e = jnp.asarray(e)
    _require_int(e, "e")
    e = e.astype(jnp.int32)
    normal_bits = (jnp.clip(e, -126, 127) + 127).astype(jnp.uint32) << 23
    subnormal_bits = jnp.uint32(1) << (jnp.clip(e, -149, -127) + 149).astype(jnp.uint32)
    bits = jnp.where(e >= -126, normal_bits, subnormal_bits)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


@jax.jit
def mul_exp2(x: jax.Array, e: jax.Array) -> jax.Array:
    """Computes ``x * 2**e`` in fp32 for integer e in [-252, 252].

    The factor is applied in two halves that are both normal fp32 numbers, so
    the product is exact whenever the result is a normal fp32 number, even on
    backends that treat a subnormal operand such as 2**-127 as zero. (Only a
    subnormal *result* is rounded, once, or flushed where the backend does.)

    Args:
        x: Float array (evaluated in fp32).
        e: Integer array broadcastable against ``x``.

    Returns:
        float32 array with the broadcast shape.
    """
    x = _as_float_input(x, "x")
    e = jnp.asarray(e)
    _require_int(e, "e")
    e = e.astype(jnp.int32)
    first = e >> 1  # floor(e / 2), so both halves stay within [-126, 126]
    second = e - first
    # The barrier stops XLA from folding two constant factors into one that
    # may be subnormal (and then flushed to zero on CPU).
    partial = jax.lax.optimization_barrier(x * exp2i(first))
    return partial * exp2i(second)


@jax.jit
def e8m0_from_exponent(e: jax.Array) -> jax.Array:
    """Encodes power-of-two exponents as ue8m0 bytes ``clip(e + 127, 0, 254)``."""
    e = jnp.asarray(e).astype(jnp.int32)
    byte = jnp.clip(e + _E8M0_BIAS, 0, 254).astype(jnp.uint8)
    return jax.lax.bitcast_convert_type(byte, jnp.float8_e8m0fnu)


@jax.jit
def e8m0_to_exponent(scale: jax.Array) -> jax.Array:
    """Returns ``b - 127`` (int32) for ue8m0 scales or their uint8 bytes."""
    scale = jnp.asarray(scale)
    if scale.dtype != jnp.uint8:
        _require_dtype(scale, jnp.float8_e8m0fnu, "scale")
        scale = jax.lax.bitcast_convert_type(scale, jnp.uint8)
    return scale.astype(jnp.int32) - _E8M0_BIAS


# ---------------------------------------------------------------------------
# FP4 packing
# ---------------------------------------------------------------------------


@jax.jit
def pack_fp4(codes: jax.Array) -> jax.Array:
    """Packs 4-bit codes two per byte: element 2j low nibble, 2j+1 high nibble.

    Args:
        codes: Integer array ``[..., K]`` with K even; only low nibbles are used.

    Returns:
        uint8 array ``[..., K // 2]``.

    Raises:
        ValueError: If K is odd.
    """
    codes = jnp.asarray(codes)
    _require_int(codes, "codes")
    if codes.ndim < 1 or codes.shape[-1] % 2 != 0:
        raise ValueError(
            f"codes.shape[-1] (K) must be even to pack two fp4 codes per byte, "
            f"got shape {tuple(codes.shape)}"
        )
    pairs = (codes.astype(jnp.uint8) & 0xF).reshape(*codes.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


@jax.jit
def unpack_fp4(packed: jax.Array) -> jax.Array:
    """Inverse of :func:`pack_fp4`: uint8 ``[..., K/2]`` to codes ``[..., K]``."""
    packed = jnp.asarray(packed)
    _require_dtype(packed, jnp.uint8, "packed")
    pairs = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


@jax.jit
def fp4_to_packed(x: jax.Array) -> jax.Array:
    """Packs a ``float4_e2m1fn`` array ``[..., K]`` into uint8 ``[..., K/2]``.

    The bit patterns of float4_e2m1fn are exactly the e2m1 codes, and XLA's
    bitcast of a trailing pair to one byte puts the first element in the low
    nibble, which is the project's packing order.
    """
    x = jnp.asarray(x)
    _require_dtype(x, jnp.float4_e2m1fn, "x")
    if x.ndim < 1 or x.shape[-1] % 2 != 0:
        raise ValueError(
            f"x.shape[-1] (K) must be even to pack fp4 values, got shape {tuple(x.shape)}"
        )
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return jax.lax.bitcast_convert_type(pairs, jnp.uint8)


@jax.jit
def packed_to_fp4(packed: jax.Array) -> jax.Array:
    """Inverse of :func:`fp4_to_packed`: uint8 ``[..., K/2]`` to f4 ``[..., K]``."""
    packed = jnp.asarray(packed)
    _require_dtype(packed, jnp.uint8, "packed")
    pairs = jax.lax.bitcast_convert_type(packed, jnp.float4_e2m1fn)
    return pairs.reshape(*packed.shape[:-1], -1)


# ---------------------------------------------------------------------------
# QTensor container
# ---------------------------------------------------------------------------


def _has_array_shape(x: Any) -> bool:
    # Pytree unflattening inside transformations may hand us placeholders
    # (object(), None, shardings...); only real/traced arrays are checked.
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _is_float0(x: Any) -> bool:
    # Gradients of a tree holding a QTensor carry float0 cotangents for the
    # integer data; their shapes are meaningful, their dtype is not.
    return np.dtype(x.dtype) == np.dtype(jax.dtypes.float0)


@dataclasses.dataclass(frozen=True)
class QTensor:
    """A block-quantized tensor; a pytree whose arrays pass through ``jax.jit``.

    Attributes:
        data: NVFP4/MXFP4: uint8 packed codes ``[..., K // 2]``;
            MXFP8: float8_e4m3fn ``[..., K]``.
        scale: NVFP4: float8_e4m3fn ``[..., K // 16]``; MXFP4/MXFP8:
            float8_e8m0fnu ``[..., K // 32]`` (``linear`` layout).
        global_scale: NVFP4 only: fp32 encode scale, shape ``[]`` or
            ``[data.shape[0]]`` (per expert). None for the MX formats.
        fmt: The format (static).
        layout: Scale/data layout tag (static). Only ``"linear"`` is produced
            here; other layouts come from a kernel preparation step.
    """

    data: jax.Array
    scale: jax.Array
    global_scale: jax.Array | None
    fmt: Format
    layout: str = "linear"

    def __post_init__(self) -> None:
        fmt = Format.parse(self.fmt)
        if fmt == Format.BF16:
            raise ValueError("QTensor.fmt must be a quantized format, got Format.BF16")
        # Frozen dataclass: normalize ints/strings to the enum once, here.
        object.__setattr__(self, "fmt", fmt)
        if not isinstance(self.layout, str):
            raise TypeError(f"QTensor.layout must be a str, got {type(self.layout).__name__}")
        self._validate_data()
        self._validate_scale()
        self._validate_global_scale()

    def _validate_data(self) -> None:
        if not _has_array_shape(self.data):
            return
        if not _is_float0(self.data):
            _require_dtype(self.data, _DATA_DTYPE[self.fmt], f"QTensor.data ({self.fmt.name})")
        if len(self.data.shape) < 1:
            raise ValueError("QTensor.data must have at least 1 dimension, got shape ()")

    def _validate_scale(self) -> None:
        if not _has_array_shape(self.scale):
            return
        if not _is_float0(self.scale):
            _require_dtype(self.scale, _SCALE_DTYPE[self.fmt], f"QTensor.scale ({self.fmt.name})")
        if self.layout != "linear" or not _has_array_shape(self.data):
            return
        k = self.shape[-1]
        block = self.block_size
        if k % block != 0:
            raise ValueError(
                f"QTensor.data implies K={k}, which is not a multiple of the "
                f"{self.fmt.name} block size {block} (data shape {tuple(self.data.shape)})"
            )
        expected = (*self.data.shape[:-1], k // block)
        if tuple(self.scale.shape) != expected:
            raise ValueError(
                f"QTensor.scale must have shape {expected} for data shape "
                f"{tuple(self.data.shape)} ({self.fmt.name}), got {tuple(self.scale.shape)}"
            )

    def _validate_global_scale(self) -> None:
        gs = self.global_scale
        if self.fmt != Format.NVFP4:
            if gs is not None and _has_array_shape(gs):
                raise ValueError(
                    f"QTensor.global_scale must be None for {self.fmt.name}, "
                    f"got an array of shape {tuple(gs.shape)}"
                )
            return
        if gs is None:
            raise ValueError("QTensor.global_scale is required for NVFP4, got None")
        if not _has_array_shape(gs):
            return
        if not _is_float0(gs):
            _require_dtype(gs, jnp.float32, "QTensor.global_scale")
        allowed = [()]
        if _has_array_shape(self.data) and len(self.data.shape) >= 2:
            allowed.append((self.data.shape[0],))
        if tuple(gs.shape) not in allowed:
            raise ValueError(
                f"QTensor.global_scale must have shape {' or '.join(map(str, allowed))}, "
                f"got {tuple(gs.shape)}"
            )

    @property
    def block_size(self) -> int:
        """Number of consecutive K elements sharing one scale."""
        return BLOCK_SIZE[self.fmt]

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical (unquantized) shape; the last dimension is K."""
        k = self.data.shape[-1] * (2 if self.fmt in _PACKED_FORMATS else 1)
        return (*self.data.shape[:-1], k)

    @property
    def ndim(self) -> int:
        """Number of logical dimensions."""
        return len(self.data.shape)


jax.tree_util.register_dataclass(
    QTensor,
    data_fields=["data", "scale", "global_scale"],
    meta_fields=["fmt", "layout"],
)


def _require_linear(q: QTensor, what: str) -> None:
    if not isinstance(q, QTensor):
        raise TypeError(f"{what} expects a QTensor, got {type(q).__name__}")
    if q.layout != "linear":
        raise ValueError(f"{what} needs a QTensor with layout 'linear', got {q.layout!r}")


# ---------------------------------------------------------------------------
# Block helpers
# ---------------------------------------------------------------------------


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    """Reshapes ``[..., K]`` to ``[..., K / block, block]``."""
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def _from_blocks(xb: jax.Array) -> jax.Array:
    """Reshapes ``[..., nb, block]`` back to ``[..., nb * block]``."""
    return xb.reshape(*xb.shape[:-2], -1)


def _block_amax(xb: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(xb), axis=-1)


def _broadcast_leading(v: jax.Array, ndim: int) -> jax.Array:
    """Reshapes a per-index-of-axis-0 vector (or scalar) to broadcast over ndim."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (ndim - 1)))


# ---------------------------------------------------------------------------
# NVFP4
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("per_expert",))
def nvfp4_global_scale(x: jax.Array, *, per_expert: bool = False) -> jax.Array:
    """Default NVFP4 global encode scale ``G = 448 * 6 / amax``.

    Args:
        x: Array of any float dtype.
        per_expert: If True, one G per index of axis 0 (shape ``[E]``),
            using the amax of each slice ``x[e]``; else one G (shape ``[]``).

    Returns:
        float32 G; 1.0 where the amax is zero, so all-zero data stays finite.
    """
    x = _as_float_input(x, "x")
    if per_expert and x.ndim < 2:
        raise ValueError(
            f"x must have at least 2 dimensions for per_expert=True, got shape {tuple(x.shape)}"
        )
    axes = tuple(range(1, x.ndim)) if per_expert else None
    amax = jnp.max(jnp.abs(x), axis=axes)
    safe_amax = jnp.where(amax == 0, jnp.float32(1), amax)
    return jnp.where(amax == 0, jnp.float32(1), _exact_div(_NVFP4_RANGE, safe_amax))


def _checked_global_scale(global_scale: Any, x: jax.Array, per_expert: bool) -> jax.Array:
    gs = jnp.asarray(global_scale, jnp.float32)
    expected = (x.shape[0],) if per_expert else ()
    if tuple(gs.shape) != expected:
        raise ValueError(
            f"global_scale must have shape {expected} (per_expert={per_expert}), "
            f"got {tuple(gs.shape)}"
        )
    return gs


@functools.partial(jax.jit, static_argnames=("per_expert",))
def quantize_nvfp4(
    x: jax.Array, global_scale: jax.Array | float | None = None, *, per_expert: bool = False
) -> QTensor:
    """Quantizes to NVFP4 (e2m1 values, e4m3 scale per 16 along K, fp32 G).

    Per block with amax ``a``: ``SF = e4m3_encode((G * a) / 6)``; the encode
    ratio is ``r = G / f32(SF)`` (0 where SF == 0) and the codes are
    ``e2m1_encode(x * r)``. Dequantization is ``(e2m1 * f32(SF)) / G``.

    Args:
        x: ``[..., K]`` array of any float dtype, K a multiple of 16.
        global_scale: G; defaults to :func:`nvfp4_global_scale`.
        per_expert: If True, G has shape ``[x.shape[0]]``; else shape ``[]``.

    Returns:
        A linear-layout NVFP4 QTensor.
    """
    x = _as_float_input(x, "x")
    _require_block_multiple(x, BLOCK_SIZE[Format.NVFP4], Format.NVFP4, "x")
    if global_scale is None:
        gs = nvfp4_global_scale(x, per_expert=per_expert)
    else:
        gs = _checked_global_scale(global_scale, x, per_expert)
    xb = _to_blocks(x, BLOCK_SIZE[Format.NVFP4])
    g = _broadcast_leading(gs, xb.ndim - 1)
    sf = e4m3_encode(_exact_div(g * _block_amax(xb), E2M1_MAX))
    sf32 = e4m3_decode(sf)
    # Divide by a safe denominator so no inf/NaN is ever formed, then zero it.
    ratio = jnp.where(sf32 == 0, jnp.float32(0), _exact_div(g, jnp.where(sf32 == 0, 1, sf32)))
    codes = e2m1_encode(xb * ratio[..., None])
    return QTensor(pack_fp4(_from_blocks(codes)), sf, gs, Format.NVFP4)


def _dequantize_nvfp4(q: QTensor) -> jax.Array:
    values = _to_blocks(e2m1_decode(unpack_fp4(q.data)), q.block_size)
    sf32 = e4m3_decode(q.scale)[..., None]
    g = _broadcast_leading(q.global_scale, values.ndim)
    return _from_blocks(_exact_div(values * sf32, g))


# ---------------------------------------------------------------------------
# MX formats (power-of-two scales)
# ---------------------------------------------------------------------------


def _mx_block_exponent(amax: jax.Array, element_max: float) -> jax.Array:
    """Shared exponent ``clip(ceil_log2(amax / element_max), -127, 127)``.

    Zero blocks get -127 (scale byte 0) instead of the -inf the formula gives.
    """
    e = jnp.clip(ceil_log2(_exact_div(amax, element_max)), _EXP_MIN, _EXP_MAX)
    return jnp.where(amax == 0, jnp.int32(_EXP_MIN), e)


@jax.jit
def quantize_mxfp4(x: jax.Array) -> QTensor:
    """Quantizes to MXFP4 (e2m1 values, ue8m0 scale per 32 along K).

    Per block with amax ``a``: ``e = clip(ceil_log2(a / 6), -127, 127)`` and
    the codes are ``e2m1_encode(x * 2**-e)``. All-zero blocks get scale byte 0
    and code 0 for every element (also for -0.0 inputs, so zero blocks are
    canonical).

    Args:
        x: ``[..., K]`` array of any float dtype, K a multiple of 32.

    Returns:
        A linear-layout MXFP4 QTensor.
    """
    x = _as_float_input(x, "x")
    _require_block_multiple(x, BLOCK_SIZE[Format.MXFP4], Format.MXFP4, "x")
    xb = _to_blocks(x, BLOCK_SIZE[Format.MXFP4])
    amax = _block_amax(xb)
    e = _mx_block_exponent(amax, E2M1_MAX)
    codes = e2m1_encode(mul_exp2(xb, -e[..., None]))
    codes = jnp.where((amax == 0)[..., None], jnp.uint8(0), codes)
    return QTensor(pack_fp4(_from_blocks(codes)), e8m0_from_exponent(e), None, Format.MXFP4)


@jax.jit
def quantize_mxfp8(x: jax.Array) -> QTensor:
    """Quantizes to MXFP8 (e4m3 values, ue8m0 scale per 32 along K).

    Per block with amax ``a``: ``e = clip(ceil_log2(a / 448), -127, 127)``
    (byte 0 for zero blocks) and ``q = e4m3_encode(clip(x * 2**-e, +-448))``.
    Zero inputs keep their sign (-0.0 stays e4m3 -0).

    Args:
        x: ``[..., K]`` array of any float dtype, K a multiple of 32.

    Returns:
        A linear-layout MXFP8 QTensor (data not packed).
    """
    x = _as_float_input(x, "x")
    _require_block_multiple(x, BLOCK_SIZE[Format.MXFP8], Format.MXFP8, "x")
    xb = _to_blocks(x, BLOCK_SIZE[Format.MXFP8])
    e = _mx_block_exponent(_block_amax(xb), E4M3_MAX)
    # e4m3_encode clamps to +-448 itself, which is the spec's explicit clip.
    q = e4m3_encode(mul_exp2(xb, -e[..., None]))
    return QTensor(_from_blocks(q), e8m0_from_exponent(e), None, Format.MXFP8)


def _dequantize_mx(q: QTensor) -> jax.Array:
    if q.fmt == Format.MXFP4:
        values = e2m1_decode(unpack_fp4(q.data))
    else:
        values = e4m3_decode(q.data)
    values = _to_blocks(values, q.block_size)
    return _from_blocks(mul_exp2(values, e8m0_to_exponent(q.scale)[..., None]))


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------

_QUANTIZERS: dict[Format, Callable[..., QTensor]] = {
    Format.NVFP4: quantize_nvfp4,
    Format.MXFP4: quantize_mxfp4,
    Format.MXFP8: quantize_mxfp8,
}


def quantize(x: jax.Array, fmt: Format | int | str, **kwargs: Any) -> QTensor:
    """Quantizes ``x`` to ``fmt``; kwargs go to the format's quantizer.

    Raises:
        ValueError: For ``Format.BF16`` (nothing to quantize) or unknown names.
    """
    fmt = Format.parse(fmt)
    if fmt == Format.BF16:
        raise ValueError("quantize: fmt BF16 is not a quantized format; use x as is")
    return _QUANTIZERS[fmt](x, **kwargs)


@functools.partial(jax.jit, static_argnames=("dtype",))
def dequantize(q: QTensor, dtype: Any = jnp.float32) -> jax.Array:
    """Decodes a linear-layout QTensor to its logical shape in ``dtype``."""
    _require_linear(q, "dequantize")
    if q.fmt == Format.NVFP4:
        out = _dequantize_nvfp4(q)
    else:
        out = _dequantize_mx(q)
    return out.astype(dtype)


def scale_bits(q: QTensor | jax.Array) -> jax.Array:
    """Returns the raw scale bytes (uint8) of a QTensor or a float8 scale array."""
    scale = q.scale if isinstance(q, QTensor) else jnp.asarray(q)
    if scale.dtype == jnp.uint8:
        return scale
    if scale.dtype not in (jnp.float8_e4m3fn, jnp.float8_e8m0fnu):
        raise TypeError(
            f"scale must be float8_e4m3fn or float8_e8m0fnu, got {_dtype_name(scale.dtype)}"
        )
    return jax.lax.bitcast_convert_type(scale, jnp.uint8)


@functools.partial(jax.jit, static_argnames=("fmt",))
def scale_from_bits(bits: jax.Array, fmt: Format | int | str) -> jax.Array:
    """Inverse of :func:`scale_bits`: views uint8 bytes as ``fmt``'s scale dtype."""
    fmt = Format.parse(fmt)
    if fmt == Format.BF16:
        raise ValueError("scale_from_bits: fmt BF16 has no scales")
    bits = jnp.asarray(bits)
    _require_dtype(bits, jnp.uint8, "bits")
    return jax.lax.bitcast_convert_type(bits, _SCALE_DTYPE[fmt])


# ---------------------------------------------------------------------------
# Checkpoint converters
# ---------------------------------------------------------------------------


def _require_even_rows(x: jax.Array, name: str) -> None:
    if x.ndim < 2 or x.shape[-2] % 2 != 0:
        raise ValueError(
            f"{name} needs at least 2 dimensions and an even number of rows "
            f"(axis -2 = 2I), got shape {tuple(x.shape)}"
        )


def _swap_halves(x: jax.Array, axis: int) -> jax.Array:
    first, second = jnp.split(x, 2, axis=axis)
    return jnp.concatenate([second, first], axis=axis)


def _deinterleave(x: jax.Array, axis: int) -> jax.Array:
    """Rows r0 r1 r2 r3 ... -> r0 r2 ... r1 r3 ... along ``axis``."""
    x = jnp.moveaxis(x, axis, 0)
    x = jnp.concatenate([x[0::2], x[1::2]], axis=0)
    return jnp.moveaxis(x, 0, axis)


def _interleave(x: jax.Array, axis: int) -> jax.Array:
    """Inverse of :func:`_deinterleave`: halves [a; b] -> a0 b0 a1 b1 ..."""
    x = jnp.moveaxis(x, axis, 0)
    first, second = jnp.split(x, 2, axis=0)
    x = jnp.stack([first, second], axis=1).reshape(x.shape)
    return jnp.moveaxis(x, 0, axis)


def _permute_w13(w: QTensor | jax.Array, permute: Callable[..., jax.Array], what: str):
    """Applies a row permutation of axis -2 to an array or to a QTensor."""
    if not isinstance(w, QTensor):
        w = jnp.asarray(w)
        _require_even_rows(w, what)
        return permute(w, -2)
    _require_linear(w, what)
    _require_even_rows(w.data, f"{what}: w.data")
    gs = w.global_scale
    # A per-index-of-axis-0 G on a 2-D tensor is per row, so it moves too.
    if gs is not None and gs.ndim == 1 and w.data.ndim == 2:
        gs = permute(gs, 0)
    return QTensor(permute(w.data, -2), permute(w.scale, -2), gs, w.fmt, w.layout)


@jax.jit
def w13_from_up_first(w: QTensor | jax.Array) -> QTensor | jax.Array:
    """Reorders w13 rows from [up; gate] (FlashInfer/TRT-LLM) to [gate; up].

    Args:
        w: Array ``[..., 2I, H]`` or linear QTensor of that logical shape;
            data and scale rows move together, the global scale is unchanged
            (except that a per-row G of a 2-D tensor is permuted with its rows).

    Returns:
        The same kind of object with rows ``[gate; up]``.
    """
    return _permute_w13(w, _swap_halves, "w13_from_up_first")


@jax.jit
def w13_to_up_first(w: QTensor | jax.Array) -> QTensor | jax.Array:
    """Inverse of :func:`w13_from_up_first`: [gate; up] -> [up; gate]."""
    return _permute_w13(w, _swap_halves, "w13_to_up_first")


@jax.jit
def w13_from_interleaved(w: QTensor | jax.Array) -> QTensor | jax.Array:
    """Reorders interleaved w13 rows (even = gate, odd = up) to [gate; up].

    This is the gpt-oss ``gate_up_proj`` order once the weight is viewed as
    ``[E, 2I, H]`` (its ``*_blocks`` tensors already are).
    """
    return _permute_w13(w, _deinterleave, "w13_from_interleaved")


@jax.jit
def w13_to_interleaved(w: QTensor | jax.Array) -> QTensor | jax.Array:
    """Inverse of :func:`w13_from_interleaved`: [gate; up] -> interleaved rows."""
    return _permute_w13(w, _interleave, "w13_to_interleaved")


@jax.jit
def from_gpt_oss_mxfp4(blocks: Any, scales: Any) -> QTensor:
    """Wraps gpt-oss MXFP4 checkpoint tensors as an MXFP4 QTensor.

    gpt-oss stores ``*_blocks`` as uint8 ``[E, N, K/32, 16]`` (two e2m1 codes
    per byte, even element in the low nibble, which is this project's packing)
    and ``*_scales`` as uint8 ``[E, N, K/32]`` holding e8m0 exponent bytes
    (value ``2**(byte - 127)``). No value is changed; only shapes and dtypes.

    The ``gate_up_proj`` tensors have interleaved rows (even = gate,
    odd = up); pass the result through :func:`w13_from_interleaved` to get the
    project's ``[gate; up]`` order. ``down_proj`` needs no reordering.

    Args:
        blocks: numpy or jax uint8 array ``[..., N, K/32, 16]``.
        scales: numpy or jax uint8 array ``[..., N, K/32]``.

    Returns:
        QTensor(MXFP4) of logical shape ``[..., N, K]``.
    """
    blocks = jnp.asarray(blocks)
    scales = jnp.asarray(scales)
    _require_dtype(blocks, jnp.uint8, "blocks")
    _require_dtype(scales, jnp.uint8, "scales")
    if blocks.ndim < 2 or blocks.shape[-1] != 16:
        raise ValueError(
            f"blocks must have shape [..., K/32, 16], got {tuple(blocks.shape)}"
        )
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(
            f"scales must have shape {tuple(blocks.shape[:-1])} to match blocks "
            f"{tuple(blocks.shape)}, got {tuple(scales.shape)}"
        )
    data = blocks.reshape(*blocks.shape[:-2], blocks.shape[-2] * 16)
    return QTensor(data, scale_from_bits(scales, Format.MXFP4), None, Format.MXFP4)


def _infer_fp4_format(scale: jax.Array, fmt: Format | int | str | None) -> Format:
    if fmt is not None:
        fmt = Format.parse(fmt)
        if fmt not in _PACKED_FORMATS:
            raise ValueError(f"fmt must be NVFP4 or MXFP4 for float4 data, got {fmt.name}")
        return fmt
    if scale.dtype == jnp.float8_e4m3fn:
        return Format.NVFP4
    if scale.dtype == jnp.float8_e8m0fnu:
        return Format.MXFP4
    raise TypeError(
        "scale must be float8_e4m3fn (NVFP4) or float8_e8m0fnu (MXFP4) when fmt is "
        f"not given, got {_dtype_name(scale.dtype)}"
    )


def qtensor_from_float4(
    x_f4: jax.Array,
    scale: jax.Array,
    global_scale: jax.Array | float | None = None,
    fmt: Format | int | str | None = None,
) -> QTensor:
    """Builds an FP4 QTensor from a ``float4_e2m1fn`` array and its scales.

    Args:
        x_f4: ``jnp.float4_e2m1fn`` values ``[..., K]``.
        scale: Block scales ``[..., K / block]`` as float8_e4m3fn (NVFP4) or
            float8_e8m0fnu (MXFP4), or their raw uint8 bytes (then ``fmt`` is
            required).
        global_scale: NVFP4 encode scale (shape ``[]`` or ``[E]``); None means
            1.0 for NVFP4. Must be None for MXFP4.
        fmt: NVFP4 or MXFP4; inferred from the scale dtype when None.

    Returns:
        A linear-layout QTensor.
    """
    scale = jnp.asarray(scale)
    if scale.dtype == jnp.uint8:
        if fmt is None:
            raise ValueError("fmt is required when scale is given as uint8 bytes")
        scale = scale_from_bits(scale, fmt)
    fmt = _infer_fp4_format(scale, fmt)
    if fmt == Format.MXFP4 and global_scale is not None:
        raise ValueError("global_scale must be None for MXFP4")
    if fmt == Format.NVFP4:
        global_scale = jnp.asarray(1.0 if global_scale is None else global_scale, jnp.float32)
    return QTensor(fp4_to_packed(x_f4), scale, global_scale, fmt)
