// Runs prover.cu's kernels on the host, for the tests: each `host_*` function launches one
// kernel over the same grid the Rust prover uses. Blocks run one after another; the matrix
// product, which synchronises its block, runs each block's threads as real threads.
#include <barrier>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "host_prelude.h"

thread_local dim3 threadIdx;
thread_local dim3 blockIdx;
thread_local dim3 blockDim;
static std::barrier<>* block_barrier = nullptr;
// Shared memory is a static per kernel and the barrier is one: one block runs at a time, in
// the whole process, however many tests call in at once.
static std::mutex block_lock;

void host_syncthreads() { block_barrier->arrive_and_wait(); }

#include "prover.cu"

// One thread at a time: for kernels that never synchronise.
static void launch_serial(u64 items, unsigned threads, const std::function<void()>& kernel) {
    const u64 blocks = items == 0 ? 1 : (items + threads - 1) / threads;
    blockDim = {threads, 1, 1};
    for (u64 b = 0; b < blocks; b++) {
        for (unsigned t = 0; t < threads; t++) {
            blockIdx = {(unsigned)b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
    }
}

extern "C" void host_stream_fill(u64 state, u64* out, u64 words) {
    launch_serial(words, 256, [&] { stream_fill(state, out, words); });
}

extern "C" void host_matrix_step(const u8* x, const u8* a, u8* next, u32 n) {
    const std::lock_guard<std::mutex> one_block_at_a_time(block_lock);
    const unsigned tiles = n / TILE;
    for (unsigned by = 0; by < tiles; by++) {
        for (unsigned bx = 0; bx < tiles; bx++) {
            std::barrier<> barrier(256);
            block_barrier = &barrier;
            std::vector<std::thread> threads;
            for (unsigned ty = 0; ty < 16; ty++) {
                for (unsigned tx = 0; tx < 16; tx++) {
                    threads.emplace_back([=] {
                        blockDim = {16, 16, 1};
                        blockIdx = {bx, by, 0};
                        threadIdx = {tx, ty, 0};
                        matrix_step(x, a, next, n);
                    });
                }
            }
            for (auto& thread : threads) thread.join();
            block_barrier = nullptr;
        }
    }
}

extern "C" void host_row_leaves(const u8* matrices, u32 n, u64 rows, u8* leaves) {
    launch_serial(rows, 256, [&] { row_leaves(matrices, n, rows, leaves); });
}

extern "C" void host_block_leaves(const u64* blocks, u64 count, u8* leaves) {
    launch_serial(count, 256, [&] { block_leaves(blocks, count, leaves); });
}

extern "C" void host_tree_level(const u8* below, u64 width, u8* above) {
    launch_serial((width + 1) / 2, 256, [&] { tree_level(below, width, above); });
}

extern "C" void host_seed_blocks(const u64* states, u32 lanes, u64 blocks_per_lane, u64* blocks) {
    launch_serial((u64)lanes * 2 * 128, 256,
                  [&] { seed_blocks(states, lanes, blocks_per_lane, blocks); });
}

extern "C" void host_fill_lanes(u32 lanes, u64 blocks_per_lane, u64* blocks) {
    launch_serial(lanes, 32, [&] { fill_lanes(lanes, blocks_per_lane, blocks); });
}

extern "C" void host_gather_words(const u64* source, const u64* starts, u64 count, u32 run_words,
                                  u64* out) {
    launch_serial(count * run_words, 256,
                  [&] { gather_words(source, starts, count, run_words, out); });
}
