// AMX tile configuration shared by the *_amx.cpp kernels (compiled with the AMX flags only).
// Whether the CPU, OS and process allow tiles at all: amx_bf16_supported() / amx_int8_supported()
// (cpu_isa.h). Internal linkage: see cpu_convert.h.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace slim {
namespace {

// The 64-byte operand of ldtilecfg (palette 1): bytes per row and rows of each tile register.
struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// All 8 tile registers as 16 rows x 64 bytes. Loading a configuration zeroes every tile; a kernel
// calls this before its first tile instruction and _tile_release() after its last.
inline void load_tile_config() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

}  // namespace
}  // namespace slim
