// AVX-512 (F/BW/VL/DQ + F16C/FMA) kernels: the same algorithms as avx2.cpp (kernels/simd_impl.inl) with
// 16-lane vectors, a 64-column decode tile and an 8 x 48 dense micro-kernel (24 of the 32 zmm registers).
// Entered only after a run-time CPU check.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/kernel.hpp"
#include "kernels/scalar_convert.hpp"

namespace scap_ov {
namespace kernels {
namespace {

struct V {
    using vec = __m512;
    static constexpr int W = 16;
    static constexpr int MR = 8;         // dense micro-kernel: 8 tokens x 3 vectors (24 accumulators)
    static constexpr int NRV = 3;
    static constexpr int NC_PANELS = 4;  // dense column block = 4 panels = 192 columns

    static inline vec zero() {
        return _mm512_setzero_ps();
    }
    static inline vec set1(float f) {
        return _mm512_set1_ps(f);
    }
    static inline vec load(const float* p) {
        return _mm512_loadu_ps(p);
    }
    static inline vec load_aligned(const float* p) {
        return _mm512_load_ps(p);
    }
    static inline void store(float* p, vec v) {
        _mm512_storeu_ps(p, v);
    }
    static inline vec fmadd(vec a, vec b, vec c) {
        return _mm512_fmadd_ps(a, b, c);
    }
    static inline vec fnmadd(vec a, vec b, vec c) {  // c - a * b
        return _mm512_fnmadd_ps(a, b, c);
    }
    static inline vec add(vec a, vec b) {
        return _mm512_add_ps(a, b);
    }
    static inline vec sub(vec a, vec b) {
        return _mm512_sub_ps(a, b);
    }
    static inline vec mul(vec a, vec b) {
        return _mm512_mul_ps(a, b);
    }
    static inline float hsum(vec v) {
        return _mm512_reduce_add_ps(v);
    }
    // Keep lanes with |d| > t (NaN compares false): write kept d and their indices (j0 + lane) contiguously
    // to d_out / idx_out (room for W entries needed, as on AVX2), add kept d to sum; returns how many were kept.
    // Compressed in a register and stored whole: Zen 4 microcodes VCOMPRESSPS / VPCOMPRESSD with a memory
    // destination (about 2 us per call of a 576-channel gather here, a fifth of the op's decode time).
    static inline int compress_kept(vec dv, vec t, int32_t j0, float* d_out, int32_t* idx_out, vec& sum) {
        const vec absd = _mm512_abs_ps(dv);
        const __mmask16 keep = _mm512_cmp_ps_mask(absd, t, _CMP_GT_OQ);
        sum = _mm512_mask_add_ps(sum, keep, sum, dv);
        _mm512_storeu_ps(d_out, _mm512_maskz_compress_ps(keep, dv));
        const __m512i lanes = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(j0));
        _mm512_storeu_si512(idx_out, _mm512_maskz_compress_epi32(keep, lanes));
        return __builtin_popcount(static_cast<unsigned>(keep));
    }
    static inline vec load_scale(const void* s, bool f16, int64_t k) {
        if (f16)
            return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(s) + k)));
        return _mm512_loadu_ps(static_cast<const float*>(s) + k);
    }
    template <WType T>
    static inline vec loadw(const uint8_t* p) {  // p: byte address of the first element
        if constexpr (T == WType::f32) {
            return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
        } else if constexpr (T == WType::f16) {
            return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        } else if constexpr (T == WType::bf16) {
            const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
            return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        } else if constexpr (T == WType::i8) {
            return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        } else if constexpr (T == WType::u8) {
            return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        } else {
            // 16 nibbles = 8 bytes: dword 0 feeds lanes 0-7, dword 1 lanes 8-15; lane i shifts by 4 * (i % 8).
            int64_t packed;
            std::memcpy(&packed, p, 8);
            const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            const __m512i b = _mm512_permutexvar_epi32(idx, _mm512_zextsi128_si512(_mm_cvtsi64_si128(packed)));
            if constexpr (T == WType::u4) {
                const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
                return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(b, sh), _mm512_set1_epi32(0xF)));
            } else {
                const __m512i sh = _mm512_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
                return _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_sllv_epi32(b, sh), 28));
            }
        }
    }
    // 2W 4-bit weights from W bytes, split by column parity (see avx2.cpp); i4 comes out as q + 8.
    template <WType T>
    static inline void loadw_split(const uint8_t* p, vec& even, vec& odd) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        if constexpr (T == WType::i4)
            b = _mm512_xor_si512(b, _mm512_set1_epi32(0x88));
        even = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0xF)));
        odd = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
    }
    static inline void unsplit(vec even, vec odd, vec& lo, vec& hi) {
        lo = _mm512_permutex2var_ps(even, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), odd);
        hi = _mm512_permutex2var_ps(even, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), odd);
    }
};

#include "kernels/simd_impl.inl"

}  // namespace

IsaKernels avx512_kernels() {
    IsaKernels k;
    k.gather = &gather_entry;
    k.decode = &decode_entry;
    k.decode_multi = &decode_multi_entry;
    k.dense = &dense_entry;
    k.mr = V::MR;
    k.nr = V::NRV * V::W;
    return k;
}

}  // namespace kernels
}  // namespace scap_ov
