// Flotilla's proof of compute on NVIDIA GPUs: the same arithmetic as the Rust CPU prover
// (crates/proof), bit for bit. Compiled to PTX by NVRTC (`cargo xtask ptx`) and checked in, so
// a worker needs only the NVIDIA driver, which compiles the PTX for its GPU when it loads it.
//
// Every kernel is one thread per item (word, leaf, node, lane) except the matrix product,
// which tiles 64x64 outputs per block of 16x16 threads. No kernel depends on the launch's
// block size beyond the bounds check on its item index.

#ifndef __CUDACC__
// Compiled as C++ on the host (`host_check.cpp`), so the tests check every kernel against the
// Rust prover on machines without a GPU.
#include "host_prelude.h"
#endif

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;

// ---- Seed-derived streams (crates/proof/src/stream.rs) -------------------------------------

// Word `index` of a splitmix64 stream whose state starts at `state`: the state is advanced
// by the golden gamma before each word, so word i mixes state + (i + 1) * gamma.
__device__ __forceinline__ u64 stream_word(u64 state, u64 index) {
    u64 z = state + (index + 1ULL) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Fills `words` words of `out` from one stream.
extern "C" __global__ void stream_fill(u64 state, u64* out, u64 words) {
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < words) out[i] = stream_word(state, i);
}

// ---- The compute chain (crates/proof/src/compute.rs) ---------------------------------------

#define TILE 64
#define TILE_K 32
// Shared rows are padded by 16 bytes: 16-byte aligned, and fewer bank conflicts.
#define TILE_STRIDE (TILE_K + 16)

__device__ __forceinline__ int dot4(u32 x, u32 a, int acc) {
    // x: four unsigned bytes of a row of X; a: four signed bytes of a column of A.
#ifdef __CUDACC__
    int out;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(out) : "r"(x), "r"(a), "r"(acc));
    return out;
#else
    return host_dp4a_u32_s32(x, a, acc);
#endif
}

__device__ __forceinline__ u8 fold(int acc) {
    u32 v = (u32)acc;
    return (u8)(v ^ (v >> 8) ^ (v >> 16) ^ (v >> 24));
}

// next = fold(x . a) for n x n matrices, n a multiple of 64. x is row-major unsigned bytes, a
// row-major signed bytes. Grid (n / 64, n / 64), block (16, 16): each thread computes a 4x4
// patch of outputs, rows from threadIdx.y, columns from threadIdx.x.
extern "C" __global__ void __launch_bounds__(256) matrix_step(const u8* __restrict__ x,
                                                              const u8* __restrict__ a,
                                                              u8* __restrict__ next, u32 n) {
    __shared__ __align__(16) u8 x_tile[TILE][TILE_STRIDE];
    // a's tile, transposed: column-major, so four consecutive k of a column are one word.
    __shared__ __align__(16) u8 a_tile[TILE][TILE_STRIDE];
    const u32 tx = threadIdx.x, ty = threadIdx.y, thread = ty * 16 + tx;
    const u64 row0 = (u64)blockIdx.y * TILE, col0 = (u64)blockIdx.x * TILE;
    int acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0;
    for (u32 k0 = 0; k0 < n; k0 += TILE_K) {
        {
            // x: 64 rows of 32 bytes, 8 bytes per thread.
            const u32 r = thread / 4, part = thread % 4;
            const u64 word = *(const u64*)(x + (row0 + r) * n + k0 + part * 8);
            *(u64*)&x_tile[r][part * 8] = word;
        }
        {
            // a: 32 rows (k) of 64 columns, 8 columns per thread, stored transposed.
            const u32 k = thread / 8, part = thread % 8;
            const u64 word = *(const u64*)(a + (u64)(k0 + k) * n + col0 + part * 8);
            for (int b = 0; b < 8; b++) a_tile[part * 8 + b][k] = (u8)(word >> (8 * b));
        }
        __syncthreads();
        for (u32 kk = 0; kk < TILE_K; kk += 16) {
            uint4 xs[4], as[4];
            for (int i = 0; i < 4; i++) xs[i] = *(const uint4*)&x_tile[ty * 4 + i][kk];
            for (int j = 0; j < 4; j++) as[j] = *(const uint4*)&a_tile[tx * 4 + j][kk];
            for (int i = 0; i < 4; i++) {
                for (int j = 0; j < 4; j++) {
                    int s = acc[i][j];
                    s = dot4(xs[i].x, as[j].x, s);
                    s = dot4(xs[i].y, as[j].y, s);
                    s = dot4(xs[i].z, as[j].z, s);
                    s = dot4(xs[i].w, as[j].w, s);
                    acc[i][j] = s;
                }
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        u32 packed = 0;
        for (int j = 0; j < 4; j++) packed |= (u32)fold(acc[i][j]) << (8 * j);
        *(u32*)(next + (row0 + ty * 4 + i) * n + col0 + tx * 4) = packed;
    }
}

// ---- SHA-256 and the Merkle tree (crates/proof/src/merkle.rs) ------------------------------

__constant__ u32 SHA_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

struct Sha256 {
    u32 h[8];
    u8 buffer[64];
    u32 buffered;
    u64 length;
};

__device__ __forceinline__ u32 rotr32(u32 x, u32 n) { return (x >> n) | (x << (32 - n)); }

__device__ void sha256_init(Sha256* s) {
    const u32 iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (int i = 0; i < 8; i++) s->h[i] = iv[i];
    s->buffered = 0;
    s->length = 0;
}

// Not inlined: it is called from every byte push, and inlining it there multiplies the code.
__device__ __noinline__ void sha256_compress(Sha256* s) {
    u32 w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = ((u32)s->buffer[4 * i] << 24) | ((u32)s->buffer[4 * i + 1] << 16) |
               ((u32)s->buffer[4 * i + 2] << 8) | (u32)s->buffer[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        const u32 s0 = rotr32(w[i - 15], 7) ^ rotr32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        const u32 s1 = rotr32(w[i - 2], 17) ^ rotr32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    u32 e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        const u32 t1 = h + (rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25)) + ((e & f) ^ (~e & g)) +
                       SHA_K[i] + w[i];
        const u32 t2 = (rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

__device__ void sha256_byte(Sha256* s, u8 byte) {
    s->buffer[s->buffered++] = byte;
    s->length++;
    if (s->buffered == 64) {
        sha256_compress(s);
        s->buffered = 0;
    }
}

__device__ void sha256_bytes(Sha256* s, const u8* bytes, u64 count) {
    for (u64 i = 0; i < count; i++) sha256_byte(s, bytes[i]);
}

__device__ void sha256_le(Sha256* s, u64 value, int bytes) {
    for (int i = 0; i < bytes; i++) sha256_byte(s, (u8)(value >> (8 * i)));
}

// Pads, and writes the digest's 32 bytes to `out`.
__device__ void sha256_finish(Sha256* s, u8* out) {
    const u64 bits = s->length * 8;
    sha256_byte(s, 0x80);
    while (s->buffered != 56) sha256_byte(s, 0);
    for (int i = 7; i >= 0; i--) sha256_byte(s, (u8)(bits >> (8 * i)));
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (u8)(s->h[i] >> 24);
        out[4 * i + 1] = (u8)(s->h[i] >> 16);
        out[4 * i + 2] = (u8)(s->h[i] >> 8);
        out[4 * i + 3] = (u8)s->h[i];
    }
}

// Leaf hashes of every row of every matrix of the chain: leaf = SHA-256(0 || step as u32 LE ||
// row as u32 LE || the row's n bytes), at position step * n + row. `matrices` holds the
// (steps + 1) matrices one after the other.
extern "C" __global__ void row_leaves(const u8* matrices, u32 n, u64 rows, u8* leaves) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows) return;
    Sha256 s;
    sha256_init(&s);
    sha256_byte(&s, 0);
    sha256_le(&s, i / n, 4);
    sha256_le(&s, i % n, 4);
    sha256_bytes(&s, matrices + i * n, n);
    sha256_finish(&s, leaves + i * 32);
}

// Leaf hashes of memory blocks: leaf = SHA-256(0 || index as u64 LE || the block's 1024 bytes).
extern "C" __global__ void block_leaves(const u64* blocks, u64 count, u8* leaves) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    Sha256 s;
    sha256_init(&s);
    sha256_byte(&s, 0);
    sha256_le(&s, i, 8);
    sha256_bytes(&s, (const u8*)(blocks + i * 128), 1024);
    sha256_finish(&s, leaves + i * 32);
}

// One level of the tree from the one below (`width` nodes): node = SHA-256(1 || left || right),
// and an odd node at the end is promoted unchanged.
extern "C" __global__ void tree_level(const u8* below, u64 width, u8* above) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (width + 1) / 2) return;
    if (2 * i + 1 == width) {
        for (int b = 0; b < 32; b++) above[i * 32 + b] = below[2 * i * 32 + b];
        return;
    }
    Sha256 s;
    sha256_init(&s);
    sha256_byte(&s, 1);
    sha256_bytes(&s, below + 2 * i * 32, 64);
    sha256_finish(&s, above + i * 32);
}

// ---- The memory fill (crates/proof/src/memory.rs) ------------------------------------------

__device__ __forceinline__ u64 rotr64(u64 x, u32 n) { return (x >> n) | (x << (64 - n)); }

__device__ __forceinline__ u64 blamka(u64 x, u64 y) {
    const u64 product = (x & 0xffffffffULL) * (y & 0xffffffffULL);
    return x + y + 2 * product;
}

__device__ __forceinline__ void gb(u64* v, int a, int b, int c, int d) {
    v[a] = blamka(v[a], v[b]);
    v[d] = rotr64(v[d] ^ v[a], 32);
    v[c] = blamka(v[c], v[d]);
    v[b] = rotr64(v[b] ^ v[c], 24);
    v[a] = blamka(v[a], v[b]);
    v[d] = rotr64(v[d] ^ v[a], 16);
    v[c] = blamka(v[c], v[d]);
    v[b] = rotr64(v[b] ^ v[c], 63);
}

__device__ __forceinline__ void permute(u64* v) {
    gb(v, 0, 4, 8, 12);
    gb(v, 1, 5, 9, 13);
    gb(v, 2, 6, 10, 14);
    gb(v, 3, 7, 11, 15);
    gb(v, 0, 5, 10, 15);
    gb(v, 1, 6, 11, 12);
    gb(v, 2, 7, 8, 13);
    gb(v, 3, 4, 9, 14);
}

// out = G(x, y): R = x ^ y, P over each row of 16 words, then over each column (register
// column + 8k is words 2(column + 8k) and the next), and the result XORed with R. R is not
// kept: the last pass reads x and y again.
__device__ void compress(const u64* x, const u64* y, u64* out) {
    u64 v[16];
    for (int row = 0; row < 8; row++) {
        for (int i = 0; i < 16; i++) v[i] = x[16 * row + i] ^ y[16 * row + i];
        permute(v);
        for (int i = 0; i < 16; i++) out[16 * row + i] = v[i];
    }
    for (int column = 0; column < 8; column++) {
        for (int k = 0; k < 8; k++) {
            const int word = 2 * (column + 8 * k);
            v[2 * k] = out[word];
            v[2 * k + 1] = out[word + 1];
        }
        permute(v);
        for (int k = 0; k < 8; k++) {
            const int word = 2 * (column + 8 * k);
            out[word] = v[2 * k];
            out[word + 1] = v[2 * k + 1];
        }
    }
    for (int i = 0; i < 128; i++) out[i] ^= x[i] ^ y[i];
}

// The two seed blocks of every lane: block (lane, j < 2) is 128 words of the stream whose
// state is states[2 * lane + j]. One thread per word.
extern "C" __global__ void seed_blocks(const u64* states, u32 lanes, u64 blocks_per_lane,
                                       u64* blocks) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)lanes * 2 * 128) return;
    const u64 seed_block = i / 128, word = i % 128;
    const u64 lane = seed_block / 2, j = seed_block % 2;
    blocks[(lane * blocks_per_lane + j) * 128 + word] = stream_word(states[seed_block], word);
}

// Fills every lane after its seed blocks, one thread per lane: block j is G(block j - 1,
// block r), r drawn from 0..j-1 by the low half of block j - 1's first word.
extern "C" __global__ void fill_lanes(u32 lanes, u64 blocks_per_lane, u64* blocks) {
    const u64 lane = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (lane >= lanes) return;
    u64* first = blocks + lane * blocks_per_lane * 128;
    for (u64 j = 2; j < blocks_per_lane; j++) {
        const u64* previous = first + (j - 1) * 128;
        const u64 reference = (previous[0] & 0xffffffffULL) % (j - 1);
        compress(previous, first + reference * 128, first + j * 128);
    }
}

// ---- Openings ------------------------------------------------------------------------------

// Copies `count` runs of `run_words` words, run i starting at word starts[i] of `source`, one
// after the other into `out`: the rows, blocks and tree nodes an opening needs, in one copy.
extern "C" __global__ void gather_words(const u64* source, const u64* starts, u64 count,
                                        u32 run_words, u64* out) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count * run_words) return;
    out[i] = source[starts[i / run_words] + i % run_words];
}
