// ISA-generic SIMD kernels of SCAPFullyConnected. Included by avx2.cpp and avx512.cpp INSIDE an anonymous
// namespace, after the file has defined the vector traits `V` (W lanes, load/convert/FMA primitives and the
// dense micro-kernel shape MR x NRV). Keep this file free of standard-library
// templates and of anything with external linkage: each ISA must get its own private copy.
//
// Decode (few tokens): for each token, walk its kept rows in chunks of up to WInfo::decode_rows rows; for an OC
// tile of WInfo::decode_tv vectors, acc[tile] += sum_r d_r * w[row_r, tile] with the accumulator tile in registers, streaming
// each kept row as one contiguous run of the thread's columns. While a chunk runs, the kept rows `pd`
// positions ahead (about FcArgs::prefetch_bytes of row segments) are prefetched at the same column offset.
// Quantized weights are accumulated unscaled per group and dequantized once per group:
// y += s * (acc - zp * sum(d)) (exact algebra).
//
// Dense (many tokens): GEMM on the same [IC, OC] layout: a KC2 x NCOLS block of W is dequantized into
// NR-wide panels in an aligned scratch buffer once and reused for every MR-token tile of the packed
// activations; the next block's rows are prefetched from inside the micro-kernel.

constexpr int RMAX = 8;        // most rows any decode chunk takes (WInfo::decode_rows per weight type)
constexpr int kMultiRows = 4;  // rows per chunk of the small-M (2..8 tokens) decode

static inline int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
}

template <WType T>
struct WInfo {
    static constexpr int bits = T == WType::f32 ? 32 : (T == WType::f16 || T == WType::bf16) ? 16 : (T == WType::i8 || T == WType::u8) ? 8 : 4;
    static constexpr bool quant = !(T == WType::f32 || T == WType::f16 || T == WType::bf16);
    static constexpr bool asym = T == WType::u8 || T == WType::u4;
    // byte offset of element `elems` (non-negative; even for 4-bit)
    static inline int64_t bytes(int64_t elems) {
        return static_cast<int64_t>(static_cast<uint64_t>(elems) * bits / 8);
    }
    // byte offset of the v-th vector of a tile (compile-time constant)
    static constexpr int64_t vbytes(int v) {
        return static_cast<int64_t>(v) * V::W * bits / 8;
    }
    static constexpr int64_t line_cols = 512 / bits;  // columns per 64-byte cache line
    // Decode chunk shape: rows per chunk and accumulator vectors per tile. f32 takes 8 rows x one cache line
    // of each row per step: on 576-column rows (SmolLM2) it cut decode time 12-20% against 4 rows x 4 vectors,
    // because 8 short row streams in flight keep more misses outstanding. Converting formats (16-bit, int) are
    // no faster that way (measured: equal or slower), so they keep 4 rows x 4 vectors.
    static constexpr int decode_rows = T == WType::f32 ? 8 : 4;
    static constexpr int decode_tv = T == WType::f32 ? (line_cols > V::W ? static_cast<int>(line_cols / V::W) : 1) : 4;
    static constexpr int decode_tile = decode_tv * V::W;  // columns per step of the one-token tile loop
    static constexpr int multi_tile = 2 * V::W;           // columns per step of the small-M tile loop
    // 4-bit decode tiles (one-token and small-M) read 2W columns at a time split by column parity
    // (V::loadw_split): the per-group accumulators of the columns the tile loop covers hold each 2W-column
    // block as [even columns, odd columns], and finish_group restores column order. i4 nibbles are read as
    // q + 8, so finish_group also subtracts 8 * sum(d).
    static constexpr bool split = bits == 4;
    static constexpr float split_bias = T == WType::i4 ? 8.0f : 0.0f;
    // columns in split order after a tile loop of `tile` (decode_tile or multi_tile) columns over nv vector columns
    static constexpr int64_t split_cols(int64_t nv, int64_t tile) {
        return split ? nv / tile * tile : 0;
    }
    static_assert(!split || decode_tv % 2 == 0, "split tiles take vectors in pairs");
};

static inline void prefetch_line(const void* p) {
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
}
// Prefetch into L1 (T0) or, when the data would be evicted from L1 before its use, into L2 (T1).
template <bool L2>
static inline void prefetch_line_to(const void* p) {
    _mm_prefetch(static_cast<const char*>(p), L2 ? _MM_HINT_T1 : _MM_HINT_T0);
}

// ---------------------------------------------------------------------------------------------------------
// gather
// ---------------------------------------------------------------------------------------------------------

static int64_t gather_entry(const FcArgs& a, const float* x, float* d, int32_t* idx, int64_t* gstart, float* gsum) {
    int64_t n = 0;
    const int64_t gs = a.group_size;
    for (int64_t g = 0; g < a.n_groups; ++g) {
        gstart[g] = n;
        const int64_t j0 = g * gs, j1 = j0 + gs;
        typename V::vec vsum = V::zero();
        int64_t j = j0;
        for (; j + V::W <= j1; j += V::W) {
            const typename V::vec m = a.mode_vec ? V::load(a.mode + j) : V::set1(a.mode[0]);
            const typename V::vec t = a.thr_vec ? V::load(a.thr + j) : V::set1(a.thr[0]);
            const typename V::vec dv = V::sub(V::load(x + j), m);
            n += V::compress_kept(dv, t, static_cast<int32_t>(j), d + n, idx + n, vsum);
        }
        float sum = V::hsum(vsum);
        for (; j < j1; ++j) {
            const float dj = x[j] - a.mode[a.mode_vec ? j : 0];
            const bool keep = (dj < 0 ? -dj : dj) > a.thr[a.thr_vec ? j : 0];
            d[n] = dj;
            idx[n] = static_cast<int32_t>(j);
            sum += keep ? dj : 0.0f;
            n += keep;
        }
        gsum[g] = sum;
    }
    gstart[a.n_groups] = n;
    return n;
}

// ---------------------------------------------------------------------------------------------------------
// decode
// ---------------------------------------------------------------------------------------------------------

// Dequantize one token's unscaled sums of group gi: y[o] += s[gi, o] * (acc[o] - zp[gi, o] * gsum), for the
// columns [c0, c0 + n). The first `nsplit` columns of acc are in split order (WInfo::split): restore
// column order, and take off the i4 bias (8 * gsum).
template <WType T>
static inline void finish_group(const FcArgs& a, const float* acc, float* y, int64_t gi, int64_t c0, int64_t n,
                                int64_t nsplit, float gsum) {
    using I = WInfo<T>;
    const typename V::vec vs = V::set1(gsum);
    const int64_t sbase = gi * a.OC + c0;
    const uint8_t* zrow = I::asym ? a.zp + I::bytes(gi * a.OC) : nullptr;
    const auto finish = [&](int64_t o, typename V::vec t) {
        if (I::asym)
            t = V::fnmadd(V::template loadw<T>(zrow + I::bytes(c0 + o)), vs, t);
        V::store(y + o, V::fmadd(V::load_scale(a.scales, a.scales_f16, sbase + o), t, V::load(y + o)));
    };
    int64_t o = 0;
    if constexpr (I::split) {
        for (; o < nsplit; o += 2 * V::W) {
            typename V::vec lo, hi;
            V::unsplit(V::load(acc + o), V::load(acc + o + V::W), lo, hi);
            if constexpr (I::split_bias != 0.0f) {
                lo = V::fnmadd(V::set1(I::split_bias), vs, lo);
                hi = V::fnmadd(V::set1(I::split_bias), vs, hi);
            }
            finish(o, lo);
            finish(o + V::W, hi);
        }
    }
    const int64_t nv = n / V::W * V::W;
    for (; o < nv; o += V::W)
        finish(o, V::load(acc + o));
    for (; o < n; ++o) {
        float t = acc[o];
        if (I::asym)
            t -= weight_at(T, zrow, c0 + o) * gsum;
        y[o] += scale_at(a.scales, a.scales_f16, sbase + o) * t;
    }
}

template <WType T, int R, bool PF_L2>
static inline void decode_chunk(const uint8_t* const* rows,
                                const float* dv,
                                const uint8_t* const* pf,
                                int npf,
                                float* tgt,
                                int64_t c0,
                                int64_t nv,
                                int64_t n) {
    using I = WInfo<T>;
    constexpr int TVD = I::decode_tv;
    constexpr int TW = I::decode_tile;
    typename V::vec dr[R];
    for (int i = 0; i < R; ++i)
        dr[i] = V::set1(dv[i]);
    int64_t o = 0;
    for (; o + TW <= nv; o += TW) {
        if (TW >= I::line_cols) {
            for (int i = 0; i < npf; ++i)
                for (int64_t l = 0; l < TW; l += I::line_cols)
                    prefetch_line_to<PF_L2>(pf[i] + I::bytes(c0 + o + l));
        } else if ((o % I::line_cols) == 0) {
            for (int i = 0; i < npf; ++i)
                prefetch_line_to<PF_L2>(pf[i] + I::bytes(c0 + o));
        }
        const int64_t off = I::bytes(c0 + o);
        typename V::vec acc[TVD];
        for (int v = 0; v < TVD; ++v)
            acc[v] = V::load(tgt + o + v * V::W);
        for (int i = 0; i < R; ++i) {
            const uint8_t* p = rows[i] + off;
            if constexpr (I::split) {
                for (int v = 0; v < TVD; v += 2) {
                    typename V::vec even, odd;
                    V::template loadw_split<T>(p + I::vbytes(v), even, odd);
                    acc[v] = V::fmadd(dr[i], even, acc[v]);
                    acc[v + 1] = V::fmadd(dr[i], odd, acc[v + 1]);
                }
            } else {
                for (int v = 0; v < TVD; ++v)
                    acc[v] = V::fmadd(dr[i], V::template loadw<T>(p + I::vbytes(v)), acc[v]);
            }
        }
        for (int v = 0; v < TVD; ++v)
            V::store(tgt + o + v * V::W, acc[v]);
    }
    for (; o < nv; o += V::W) {
        const int64_t off = I::bytes(c0 + o);
        typename V::vec acc = V::load(tgt + o);
        for (int i = 0; i < R; ++i)
            acc = V::fmadd(dr[i], V::template loadw<T>(rows[i] + off), acc);
        V::store(tgt + o, acc);
    }
    for (; o < n; ++o) {
        float s = tgt[o];
        for (int i = 0; i < R; ++i)
            s += dv[i] * weight_at(T, rows[i], c0 + o);
        tgt[o] = s;
    }
}

template <WType T, bool PF_L2, int R = WInfo<T>::decode_rows>
static inline void decode_rows(int r, const uint8_t* const* rows, const float* dv, const uint8_t* const* pf, int npf,
                               float* tgt, int64_t c0, int64_t nv, int64_t n) {
    if constexpr (R > 1) {
        if (r != R)
            return decode_rows<T, PF_L2, R - 1>(r, rows, dv, pf, npf, tgt, c0, nv, n);
    }
    decode_chunk<T, R, PF_L2>(rows, dv, pf, npf, tgt, c0, nv, n);
}

template <WType T>
static void decode_t(const FcArgs& a, const Gathered& g, float* yrow, int64_t c0, int64_t c1, float* acc) {
    using I = WInfo<T>;
    const int64_t n = c1 - c0;
    const int64_t nv = n / V::W * V::W;
    const int64_t rb = I::bytes(a.OC);
    float* y = yrow + c0;
    for (int64_t o = 0; o < n; ++o)
        y[o] = a.bias ? a.bias[c0 + o] : 0.0f;
    if (g.n == 0)
        return;
    // Prefetch distance in kept rows: about a.prefetch_bytes of this thread's row segments ahead.
    const int64_t seg = I::bytes(n) > 0 ? I::bytes(n) : 1;
    int64_t pd = a.prefetch_bytes / seg;
    constexpr int RM = I::decode_rows;
    pd = pd < RM ? RM : (pd > 256 ? 256 : pd);
    if (a.prefetch_bytes <= 0)
        pd = g.n;  // software prefetch off
    // Lines prefetched for row p + pd are used after pd rows' segments have streamed through: keep them in
    // L1 only when that volume fits comfortably.
    const bool pf_l2 = pd * seg > 16384;
    // The first pd rows are prefetched up front (none when software prefetch is off: pd = g.n would be all).
    const int64_t head = a.prefetch_bytes > 0 ? imin(pd, g.n) : 0;
    for (int64_t q = 0; q < head; ++q) {
        const uint8_t* base = a.w + static_cast<int64_t>(g.idx[q]) * rb + I::bytes(c0);
        for (int64_t l = 0; l < seg; l += 64)
            prefetch_line(base + l);
    }
    for (int64_t gi = 0; gi < a.n_groups; ++gi) {
        const int64_t s = g.gstart[gi], e = g.gstart[gi + 1];
        if (s == e)
            continue;
        float* tgt = I::quant ? acc : y;
        if (I::quant)
            for (int64_t o = 0; o < n; ++o)
                acc[o] = 0.0f;
        for (int64_t p = s; p < e; p += RM) {
            const int r = static_cast<int>(imin(RM, e - p));
            const int npf = static_cast<int>(imin(r, g.n - (p + pd)) < 0 ? 0 : imin(r, g.n - (p + pd)));
            const uint8_t* rows[RMAX];
            const uint8_t* pf[RMAX];
            float dv[RMAX];
            for (int i = 0; i < r; ++i) {
                rows[i] = a.w + static_cast<int64_t>(g.idx[p + i]) * rb;
                dv[i] = g.d[p + i];
            }
            for (int i = 0; i < npf; ++i)
                pf[i] = a.w + static_cast<int64_t>(g.idx[p + pd + i]) * rb;
            if (pf_l2)
                decode_rows<T, true>(r, rows, dv, pf, npf, tgt, c0, nv, n);
            else
                decode_rows<T, false>(r, rows, dv, pf, npf, tgt, c0, nv, n);
        }
        if (I::quant)
            finish_group<T>(a, acc, y, gi, c0, n, I::split_cols(nv, I::decode_tile), g.gsum[gi]);
    }
}

// ---------------------------------------------------------------------------------------------------------
// small-M decode: one pass over the union of the kept rows of up to 4 tokens
// ---------------------------------------------------------------------------------------------------------

template <WType T, int R, int MT, bool PF_L2>
static inline void multi_chunk(const uint8_t* const* rows,
                               const float* d4,
                               const uint8_t* const* pf,
                               int npf,
                               float* const* tgt,
                               int64_t c0,
                               int64_t nv,
                               int64_t n) {
    using I = WInfo<T>;
    constexpr int TW = I::multi_tile;
    int64_t o = 0;
    for (; o + TW <= nv; o += TW) {
        if (TW >= I::line_cols) {
            for (int i = 0; i < npf; ++i)
                for (int64_t l = 0; l < TW; l += I::line_cols)
                    prefetch_line_to<PF_L2>(pf[i] + I::bytes(c0 + o + l));
        } else if ((o % I::line_cols) == 0) {
            for (int i = 0; i < npf; ++i)
                prefetch_line_to<PF_L2>(pf[i] + I::bytes(c0 + o));
        }
        const int64_t off = I::bytes(c0 + o);
        typename V::vec acc[MT][2];
        for (int t = 0; t < MT; ++t) {
            acc[t][0] = V::load(tgt[t] + o);
            acc[t][1] = V::load(tgt[t] + o + V::W);
        }
        for (int i = 0; i < R; ++i) {
            typename V::vec w0, w1;
            if constexpr (I::split) {
                V::template loadw_split<T>(rows[i] + off, w0, w1);
            } else {
                w0 = V::template loadw<T>(rows[i] + off);
                w1 = V::template loadw<T>(rows[i] + off + I::vbytes(1));
            }
            for (int t = 0; t < MT; ++t) {
                const typename V::vec dt = V::set1(d4[4 * i + t]);
                acc[t][0] = V::fmadd(dt, w0, acc[t][0]);
                acc[t][1] = V::fmadd(dt, w1, acc[t][1]);
            }
        }
        for (int t = 0; t < MT; ++t) {
            V::store(tgt[t] + o, acc[t][0]);
            V::store(tgt[t] + o + V::W, acc[t][1]);
        }
    }
    for (; o < nv; o += V::W) {
        const int64_t off = I::bytes(c0 + o);
        for (int t = 0; t < MT; ++t) {
            typename V::vec acc = V::load(tgt[t] + o);
            for (int i = 0; i < R; ++i)
                acc = V::fmadd(V::set1(d4[4 * i + t]), V::template loadw<T>(rows[i] + off), acc);
            V::store(tgt[t] + o, acc);
        }
    }
    for (; o < n; ++o) {
        for (int i = 0; i < R; ++i) {
            const float w = weight_at(T, rows[i], c0 + o);
            for (int t = 0; t < MT; ++t)
                tgt[t][o] += d4[4 * i + t] * w;
        }
    }
}

template <WType T, int MT, bool PF_L2, int R = kMultiRows>
static inline void multi_rows(int r, const uint8_t* const* rows, const float* d4, const uint8_t* const* pf, int npf,
                              float* const* tgt, int64_t c0, int64_t nv, int64_t n) {
    if constexpr (R > 1) {
        if (r != R)
            return multi_rows<T, MT, PF_L2, R - 1>(r, rows, d4, pf, npf, tgt, c0, nv, n);
    }
    multi_chunk<T, R, MT, PF_L2>(rows, d4, pf, npf, tgt, c0, nv, n);
}

template <WType T, int MT>
static void decode_multi_t(const FcArgs& a, const UnionRows& u, float* const* yrows, int64_t c0, int64_t c1, float* scratch) {
    using I = WInfo<T>;
    const int64_t n = c1 - c0;
    const int64_t nv = n / V::W * V::W;
    const int64_t rb = I::bytes(a.OC);
    float* y[MT];
    float* acc[MT];
    for (int t = 0; t < MT; ++t) {
        y[t] = yrows[t] + c0;
        acc[t] = scratch + t * (n + 16);
        for (int64_t o = 0; o < n; ++o)
            y[t][o] = a.bias ? a.bias[c0 + o] : 0.0f;
    }
    if (u.n == 0)
        return;
    const int64_t seg = I::bytes(n) > 0 ? I::bytes(n) : 1;
    int64_t pd = a.prefetch_bytes / seg;
    constexpr int RM = kMultiRows;
    pd = pd < RM ? RM : (pd > 256 ? 256 : pd);
    if (a.prefetch_bytes <= 0)
        pd = u.n;
    const bool pf_l2 = pd * seg > 16384;
    for (int64_t q = 0; q < imin(pd, u.n); ++q) {
        const uint8_t* base = a.w + static_cast<int64_t>(u.idx[q]) * rb + I::bytes(c0);
        for (int64_t l = 0; l < seg; l += 64)
            prefetch_line(base + l);
    }
    for (int64_t gi = 0; gi < a.n_groups; ++gi) {
        const int64_t s = u.gstart[gi], e = u.gstart[gi + 1];
        if (s == e)
            continue;
        float* const* tgt = I::quant ? acc : y;
        if (I::quant)
            for (int t = 0; t < MT; ++t)
                for (int64_t o = 0; o < n; ++o)
                    acc[t][o] = 0.0f;
        for (int64_t p = s; p < e; p += RM) {
            const int r = static_cast<int>(imin(RM, e - p));
            const int64_t ahead = u.n - (p + pd);
            const int npf = static_cast<int>(ahead <= 0 ? 0 : imin(r, ahead));
            const uint8_t* rows[RMAX];
            const uint8_t* pf[RMAX];
            for (int i = 0; i < r; ++i)
                rows[i] = a.w + static_cast<int64_t>(u.idx[p + i]) * rb;
            for (int i = 0; i < npf; ++i)
                pf[i] = a.w + static_cast<int64_t>(u.idx[p + pd + i]) * rb;
            if (pf_l2)
                multi_rows<T, MT, true>(r, rows, u.d4 + 4 * p, pf, npf, tgt, c0, nv, n);
            else
                multi_rows<T, MT, false>(r, rows, u.d4 + 4 * p, pf, npf, tgt, c0, nv, n);
        }
        if (I::quant)
            for (int t = 0; t < MT; ++t)
                finish_group<T>(a, acc[t], y[t], gi, c0, n, I::split_cols(nv, I::multi_tile), u.gsum[t][gi]);
    }
}

template <WType T>
static void decode_multi_tt(const FcArgs& a, const UnionRows& u, float* const* yrows, int64_t c0, int64_t c1, float* scratch) {
    switch (u.mt) {
    case 4:
        return decode_multi_t<T, 4>(a, u, yrows, c0, c1, scratch);
    case 3:
        return decode_multi_t<T, 3>(a, u, yrows, c0, c1, scratch);
    case 2:
        return decode_multi_t<T, 2>(a, u, yrows, c0, c1, scratch);
    default:
        return decode_multi_t<T, 1>(a, u, yrows, c0, c1, scratch);
    }
}

static void decode_multi_entry(const FcArgs& a, const UnionRows& u, float* const* yrows, int64_t c0, int64_t c1,
                               float* scratch) {
    switch (a.wtype) {
    case WType::f32:
        return decode_multi_tt<WType::f32>(a, u, yrows, c0, c1, scratch);
    case WType::f16:
        return decode_multi_tt<WType::f16>(a, u, yrows, c0, c1, scratch);
    case WType::bf16:
        return decode_multi_tt<WType::bf16>(a, u, yrows, c0, c1, scratch);
    case WType::i8:
        return decode_multi_tt<WType::i8>(a, u, yrows, c0, c1, scratch);
    case WType::u8:
        return decode_multi_tt<WType::u8>(a, u, yrows, c0, c1, scratch);
    case WType::i4:
        return decode_multi_tt<WType::i4>(a, u, yrows, c0, c1, scratch);
    case WType::u4:
        return decode_multi_tt<WType::u4>(a, u, yrows, c0, c1, scratch);
    }
}

static void decode_entry(const FcArgs& a, const Gathered& g, float* yrow, int64_t c0, int64_t c1, float* scratch) {
    switch (a.wtype) {
    case WType::f32:
        return decode_t<WType::f32>(a, g, yrow, c0, c1, scratch);
    case WType::f16:
        return decode_t<WType::f16>(a, g, yrow, c0, c1, scratch);
    case WType::bf16:
        return decode_t<WType::bf16>(a, g, yrow, c0, c1, scratch);
    case WType::i8:
        return decode_t<WType::i8>(a, g, yrow, c0, c1, scratch);
    case WType::u8:
        return decode_t<WType::u8>(a, g, yrow, c0, c1, scratch);
    case WType::i4:
        return decode_t<WType::i4>(a, g, yrow, c0, c1, scratch);
    case WType::u4:
        return decode_t<WType::u4>(a, g, yrow, c0, c1, scratch);
    }
}

// ---------------------------------------------------------------------------------------------------------
// dense
// ---------------------------------------------------------------------------------------------------------

constexpr int NR = V::NRV * V::W;

// Dequantize the block W[k0 : k0 + kl, nb : nbe] into NR-wide panels: panels[p * kl * NR + k * NR + c] =
// Wdeq[k0 + k, nb + p * NR + c] (zero beyond nbe). Rows are read as contiguous runs of (nbe - nb) columns,
// with the row PF_ROWS ahead prefetched.
template <WType T>
static void pack_block(const FcArgs& a, int64_t k0, int64_t kl, int64_t nb, int64_t nbe, float* panels) {
    using I = WInfo<T>;
    constexpr int PF_ROWS = 8;
    const int64_t rb = I::bytes(a.OC);
    const int64_t gs = a.group_size;
    const int64_t npan = (nbe - nb + NR - 1) / NR;
    const int64_t run = I::bytes(nbe - nb);
    for (int64_t k = 0; k < kl; ++k) {
        const int64_t j = k0 + k;
        if (k + PF_ROWS < kl) {
            const uint8_t* nxt = a.w + (j + PF_ROWS) * rb + I::bytes(nb);
            for (int64_t l = 0; l < run; l += 64)
                prefetch_line(nxt + l);
        }
        const uint8_t* row = a.w + j * rb;
        const int64_t gi = j / gs;
        const uint8_t* zrow = I::asym ? a.zp + I::bytes(gi * a.OC) : nullptr;
        for (int64_t p = 0; p < npan; ++p) {
            const int64_t p0 = nb + p * NR;
            const int64_t np = imin(NR, nbe - p0);
            float* dst = panels + p * kl * NR + k * NR;
            if (np == NR) {
                const uint8_t* src = row + I::bytes(p0);
                for (int v = 0; v < V::NRV; ++v) {
                    typename V::vec w = V::template loadw<T>(src + I::vbytes(v));
                    if (I::quant) {
                        if (I::asym)
                            w = V::sub(w, V::template loadw<T>(zrow + I::bytes(p0) + I::vbytes(v)));
                        w = V::mul(w, V::load_scale(a.scales, a.scales_f16, gi * a.OC + p0 + v * V::W));
                    }
                    V::store(dst + v * V::W, w);
                }
            } else {
                for (int64_t c = 0; c < NR; ++c) {
                    if (c >= np) {
                        dst[c] = 0.0f;
                        continue;
                    }
                    float w = weight_at(T, a.w, j * a.OC + p0 + c);
                    if (I::quant) {
                        if (I::asym)
                            w -= weight_at(T, a.zp, gi * a.OC + p0 + c);
                        w *= scale_at(a.scales, a.scales_f16, gi * a.OC + p0 + c);
                    }
                    dst[c] = w;
                }
            }
        }
    }
}

// Walks the cache lines of an upcoming weight block (rows of `run_lines` lines) and prefetches `count` per step.
struct PfCursor {
    const uint8_t* base = nullptr;  // first byte of the first row's run
    int64_t row_bytes = 0, run_lines = 0, rows = 0;
    int64_t r = 0, l = 0;
    inline void step(int64_t count) {
        for (int64_t q = 0; q < count && r < rows; ++q) {
            prefetch_line(base + r * row_bytes + l * 64);
            if (++l == run_lines) {
                l = 0;
                ++r;
            }
        }
    }
};

// y[i, :np] += the tile's sums; on the first k block (`first`) y = bias (nullptr: 0) + the sums instead, so y is
// never zero-filled beforehand (that fill was 7% of a 128-token call on SmolLM2's shapes).
template <int MRA>
__attribute__((noinline)) static void micro(const float* Dt, const float* panel, int64_t ldp, int64_t kl, float* y, int64_t ldy,
                                             int64_t np, bool first, const float* bias, PfCursor& pc, int64_t pf_per_slot) {
    typename V::vec acc[MRA][V::NRV];
    for (int i = 0; i < MRA; ++i)
        for (int v = 0; v < V::NRV; ++v)
            acc[i][v] = V::zero();
    constexpr int64_t SLOT = 16;  // one prefetch step every SLOT k-iterations, spread through the FMAs
    for (int64_t k0 = 0; k0 < kl; k0 += SLOT) {
        const int64_t ke = imin(kl, k0 + SLOT);
        for (int64_t k = k0; k < ke; ++k) {
            typename V::vec b[V::NRV];
            for (int v = 0; v < V::NRV; ++v)
                b[v] = V::load(panel + k * ldp + v * V::W);
            const float* dk = Dt + k * V::MR;
            for (int i = 0; i < MRA; ++i) {
                const typename V::vec av = V::set1(dk[i]);
                for (int v = 0; v < V::NRV; ++v)
                    acc[i][v] = V::fmadd(av, b[v], acc[i][v]);
            }
        }
        pc.step(pf_per_slot);
    }
    if (np == NR) {
        for (int i = 0; i < MRA; ++i)
            for (int v = 0; v < V::NRV; ++v) {
                float* yp = y + i * ldy + v * V::W;
                const typename V::vec prev = !first ? V::load(yp) : bias ? V::load(bias + v * V::W) : V::zero();
                V::store(yp, V::add(prev, acc[i][v]));
            }
    } else {
        alignas(64) float tmp[NR];
        for (int i = 0; i < MRA; ++i) {
            for (int v = 0; v < V::NRV; ++v)
                V::store(tmp + v * V::W, acc[i][v]);
            for (int64_t c = 0; c < np; ++c) {
                float& yc = y[i * ldy + c];
                yc = (!first ? yc : bias ? bias[c] : 0.0f) + tmp[c];
            }
        }
    }
}

template <int MRA>
static inline void micro_dispatch(int rows, const float* Dt, const float* panel, int64_t ldp, int64_t kl, float* y,
                                  int64_t ldy, int64_t np, bool first, const float* bias, PfCursor& pc,
                                  int64_t pf_per_slot) {
    if constexpr (MRA > 0) {
        if (rows == MRA)
            return micro<MRA>(Dt, panel, ldp, kl, y, ldy, np, first, bias, pc, pf_per_slot);
        return micro_dispatch<MRA - 1>(rows, Dt, panel, ldp, kl, y, ldy, np, first, bias, pc, pf_per_slot);
    }
}

// Column block and k sub-block of the dense path: the dequantized block (KC2 x NCOLS floats, 256 KiB) and the
// accumulated outputs of a column block (M x NCOLS) stay in L2, and KC2 is long enough that outputs are
// re-read rarely; rows are read as runs of NCOLS elements with the next block prefetched from inside the
// micro-kernel (so short runs of narrow types still stream).
template <WType T>
struct DenseBlock {
    static constexpr int64_t NCOLS = (256 + NR - 1) / NR * NR;
    static constexpr int64_t KC2 = 65536 / NCOLS;
};

template <WType T>
static void dense_t(const FcArgs& a, const float* Dp, int64_t kc, int64_t c0, int64_t c1, float* panel) {
    using I = WInfo<T>;
    constexpr int MR = V::MR;
    constexpr int64_t NC = DenseBlock<T>::NCOLS;
    const int64_t kc2 = imin(kc, DenseBlock<T>::KC2);
    const int64_t MT = (a.M + MR - 1) / MR;
    const int64_t rb = I::bytes(a.OC);
    for (int64_t nb = c0; nb < c1; nb += NC) {
        const int64_t nbe = imin(c1, nb + NC);
        const int64_t npan = (nbe - nb + NR - 1) / NR;
        const int64_t run_lines = (I::bytes(nbe - nb) + 63) / 64;
        for (int64_t kb0 = 0; kb0 < a.IC; kb0 += kc) {
            const int64_t kl = imin(kc, a.IC - kb0);
            const float* Dblk = Dp + kb0 * MT * MR;
            for (int64_t ks = 0; ks < kl; ks += kc2) {
                const int64_t k0 = kb0 + ks;
                const int64_t kl2 = imin(kc2, kl - ks);
                // f32 weights need no conversion: the micro-kernel reads full panels straight from the rows
                // (stride OC) and only a partial last panel is copied (zero-padded); packing the block cost ~4%
                // of a 128-token call on SmolLM2's shapes.
                const int64_t full = (nbe - nb) / NR;
                constexpr bool direct = T == WType::f32;
                if (!direct)
                    pack_block<T>(a, k0, kl2, nb, nbe, panel);
                else if (full < npan)
                    pack_block<T>(a, k0, kl2, nb + full * NR, nbe, panel);
                // Spread prefetches of the next sub-block's rows over the micro-kernel work on this one.
                PfCursor pc;
                const int64_t nk0 = k0 + kl2;
                pc.rows = imin(kc2, a.IC - nk0);
                if (pc.rows < 0)
                    pc.rows = 0;
                pc.base = a.w + (pc.rows > 0 ? nk0 * rb : 0) + I::bytes(nb);
                pc.row_bytes = rb;
                pc.run_lines = run_lines;
                const int64_t slots = npan * MT * ((kl2 + 15) / 16);
                const int64_t pf_per_slot = slots ? (pc.rows * run_lines + slots - 1) / slots : 0;
                for (int64_t p = 0; p < npan; ++p) {
                    const int64_t p0 = nb + p * NR;
                    const int64_t np = imin(NR, nbe - p0);
                    const bool from_rows = direct && p < full;
                    const int64_t packed = direct ? p - full : p;  // index among the packed panels
                    const float* pan = from_rows ? reinterpret_cast<const float*>(a.w) + k0 * a.OC + p0
                                                 : panel + packed * kl2 * NR;
                    const int64_t ldp = from_rows ? a.OC : NR;
                    for (int64_t mt = 0; mt < MT; ++mt) {
                        const int rows = static_cast<int>(imin(MR, a.M - mt * MR));
                        micro_dispatch<MR>(rows, Dblk + mt * kl * MR + ks * MR, pan, ldp, kl2,
                                           a.y + mt * MR * a.OC + p0, a.OC, np, k0 == 0,
                                           a.bias ? a.bias + p0 : nullptr, pc, pf_per_slot);
                    }
                }
            }
        }
    }
}

static void dense_entry(const FcArgs& a, const float* Dp, int64_t kc, int64_t c0, int64_t c1, float* scratch) {
    switch (a.wtype) {
    case WType::f32:
        return dense_t<WType::f32>(a, Dp, kc, c0, c1, scratch);
    case WType::f16:
        return dense_t<WType::f16>(a, Dp, kc, c0, c1, scratch);
    case WType::bf16:
        return dense_t<WType::bf16>(a, Dp, kc, c0, c1, scratch);
    case WType::i8:
        return dense_t<WType::i8>(a, Dp, kc, c0, c1, scratch);
    case WType::u8:
        return dense_t<WType::u8>(a, Dp, kc, c0, c1, scratch);
    case WType::i4:
        return dense_t<WType::i4>(a, Dp, kc, c0, c1, scratch);
    case WType::u4:
        return dense_t<WType::u4>(a, Dp, kc, c0, c1, scratch);
    }
}
