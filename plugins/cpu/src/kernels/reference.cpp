// Scalar reference kernel: the oracle for the SIMD paths. Plain C++, no SIMD, no threads, direct
// dequantization Wdeq[j, o] = (w[j, o] - zp[j / g, o]) * scale[j / g, o], fp32 accumulation.
#include <cmath>
#include <algorithm>
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

void run_reference_dq(const FcArgs& a, int64_t chunk) {
    const int64_t gs = a.group_size, cpg = (gs + chunk - 1) / chunk, H = a.n_groups * cpg;
    std::vector<int8_t> q(static_cast<size_t>(a.IC));
    std::vector<float> sa(static_cast<size_t>(H)), ssum(static_cast<size_t>(H));
    for (int64_t t = 0; t < a.M; ++t) {
        if (!quantize_token(a, a.x + t * a.IC, chunk, q.data(), sa.data(), ssum.data())) {
            FcArgs one = a;  // a non-finite kept activation: this token takes the f32 path
            one.M = 1;
            one.x = a.x + t * a.IC;
            one.y = a.y + t * a.OC;
            run_reference(one);
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
