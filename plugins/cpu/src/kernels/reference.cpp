// Scalar reference kernel: the oracle for the SIMD paths. Plain C++, no SIMD, no threads, direct
// dequantization Wdeq[j, o] = (w[j, o] - zp[j / g, o]) * scale[j / g, o], fp32 accumulation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernel.hpp"
#include "kernels/scalar_convert.hpp"

namespace scap_ov {
namespace kernels {

void run_reference(const FcArgs& a) {
    std::vector<float> acc(static_cast<size_t>(a.OC));
    std::vector<float> wrow(static_cast<size_t>(a.OC));
    const int64_t gs = a.group_size > 0 ? a.group_size : a.IC;
    for (int64_t t = 0; t < a.M; ++t) {
        const float* x = a.x + t * a.IC;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < a.IC; ++j) {
            const float m = a.mode[a.mode_vec ? j : 0];
            const float thr = a.thr[a.thr_vec ? j : 0];
            const float d = x[j] - m;
            if (!(std::fabs(d) > thr))
                continue;  // pruned (NaN compares false, so NaN is pruned)
            const int64_t g = j / gs;
            for (int64_t o = 0; o < a.OC; ++o) {
                float wv = weight_at(a.wtype, a.w, j * a.OC + o);
                if (!is_float_weight(a.wtype)) {
                    if (a.zp)
                        wv -= weight_at(a.wtype, a.zp, g * a.OC + o);
                    wv *= scale_at(a.scales, a.scales_f16, g * a.OC + o);
                }
                acc[o] += d * wv;
            }
        }
        float* y = a.y + t * a.OC;
        for (int64_t o = 0; o < a.OC; ++o)
            y[o] = acc[o] + (a.bias ? a.bias[o] : 0.0f);
    }
}

void run_reference_token(const FcArgs& a, int64_t t) {
    FcArgs one = a;
    one.M = 1;
    one.x = a.x + t * a.IC;
    one.y = a.y + t * a.OC;
    run_reference(one);
}

namespace {
// Quantize one token (kernel.hpp, QuantActs) into q (IC int8) and the chunk scales sa (H floats). False when a
// kept activation is not finite.
bool quantize_token(const FcArgs& a, const float* x, int64_t chunk, int8_t* q, float* sa) {
    const int64_t gs = a.group_size, cpg = (gs + chunk - 1) / chunk;
    const auto masked = [&](int64_t j) {  // as run_reference: NaN compares false, so NaN is pruned
        const float d = x[j] - a.mode[a.mode_vec ? j : 0];
        return std::fabs(d) > a.thr[a.thr_vec ? j : 0] ? d : 0.0f;
    };
    for (int64_t g = 0; g < a.n_groups; ++g) {
        for (int64_t c = 0; c < cpg; ++c) {
            const int64_t j0 = g * gs + c * chunk, j1 = std::min((g + 1) * gs, j0 + chunk);
            float amax = 0.0f;
            for (int64_t j = j0; j < j1; ++j)
                amax = std::max(amax, std::fabs(masked(j)));
            if (!std::isfinite(amax))
                return false;
            const float inv = 127.0f / amax;  // +Inf for an all-zero chunk (or a subnormal max): all-zero chunk
            const bool zero = !std::isfinite(inv);
            for (int64_t j = j0; j < j1; ++j)
                q[j] = zero ? int8_t(0)
                            : static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, std::nearbyint(masked(j) * inv))));
            sa[g * cpg + c] = zero ? 0.0f : amax / 127.0f;
        }
    }
    return true;
}
}  // namespace

void run_reference_dq(const FcArgs& a, int64_t chunk) {
    const int64_t gs = a.group_size, cpg = (gs + chunk - 1) / chunk, H = a.n_groups * cpg;
    std::vector<int8_t> q(static_cast<size_t>(a.IC));
    std::vector<float> sa(static_cast<size_t>(H));
    for (int64_t t = 0; t < a.M; ++t) {
        if (!quantize_token(a, a.x + t * a.IC, chunk, q.data(), sa.data())) {
            run_reference_token(a, t);  // a non-finite kept activation: this token takes the f32 path
            continue;
        }
        float* y = a.y + t * a.OC;
        for (int64_t o = 0; o < a.OC; ++o) {
            double acc = 0.0;
            for (int64_t g = 0; g < a.n_groups; ++g) {
                const int64_t zp = a.zp ? static_cast<int64_t>(weight_at(a.wtype, a.zp, g * a.OC + o)) : 0;
                double group = 0.0;
                for (int64_t c = 0; c < cpg; ++c) {
                    const int64_t j0 = g * gs + c * chunk, j1 = std::min((g + 1) * gs, j0 + chunk);
                    int64_t dot = 0;
                    for (int64_t j = j0; j < j1; ++j)
                        dot += static_cast<int64_t>(q[j]) * (static_cast<int64_t>(weight_at(a.wtype, a.w, j * a.OC + o)) - zp);
                    group += static_cast<double>(sa[g * cpg + c]) * static_cast<double>(dot);
                }
                acc += static_cast<double>(scale_at(a.scales, a.scales_f16, g * a.OC + o)) * group;
            }
            y[o] = static_cast<float>(acc + (a.bias ? a.bias[o] : 0.0));
        }
    }
}

}  // namespace kernels
}  // namespace scap_ov
