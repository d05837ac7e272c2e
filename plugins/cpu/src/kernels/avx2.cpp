// AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c; entered only after a run-time CPU check).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/kernel.hpp"
#include "kernels/scalar_convert.hpp"

namespace scap_ov {
namespace kernels {
namespace {

// compress_kept lookup: for each 8-bit keep mask, the lane indices of the kept lanes, packed to the front.
struct CompressLut {
    int32_t idx[256][8];
    constexpr CompressLut() : idx() {
        for (int m = 0; m < 256; ++m) {
            int k = 0;
            for (int b = 0; b < 8; ++b)
                if (m & (1 << b))
                    idx[m][k++] = b;
            for (; k < 8; ++k)
                idx[m][k] = 0;
        }
    }
};
alignas(64) constexpr CompressLut kCompressLut{};

struct V {
    using vec = __m256;
    static constexpr int W = 8;
    static constexpr int MR = 6;         // dense micro-kernel: 6 tokens x 2 vectors (12 accumulators)
    static constexpr int NRV = 2;
    static constexpr int NC_PANELS = 8;  // dense column block = 8 panels = 128 columns

    static inline vec zero() {
        return _mm256_setzero_ps();
    }
    static inline vec set1(float f) {
        return _mm256_set1_ps(f);
    }
    static inline vec load(const float* p) {
        return _mm256_loadu_ps(p);
    }
    static inline vec load_aligned(const float* p) {
        return _mm256_load_ps(p);
    }
    static inline void store(float* p, vec v) {
        _mm256_storeu_ps(p, v);
    }
    static inline vec fmadd(vec a, vec b, vec c) {
        return _mm256_fmadd_ps(a, b, c);
    }
    static inline vec fnmadd(vec a, vec b, vec c) {  // c - a * b
        return _mm256_fnmadd_ps(a, b, c);
    }
    static inline vec add(vec a, vec b) {
        return _mm256_add_ps(a, b);
    }
    static inline vec sub(vec a, vec b) {
        return _mm256_sub_ps(a, b);
    }
    static inline vec mul(vec a, vec b) {
        return _mm256_mul_ps(a, b);
    }
    static inline float hsum(vec v) {
        const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
    }
    // Keep lanes with |d| > t (NaN compares false): write kept d and their indices (j0 + lane) contiguously
    // to d_out / idx_out (room for W entries needed), add kept d to sum; returns how many were kept.
    static inline int compress_kept(vec dv, vec t, int32_t j0, float* d_out, int32_t* idx_out, vec& sum) {
        const vec absd = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), dv);
        const vec keep = _mm256_cmp_ps(absd, t, _CMP_GT_OQ);
        const int mask = _mm256_movemask_ps(keep);
        sum = _mm256_add_ps(sum, _mm256_and_ps(keep, dv));
        const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompressLut.idx[mask]));
        _mm256_storeu_ps(d_out, _mm256_permutevar8x32_ps(dv, perm));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx_out), _mm256_add_epi32(perm, _mm256_set1_epi32(j0)));
        return __builtin_popcount(static_cast<unsigned>(mask));
    }
    static inline vec load_scale(const void* s, bool f16, int64_t k) {
        if (f16)
            return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(s) + k)));
        return _mm256_loadu_ps(static_cast<const float*>(s) + k);
    }
    // W consecutive weights starting at byte address p, converted to f32.
    template <WType T>
    static inline vec loadw(const uint8_t* p) {  // p: byte address of the first element
        if constexpr (T == WType::f32) {
            return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
        } else if constexpr (T == WType::f16) {
            return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        } else if constexpr (T == WType::bf16) {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
            return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        } else if constexpr (T == WType::i8) {
            return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
        } else if constexpr (T == WType::u8) {
            return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
        } else {
            int32_t packed;
            std::memcpy(&packed, p, 4);
            const __m256i b = _mm256_set1_epi32(packed);
            if constexpr (T == WType::u4) {
                const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
                return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(b, sh), _mm256_set1_epi32(0xF)));
            } else {
                const __m256i sh = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
                return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_sllv_epi32(b, sh), 28));
            }
        }
    }
    // 2W 4-bit weights from W bytes, split by column parity: even = columns 0, 2, .., odd = columns 1, 3, ..
    // (one widening load, one mask and one shift for both vectors, against a broadcast and two variable shifts
    // per vector in loadw). i4 nibbles come out biased to unsigned, q + 8; the caller subtracts 8 * sum(d).
    template <WType T>
    static inline void loadw_split(const uint8_t* p, vec& even, vec& odd) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
        if constexpr (T == WType::i4)
            b = _mm256_xor_si256(b, _mm256_set1_epi32(0x88));
        even = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0xF)));
        odd = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
    }
    // Inverse of the split: columns 0..W-1 to lo, W..2W-1 to hi.
    static inline void unsplit(vec even, vec odd, vec& lo, vec& hi) {
        const vec a = _mm256_unpacklo_ps(even, odd);  // columns 0-3 | 8-11
        const vec b = _mm256_unpackhi_ps(even, odd);  // columns 4-7 | 12-15
        lo = _mm256_permute2f128_ps(a, b, 0x20);
        hi = _mm256_permute2f128_ps(a, b, 0x31);
    }
};

#include "kernels/simd_impl.inl"

}  // namespace

IsaKernels avx2_kernels() {
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
