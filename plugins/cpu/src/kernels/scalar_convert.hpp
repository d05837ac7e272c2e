// Scalar element decoding shared by the reference kernel and the scalar column tails of the SIMD
// kernels. Everything here is `static inline` (internal linkage): each translation unit, whatever its
// ISA flags, gets its own copy and no copy can be picked by the linker for another ISA.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/kernel.hpp"

namespace scap_ov {
namespace kernels {

static inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0x1Fu)  // inf / nan
        return f32_from_bits(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0)
            return f32_from_bits(sign);
        // subnormal: value = mant * 2^-24
        float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

static inline float bf16_to_f32(uint16_t b) {
    return f32_from_bits(static_cast<uint32_t>(b) << 16);
}

// Numeric value of element k of a weight (or zero-point) tensor of type t, as float (integers as is).
static inline float weight_at(WType t, const uint8_t* p, int64_t k) {
    switch (t) {
    case WType::f32: {
        float v;
        std::memcpy(&v, p + 4 * k, 4);
        return v;
    }
    case WType::f16: {
        uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        return f16_to_f32(h);
    }
    case WType::bf16: {
        uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        return bf16_to_f32(h);
    }
    case WType::i8:
        return static_cast<float>(static_cast<int8_t>(p[k]));
    case WType::u8:
        return static_cast<float>(p[k]);
    case WType::u4: {
        const uint8_t byte = p[k >> 1];
        return static_cast<float>((k & 1) ? (byte >> 4) : (byte & 0x0F));
    }
    case WType::i4: {
        const uint8_t byte = p[k >> 1];
        int v = (k & 1) ? (byte >> 4) : (byte & 0x0F);
        return static_cast<float>(v >= 8 ? v - 16 : v);
    }
    }
    return 0.0f;
}

static inline float scale_at(const void* s, bool f16, int64_t k) {
    if (f16) {
        uint16_t h;
        std::memcpy(&h, static_cast<const uint8_t*>(s) + 2 * k, 2);
        return f16_to_f32(h);
    }
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(s) + 4 * k, 4);
    return v;
}

}  // namespace kernels
}  // namespace scap_ov
