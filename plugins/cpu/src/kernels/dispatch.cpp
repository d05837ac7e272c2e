// ISA selection and the threading driver (generic code: compiled without ISA flags).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <openvino/core/parallel.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/kernel.hpp"

#if defined(SCAP_OV_SANITIZE)
// Sanitizer builds (CMake option SCAP_OV_SANITIZE): the reused buffers below are usually larger than the
// current call needs, so a plain ASan build would not notice an access past what the call asked for. Here the
// unused tail is poisoned (ASan then reports such an access as for a fresh allocation of the requested size)
// and the requested part is filled with 0xFF bytes (NaN floats, -1 indices), so reading anything the current
// call has not written shows up as a NaN in the output or an out-of-bounds index, not as a stale value that
// happens to be right. Normal builds compile none of this.
#include <sanitizer/asan_interface.h>
#define SCAP_SAN_UNPOISON(p, bytes) ASAN_UNPOISON_MEMORY_REGION((p), (bytes))
#define SCAP_SAN_POISON(p, bytes) ASAN_POISON_MEMORY_REGION((p), (bytes))
#define SCAP_SAN_GARBAGE(p, bytes) ((bytes) != 0 ? (void)std::memset((p), 0xFF, (bytes)) : (void)0)
#else
#define SCAP_SAN_UNPOISON(p, bytes) ((void)0)
#define SCAP_SAN_POISON(p, bytes) ((void)0)
#define SCAP_SAN_GARBAGE(p, bytes) ((void)0)
#endif

namespace scap_ov {
namespace kernels {

namespace {

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2"))
        return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("bmi2"))
        return Isa::avx2;
#endif
    return Isa::scalar;
}

bool cpu_has_vnni() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool v = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni") != 0;
    }();
    return v;
#else
    return false;
#endif
}

Isa env_cap() {
    const char* e = std::getenv("SCAP_OV_ISA");
    if (!e || !*e)
        return Isa::avx512;
    std::string s(e);
    for (auto& c : s)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s == "scalar" || s == "reference" || s == "ref")
        return Isa::scalar;
    if (s == "avx2")
        return Isa::avx2;
    return Isa::avx512;
}

// 64-byte aligned per-thread scratch, grown on demand and reused across calls.
struct Scratch {
    float* p = nullptr;
    size_t n = 0;
    ~Scratch() {
        ::operator delete[](p, std::align_val_t(64));
    }
    float* get(size_t count) {
        SCAP_SAN_UNPOISON(p, n * sizeof(float));
        if (count > n) {
            ::operator delete[](p, std::align_val_t(64));
            p = static_cast<float*>(::operator new[](count * sizeof(float), std::align_val_t(64)));
            n = count;
        }
        SCAP_SAN_GARBAGE(p, count * sizeof(float));
        SCAP_SAN_POISON(p + count, (n - count) * sizeof(float));
        return p;
    }
};

float* thread_scratch(size_t count) {
    static thread_local Scratch s;
    return s.get(count);
}

// Per-calling-thread buffers of one run() (the gathered tokens, the packed activations). Reused across
// calls; concurrent infer requests run on different threads and so never share them.
template <typename T>
T* call_buffer(std::vector<T>& v, size_t count) {
    SCAP_SAN_UNPOISON(v.data(), v.capacity() * sizeof(T));
    if (v.size() < count)
        v.resize(count);
    if constexpr (std::is_arithmetic_v<T>)
        SCAP_SAN_GARBAGE(v.data(), count * sizeof(T));
    SCAP_SAN_POISON(v.data() + count, (v.capacity() - count) * sizeof(T));
    return v.data();
}
struct CallBuffers {
    std::vector<float> d, gsum, Dp, stage, d4, split_gsum, split_y, qsa, qssum;
    std::vector<int32_t> idx, uidx, qpacked, qrows, qa4, qcgroup;
    std::vector<int64_t> gstart, ugstart, split_gstart, qcstart;
    std::vector<uint8_t> keep, qbad;
    std::vector<Gathered> g;
    std::vector<UnionRows> u;
};

// Union of the kept rows of tokens [t0, t0 + mt) (mt <= 4) from their gathered lists.
void build_union(const FcArgs& a, const Gathered* g, int64_t t0, int mt, float* stage, uint8_t* keep, int32_t* uidx,
                 float* d4, int64_t* ugstart, UnionRows& u) {
    for (int t = 0; t < mt; ++t) {
        const Gathered& gt = g[t0 + t];
        for (int64_t q = 0; q < gt.n; ++q) {
            const int64_t j = gt.idx[q];
            stage[4 * j + t] = gt.d[q];
            keep[j] = 1;
        }
    }
    int64_t n = 0;
    const int64_t gs = a.group_size;
    for (int64_t gi = 0; gi < a.n_groups; ++gi) {
        ugstart[gi] = n;
        for (int64_t j = gi * gs; j < (gi + 1) * gs; ++j) {
            if (!keep[j])
                continue;
            uidx[n] = static_cast<int32_t>(j);
            for (int t = 0; t < 4; ++t) {
                d4[4 * n + t] = stage[4 * j + t];
                stage[4 * j + t] = 0.0f;
            }
            keep[j] = 0;
            ++n;
        }
    }
    ugstart[a.n_groups] = n;
    u.idx = uidx;
    u.d4 = d4;
    u.gstart = ugstart;
    for (int t = 0; t < 4; ++t)
        u.gsum[t] = t < mt ? g[t0 + t].gsum : nullptr;
    u.n = n;
    u.mt = mt;
}
CallBuffers& call_buffers() {
    static thread_local CallBuffers b;
    return b;
}

// Split [0, OC) into per-thread column ranges of whole `unit`-column blocks (decode: 64; dense: the micro-kernel's
// panel, so that 576 columns split 288 / 288 on two threads instead of 320 / 256).
void column_range(int64_t OC, int ithr, int nthr, int64_t& c0, int64_t& c1, int64_t unit = 64) {
    const int64_t nblk = (OC + unit - 1) / unit;
    const int64_t base = nblk / nthr, rem = nblk % nthr;
    const int64_t b0 = ithr * base + std::min<int64_t>(ithr, rem);
    const int64_t b1 = b0 + base + (ithr < rem ? 1 : 0);
    c0 = std::min(OC, b0 * unit);
    c1 = std::min(OC, b1 * unit);
}

// d = x - m where |d| > thr, else +0 (NaN compares false: pruned). Branch-free: on a pruned input the keep
// decision is a coin flip, and a branch on it cost ~0.4 ms per 128 x 1536 block at 50% sparsity.
inline float masked_centred(float x, float m, float thr) {
    const float d = x - m;
    const uint32_t keep = 0u - static_cast<uint32_t>(std::fabs(d) > thr);
    uint32_t bits;
    std::memcpy(&bits, &d, 4);
    bits &= keep;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
}

// Masked, centred activations of token t written into the packed layout of the dense kernel.
void pack_token(const FcArgs& a, int64_t t, int mr, int64_t kc, int64_t n_mtiles, float* Dp) {
    const float* x = a.x + t * a.IC;
    const int64_t mt = t / mr, mi = t % mr;
    for (int64_t k0 = 0; k0 < a.IC; k0 += kc) {
        const int64_t kl = std::min(kc, a.IC - k0);
        float* blk = Dp + k0 * n_mtiles * mr + mt * kl * mr + mi;
        for (int64_t k = 0; k < kl; ++k) {
            const int64_t j = k0 + k;
            blk[k * mr] = masked_centred(x[j], a.mode[a.mode_vec ? j : 0], a.thr[a.thr_vec ? j : 0]);
        }
    }
}

// Bytes of one stored weight row ([IC, OC] layout: OC elements).
int64_t row_bytes(const FcArgs& a) {
    switch (a.wtype) {
    case WType::f32:
        return 4 * a.OC;
    case WType::f16:
    case WType::bf16:
        return 2 * a.OC;
    case WType::i8:
    case WType::u8:
        return a.OC;
    default:
        return (a.OC + 1) / 2;
    }
}

// kept: rows kept for the first token (decode paths), -1 where the path does not gather.
void debug_log(const FcArgs& a, Isa isa, int nthreads, const char* path, int64_t kept = -1) {
    if (debug_enabled())
        std::fprintf(stderr, "[scap_ov] M=%lld IC=%lld OC=%lld isa=%s threads=%d path=%s kept=%lld\n",
                     static_cast<long long>(a.M), static_cast<long long>(a.IC), static_cast<long long>(a.OC),
                     isa_name(isa), nthreads, path, static_cast<long long>(kept));
}

// One-token decode split by kept rows instead of by columns: the kept list is cut into kRowShares shares of whole
// rows, each decoded into its own partial output (bias only in share 0) and summed in share order at the end, so
// the result is the same for any thread count (threads take contiguous runs of shares). Used for short rows,
// where a column split leaves each thread a short strided piece of every row (int8 rows of 7B layers: 2 KiB per
// thread), while a row split streams whole rows. Quantized group sums are split with the rows:
// y = sum over shares of s (acc_s - zp gsum_s) is exact algebra.
constexpr int kRowShares = 4;
constexpr int64_t kRowSplitMaxRowBytes = 8192;  // rows up to this long: split decode by rows

// Runs decode_share(share, y) for the kRowShares shares on up to nthreads threads (share 0 writes a.y and adds
// the bias, share s > 0 writes its own partial row without it) and sums the partial rows into a.y in share order.
template <typename DecodeShare>
void row_split(const FcArgs& a, int nthreads, const DecodeShare& decode_share) {
    CallBuffers& cb = call_buffers();
    float* partial = call_buffer(cb.split_y, static_cast<size_t>((kRowShares - 1) * a.OC));
    ov::parallel_nt(std::min(nthreads, kRowShares), [&](int ithr, int nt) {
        for (int share = kRowShares * ithr / nt; share < kRowShares * (ithr + 1) / nt; ++share)
            decode_share(share, share == 0 ? a.y : partial + (share - 1) * a.OC);
    });
    for (int share = 1; share < kRowShares; ++share)
        for (int64_t o = 0; o < a.OC; ++o)
            a.y[o] += partial[(share - 1) * a.OC + o];
}

FcArgs without_bias_unless_first(const FcArgs& a, int share) {
    FcArgs b = a;
    if (share > 0)
        b.bias = nullptr;
    return b;
}

void decode_row_split(const FcArgs& a, const IsaKernels& k, const Gathered& g, int nthreads) {
    CallBuffers& cb = call_buffers();
    const int64_t G = a.n_groups;
    int64_t* gstarts = call_buffer(cb.split_gstart, static_cast<size_t>(kRowShares * (G + 1)));
    float* gsums = call_buffer(cb.split_gsum, static_cast<size_t>(kRowShares * G));
    const bool quant = !is_float_weight(a.wtype);  // only quantized decode reads the group sums
    row_split(a, nthreads, [&](int share, float* y) {
        const int64_t p0 = g.n * share / kRowShares, p1 = g.n * (share + 1) / kRowShares;
        int64_t* st = gstarts + share * (G + 1);
        float* su = gsums + share * G;
        for (int64_t gi = 0; gi < G; ++gi) {
            const int64_t lo = std::clamp(g.gstart[gi], p0, p1), hi = std::clamp(g.gstart[gi + 1], p0, p1);
            float sum = 0.0f;
            for (int64_t p = lo; quant && p < hi; ++p)
                sum += g.d[p];
            st[gi] = lo - p0;
            su[gi] = sum;
        }
        st[G] = p1 - p0;
        Gathered part;
        part.d = g.d + p0;
        part.idx = g.idx + p0;
        part.gstart = st;
        part.gsum = su;
        part.n = p1 - p0;
        k.decode(without_bias_unless_first(a, share), part, y, 0, a.OC, thread_scratch(static_cast<size_t>(a.OC) + 64));
    });
}

// One-token decode with dynamically quantized activations (VNNI): quantize the gathered token, then split the
// work as the exact decode does (whole chunks per row share for short rows, columns otherwise). False, with
// nothing written, when a kept activation is not finite (the caller takes the exact decode).
bool decode_quantized(const FcArgs& a, const IsaKernels& k, const Gathered& g, int64_t chunk, int nthreads, int nthr) {
    CallBuffers& cb = call_buffers();
    const int64_t H = a.n_groups * ((a.group_size + chunk - 1) / chunk), slots = g.n + 3 * H;
    int32_t* rows = call_buffer(cb.qrows, static_cast<size_t>(slots));
    int32_t* a4 = call_buffer(cb.qa4, static_cast<size_t>(slots / 4 + 1));
    int64_t* cstart = call_buffer(cb.qcstart, static_cast<size_t>(H + 1));
    int32_t* cgroup = call_buffer(cb.qcgroup, static_cast<size_t>(H));
    float* sa = call_buffer(cb.qsa, static_cast<size_t>(H));
    float* ss = call_buffer(cb.qssum, static_cast<size_t>(H));
    const int64_t nc = k.quantize_gathered(a, g, chunk, rows, a4, cstart, cgroup, sa, ss);
    if (nc < 0)
        return false;
    const QuantGathered q{rows, a4, cstart, cgroup, sa, ss, 0, nc};
    const int64_t nq = cstart[nc];
    if (row_bytes(a) <= kRowSplitMaxRowBytes && nc >= 2 * kRowShares) {
        debug_log(a, Isa::avx512, nthreads, "decode_q_rows", g.n);
        row_split(a, nthreads, [&](int share, float* y) {
            // whole chunks, balanced by quads: share s starts at the first chunk at or past quad nq * s / shares
            const auto first_chunk = [&](int s) {
                return std::lower_bound(cstart, cstart + nc, nq * s / kRowShares) - cstart;
            };
            QuantGathered part = q;
            part.c_begin = first_chunk(share);
            part.c_end = share + 1 == kRowShares ? nc : first_chunk(share + 1);
            k.decode_q(without_bias_unless_first(a, share), part, y, 0, a.OC,
                       thread_scratch(static_cast<size_t>(a.OC) + 128));
        });
        return true;
    }
    debug_log(a, Isa::avx512, nthr, "decode_q", g.n);
    ov::parallel_nt(nthr, [&](int ithr, int nt) {
        int64_t c0, c1;
        column_range(a.OC, ithr, nt, c0, c1);
        if (c0 >= c1)
            return;
        k.decode_q(a, q, a.y, c0, c1, thread_scratch(static_cast<size_t>(c1 - c0) + 128));
    });
    return true;
}

// Dense path with dynamically quantized activations (VNNI kernels): quantize every token of the block into the
// kernel's layout (tokens with a non-finite kept activation get zeros and are recomputed in f32 afterwards),
// run the kernel on whole-panel column ranges, then redo the non-finite tokens with the f32 reference.
void dense_quantized(const FcArgs& b, const IsaKernels& k, int64_t chunk, int nthreads, int nthr) {
    CallBuffers& cb = call_buffers();
    const int64_t qmr = k.qmr;
    const int64_t gs = b.group_size, cpg = (gs + chunk - 1) / chunk, H = b.n_groups * cpg, IC4 = b.IC / 4;
    const int64_t n_mtiles = (b.M + qmr - 1) / qmr;
    int32_t* qp = call_buffer(cb.qpacked, static_cast<size_t>(n_mtiles * qmr * IC4));
    float* sa = call_buffer(cb.qsa, static_cast<size_t>(n_mtiles * qmr * H));
    float* ss = call_buffer(cb.qssum, static_cast<size_t>(n_mtiles * qmr * H));
    uint8_t* bad = call_buffer(cb.qbad, static_cast<size_t>(b.M));
    ov::parallel_nt(nthreads, [&](int ithr, int nt) {
        const int64_t per = (b.M + nt - 1) / nt;
        const int64_t t0 = ithr * per, t1 = std::min(b.M, t0 + per);
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t mt = t / qmr, mi = t % qmr;
            int32_t* qt = qp + mt * IC4 * qmr + mi;
            float* sat = sa + mt * H * qmr + mi;
            float* sst = ss + mt * H * qmr + mi;
            bad[t] = k.quantize_q(b, b.x + t * b.IC, chunk, qt, sat, sst) ? 0 : 1;
            if (bad[t]) {  // contributes nothing here; recomputed below
                for (int64_t quad = 0; quad < IC4; ++quad)
                    qt[quad * qmr] = 0;
                for (int64_t h = 0; h < H; ++h)
                    sat[h * qmr] = sst[h * qmr] = 0.0f;
            }
        }
    });
    const QuantActs qa{qp, sa, ss, chunk, cpg, H};
    ov::parallel_nt(nthr, [&](int ithr, int nt) {
        int64_t c0, c1;
        column_range(b.OC, ithr, nt, c0, c1, k.nr);
        if (c0 >= c1)
            return;
        float* scratch = thread_scratch(static_cast<size_t>(kQuantScratchBytes / sizeof(float)));
        k.dense_q(b, qa, c0, c1, reinterpret_cast<uint8_t*>(scratch));
    });
    for (int64_t t = 0; t < b.M; ++t)
        if (bad[t])
            run_reference_token(b, t);
}

constexpr int64_t kKC = 256;           // k-block of the dense path
constexpr int64_t kDenseMaxM = 256;    // token block of the dense path
constexpr int64_t kDecodeMaxM = 8;     // up to this many tokens take the sparse (union) decode path
}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
    case Isa::avx512:
        return "avx512";
    case Isa::avx2:
        return "avx2";
    default:
        return "scalar";
    }
}

Isa active_isa() {
    static const Isa detected = detect_isa();
    const Isa cap = env_cap();  // read each call: tests switch it per process, cost is negligible
    return static_cast<int>(cap) < static_cast<int>(detected) ? cap : detected;
}

bool debug_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("SCAP_OV_DEBUG");
        return e && *e && std::string(e) != "0";
    }();
    return on;
}


int64_t dynamic_quantization_chunk() {
    const char* e = std::getenv(kDynamicQuantizationEnv);
    if (!e || !*e)
        return 32;
    if (!std::isdigit(static_cast<unsigned char>(e[0])))  // no sign, no spaces: digits only
        return -1;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(e, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return -1;
    if (v == 0)
        return 0;
    // whole VNNI quads; at most one dense block (kernels/avx512_vnni.cpp: QKC) so a chunk never spans two
    return std::min<long long>(512, std::max<long long>(4, v / 4 * 4));
}

int64_t prefetch_bytes_setting() {
    static const int64_t v = [] {
        const char* e = std::getenv("SCAP_OV_PREFETCH_BYTES");
        long long b = e && *e ? std::atoll(e) : 16384;
        return static_cast<int64_t>(b < 0 ? 0 : b);
    }();
    return v;
}

void run(const FcArgs& args, Isa isa, int nthreads) {
    FcArgs a = args;
    a.prefetch_bytes = prefetch_bytes_setting();
    IsaKernels k;
    if (isa == Isa::avx512) {
        k = avx512_kernels();
        if (cpu_has_vnni())
            add_avx512_vnni(k);
    } else if (isa == Isa::avx2) {
        k = avx2_kernels();
    }
    // Many tokens on compressed weights: dynamically quantized activations where the ISA has VNNI (the scalar
    // reference is its oracle), as OpenVINO's FC does for the same weights.
    // One-token decode too (OpenVINO's FC quantizes one token as well: 6.7e-3 error at 4096 x 4096 int8, 2.3x
    // faster than with DYNAMIC_QUANTIZATION_GROUP_SIZE=0); 2..8 tokens stay exact (the union decode).
    const bool quantizable = (a.M > kDecodeMaxM || a.M == 1) && !is_float_weight(a.wtype) && a.group_size % 4 == 0;
    const int64_t chunk = quantizable ? a.dq_chunk : 0;
    if (!k.decode || !k.dense || !k.decode_multi || !k.gather) {
        const bool dq = chunk > 0 && isa == Isa::scalar;
        debug_log(a, Isa::scalar, 1, dq ? "reference_dq" : "reference");
        if (dq)
            run_reference_dq(a, chunk);
        else
            run_reference(a);
        return;
    }
    nthreads = std::max(1, nthreads);
    // Few columns: threading costs more than it gains.
    const int64_t nblk = (a.OC + 63) / 64;
    const int nthr = static_cast<int>(std::min<int64_t>(nthreads, nblk));

    if (a.M <= kDecodeMaxM) {
        // Sparse paths: gather every token once (kept values, indices, per-group sums).
        CallBuffers& cb = call_buffers();
        float* d = call_buffer(cb.d, static_cast<size_t>(a.M * a.IC));
        int32_t* idx = call_buffer(cb.idx, static_cast<size_t>(a.M * a.IC));
        int64_t* gstart = call_buffer(cb.gstart, static_cast<size_t>(a.M * (a.n_groups + 1)));
        float* gsum = call_buffer(cb.gsum, static_cast<size_t>(a.M * a.n_groups));
        Gathered* g = call_buffer(cb.g, static_cast<size_t>(a.M));
        for (int64_t t = 0; t < a.M; ++t) {
            Gathered& gt = g[t];
            float* dt = d + t * a.IC;
            int32_t* it = idx + t * a.IC;
            int64_t* st = gstart + t * (a.n_groups + 1);
            float* su = gsum + t * a.n_groups;
            gt.n = k.gather(a, a.x + t * a.IC, dt, it, st, su);
            gt.d = dt;
            gt.idx = it;
            gt.gstart = st;
            gt.gsum = su;
        }
        if (a.M == 1 && chunk > 0 && k.decode_q && decode_quantized(a, k, g[0], chunk, nthreads, nthr))
            return;
        // (not dependent on the thread count: results are the same for any number of threads)
        if (a.M == 1 && row_bytes(a) <= kRowSplitMaxRowBytes && g[0].n >= 2 * kRowShares) {
            debug_log(a, isa, nthreads, "decode_rows", g[0].n);
            decode_row_split(a, k, g[0], nthreads);
            return;
        }
        if (a.M == 1) {
            debug_log(a, isa, nthr, "decode", g[0].n);
            ov::parallel_nt(nthr, [&](int ithr, int nt) {
                int64_t c0, c1;
                column_range(a.OC, ithr, nt, c0, c1);
                if (c0 >= c1)
                    return;
                float* scratch = thread_scratch(static_cast<size_t>(c1 - c0) + 64);
                k.decode(a, g[0], a.y, c0, c1, scratch);
            });
            return;
        }
        // 2..8 tokens: one pass over the union of the kept rows per block of up to 4 tokens.
        const int64_t nblocks = (a.M + 3) / 4;
        float* stage = call_buffer(cb.stage, static_cast<size_t>(4 * a.IC));
        uint8_t* keep = call_buffer(cb.keep, static_cast<size_t>(a.IC));
        std::fill(stage, stage + 4 * a.IC, 0.0f);
        std::fill(keep, keep + a.IC, uint8_t(0));
        int32_t* uidx = call_buffer(cb.uidx, static_cast<size_t>(nblocks * a.IC));
        float* d4 = call_buffer(cb.d4, static_cast<size_t>(nblocks * 4 * a.IC));
        int64_t* ugstart = call_buffer(cb.ugstart, static_cast<size_t>(nblocks * (a.n_groups + 1)));
        UnionRows* u = call_buffer(cb.u, static_cast<size_t>(nblocks));
        for (int64_t b = 0; b < nblocks; ++b) {
            const int mt = static_cast<int>(std::min<int64_t>(4, a.M - 4 * b));
            build_union(a, g, 4 * b, mt, stage, keep, uidx + b * a.IC, d4 + b * 4 * a.IC,
                        ugstart + b * (a.n_groups + 1), u[b]);
        }
        debug_log(a, isa, nthr, "decode_multi", g[0].n);
        ov::parallel_nt(nthr, [&](int ithr, int nt) {
            int64_t c0, c1;
            column_range(a.OC, ithr, nt, c0, c1);
            if (c0 >= c1)
                return;
            float* scratch = thread_scratch(4 * static_cast<size_t>(c1 - c0) + 64);
            for (int64_t b = 0; b < nblocks; ++b) {
                float* yrows[4] = {nullptr, nullptr, nullptr, nullptr};
                for (int t = 0; t < u[b].mt; ++t)
                    yrows[t] = a.y + (4 * b + t) * a.OC;
                k.decode_multi(a, u[b], yrows, c0, c1, scratch);
            }
        });
        return;
    }

    // Dense (many-token) path, in blocks of kDenseMaxM tokens so the packed activations stay bounded
    // (the weights are re-read once per block; a block is compute-bound).
    const bool dq = chunk > 0 && k.dense_q && k.quantize_q;
    debug_log(a, isa, nthr, dq ? "dense_q" : "dense");
    const int mr = k.mr;
    CallBuffers& cb = call_buffers();
    for (int64_t m0 = 0; m0 < a.M; m0 += kDenseMaxM) {
        FcArgs b = a;
        b.M = std::min<int64_t>(kDenseMaxM, a.M - m0);
        b.x = a.x + m0 * a.IC;
        b.y = a.y + m0 * a.OC;
        if (dq) {
            dense_quantized(b, k, chunk, nthreads, nthr);
            continue;
        }
        const int64_t n_mtiles = (b.M + mr - 1) / mr;
        // Only the first b.M token slots of each tile are written and read (the micro-kernel never reads
        // the padding of a partial tile), so no zero fill is needed.
        float* Dp = call_buffer(cb.Dp, static_cast<size_t>(n_mtiles * mr * a.IC));
        ov::parallel_nt(nthreads, [&](int ithr, int nt) {
            const int64_t per = (b.M + nt - 1) / nt;
            const int64_t t0 = ithr * per, t1 = std::min(b.M, t0 + per);
            for (int64_t t = t0; t < t1; ++t)
                pack_token(b, t, mr, kKC, n_mtiles, Dp);
        });
        ov::parallel_nt(nthr, [&](int ithr, int nt) {
            int64_t c0, c1;
            column_range(b.OC, ithr, nt, c0, c1, k.nr);
            if (c0 >= c1)
                return;
            float* scratch = thread_scratch(static_cast<size_t>(kKC) * 256 + 64);
            k.dense(b, Dp, kKC, c0, c1, scratch);
        });
    }
}

}  // namespace kernels
}  // namespace scap_ov
