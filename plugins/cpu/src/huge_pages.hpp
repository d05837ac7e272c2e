// Huge-page backing for the packed weights (Linux transparent huge pages).
//
// One-token decode streams each layer's kept weight rows once per token. On 4 KiB pages every page costs a TLB
// miss (a two-level page walk in a VM) and the hardware prefetchers stop at every page boundary; on this
// project's 2-vCPU VM a plain 2-thread row stream over 120 layers of 576x576 f32 took 84-101 us per layer on
// 4 KiB pages and 62-69 us on 2 MiB pages. Through OpenVINO the gain is smaller and mostly lost in this VM's
// noise (plugins/cpu/README.md, "Weight placement").
// OpenVINO's own FC repacks its weights into memory it allocates at compile time; an extension op reads the
// constant where it lies: in the heap, or in the IR's mmapped .bin (the default), often not even 4-byte aligned.
//
// So the first time the op reads a weights buffer it places it:
//  - anonymous memory: madvise(MADV_HUGEPAGE) + MADV_COLLAPSE (Linux >= 6.1) on the 2 MiB-aligned span around
//    it, which remaps the pages in place, contents unchanged (neighbouring bytes of the span keep theirs too);
//  - a read-only file mapping (mmapped IR): a private copy in 2 MiB-aligned anonymous memory advised for huge
//    pages, and the file pages of the original are dropped (MADV_DONTNEED on a read-only private file mapping
//    only unmaps them; touching them again re-reads the file), so resident memory stays one copy, as for
//    OpenVINO's repacked FC weights;
//  - anything else, or any failure: the buffer is used as it is.
// SCAP_OV_HUGE_PAGES=0 turns all of it off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace scap_ov {

// False when SCAP_OV_HUGE_PAGES=0.
bool huge_pages_enabled();

// Where the kernel reads a weights buffer from after placement. `owner` keeps a private copy alive (empty when
// the original is used). `how` says what was done, for tests and SCAP_OV_DEBUG: "off", "collapsed", "advised"
// (MADV_HUGEPAGE accepted, collapse refused), "copied", or "unchanged (<why>)".
struct PlacedWeights {
    const uint8_t* data = nullptr;
    std::shared_ptr<void> owner;
    const char* how = "unchanged";
};
PlacedWeights place_weights(const void* p, size_t bytes);

}  // namespace scap_ov
