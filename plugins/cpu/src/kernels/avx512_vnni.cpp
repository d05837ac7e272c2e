// AVX-512 VNNI kernel of the dense (many-token) path for compressed weights with dynamically quantized
// activations (kernel.hpp, QuantActs), the scheme OpenVINO's own FC applies by default to int8/int4 weights.
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

static inline int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
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

// ROWS tokens x one 48-column panel over one block of nq quads (chunks of qpc quads):
// y[i, :np] = base + scl * (sum_c sa[c, i] * (A_c[i] . panel_c) - off * sum_c ssum[c, i]), where base is y itself,
// or on the first block of the row (`first`) the bias (zero without one): no separate pass initialises y.
template <int ROWS>
__attribute__((noinline)) static void microq(const int32_t* A, const float* sa, const float* ssum, const uint8_t* pan,
                                             int64_t nq, int64_t qpc, float* y, int64_t ldy, int64_t np,
                                             const float* off, const float* scl, bool first, const float* bias) {
    __m512 f[ROWS][QNRV];
    float comp[ROWS];
    for (int i = 0; i < ROWS; ++i) {
        comp[i] = 0.0f;
        for (int v = 0; v < QNRV; ++v)
            f[i][v] = _mm512_setzero_ps();
    }
    for (int64_t q0 = 0, c = 0; q0 < nq; q0 += qpc, ++c) {
        const int64_t qe = imin(nq, q0 + qpc);
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
                f[i][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][v]), s, f[i][v]);
        }
    }
    for (int v = 0; v < QNRV; ++v) {
        const __mmask16 m = lane_mask(np, v);
        if (!m)
            break;
        const __m512 o = _mm512_maskz_loadu_ps(m, off + 16 * v);
        const __m512 sc = _mm512_maskz_loadu_ps(m, scl + 16 * v);
        const __m512 b0 = first && bias ? _mm512_maskz_loadu_ps(m, bias + 16 * v) : _mm512_setzero_ps();
        for (int i = 0; i < ROWS; ++i) {
            float* yp = y + i * ldy + 16 * v;
            const __m512 r = _mm512_fnmadd_ps(o, _mm512_set1_ps(comp[i]), f[i][v]);
            _mm512_mask_storeu_ps(yp, m, _mm512_fmadd_ps(sc, r, first ? b0 : _mm512_maskz_loadu_ps(m, yp)));
        }
    }
}

static inline void microq_rows(int rows, const int32_t* A, const float* sa, const float* ssum, const uint8_t* pan,
                               int64_t nq, int64_t qpc, float* y, int64_t ldy, int64_t np, const float* off,
                               const float* scl, bool first, const float* bias) {
    switch (rows) {
    case 4:
        return microq<4>(A, sa, ssum, pan, nq, qpc, y, ldy, np, off, scl, first, bias);
    case 3:
        return microq<3>(A, sa, ssum, pan, nq, qpc, y, ldy, np, off, scl, first, bias);
    case 2:
        return microq<2>(A, sa, ssum, pan, nq, qpc, y, ldy, np, off, scl, first, bias);
    default:
        return microq<1>(A, sa, ssum, pan, nq, qpc, y, ldy, np, off, scl, first, bias);
    }
}

template <WType T>
static void dense_q_t(const FcArgs& a, const QuantActs& qa, int64_t c0, int64_t c1, uint8_t* scratch) {
    static_assert(QMR * QNRV * 2 + QNRV + 1 <= 32, "accumulators, weights and one broadcast fit the 32 zmm registers");
    const int64_t rb = is_4bit(T) ? (a.OC + 1) / 2 : a.OC;
    const int64_t gs = a.group_size, IC4 = a.IC / 4, H = qa.n_chunks;
    const int64_t MT = (a.M + QMR - 1) / QMR;
    const int64_t kcq = qa.chunk * (QKC / qa.chunk > 0 ? QKC / qa.chunk : 1);  // whole chunks per block
    const int64_t qpc = qa.chunk / 4;
    uint8_t* panels = scratch;
    float* off = reinterpret_cast<float*>(scratch + QKC * QNC);
    float* scl = off + QNC;
    for (int64_t nb = c0; nb < c1; nb += QNC) {
        const int64_t nbe = imin(c1, nb + QNC);
        const int64_t npan = (nbe - nb + QNR - 1) / QNR;
        for (int64_t g = 0; g < a.n_groups; ++g) {
            for (int64_t c = nb; c < nbe; ++c) {
                float o = T == WType::i8 ? 128.0f : 8.0f;
                if constexpr (T == WType::u8 || T == WType::u4)
                    o = weight_at(T, a.zp, g * a.OC + c);
                off[c - nb] = o;
                scl[c - nb] = scale_at(a.scales, a.scales_f16, g * a.OC + c);
            }
            for (int64_t kb = g * gs; kb < (g + 1) * gs; kb += kcq) {
                const int64_t kl = imin(kcq, (g + 1) * gs - kb);
                const int64_t nq = kl / 4;
                const int64_t c_first = g * qa.chunks_per_group + (kb - g * gs) / qa.chunk;
                pack_panels<T>(a, rb, kb, kl, nb, nbe, panels);
                for (int64_t p = 0; p < npan; ++p) {
                    const int64_t p0 = nb + p * QNR;
                    const int64_t np = imin(QNR, nbe - p0);
                    for (int64_t mt = 0; mt < MT; ++mt) {
                        const int rows = static_cast<int>(imin(QMR, a.M - mt * QMR));
                        microq_rows(rows, qa.q + (mt * IC4 + kb / 4) * QMR, qa.sa + (mt * H + c_first) * QMR,
                                    qa.ssum + (mt * H + c_first) * QMR, panels + p * nq * QUAD_BYTES, nq, qpc,
                                    a.y + mt * QMR * a.OC + p0, a.OC, np, off + p * QNR, scl + p * QNR, kb == 0,
                                    a.bias ? a.bias + p0 : nullptr);
                    }
                }
            }
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
            __m512 vmax = _mm512_setzero_ps();
            for (int64_t o = 0; o < n; o += 16) {
                const __mmask16 m = lane_mask(n - o, 0);
                const __m512 mv = a.mode_vec ? _mm512_maskz_loadu_ps(m, a.mode + j0 + o) : m1;
                const __m512 tv = a.thr_vec ? _mm512_maskz_loadu_ps(m, a.thr + j0 + o) : t1;
                const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j0 + o), mv);
                const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_abs_ps(d), tv, _CMP_GT_OQ) & m;
                const __m512 dk = _mm512_maskz_mov_ps(keep, d);
                _mm512_store_ps(dbuf + o, dk);
                vmax = _mm512_max_ps(vmax, _mm512_abs_ps(dk));
            }
            const float amax = _mm512_reduce_max_ps(vmax);
            if (!(amax - amax == 0.0f))  // Inf (NaN never survives the mask)
                return false;
            const float inv = 127.0f / amax;
            if (!(inv - inv == 0.0f)) {  // all-zero chunk (or a subnormal max)
                for (int64_t quad = j0 / 4; quad < (j0 + n) / 4; ++quad)
                    q[quad * QMR] = 0;
                sa[h * QMR] = 0.0f;
                ssum[h * QMR] = 0.0f;
                continue;
            }
            const __m512 vinv = _mm512_set1_ps(inv);
            __m512i isum = _mm512_setzero_si512();
            for (int64_t o = 0; o < n; o += 16) {
                const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_load_ps(dbuf + o), vinv));
                isum = _mm512_add_epi32(isum, qi);
                alignas(16) int32_t quads[4];
                _mm_store_si128(reinterpret_cast<__m128i*>(quads), _mm512_cvtsepi32_epi8(qi));
                const int64_t nquads = imin(4, (n - o) / 4);
                for (int64_t k = 0; k < nquads; ++k)
                    q[((j0 + o) / 4 + k) * QMR] = quads[k];
            }
            sa[h * QMR] = amax / 127.0f;
            ssum[h * QMR] = sa[h * QMR] * static_cast<float>(_mm512_reduce_add_epi32(isum));
        }
    }
    return true;
}

}  // namespace

static_assert(QKC * QNC + 2 * QNC * sizeof(float) <= kQuantScratchBytes, "panels + offsets + scales fit the scratch");

void add_avx512_vnni(IsaKernels& k) {
    k.dense_q = &dense_q_entry;
    k.quantize_q = &quantize_entry;
    k.qmr = QMR;
}

}  // namespace kernels
}  // namespace scap_ov
