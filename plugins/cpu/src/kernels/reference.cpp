// Scalar reference kernel: the oracle for the SIMD paths. Plain C++, no SIMD, no threads, direct
// dequantization Wdeq[j, o] = (w[j, o] - zp[j / g, o]) * scale[j / g, o], fp32 accumulation.
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

}  // namespace kernels
}  // namespace scap_ov
