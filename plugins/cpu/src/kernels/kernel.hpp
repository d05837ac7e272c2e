// Kernel interface of SCAPFullyConnected: plain data, no OpenVINO types, so that the ISA-specific
// translation units (compiled with wider instruction sets) share no inline/template code with the rest
// of the library (a COMDAT copy compiled for AVX-512 must never be picked for the generic path).
#pragma once

#include <cstddef>
#include <cstdint>

namespace scap_ov {
namespace kernels {

enum class WType : int { f32 = 0, f16, bf16, i8, u8, i4, u4 };
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

static constexpr bool is_float_weight(WType t) {
    return t == WType::f32 || t == WType::f16 || t == WType::bf16;
}
static constexpr bool is_4bit(WType t) {
    return t == WType::i4 || t == WType::u4;
}
static constexpr bool has_zero_point(WType t) {
    return t == WType::u8 || t == WType::u4;
}

// Everything one call of the op needs, with sizes already validated by the caller.
struct FcArgs {
    const float* x = nullptr;  // [M, IC]
    int64_t M = 0, IC = 0, OC = 0;
    WType wtype = WType::f32;
    const uint8_t* w = nullptr;      // [IC, OC], row-major; 4-bit: element k in byte k/2, low nibble first
    const void* scales = nullptr;    // [G, OC] f16 or f32; nullptr for float weights
    bool scales_f16 = false;
    int64_t n_groups = 1;            // G
    int64_t group_size = 0;          // IC / G
    const uint8_t* zp = nullptr;     // [G, OC], same element type as w (u8/u4); nullptr when symmetric/float
    const float* mode = nullptr;     // 1 or IC values
    bool mode_vec = false;
    const float* thr = nullptr;      // 1 or IC values
    bool thr_vec = false;
    const float* bias = nullptr;     // [OC] or nullptr
    float* y = nullptr;              // [M, OC]
    int64_t prefetch_bytes = 16384;  // decode: software-prefetch this many bytes of upcoming kept rows ahead
    int64_t dq_chunk = 0;            // prefill on compressed weights: activation chunk (QuantActs); 0 = exact f32
};

// Per-token gathered activations for the sparse (decode) path.
struct Gathered {
    const float* d = nullptr;        // kept values d_j = x_j - m_j, in increasing j
    const int32_t* idx = nullptr;    // kept channel indices
    const int64_t* gstart = nullptr; // [G + 1]: kept entries of group g are [gstart[g], gstart[g+1])
    const float* gsum = nullptr;     // [G]: sum of kept d in group g
    int64_t n = 0;                   // number of kept channels
};

// ISA entry points (one set per ISA translation unit). All work on a column range [c0, c1) of the output,
// where c0 is a multiple of 64 (decode) or of IsaKernels::nr (dense), so that 4-bit rows start on a byte boundary.
// decode: y[c0:c1] = sum over the kept rows of token `g`, dequantized, + bias.
// `scratch` holds at least (c1 - c0) + 64 floats, 64-byte aligned.
using DecodeFn = void (*)(const FcArgs& a, const Gathered& g, float* yrow, int64_t c0, int64_t c1, float* scratch);
// dense: for all M tokens, Y[:, c0:c1] = Dp (packed masked activations) x Wdeq + bias.
// Dp layout: for each k-block of KC rows, for each token tile of MR tokens: KC x MR floats (zero padded).
// `scratch` holds at least KC * 256 floats (a dequantized block of up to 256 columns), 64-byte aligned.
using DenseFn = void (*)(const FcArgs& a, const float* Dp, int64_t kc, int64_t c0, int64_t c1, float* scratch);

// gather: kept values / indices of one token in increasing j, per-group starts and sums (see Gathered);
// d and idx need room for IC entries, gstart for G + 1, gsum for G. Returns the number kept.
using GatherFn = int64_t (*)(const FcArgs& a, const float* x, float* d, int32_t* idx, int64_t* gstart, float* gsum);

// Union of the kept rows of up to 4 tokens (small-M decode): each union row once, with the 4 tokens'
// centred values (0 where that token pruned the row, and for unused token slots).
struct UnionRows {
    const int32_t* idx = nullptr;    // union row indices, increasing
    const float* d4 = nullptr;       // [n][4]
    const int64_t* gstart = nullptr; // [G + 1] into the union list
    const float* gsum[4] = {nullptr, nullptr, nullptr, nullptr};  // per token: [G] kept sums
    int64_t n = 0;
    int mt = 0;                      // tokens in use (1..4)
};
// decode_multi: y_t[c0:c1] for the mt tokens of `u`; `scratch` holds at least 4 * (c1 - c0) + 64 floats.
using DecodeMultiFn = void (*)(const FcArgs& a, const UnionRows& u, float* const* yrows, int64_t c0, int64_t c1,
                               float* scratch);

// Dynamically quantized activations of the dense path for compressed (int8/int4) weights, as OpenVINO's own FC
// does by default (DYNAMIC_QUANTIZATION_GROUP_SIZE): each token's masked, centred activations d are cut into
// chunks of at most `chunk` channels that never cross a weight group (chunk c of group g covers channels
// [g*gs + c*chunk, min((g+1)*gs, g*gs + (c+1)*chunk)) ) and each chunk is quantized to int8 with a symmetric
// scale: q = round_half_even(d * (127 / max|d|)), sa = max|d| / 127 (q = 0, sa = 0 for an all-zero chunk).
// Needs the group size and the chunk to be multiples of 4 (whole VNNI channel quads).
struct QuantActs {
    const int32_t* q = nullptr;      // [n_mtiles][IC / 4][qmr]: the 4 int8 of one token's channel quad
    const float* sa = nullptr;       // [n_mtiles][H][qmr]: chunk scales
    const float* ssum = nullptr;     // [n_mtiles][H][qmr]: sa * sum(q) over the chunk
    int64_t chunk = 32;              // channels per chunk
    int64_t chunks_per_group = 1;    // ceil(group_size / chunk)
    int64_t n_chunks = 0;            // H = n_groups * chunks_per_group
};
// dense_q: Y[:, c0:c1] = dequantized product of the quantized activations and the integer weights + bias, with
// integer dot products per chunk (y = bias + sum_g s_g sum_c sa_c (q_c . (w - zp)) ).
// `scratch` holds at least kQuantScratchBytes bytes, 64-byte aligned.
using DenseQFn = void (*)(const FcArgs& a, const QuantActs& q, int64_t c0, int64_t c1, uint8_t* scratch);
// quantize_q: quantize one token straight into the QuantActs layout: its quad values to q[quad * qmr], its chunk
// scales and scaled sums to sa[h * qmr] / ssum[h * qmr]. Same values as run_reference_dq's quantizer; false (and
// the token's slots unspecified) when a kept activation is not finite (the caller then takes the f32 path for
// that token, which propagates NaN / Inf as the portable IR does).
using QuantizeFn = bool (*)(const FcArgs& a, const float* x, int64_t chunk, int32_t* q, float* sa, float* ssum);
constexpr int64_t kQuantScratchBytes = 512 * 1024;

// One token's kept activations quantized for the one-token VNNI decode, with the same chunks and values as
// QuantActs (chunk c of group g covers channels [g*gs + c*chunk, ...); the pruned channels of a chunk are zeros,
// so its scale and its q on the kept channels equal the dense path's): the kept channels of each non-empty chunk,
// in increasing order, are cut into quads of 4 (slots); a chunk's last quad is padded with its last kept row
// and q = 0, so no quad crosses a chunk.
struct QuantGathered {
    const int32_t* rows = nullptr;    // [4 * quads]: weight row of each slot
    const int32_t* a4 = nullptr;      // [quads]: the 4 int8 activations of a quad, slot i in byte i
    const int64_t* cstart = nullptr;  // [nc + 1]: first quad of each non-empty chunk
    const int32_t* cgroup = nullptr;  // [nc]: weight group of each chunk (non-decreasing)
    const float* sa = nullptr;        // [nc]: chunk scales
    const float* ssum = nullptr;      // [nc]: sa * sum(q) over the chunk
    int64_t c_begin = 0, c_end = 0;   // the chunks one call covers (the row-split decode gives each share a range)
};
// quantize_gathered: build a QuantGathered from a gathered token (`g`, kernel.hpp Gathered); buffers: rows
// g.n + 3 * H, a4 (g.n + 3 * H) / 4 + 1, cstart H + 1, cgroup / sa / ssum H, where H = the chunks of the token
// (QuantActs::n_chunks). Returns the number of non-empty chunks, or -1 when a kept value is not finite (the caller
// then takes the exact path, which propagates NaN / Inf as the portable IR does).
using QuantizeGatheredFn = int64_t (*)(const FcArgs& a, const Gathered& g, int64_t chunk, int32_t* rows,
                                       int32_t* a4, int64_t* cstart, int32_t* cgroup, float* sa, float* ssum);
// decode_q: yrow[c0:c1] = bias + the chunks [q.c_begin, q.c_end) of the quantized token times the integer
// weights (y = bias + sum_g s_g sum_c sa_c (q_c . (w - zp))); c0 a multiple of 64. `scratch` holds at least
// (c1 - c0) + 128 floats, 64-byte aligned.
using DecodeQFn = void (*)(const FcArgs& a, const QuantGathered& q, float* yrow, int64_t c0, int64_t c1,
                           float* scratch);

// Chunk length of the dynamic quantization (FcArgs::dq_chunk): $SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE (the op
// reads it per call; default 32 like OpenVINO's CPU plugin; 0 turns it off; other values are rounded down to a
// multiple of 4, at most 512); -1 when it is set to anything but a non-negative integer.
constexpr const char* kDynamicQuantizationEnv = "SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE";
int64_t dynamic_quantization_chunk();
// The scalar oracle of dense_q: same quantization, integer dot products in int64, no SIMD, no threads.
void run_reference_dq(const FcArgs& a, int64_t chunk);

struct IsaKernels {
    DenseQFn dense_q = nullptr;      // nullptr: the ISA has no VNNI (the dense path stays f32)
    QuantizeFn quantize_q = nullptr; // set with dense_q
    DecodeQFn decode_q = nullptr;    // set with dense_q: the one-token decode on quantized activations
    QuantizeGatheredFn quantize_gathered = nullptr;
    int qmr = 4;                     // token tile of dense_q
    DecodeMultiFn decode_multi = nullptr;
    GatherFn gather = nullptr;
    DecodeFn decode = nullptr;
    DenseFn dense = nullptr;
    int mr = 1;   // token tile of the dense micro-kernel (Dp packing)
    int nr = 64;  // column panel of the dense micro-kernel (even: 4-bit rows start on a byte boundary)
};

IsaKernels avx2_kernels();
IsaKernels avx512_kernels();
// dense_q, quantize_q, decode_q, quantize_gathered and qmr of the AVX-512 VNNI file (the others left as they are)
void add_avx512_vnni(IsaKernels& k);

// Scalar reference implementation: the oracle (no SIMD, no threads, direct dequantization).
void run_reference(const FcArgs& a);
// run_reference for token t of `a` only (the quantized paths' f32 fallback for a token with a non-finite input).
void run_reference_token(const FcArgs& a, int64_t t);

// Detected ISA capped by $SCAP_OV_ISA (scalar|avx2|avx512).
Isa active_isa();
const char* isa_name(Isa isa);
// $SCAP_OV_DEBUG set (and not "0"): log each call's path to stderr.
bool debug_enabled();

// Entry point used by the op: picks the ISA and the decode or dense path, runs on `nthreads` threads.
void run(const FcArgs& a, Isa isa, int nthreads);

}  // namespace kernels
}  // namespace scap_ov
