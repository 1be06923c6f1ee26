// Host emulation of the CUDA execution model, for CPU-only tests of the real kernel source
// (compiled with a host C++20 compiler and -DSEMGAN_EMULATE; see tests/test_csrc_build.py).
//
// A launch runs its blocks one after another; each block runs blockDim OS threads, SG_SYNC() is a
// std::barrier over them. Dynamic shared memory is filled with 0xFF bytes (NaN for floats, -1 for
// ints) before every block, so reads of shared memory that the kernel did not write show up as
// wrong results. A kernel whose threads disagree on the number of SG_SYNC() calls deadlocks here
// (undefined behaviour on a GPU), which the tests catch with a timeout.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <vector_types.h>

// CUDA's built-in index variables, one copy per emulated thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace sg_emu {

struct BlockContext {
  std::barrier<>* barrier;
  unsigned char* smem;
};

inline thread_local BlockContext* tl_block = nullptr;

inline void syncthreads() { tl_block->barrier->arrive_and_wait(); }
inline unsigned char* shared_mem() { return tl_block->smem; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || grid.x * grid.y * grid.z == 0) return;
  std::vector<unsigned char> storage(smem_bytes + 64);
  auto addr = reinterpret_cast<std::uintptr_t>(storage.data());
  unsigned char* smem = storage.data() + ((64 - addr % 64) % 64);
  std::barrier<> barrier(static_cast<std::ptrdiff_t>(nthreads));
  BlockContext ctx{&barrier, smem};
  auto worker = [&](unsigned t) {
    tl_block = &ctx;
    threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          if (t == 0) std::memset(smem, 0xFF, smem_bytes);
          barrier.arrive_and_wait();  // shared memory poisoned before any thread of the block starts
          blockIdx = uint3{bx, by, bz};
          kernel(args...);
          barrier.arrive_and_wait();  // block finished before the next one reuses shared memory
        }
    tl_block = nullptr;
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads - 1);
  for (unsigned t = 1; t < nthreads; ++t) threads.emplace_back(worker, t);
  worker(0);
  for (auto& th : threads) th.join();
}

}  // namespace sg_emu
