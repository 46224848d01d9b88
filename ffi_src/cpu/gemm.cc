// Stages 3 and 4 (CPU): the two grouped GEMMs. Quantized operands are decoded
// on the fly (value * block scale, exact in fp32); global scales, the routing
// weight on input, biases and the activation are applied to the fp32
// accumulator, in the same order as the CUDA epilogues.
#include <algorithm>
#include <vector>

#include "common/activation_math.h"
#include "common/fp_formats.h"
#include "cpu/parallel.h"
#include "cpu/stages.h"

namespace jax_moe::cpu {
namespace {

// Decodes one row of K elements (without the NVFP4 global scale).
void DecodeRow(Format fmt, const uint8_t* data, const uint8_t* scale, int64_t K, float* out) {
  switch (fmt) {
    case Format::kBF16: {
      const auto* bits = reinterpret_cast<const uint16_t*>(data);
      for (int64_t k = 0; k < K; ++k) out[k] = Bf16ToFloat(bits[k]);
      return;
    }
    case Format::kMXFP8:
      for (int64_t k = 0; k < K; ++k) out[k] = E4m3ToFloat(data[k]) * Ue8m0ToFloat(scale[k / 32]);
      return;
    case Format::kNVFP4:
    case Format::kMXFP4: {
      // Per block: decode the scale once, then 16 table entries per byte pair.
      static const float* const kE2m1 = [] {
        static float table[16];
        for (int c = 0; c < 16; ++c) table[c] = E2m1ToFloat(static_cast<uint8_t>(c));
        return table;
      }();
      const int bs = BlockSize(fmt);
      for (int64_t k0 = 0; k0 < K; k0 += bs) {
        const uint8_t sb = scale[k0 / bs];
        const float s = fmt == Format::kNVFP4 ? E4m3ToFloat(sb) : Ue8m0ToFloat(sb);
        for (int64_t k = k0; k < k0 + bs; k += 2) {
          const uint8_t byte = data[k / 2];
          out[k] = kE2m1[byte & 0xf] * s;
          out[k + 1] = kE2m1[byte >> 4] * s;
        }
      }
      return;
    }
  }
}

// Fixed-order dot product with 8 partial sums (vectorizable, deterministic).
float Dot(const float* a, const float* b, int64_t n) {
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[k + j] * b[k + j];
  for (; k < n; ++k) part[k % 8] += a[k] * b[k];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Bytes of one packed row of K elements / of its scales.
int64_t RowBytes(Format fmt, int64_t K) {
  return fmt == Format::kBF16 ? 2 * K : (IsFp4(fmt) ? K / 2 : K);
}
int64_t ScaleRowBytes(Format fmt, int64_t K) { return BlockSize(fmt) ? K / BlockSize(fmt) : 0; }

float InvGlobal(const float* g, bool per_expert, int64_t e) { return 1.0f / g[per_expert ? e : 0]; }

// One work item of a GEMM: a token tile of one expert x a chunk of output
// columns [n0, n0 + n), with the tile's live rows (padding rows skipped).
struct TileTask {
  int64_t expert, n0, n;
  std::vector<int64_t> row, expanded;  // permuted row index, expanded (t*K+k) index
};
TileTask MakeTask(const Workspace& ws, int64_t task, int64_t tile_n, int64_t columns) {
  const int64_t chunks = (columns + tile_n - 1) / tile_n, tile_index = task / chunks;
  TileTask t{ws.tile_expert[tile_index], (task % chunks) * tile_n, 0, {}, {}};
  t.n = std::min(tile_n, columns - t.n0);
  for (int64_t i = 0; i < ws.layout.tile; ++i) {
    const int64_t row = tile_index * ws.layout.tile + i;
    const int32_t ex = ws.permuted_to_expanded[row];
    if (ex < 0) continue;
    t.row.push_back(row);
    t.expanded.push_back(ex);
  }
  return t;
}
int64_t NumTasks(const Workspace& ws, int64_t tile_n, int64_t columns) {
  return *ws.num_tiles * ((columns + tile_n - 1) / tile_n);
}

// Stores h[j0, j0+n) of one row in the activation format; chunks are
// multiples of 32 columns, so quantization blocks never straddle two chunks.
void StoreH(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws, int64_t row,
            int64_t j0, const float* h, int64_t n) {
  uint8_t* data = ws.h + row * ws.layout.h_row_bytes;
  uint8_t* scale = ws.h_scale + row * ws.layout.h_scale_row_bytes;
  uint8_t codes[32];
  switch (p.act_format) {
    case Format::kNVFP4:
      for (int64_t j = 0; j < n; j += 16) {
        scale[(j0 + j) / 16] = QuantizeNvfp4Block(h + j, b.h_global[0], codes);
        for (int i = 0; i < 16; i += 2)
          data[(j0 + j + i) / 2] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
      }
      return;
    case Format::kMXFP8:
      for (int64_t j = 0; j < n; j += 32) {
        scale[(j0 + j) / 32] = QuantizeMxfp8Block(h + j, codes);
        for (int i = 0; i < 32; ++i) data[j0 + j + i] = codes[i];
      }
      return;
    default: {
      auto* bits = reinterpret_cast<uint16_t*>(data);
      for (int64_t j = 0; j < n; ++j) bits[j0 + j] = Bf16Bits(h[j]);
    }
  }
}

}  // namespace

void Gemm1Activation(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws,
                     int64_t tile_n) {
  const int64_t H = p.hidden_size, I = p.intermediate_size, K = p.routing.top_k;
  const Format af = p.act_format, wf = p.weight_format;
  const int64_t a_row = RowBytes(af, H), a_srow = ScaleRowBytes(af, H);
  const int64_t w_row = RowBytes(wf, H), w_srow = ScaleRowBytes(wf, H);
  const float act_inv = af == Format::kNVFP4 ? 1.0f / b.hidden_global[0] : 1.0f;
  ParallelFor(NumTasks(ws, tile_n, I), [&](int64_t task_id) {
    const TileTask rows = MakeTask(ws, task_id, tile_n, I);
    const int64_t e = rows.expert, j0 = rows.n0, n = rows.n;
    const int64_t R = static_cast<int64_t>(rows.row.size());
    // Gather and decode this tile's token rows once (row gather, no padded copy).
    std::vector<float> a(R * H), gate(H), up(H), h(R * n);
    const auto* hidden = static_cast<const uint8_t*>(b.hidden);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t t = rows.expanded[r] / K;
      DecodeRow(af, hidden + t * a_row, b.hidden_scale + t * a_srow, H, &a[r * H]);
    }
    const float scale = act_inv * (wf == Format::kNVFP4
                                       ? InvGlobal(b.w13_global, p.per_expert_w13_global, e)
                                       : 1.0f);
    const uint8_t* w = b.w13 + e * 2 * I * w_row;
    const uint8_t* ws13 = b.w13_scale + e * 2 * I * w_srow;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t gj = j0 + j, uj = I + j0 + j;
      DecodeRow(wf, w + gj * w_row, ws13 + gj * w_srow, H, gate.data());
      DecodeRow(wf, w + uj * w_row, ws13 + uj * w_srow, H, up.data());
      for (int64_t r = 0; r < R; ++r) {
        float g = Dot(&a[r * H], gate.data(), H) * scale;
        float u = Dot(&a[r * H], up.data(), H) * scale;
        if (p.routing_weight_on_input) {
          const float rw = b.topk_weights[rows.expanded[r]];
          g *= rw;
          u *= rw;
        }
        if (b.b13) {
          g += b.b13[e * 2 * I + gj];
          u += b.b13[e * 2 * I + uj];
        }
        h[r * n + j] = GatedActivation(g, u, p.activation);
      }
    }
    for (int64_t r = 0; r < R; ++r) StoreH(p, b, ws, rows.row[r], j0, &h[r * n], n);
  });
}

void Gemm2(const MoeProblem& p, const MoeBuffers& b, const Workspace& ws, int64_t tile_n) {
  const int64_t H = p.hidden_size, I = p.intermediate_size;
  const Format af = p.act_format, wf = p.weight_format;
  const int64_t w_row = RowBytes(wf, I), w_srow = ScaleRowBytes(wf, I);
  const float h_inv = af == Format::kNVFP4 ? 1.0f / b.h_global[0] : 1.0f;
  ParallelFor(NumTasks(ws, tile_n, H), [&](int64_t task_id) {
    const TileTask rows = MakeTask(ws, task_id, tile_n, H);
    const int64_t e = rows.expert, n0 = rows.n0, n = rows.n;
    const int64_t R = static_cast<int64_t>(rows.row.size());
    std::vector<float> h(R * I), w(I);
    for (int64_t r = 0; r < R; ++r)
      DecodeRow(af, ws.h + rows.row[r] * ws.layout.h_row_bytes,
                ws.h_scale + rows.row[r] * ws.layout.h_scale_row_bytes, I, &h[r * I]);
    const float scale =
        h_inv *
        (wf == Format::kNVFP4 ? InvGlobal(b.w2_global, p.per_expert_w2_global, e) : 1.0f);
    for (int64_t c = n0; c < n0 + n; ++c) {
      DecodeRow(wf, b.w2 + (e * H + c) * w_row, b.w2_scale + (e * H + c) * w_srow, I, w.data());
      for (int64_t r = 0; r < R; ++r) {
        float y = Dot(&h[r * I], w.data(), I) * scale;
        if (b.b2) y += b.b2[e * H + c];
        // y rows: permuted workspace rows before finalize, or straight to the
        // per-(token,k) output when the caller finalizes itself.
        uint16_t* dst = p.do_finalize ? ws.y + rows.row[r] * H : b.out + rows.expanded[r] * H;
        dst[c] = Bf16Bits(y);
      }
    }
  });
}

}  // namespace jax_moe::cpu
