// AVX-512 VNNI kernels for compressed weights with dynamically quantized activations, the scheme OpenVINO's own
// FC applies by default to int8/int4 weights: the dense (many-token) path (kernel.hpp, QuantActs) and the
// one-token decode (QuantGathered, at the end of the file).
//
// Weights are re-encoded as unsigned bytes u = w + o (i8: o = 128, i4: o = 8, u8/u4: o = the zero point) in
// VNNI panels (per channel quad, 48 columns x 4 bytes) and multiplied with the int8 activations by VPDPBUSD
// (u8 x s8, 64 products per instruction: 4x the multiply-adds of an f32 FMA). Per chunk of the quantization,
// f += sa * float(int32 sum); once per block (inside one weight group) y += s * (f - o * sum_chunks(sa * sum q)),
// which is exactly s * sum_c sa_c (q_c . (w - zp)) up to f32 rounding.
// Entered only after a run-time check for AVX-512 F/BW/VL/DQ and VNNI.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/kernel.hpp"
#include "kernels/scalar_convert.hpp"

namespace scap_ov {
namespace kernels {
namespace {

constexpr int QMR = 4;          // tokens per micro-kernel tile (4 x 3 int32 + 4 x 3 f32 accumulators)
constexpr int QNRV = 3;         // 16-column vectors per panel
constexpr int64_t QNR = 48;     // columns per panel: the f32 dense panel too, so thread ranges are whole panels
constexpr int64_t QNC = 192;    // columns per block
constexpr int64_t QKC = 512;    // most channels per block (panels: QKC * QNC bytes = 96 KiB, in L2)
constexpr int64_t QUAD_BYTES = QNR * 4;
constexpr int64_t kMaxGroupsPerBlock = QKC / 4;  // group sizes are multiples of 4

static inline int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
}
static inline int64_t imax(int64_t a, int64_t b) {
    return a > b ? a : b;
}

// Offset-encoded byte of column c of a weight row.
template <WType T>
static inline uint8_t ubyte(const uint8_t* row, int64_t c) {
    if constexpr (T == WType::i8) {
        return static_cast<uint8_t>(row[c] ^ 0x80);
    } else if constexpr (T == WType::u8) {
        return row[c];
    } else {
        const uint8_t nib = (c & 1) ? static_cast<uint8_t>(row[c / 2] >> 4) : static_cast<uint8_t>(row[c / 2] & 0x0F);
        return T == WType::i4 ? static_cast<uint8_t>(nib ^ 0x08) : nib;  // two's complement nibble + 8 = nib ^ 8
    }
}

// Offset-encoded bytes of 16 columns [c, c + 16) of a weight row (c even).
template <WType T>
static inline __m128i row16(const uint8_t* row, int64_t c) {
    if constexpr (T == WType::i8) {
        return _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)), _mm_set1_epi8(char(0x80)));
    } else if constexpr (T == WType::u8) {
        return _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
    } else {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
        const __m128i m = _mm_set1_epi8(0x0F);
        __m128i u = _mm_unpacklo_epi8(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
        if constexpr (T == WType::i4)
            u = _mm_xor_si128(u, _mm_set1_epi8(0x08));
        return u;
    }
}

// Pack W[k0 : k0 + kl, nb : nbe] (kl a multiple of 4) into 48-column VNNI panels:
// panels[p][quad][col][r] = u(W[k0 + 4 * quad + r, nb + 48 p + col]), zero past nbe.
template <WType T>
static void pack_panels(const FcArgs& a, int64_t rb, int64_t k0, int64_t kl, int64_t nb, int64_t nbe, uint8_t* panels) {
    const int64_t nq = kl / 4;
    const int64_t npan = (nbe - nb + QNR - 1) / QNR;
    for (int64_t p = 0; p < npan; ++p) {
        const int64_t p0 = nb + p * QNR, pe = imin(nbe, p0 + QNR);
        uint8_t* pan = panels + p * nq * QUAD_BYTES;
        for (int64_t qd = 0; qd < nq; ++qd) {
            const uint8_t* r0 = a.w + (k0 + 4 * qd) * rb;
            const uint8_t* rows[4] = {r0, r0 + rb, r0 + 2 * rb, r0 + 3 * rb};
            uint8_t* dst = pan + qd * QUAD_BYTES;
            for (int v = 0; v < QNRV; ++v) {
                const int64_t c = p0 + 16 * v;
                if (c + 16 <= pe) {
                    // 4 rows x 16 bytes -> 16 columns x 4 bytes (a 4 x 16 byte transpose)
                    const __m128i x0 = row16<T>(rows[0], c), x1 = row16<T>(rows[1], c);
                    const __m128i x2 = row16<T>(rows[2], c), x3 = row16<T>(rows[3], c);
                    const __m128i t0 = _mm_unpacklo_epi8(x0, x1), t1 = _mm_unpackhi_epi8(x0, x1);
                    const __m128i t2 = _mm_unpacklo_epi8(x2, x3), t3 = _mm_unpackhi_epi8(x2, x3);
                    __m128i* d = reinterpret_cast<__m128i*>(dst + 64 * v);
                    _mm_store_si128(d + 0, _mm_unpacklo_epi16(t0, t2));
                    _mm_store_si128(d + 1, _mm_unpackhi_epi16(t0, t2));
                    _mm_store_si128(d + 2, _mm_unpacklo_epi16(t1, t3));
                    _mm_store_si128(d + 3, _mm_unpackhi_epi16(t1, t3));
                } else {
                    for (int64_t i = 0; i < 16; ++i)
                        for (int r = 0; r < 4; ++r)
                            dst[64 * v + 4 * i + r] = c + i < pe ? ubyte<T>(rows[r], c + i) : uint8_t(0);
                }
            }
        }
    }
}

static inline __mmask16 lane_mask(int64_t np, int v) {
    const int64_t n = np - 16 * v;
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Scales s and offsets o (i8: 128, i4: 8, u8 / u4: the zero point) of the n <= 16 columns [c, c + n) of weight
// group gi; lanes past n are zero. Vector loads: a per-column scalar conversion per group costs more than the
// one-token product itself on group-wise int4.
template <WType T>
static inline void group_params16(const FcArgs& a, int64_t gi, int64_t c, int64_t n, __m512& s, __m512& o) {
    const __mmask16 m = lane_mask(n, 0);
    const int64_t e = gi * a.OC + c;
    s = a.scales_f16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(a.scales) + e))
                     : _mm512_maskz_loadu_ps(m, static_cast<const float*>(a.scales) + e);
    if constexpr (T == WType::i8) {
        o = _mm512_set1_ps(128.0f);
    } else if constexpr (T == WType::i4) {
        o = _mm512_set1_ps(8.0f);
    } else if constexpr (T == WType::u8) {
        o = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, a.zp + e)));
    } else if ((e & 1) == 0) {  // u4, whole bytes: low nibble first
        const __m128i b = _mm_maskz_loadu_epi8(lane_mask((n + 1) / 2, 0), a.zp + e / 2);
        const __m128i nib = _mm_set1_epi8(0x0F);
        const __m128i u = _mm_unpacklo_epi8(_mm_and_si128(b, nib), _mm_and_si128(_mm_srli_epi16(b, 4), nib));
        o = _mm512_maskz_mov_ps(m, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(u)));
    } else {  // u4 starting on a high nibble (odd OC and odd group)
        alignas(64) float z[16] = {};
        for (int64_t i = 0; i < n; ++i)
            z[i] = weight_at(T, a.zp, e + i);
        o = _mm512_load_ps(z);
    }
}

// ROWS tokens x one 48-column panel over one block of ng weight groups (whole groups, or one part of a group longer
// than a block) of nqg quads each, in chunks of qpc quads:
// y[i, :np] = base + sum_g (scl_g * sum_c sa[c, i] * (A_c[i] . panel_c) - offscl_g * sum_c ssum[c, i]),
// where base is y itself, or on the first block of the row (`first`) the bias (zero without one).
// MULTI (ng > 1): the outputs stay in registers across the block's groups, each chunk scaled by sa * scl_g: with
// group-wise int4 (64-channel groups) one block per group read and wrote the whole output block from L2 per group
// (1.24x OpenVINO's time against 0.98x per channel). One group: sa only per chunk, scl_g once at the end (the
// extra multiply per chunk cost per-channel int8 5-10%).
// scl / offscl: per group, QNC-strided rows of the panel's 48 column scales / offset * scale; off: the offsets of
// the single group (ng == 1).
template <int ROWS, bool MULTI>
__attribute__((noinline)) static void microq(const int32_t* A, const float* sa, const float* ssum, const uint8_t* pan,
                                             int64_t ng, int64_t nqg, int64_t qpc, float* y, int64_t ldy, int64_t np,
                                             const float* scl, const float* offscl, const float* off, bool first,
                                             const float* bias) {
    __m512 f[ROWS][QNRV];
    float comp[ROWS];
    const auto base = [&](int i, int v) {
        const __mmask16 m = lane_mask(np, v);
        if (first)
            return bias ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
        return _mm512_maskz_loadu_ps(m, y + i * ldy + 16 * v);
    };
    for (int i = 0; i < ROWS; ++i)
        for (int v = 0; v < QNRV; ++v)
            f[i][v] = MULTI ? base(i, v) : _mm512_setzero_ps();
    int64_t c = 0;
    for (int64_t g = 0; g < ng; ++g) {
        const float* sg = scl + g * QNC;
        for (int i = 0; i < ROWS; ++i)
            comp[i] = 0.0f;
        for (int64_t q0 = g * nqg; q0 < (g + 1) * nqg; q0 += qpc, ++c) {
            const int64_t qe = imin((g + 1) * nqg, q0 + qpc);
            __m512i acc[ROWS][QNRV];
            for (int i = 0; i < ROWS; ++i)
                for (int v = 0; v < QNRV; ++v)
                    acc[i][v] = _mm512_setzero_si512();
            for (int64_t q = q0; q < qe; ++q) {
                __m512i b[QNRV];
                for (int v = 0; v < QNRV; ++v)
                    b[v] = _mm512_load_si512(pan + q * QUAD_BYTES + 64 * v);
                for (int i = 0; i < ROWS; ++i) {
                    const __m512i ai = _mm512_set1_epi32(A[q * QMR + i]);
                    for (int v = 0; v < QNRV; ++v)
                        acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], b[v], ai);
                }
            }
            for (int i = 0; i < ROWS; ++i) {
                const __m512 s = _mm512_set1_ps(sa[c * QMR + i]);
                comp[i] += ssum[c * QMR + i];
                for (int v = 0; v < QNRV; ++v)
                    f[i][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][v]),
                                              MULTI ? _mm512_mul_ps(s, _mm512_load_ps(sg + 16 * v)) : s, f[i][v]);
            }
        }
        for (int v = 0; MULTI && v < QNRV; ++v) {
            const __m512 o = _mm512_load_ps(offscl + g * QNC + 16 * v);
            for (int i = 0; i < ROWS; ++i)
                f[i][v] = _mm512_fnmadd_ps(o, _mm512_set1_ps(comp[i]), f[i][v]);
        }
    }
    for (int v = 0; v < QNRV; ++v) {
        const __mmask16 m = lane_mask(np, v);
        if (!m)
            break;
        if constexpr (MULTI) {
            for (int i = 0; i < ROWS; ++i)
                _mm512_mask_storeu_ps(y + i * ldy + 16 * v, m, f[i][v]);
        } else {  // ng == 1: y = base + scl * (f - off * comp)
            const __m512 o = _mm512_load_ps(off + 16 * v), sc = _mm512_load_ps(scl + 16 * v);
            for (int i = 0; i < ROWS; ++i)
                _mm512_mask_storeu_ps(y + i * ldy + 16 * v, m,
                                      _mm512_fmadd_ps(sc, _mm512_fnmadd_ps(o, _mm512_set1_ps(comp[i]), f[i][v]),
                                                      base(i, v)));
        }
    }
}

template <bool MULTI>
static inline void microq_rows(int rows, const int32_t* A, const float* sa, const float* ssum, const uint8_t* pan,
                               int64_t ng, int64_t nqg, int64_t qpc, float* y, int64_t ldy, int64_t np,
                               const float* scl, const float* offscl, const float* off, bool first,
                               const float* bias) {
    switch (rows) {
    case 4:
        return microq<4, MULTI>(A, sa, ssum, pan, ng, nqg, qpc, y, ldy, np, scl, offscl, off, first, bias);
    case 3:
        return microq<3, MULTI>(A, sa, ssum, pan, ng, nqg, qpc, y, ldy, np, scl, offscl, off, first, bias);
    case 2:
        return microq<2, MULTI>(A, sa, ssum, pan, ng, nqg, qpc, y, ldy, np, scl, offscl, off, first, bias);
    default:
        return microq<1, MULTI>(A, sa, ssum, pan, ng, nqg, qpc, y, ldy, np, scl, offscl, off, first, bias);
    }
}

// Blocks of at most QKC channels: whole weight groups when they fit (QKC / group_size of them), else the parts of
// one group; each block is packed once and multiplied with every token tile.
template <WType T>
static void dense_q_t(const FcArgs& a, const QuantActs& qa, int64_t c0, int64_t c1, uint8_t* scratch) {
    static_assert(QMR * QNRV * 2 + QNRV + 1 <= 32, "accumulators, weights and one broadcast fit the 32 zmm registers");
    const int64_t rb = is_4bit(T) ? (a.OC + 1) / 2 : a.OC;
    const int64_t gs = a.group_size, IC4 = a.IC / 4, H = qa.n_chunks;
    const int64_t MT = (a.M + QMR - 1) / QMR;
    const int64_t qpc = qa.chunk / 4;
    const int64_t gpb = gs <= QKC ? QKC / gs : 1;  // whole groups per block
    const int64_t kcq = gs <= QKC ? gpb * gs : qa.chunk * (QKC / qa.chunk > 0 ? QKC / qa.chunk : 1);
    uint8_t* panels = scratch;
    float* scl = reinterpret_cast<float*>(scratch + QKC * QNC);  // [gpb][QNC]
    float* offscl = scl + kMaxGroupsPerBlock * QNC;
    float* off = offscl + kMaxGroupsPerBlock * QNC;  // [QNC]: single-group blocks
    for (int64_t nb = c0; nb < c1; nb += QNC) {
        const int64_t nbe = imin(c1, nb + QNC);
        const int64_t npan = (nbe - nb + QNR - 1) / QNR;
        for (int64_t kb = 0; kb < a.IC;) {
            const int64_t g0 = kb / gs;
            const int64_t ke = gs <= QKC ? imin(a.IC, kb + kcq) : imin((g0 + 1) * gs, kb + kcq);
            const int64_t kl = ke - kb, nq = kl / 4;
            const int64_t ng = gs <= QKC ? kl / gs : 1, nqg = nq / ng;
            for (int64_t g = 0; g < ng; ++g)
                for (int64_t c = nb; c < nbe; c += 16) {
                    __m512 sv, ov;
                    group_params16<T>(a, g0 + g, c, imin(16, nbe - c), sv, ov);
                    _mm512_store_ps(scl + g * QNC + (c - nb), sv);
                    _mm512_store_ps(offscl + g * QNC + (c - nb), _mm512_mul_ps(ov, sv));
                    if (ng == 1)
                        _mm512_store_ps(off + (c - nb), ov);
                }
            const int64_t c_first = g0 * qa.chunks_per_group + (kb - g0 * gs) / qa.chunk;
            pack_panels<T>(a, rb, kb, kl, nb, nbe, panels);
            for (int64_t p = 0; p < npan; ++p) {
                const int64_t p0 = nb + p * QNR;
                const int64_t np = imin(QNR, nbe - p0);
                for (int64_t mt = 0; mt < MT; ++mt) {
                    const int rows = static_cast<int>(imin(QMR, a.M - mt * QMR));
                    const int32_t* A = qa.q + (mt * IC4 + kb / 4) * QMR;
                    const float* sa = qa.sa + (mt * H + c_first) * QMR;
                    const float* ss = qa.ssum + (mt * H + c_first) * QMR;
                    float* y = a.y + mt * QMR * a.OC + p0;
                    const float* bias = a.bias ? a.bias + p0 : nullptr;
                    if (ng > 1)
                        microq_rows<true>(rows, A, sa, ss, panels + p * nq * QUAD_BYTES, ng, nqg, qpc, y, a.OC, np,
                                          scl + p * QNR, offscl + p * QNR, off + p * QNR, kb == 0, bias);
                    else
                        microq_rows<false>(rows, A, sa, ss, panels + p * nq * QUAD_BYTES, ng, nqg, qpc, y, a.OC, np,
                                           scl + p * QNR, offscl + p * QNR, off + p * QNR, kb == 0, bias);
                }
            }
            kb = ke;
        }
    }
}

static void dense_q_entry(const FcArgs& a, const QuantActs& qa, int64_t c0, int64_t c1, uint8_t* scratch) {
    switch (a.wtype) {
    case WType::i8:
        return dense_q_t<WType::i8>(a, qa, c0, c1, scratch);
    case WType::u8:
        return dense_q_t<WType::u8>(a, qa, c0, c1, scratch);
    case WType::i4:
        return dense_q_t<WType::i4>(a, qa, c0, c1, scratch);
    case WType::u4:
        return dense_q_t<WType::u4>(a, qa, c0, c1, scratch);
    default:
        return;  // float weights never take this path (see run())
    }
}

// GCC 12 warns falsely here: the reductions' intrinsics pass _mm*_undefined_* operands (-Wuninitialized).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// Quantize n contiguous values of one chunk (the pruned ones zero) to int8: q = round half to even
// (d * (127 / max|d|)) (VCVTPS2DQ), sa = max|d| / 127, ssum = sa * sum(q) — the arithmetic of the reference
// quantizer. With qstride 0 the n bytes go to qb contiguously; otherwise each whole group of 4 bytes goes to its
// own dword, qstride dwords apart (the prefill's token-interleaved layout), straight from the register: bytes
// stored by a masked store and read back as dwords cannot be forwarded, and waiting for them was 85% of the
// prefill quantizer's time. 1: quantized; 0: all-zero chunk (or a subnormal max), q / sa / ssum all zero;
// -1: max|d| is Inf.
static int quantize_chunk(const float* d, int64_t n, int8_t* qb, int64_t qstride, float& sa, float& ssum) {
    __m512 vmax = _mm512_setzero_ps();
    for (int64_t o = 0; o < n; o += 16)
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(lane_mask(n - o, 0), d + o)));
    const float amax = _mm512_reduce_max_ps(vmax);
    if (!(amax - amax == 0.0f))  // Inf (NaN never survives the mask)
        return -1;
    const float inv = 127.0f / amax;
    const bool zero = !(inv - inv == 0.0f);
    const __m512 vinv = _mm512_set1_ps(zero ? 0.0f : inv);
    __m512i isum = _mm512_setzero_si512();
    for (int64_t o = 0; o < n; o += 16) {
        const __mmask16 m = lane_mask(n - o, 0);
        const __m512i qi = _mm512_maskz_cvtps_epi32(m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, d + o), vinv));
        isum = _mm512_add_epi32(isum, qi);
        const __m128i q8 = _mm512_cvtsepi32_epi8(qi);
        if (qstride == 0) {
            _mm_mask_storeu_epi8(qb + o, m, q8);
            continue;
        }
        alignas(16) int32_t dw[4];
        _mm_store_si128(reinterpret_cast<__m128i*>(dw), q8);
        for (int64_t i = 0; i < 4 && o + 4 * i + 4 <= n; ++i)
            std::memcpy(qb + 4 * (o / 4 + i) * qstride, &dw[i], 4);
    }
    sa = zero ? 0.0f : amax / 127.0f;
    ssum = sa * static_cast<float>(_mm512_reduce_add_epi32(isum));
    return zero ? 0 : 1;
}
#pragma GCC diagnostic pop

// Quantize one token into the kernel layout (see QuantizeFn; same arithmetic as quantize_token in reference.cpp:
// d masked in f32, amax exact, inv = 127 / amax, q = round half to even (VCVTPS2DQ), sums in int32).
static bool quantize_entry(const FcArgs& a, const float* x, int64_t chunk, int32_t* q, float* sa, float* ssum) {
    alignas(64) float dbuf[512 + 16];
    const int64_t gs = a.group_size, cpg = (gs + chunk - 1) / chunk;
    const __m512 m1 = _mm512_set1_ps(a.mode[0]), t1 = _mm512_set1_ps(a.thr[0]);
    for (int64_t g = 0; g < a.n_groups; ++g) {
        for (int64_t c = 0; c < cpg; ++c) {
            const int64_t j0 = g * gs + c * chunk, n = imin((g + 1) * gs, j0 + chunk) - j0;
            const int64_t h = g * cpg + c;
            for (int64_t o = 0; o < n; o += 16) {
                const __mmask16 m = lane_mask(n - o, 0);
                const __m512 mv = a.mode_vec ? _mm512_maskz_loadu_ps(m, a.mode + j0 + o) : m1;
                const __m512 tv = a.thr_vec ? _mm512_maskz_loadu_ps(m, a.thr + j0 + o) : t1;
                const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j0 + o), mv);
                const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_abs_ps(d), tv, _CMP_GT_OQ) & m;
                const __m512 dk = _mm512_maskz_mov_ps(keep, d);
                _mm512_store_ps(dbuf + o, dk);
            }
            if (quantize_chunk(dbuf, n, reinterpret_cast<int8_t*>(q + j0 / 4 * QMR), QMR, sa[h * QMR], ssum[h * QMR]) < 0)
                return false;
        }
    }
    return true;
}

// ---------------------------------------------------------------------------------------------------------
// one-token decode on quantized activations (QuantGathered)
// ---------------------------------------------------------------------------------------------------------
//
// Two quads (8 kept rows) of one chunk at a time, over the thread's columns line by line (a 64-byte line: 64 int8
// or 128 int4 columns): the same line of each quad's 4 rows is loaded, offset-encoded and interleaved into VNNI
// order by in-lane unpacks (no cross-lane shuffle, no VBMI), multiplied by VPDPBUSD with the quad's 4 activations,
// and added in f32, times the chunk's scale, to the group's accumulators.
// The unpacks leave columns permuted within the line (vector k, 128-bit lane L holds columns 16L + 4k .. + 3; on
// 4-bit weights the even columns' vectors, then the odd ones'); the f32 accumulators keep that order and the
// group's finish undoes it (a 4 x 4 lane transpose, after pairing even and odd dwords on 4-bit weights).

// Offset-encoded bytes of one line: u = w + 128 (i8), both nibbles + 8 (i4), raw (u8 / u4).
template <WType T, bool FULL>
static inline __m512i load_line(const uint8_t* p, __mmask64 m) {
    __m512i b = FULL ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(m, p);
    if constexpr (T == WType::i8)
        b = _mm512_xor_si512(b, _mm512_set1_epi8(char(0x80)));
    else if constexpr (T == WType::i4)
        b = _mm512_xor_si512(b, _mm512_set1_epi8(char(0x88)));
    return b;
}

// 4 rows x 64 bytes -> u[k]: lane L, dword i = the 4 rows' bytes of byte column 16L + 4k + i.
static inline void interleave4(__m512i r0, __m512i r1, __m512i r2, __m512i r3, __m512i* u) {
    const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
    const __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
    u[0] = _mm512_unpacklo_epi16(t0, t2);
    u[1] = _mm512_unpackhi_epi16(t0, t2);
    u[2] = _mm512_unpacklo_epi16(t1, t3);
    u[3] = _mm512_unpackhi_epi16(t1, t3);
}

// Inverse of interleave4's column order: v[k] (lane L = columns 16L + 4k ..) -> out[L] = columns 16L .. 16L + 15.
static inline void untangle4(const __m512* v, __m512* out) {
    const __m512 a = _mm512_shuffle_f32x4(v[0], v[1], 0x44), b = _mm512_shuffle_f32x4(v[0], v[1], 0xEE);
    const __m512 c = _mm512_shuffle_f32x4(v[2], v[3], 0x44), d = _mm512_shuffle_f32x4(v[2], v[3], 0xEE);
    out[0] = _mm512_shuffle_f32x4(a, c, 0x88);
    out[1] = _mm512_shuffle_f32x4(a, c, 0xDD);
    out[2] = _mm512_shuffle_f32x4(b, d, 0x88);
    out[3] = _mm512_shuffle_f32x4(b, d, 0xDD);
}

template <WType T>
struct LineShape {
    static constexpr bool four = is_4bit(T);
    static constexpr int64_t cols = four ? 128 : 64;  // columns per 64-byte line
    static constexpr int nv = static_cast<int>(cols / 16);
};

// f[line] += sa * float(sum over R quads of one chunk: quad . one line of its 4 rows), in interleave4 order.
// `rows` are the 4R rows' starts, `off` the line's byte offset.
template <WType T, bool FULL, int R>
static inline void quads_line(const uint8_t* const* rows, const __m512i* av, __m512 sa, int64_t off, __mmask64 lm,
                              float* f) {
    constexpr int NV = LineShape<T>::nv;
    __m512i dot[NV];
    for (int v = 0; v < NV; ++v)
        dot[v] = _mm512_setzero_si512();
    for (int r = 0; r < R; ++r) {
        __m512i l[4];
        for (int i = 0; i < 4; ++i)
            l[i] = load_line<T, FULL>(rows[4 * r + i] + off, lm);
        __m512i u[NV];
        if constexpr (LineShape<T>::four) {
            // byte p of the line holds columns 2p (low nibble) and 2p + 1 (high nibble): the masked nibbles are two
            // int8-like lines, the even and the odd columns, interleaved as they are (putting them back in column
            // order here took two more unpacks per row, a third of the loop's shuffles; the finish does it once)
            const __m512i nib = _mm512_set1_epi8(0x0F);
            __m512i even[4], odd[4];
            for (int i = 0; i < 4; ++i) {
                even[i] = _mm512_and_si512(l[i], nib);
                odd[i] = _mm512_and_si512(_mm512_srli_epi16(l[i], 4), nib);
            }
            interleave4(even[0], even[1], even[2], even[3], u);
            interleave4(odd[0], odd[1], odd[2], odd[3], u + 4);
        } else {
            interleave4(l[0], l[1], l[2], l[3], u);
        }
        for (int v = 0; v < NV; ++v)
            dot[v] = _mm512_dpbusd_epi32(dot[v], u[v], av[r]);
    }
    // (maskz with a full mask: the same VCVTDQ2PS, without GCC 12's false -Wuninitialized on _mm512_cvtepi32_ps)
    for (int v = 0; v < NV; ++v)
        _mm512_store_ps(f + 16 * v, _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(__mmask16(0xFFFF), dot[v]), sa,
                                                    _mm512_load_ps(f + 16 * v)));
}

// f += sa * (the quads [q, q + R) of one chunk . their rows) over the columns [c0, c1): each row is streamed over
// all the columns, like the exact decode does (few streams in flight keep the hardware prefetchers and DRAM pages
// effective: walking a whole chunk's 16-32 rows line by line was 1.3-1.5x slower on 7B shapes); while a pass runs,
// the rows `pd` slots ahead are prefetched at the same column offset (clamped to the last slot of the call).
template <WType T, int R, bool PF_L2>
static inline void decode_pass(const FcArgs& a, const QuantGathered& g, int64_t q, float sa, int64_t c0, int64_t c1,
                               int64_t pd, int64_t pf_last, float* f) {
    using L = LineShape<T>;
    const int64_t rb = L::four ? (a.OC + 1) / 2 : a.OC;
    const int64_t n = c1 - c0, full = n / L::cols;
    const int64_t tail_cols = n - full * L::cols, tail_bytes = L::four ? (tail_cols + 1) / 2 : tail_cols;
    const int64_t off0 = L::four ? c0 / 2 : c0;
    const uint8_t* rows[4 * R];
    const uint8_t* pf[4 * R];
    __m512i av[R];
    for (int i = 0; i < 4 * R; ++i) {
        rows[i] = a.w + static_cast<int64_t>(g.rows[4 * q + i]) * rb + off0;
        pf[i] = a.w + static_cast<int64_t>(g.rows[imin(4 * q + i + pd, pf_last)]) * rb + off0;
    }
    for (int r = 0; r < R; ++r)
        av[r] = _mm512_set1_epi32(g.a4[q + r]);
    const __m512 vsa = _mm512_set1_ps(sa);
    for (int64_t t = 0; t < full; ++t) {
        for (int i = 0; i < 4 * R; ++i)
            _mm_prefetch(reinterpret_cast<const char*>(pf[i] + 64 * t), PF_L2 ? _MM_HINT_T1 : _MM_HINT_T0);
        quads_line<T, true, R>(rows, av, vsa, 64 * t, 0, f + t * L::cols);
    }
    if (tail_bytes > 0)
        quads_line<T, false, R>(rows, av, vsa, 64 * full, (__mmask64(1) << tail_bytes) - 1, f + full * L::cols);
}

// The chunks [h0, h1) (one weight group), two quads (8 rows) per pass: on SmolLM2's shapes (one thread, weights
// in L3) 1, 2 and 4 quads per pass took 32-43, 27-30 and 29-40 us (best of 60 x 50 calls, 1536x576 int8).
template <WType T, bool PF_L2>
static void decode_chunks(const FcArgs& a, const QuantGathered& g, int64_t h0, int64_t h1, int64_t c0, int64_t c1,
                          int64_t pd, int64_t pf_last, float* f) {
    constexpr int R = 2;
    for (int64_t h = h0; h < h1; ++h) {
        const int64_t q1 = g.cstart[h + 1];
        int64_t q = g.cstart[h];
        for (; q + R <= q1; q += R)
            decode_pass<T, R, PF_L2>(a, g, q, g.sa[h], c0, c1, pd, pf_last, f);
        for (; q < q1; ++q)
            decode_pass<T, 1, PF_L2>(a, g, q, g.sa[h], c0, c1, pd, pf_last, f);
    }
}

// y[c0:c1] += s_g * (f - o_g * comp) for weight group gi, f in interleave4 order per line.
template <WType T>
static void finish_group_q(const FcArgs& a, int64_t gi, float comp, const float* f, float* y, int64_t c0, int64_t c1) {
    using L = LineShape<T>;
    const __m512 vc = _mm512_set1_ps(comp);
    for (int64_t t = 0; t * L::cols < c1 - c0; ++t) {
        __m512 v[L::nv], nat[L::nv];
        for (int i = 0; i < L::nv; ++i)
            v[i] = _mm512_load_ps(f + t * L::cols + 16 * i);
        if constexpr (L::four) {
            // v[k] lane L dword i: column 32L + 8k + 2i (even, k < 4) or 32L + 8(k - 4) + 2i + 1 (odd); pairing
            // even and odd dwords gives lanes of 4 consecutive columns, p[2k] = 32L + 8k + 0..3, p[2k + 1] = + 4..7
            __m512 p[8], lo[4], hi[4];
            for (int k = 0; k < 4; ++k) {
                p[2 * k] = _mm512_unpacklo_ps(v[k], v[k + 4]);
                p[2 * k + 1] = _mm512_unpackhi_ps(v[k], v[k + 4]);
            }
            untangle4(p, lo);      // lo[L]: columns 32L + 0..15
            untangle4(p + 4, hi);  // hi[L]: columns 32L + 16..31
            for (int i = 0; i < 4; ++i) {
                nat[2 * i] = lo[i];
                nat[2 * i + 1] = hi[i];
            }
        } else {
            untangle4(v, nat);
        }
        for (int i = 0; i < L::nv; ++i) {
            const int64_t c = c0 + t * L::cols + 16 * i;
            if (c >= c1)
                break;
            const int64_t nc = imin(16, c1 - c);
            __m512 s, o;
            group_params16<T>(a, gi, c, nc, s, o);
            const __mmask16 m = lane_mask(nc, 0);
            float* yp = y + (c - c0);
            _mm512_mask_storeu_ps(yp, m, _mm512_fmadd_ps(s, _mm512_fnmadd_ps(o, vc, nat[i]), _mm512_maskz_loadu_ps(m, yp)));
        }
    }
}

template <WType T>
static void decode_q_t(const FcArgs& a, const QuantGathered& g, float* yrow, int64_t c0, int64_t c1, float* f) {
    using L = LineShape<T>;
    const int64_t n = c1 - c0;
    const int64_t lines = (n + L::cols - 1) / L::cols;
    float* y = yrow + c0;
    for (int64_t o = 0; o < n; o += 16) {
        const __mmask16 m = lane_mask(n - o, 0);
        _mm512_mask_storeu_ps(y + o, m, a.bias ? _mm512_maskz_loadu_ps(m, a.bias + c0 + o) : _mm512_setzero_ps());
    }
    if (g.c_begin >= g.c_end)
        return;
    // Prefetch distance in slots (rows): about a.prefetch_bytes of this thread's row segments ahead, as the exact
    // decode does (simd_impl.inl, decode_t).
    const int64_t seg = L::four ? (n + 1) / 2 : n;
    const int64_t s0 = 4 * g.cstart[g.c_begin], pf_end = 4 * g.cstart[g.c_end];
    int64_t pd = a.prefetch_bytes / (seg > 0 ? seg : 1);
    pd = pd < 16 ? 16 : (pd > 256 ? 256 : pd);  // at least two passes ahead
    if (a.prefetch_bytes <= 0)
        pd = pf_end;  // software prefetch off
    const bool pf_l2 = pd * seg > 16384;
    // At the start, up to kStartPrefetchBytes of the first rows go to L2 as well (all of a small layer's kept rows):
    // a SmolLM2 layer starts cold in DRAM on every token and is too short for the distance above to ramp up;
    // 1536x576 int8 at 50%, 2 threads: 0.88-0.94 -> 0.75-0.78 of OpenVINO's FC time; 7B shapes unchanged or faster.
    constexpr int64_t kStartPrefetchBytes = 256 * 1024;
    const int64_t pd0 = a.prefetch_bytes > 0 ? imax(pd, kStartPrefetchBytes / (seg > 0 ? seg : 1)) : 0;
    for (int64_t s = s0; s < imin(s0 + pd0, pf_end); ++s) {
        const uint8_t* base = a.w + static_cast<int64_t>(g.rows[s]) * (L::four ? (a.OC + 1) / 2 : a.OC) +
                              (L::four ? c0 / 2 : c0);
        for (int64_t l = 0; l < seg; l += 64) {
            if (s - s0 < pd)
                _mm_prefetch(reinterpret_cast<const char*>(base + l), _MM_HINT_T0);
            else
                _mm_prefetch(reinterpret_cast<const char*>(base + l), _MM_HINT_T1);
        }
    }
    for (int64_t h = g.c_begin; h < g.c_end;) {
        const int32_t gi = g.cgroup[h];
        int64_t he = h;
        float comp = 0.0f;
        for (; he < g.c_end && g.cgroup[he] == gi; ++he)
            comp += g.ssum[he];
        for (int64_t i = 0; i < lines * L::cols; i += 16)
            _mm512_store_ps(f + i, _mm512_setzero_ps());
        if (pf_l2)
            decode_chunks<T, true>(a, g, h, he, c0, c1, pd, pf_end - 1, f);
        else
            decode_chunks<T, false>(a, g, h, he, c0, c1, pd, pf_end - 1, f);
        finish_group_q<T>(a, gi, comp, f, y, c0, c1);
        h = he;
    }
}

static void decode_q_entry(const FcArgs& a, const QuantGathered& g, float* yrow, int64_t c0, int64_t c1, float* f) {
    switch (a.wtype) {
    case WType::i8:
        return decode_q_t<WType::i8>(a, g, yrow, c0, c1, f);
    case WType::u8:
        return decode_q_t<WType::u8>(a, g, yrow, c0, c1, f);
    case WType::i4:
        return decode_q_t<WType::i4>(a, g, yrow, c0, c1, f);
    case WType::u4:
        return decode_q_t<WType::u4>(a, g, yrow, c0, c1, f);
    default:
        return;  // float weights never take this path (see run())
    }
}

// Quantize one gathered token (QuantizeGatheredFn): same values as quantize_entry / the reference quantizer,
// since a chunk's pruned channels are zeros (they change neither max|d| nor the sum of q).
static int64_t quantize_gathered_entry(const FcArgs& a, const Gathered& g, int64_t chunk, int32_t* rows,
                                       int32_t* a4, int64_t* cstart, int32_t* cgroup, float* sa, float* ssum) {
    int8_t* qb = reinterpret_cast<int8_t*>(a4);
    const int64_t gs = a.group_size;
    int64_t nc = 0, nq = 0;
    for (int64_t gi = 0; gi < a.n_groups; ++gi) {
        const int64_t pe = g.gstart[gi + 1];
        for (int64_t p = g.gstart[gi]; p < pe;) {
            const int64_t cend = gi * gs + ((g.idx[p] - gi * gs) / chunk + 1) * chunk;  // first channel of the next chunk
            int64_t e = p + 1;
            while (e < pe && g.idx[e] < cend)
                ++e;
            const int64_t cnt = e - p;
            const int st = quantize_chunk(g.d + p, cnt, qb + 4 * nq, 0, sa[nc], ssum[nc]);
            if (st < 0)
                return -1;
            if (st == 0) {  // all-zero chunk: contributes nothing
                p = e;
                continue;
            }
            std::memcpy(rows + 4 * nq, g.idx + p, static_cast<size_t>(cnt) * sizeof(int32_t));
            const int64_t slots = (cnt + 3) / 4 * 4;
            for (int64_t i = cnt; i < slots; ++i) {  // pad the last quad: a row already being read, q = 0
                qb[4 * nq + i] = 0;
                rows[4 * nq + i] = g.idx[e - 1];
            }
            cstart[nc] = nq;
            cgroup[nc] = static_cast<int32_t>(gi);
            ++nc;
            nq += slots / 4;
            p = e;
        }
    }
    cstart[nc] = nq;
    return nc;
}

}  // namespace

static_assert(QKC * QNC + (2 * kMaxGroupsPerBlock + 1) * QNC * sizeof(float) <= kQuantScratchBytes,
              "panels + per-group scales and offsets fit the scratch");

void add_avx512_vnni(IsaKernels& k) {
    k.dense_q = &dense_q_entry;
    k.quantize_q = &quantize_entry;
    k.decode_q = &decode_q_entry;
    k.quantize_gathered = &quantize_gathered_entry;
    k.qmr = QMR;
}

}  // namespace kernels
}  // namespace scap_ov
