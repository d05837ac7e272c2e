// Scattered-row read probe (benchmarks/row_read.py builds and runs it): how long does it take the memory system to
// deliver the kept rows of a weight matrix that starts each call in DRAM, with no arithmetic beyond one XOR per
// 64-byte line? The one-token decode of SCAPFullyConnected cannot be faster than this on the same rows.
//
// One call = one matrix [rows x row_bytes]: its kept rows (ascending, a fixed random subset per matrix) are split
// into contiguous halves, one per thread, and the threads meet at a barrier before each call, as consecutive op
// calls do. Matrices are cycled over a working set larger than the last-level cache, so every call starts cold.
// Every configuration (keep fraction x prefetch strategy) runs once per sweep, in turn, so drift in this VM's
// memory bandwidth hits them alike; one JSON line per configuration, times per call over the sweeps.
//
// usage: row_read ROWS ROW_BYTES THREADS WORKING_SET_MIB SWEEPS KEEP[,KEEP...] [SEED]
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

enum class Prefetch { none, ahead, head };  // no software prefetch / 8 rows ahead into L2 / all rows at call start
constexpr const char* kPrefetchNames[] = {"none", "ahead", "head"};
constexpr int kAheadRows = 8;

struct Config {
    double keep;
    Prefetch prefetch;
    std::vector<std::vector<int32_t>> kept;  // per matrix
    std::vector<double> us_per_call;         // per sweep
};

// Reads rows [a, b) of `kept` from `base`; returns an XOR of everything read so the loads cannot be dropped.
__m512i read_rows(const uint8_t* base, const std::vector<int32_t>& kept, size_t a, size_t b, size_t row_bytes,
                  Prefetch prefetch, __m512i acc) {
    const size_t lines = (row_bytes + 63) / 64;
    if (prefetch == Prefetch::head)
        for (size_t i = a; i < b; ++i)
            for (size_t l = 0; l < lines; ++l)
                _mm_prefetch(reinterpret_cast<const char*>(base + kept[i] * row_bytes + 64 * l), _MM_HINT_T1);
    for (size_t i = a; i < b; ++i) {
        const uint8_t* row = base + kept[i] * row_bytes;
        const uint8_t* next = base + kept[std::min(i + kAheadRows, b - 1)] * row_bytes;
        for (size_t l = 0; l < lines; ++l) {
            if (prefetch == Prefetch::ahead)
                _mm_prefetch(reinterpret_cast<const char*>(next + 64 * l), _MM_HINT_T1);
            const size_t off = std::min(64 * l, row_bytes - 64);  // rows shorter than a multiple of 64: overlap
            acc = _mm512_xor_si512(acc, _mm512_loadu_si512(row + off));
        }
    }
    return acc;
}

int fail(const char* what) {
    std::fprintf(stderr, "row_read: %s\nusage: row_read ROWS ROW_BYTES THREADS WORKING_SET_MIB SWEEPS KEEP[,KEEP...] [SEED]\n",
                 what);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 7)
        return fail("missing arguments");
    const long rows = std::atol(argv[1]), row_bytes = std::atol(argv[2]), threads = std::atol(argv[3]);
    const long mib = std::atol(argv[4]), sweeps = std::atol(argv[5]);
    const unsigned seed = argc > 7 ? static_cast<unsigned>(std::atol(argv[7])) : 1u;
    std::vector<double> keeps;
    std::stringstream ks(argv[6]);
    for (std::string item; std::getline(ks, item, ',');)
        keeps.push_back(std::atof(item.c_str()));
    if (rows < 1 || row_bytes < 64 || threads < 1 || threads > 64 || mib < 1 || sweeps < 1 || keeps.empty())
        return fail("need ROWS >= 1, ROW_BYTES >= 64, 1 <= THREADS <= 64, WORKING_SET_MIB >= 1, SWEEPS >= 1");
    for (double k : keeps)
        if (!(k > 0.0 && k <= 1.0))
            return fail("every KEEP must be in (0, 1]");

    const size_t matrix_bytes = static_cast<size_t>(rows) * static_cast<size_t>(row_bytes);
    const size_t matrices = std::max<size_t>(2, (static_cast<size_t>(mib) << 20) / matrix_bytes);
    const size_t total = matrix_bytes * matrices, huge = size_t(1) << 21;
    auto* mem = static_cast<uint8_t*>(std::aligned_alloc(huge, (total + huge - 1) / huge * huge));
    if (!mem)
        return fail("cannot allocate the working set");
    madvise(mem, total, MADV_HUGEPAGE);  // as the op places its weights (plugins/cpu/src/huge_pages.hpp)
    std::memset(mem, 1, total);

    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    std::vector<Config> configs;
    for (double keep : keeps)
        for (Prefetch p : {Prefetch::none, Prefetch::ahead, Prefetch::head}) {
            Config c{keep, p, std::vector<std::vector<int32_t>>(matrices), {}};
            for (auto& kept : c.kept)
                for (int32_t r = 0; r < rows; ++r)
                    if (keep >= 1.0 || uniform(rng) < keep)
                        kept.push_back(r);
            configs.push_back(std::move(c));
        }

    std::vector<long long> sink(static_cast<size_t>(threads));
    for (long s = 0; s < sweeps; ++s)
        for (Config& c : configs) {
            std::barrier sync(threads);
            const auto t0 = std::chrono::steady_clock::now();
            std::vector<std::thread> pool;
            for (long t = 0; t < threads; ++t)
                pool.emplace_back([&, t] {
                    __m512i acc = _mm512_setzero_si512();
                    for (size_t m = 0; m < matrices; ++m) {
                        sync.arrive_and_wait();
                        const auto& kept = c.kept[m];
                        const size_t n = kept.size(), a = n * t / threads, b = n * (t + 1) / threads;
                        if (a < b)
                            acc = read_rows(mem + m * matrix_bytes, kept, a, b, row_bytes, c.prefetch, acc);
                    }
                    sink[t] = _mm512_reduce_add_epi64(acc);
                });
            for (auto& th : pool)
                th.join();
            const double s_total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            c.us_per_call.push_back(s_total / static_cast<double>(matrices) * 1e6);
        }

    long long check = 0;
    for (long long v : sink)
        check ^= v;
    for (Config& c : configs) {
        size_t kept_rows = 0;
        for (const auto& k : c.kept)
            kept_rows += k.size();
        const double bytes = static_cast<double>(kept_rows) * static_cast<double>(row_bytes) / static_cast<double>(matrices);
        std::sort(c.us_per_call.begin(), c.us_per_call.end());
        const double best = c.us_per_call.front(), median = c.us_per_call[c.us_per_call.size() / 2];
        std::printf("{\"rows\": %ld, \"row_bytes\": %ld, \"threads\": %ld, \"matrices\": %zu, \"keep\": %.4f, "
                    "\"prefetch\": \"%s\", \"kept_bytes_per_call\": %.0f, \"us_per_call_best\": %.3f, "
                    "\"us_per_call_median\": %.3f, \"gbps_best\": %.2f, \"gbps_median\": %.2f, \"check\": %lld}\n",
                    rows, row_bytes, threads, matrices, c.keep, kPrefetchNames[static_cast<int>(c.prefetch)], bytes,
                    best, median, bytes / best / 1e3, bytes / median / 1e3, check & 1);
    }
    std::free(mem);
    return 0;
}
