// Per-thread scratch memory for the native CPU kernels, kept between calls (no allocation and no
// page faults in the hot path). Defined in a file without ISA flags so that no std:: template code
// compiled for AVX-512 can be picked by the linker for the scalar path.
#pragma once
#include <cstddef>

namespace slim {

constexpr int kScratchSlots = 3;
// 64-byte aligned, at least `bytes`, valid until the next call with the same slot on this thread.
void* thread_scratch(int slot, size_t bytes);

}  // namespace slim
