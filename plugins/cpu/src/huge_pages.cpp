#include "huge_pages.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace scap_ov {

bool huge_pages_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("SCAP_OV_HUGE_PAGES");
        return !(e && std::strcmp(e, "0") == 0);
    }();
    return on;
}

#if defined(__linux__) && defined(MADV_HUGEPAGE)
namespace {

#    if !defined(MADV_COLLAPSE)
#        define MADV_COLLAPSE 25  // Linux 6.1 uapi; older kernels refuse it with EINVAL
#    endif

constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
constexpr std::uintptr_t kPage = 4096;

// The /proc/self/maps entry that holds [p, p + bytes): is it a file mapping, readable and not writable?
// (Dropping the pages of such a mapping, shared or private, loses nothing: they are re-read from the file.)
struct Mapping {
    bool found = false, file = false, read_only = false;
    std::uintptr_t lo = 0, hi = 0;
};
Mapping mapping_of(std::uintptr_t p, size_t bytes) {
    Mapping m;
    std::FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f)
        return m;
    char line[4096];
    while (std::fgets(line, sizeof(line), f)) {
        unsigned long lo = 0, hi = 0, offset = 0, inode = 0;
        char perms[8] = {0}, dev[32] = {0};
        int path_at = 0;
        if (std::sscanf(line, "%lx-%lx %7s %lx %31s %lu %n", &lo, &hi, perms, &offset, dev, &inode, &path_at) < 6)
            continue;
        if (p < lo || p >= hi)
            continue;
        m.found = p + bytes <= hi;  // one mapping must hold the whole buffer
        m.lo = lo;
        m.hi = hi;
        m.file = inode != 0 && line[path_at] == '/';
        m.read_only = perms[0] == 'r' && perms[1] == '-';  // OpenVINO maps the .bin r--s
        break;
    }
    std::fclose(f);
    return m;
}

struct HugeBuffer {
    void* p = nullptr;
    size_t n = 0;
    ~HugeBuffer() {
        if (p)
            munmap(p, n);
    }
};

// A 2 MiB-aligned anonymous region advised for huge pages, or nullptr.
std::shared_ptr<HugeBuffer> map_huge(size_t bytes) {
    const size_t n = (bytes + kHuge - 1) & ~(kHuge - 1);
    void* raw = mmap(nullptr, n + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return nullptr;
    // Keep only the 2 MiB-aligned window [aligned, aligned + n).
    const std::uintptr_t r = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (r + kHuge - 1) & ~(kHuge - 1);
    if (aligned > r)
        munmap(raw, aligned - r);
    if (r + kHuge > aligned)
        munmap(reinterpret_cast<void*>(aligned + n), r + kHuge - aligned);
    auto buf = std::make_shared<HugeBuffer>();
    buf->p = reinterpret_cast<void*>(aligned);
    buf->n = n;
    (void)madvise(buf->p, n, MADV_HUGEPAGE);  // first touches then fault in whole huge pages
    return buf;
}

// Copies of many layers share 64 MiB chunks, so rounding every layer up to 2 MiB does not waste memory (SmolLM2:
// 120 layers of 1.3-7 MiB). A chunk lives while any copy in it does; untouched chunk tails are never faulted in.
class CopyArena {
public:
    std::shared_ptr<void> allocate(size_t bytes) {
        constexpr size_t kChunk = size_t(64) << 20, kAlign = 64;
        std::lock_guard<std::mutex> lock(m_mutex);
        if (!m_chunk || m_used + bytes > m_chunk->n) {
            m_chunk = map_huge(bytes > kChunk ? bytes : kChunk);
            m_used = 0;
            if (!m_chunk)
                return nullptr;
        }
        void* p = static_cast<char*>(m_chunk->p) + m_used;
        m_used = (m_used + bytes + kAlign - 1) & ~(kAlign - 1);
        return std::shared_ptr<void>(m_chunk, p);
    }

private:
    std::mutex m_mutex;
    std::shared_ptr<HugeBuffer> m_chunk;
    size_t m_used = 0;
};

}  // namespace

PlacedWeights place_weights(const void* p, size_t bytes) {
    PlacedWeights out;
    out.data = static_cast<const uint8_t*>(p);
    if (!huge_pages_enabled()) {
        out.how = "off";
        return out;
    }
    if (p == nullptr || bytes == 0)
        return out;
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    const Mapping m = mapping_of(a, bytes);
    if (!m.found) {
        out.how = "unchanged (not within one mapping)";
        return out;
    }
    if (!m.file) {
        if (bytes < kHuge / 2) {  // under 1 MiB the span would mostly be other memory, perhaps never touched yet
            out.how = "unchanged (anonymous, under 1 MiB)";
            return out;
        }
        // Anonymous (heap / OpenVINO buffers): remap in place the 2 MiB-aligned span around the buffer, clipped
        // to its mapping (a span with holes is refused). The span may reach into neighbouring memory of this
        // process; both calls keep every byte's contents, they only change how pages are mapped.
        const std::uintptr_t lo = std::max(a & ~(kHuge - 1), m.lo);
        const std::uintptr_t hi = std::min((a + bytes + kHuge - 1) & ~(kHuge - 1), m.hi);
        void* base = reinterpret_cast<void*>(lo);
        if (madvise(base, hi - lo, MADV_HUGEPAGE) != 0) {
            out.how = "unchanged (madvise refused)";
            return out;
        }
        out.how = madvise(base, hi - lo, MADV_COLLAPSE) == 0 ? "collapsed" : "advised";
        return out;
    }
    if (!m.read_only) {
        out.how = "unchanged (writable file mapping)";
        return out;
    }
    // Read-only file mapping: a private huge-page copy, then release the original's pages.
    static CopyArena* const arena = new CopyArena;  // never destroyed: an op may still place weights during exit
    std::shared_ptr<void> copy = arena->allocate(bytes);
    if (!copy) {
        out.how = "unchanged (no memory for a copy)";
        return out;
    }
    std::memcpy(copy.get(), p, bytes);
    const std::uintptr_t drop_lo = (a + kPage - 1) & ~(kPage - 1), drop_hi = (a + bytes) & ~(kPage - 1);
    if (drop_hi > drop_lo)
        (void)madvise(reinterpret_cast<void*>(drop_lo), drop_hi - drop_lo, MADV_DONTNEED);
    out.data = static_cast<const uint8_t*>(copy.get());
    out.owner = std::move(copy);
    out.how = "copied";
    return out;
}

#else

PlacedWeights place_weights(const void* p, size_t bytes) {
    PlacedWeights out;
    out.data = static_cast<const uint8_t*>(p);
    out.how = huge_pages_enabled() ? "unchanged" : "off";
    (void)bytes;
    return out;
}

#endif

}  // namespace scap_ov
