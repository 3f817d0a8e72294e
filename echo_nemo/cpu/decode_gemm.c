/* y = x w^T for a decode step: a few rows of x (one per sequence) against a large weight
 * matrix that does not fit in cache. Built and loaded by echo_nemo/cpu/gemm.py.
 *
 *   x: [M, K] row-major, w: [N, K] row-major (a torch Linear's weight, used in place),
 *   y: [M, N] row-major;  M <= 64, K % 8 == 0.
 *
 * Why not BLAS: for so few rows the product is bound by streaming w from memory, and
 * MKL's sgemm spends that time packing w into panels instead (~90 GFLOP/s at the 150m
 * decode shapes on this project's 2-core AMD machines). Here each thread streams its
 * own contiguous block of w's rows once, in tiles of 3 rows kept in L1 while every row
 * of x passes over them, and prefetches the next tile while computing this one
 * (~150 GFLOP/s, the same as with w already in cache).
 *
 * Every y[m, n] is summed in one fixed order whatever the thread count or the slice of
 * w (TP shards): 8 lanes over k = j (mod 8) in increasing k, then a fixed pairwise sum
 * of the lanes. Compiled with -ffp-contract=off so the compiler adds no fusions. */
#include <immintrin.h>
#include <stddef.h>

static inline float lane_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[i, j] for i < mm (<= 4) rows of x and j < nn (<= 3) rows of w; missing rows repeat
 * row 0 and are not stored. One cache line of the next tile is prefetched every `every`
 * steps of 8 k, from *cursor up to end. */
static void tile(const float *x, int mm, const float *w, int nn, int K, float *y, int N,
                 const float **cursor, const float *end, int every) {
    const float *xr[4], *wr[3];
    for (int i = 0; i < 4; i++) xr[i] = x + (size_t)(i < mm ? i : 0) * K;
    for (int j = 0; j < 3; j++) wr[j] = w + (size_t)(j < nn ? j : 0) * K;
    __m256 a[4][3];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) a[i][j] = _mm256_setzero_ps();
    const float *pf = *cursor;
    for (int k = 0, wait = 0; k < K; k += 8) {
        if (--wait <= 0 && pf < end) {
            _mm_prefetch((const char *)pf, _MM_HINT_T0);
            pf += 16;
            wait = every;
        }
        __m256 b0 = _mm256_loadu_ps(wr[0] + k), b1 = _mm256_loadu_ps(wr[1] + k), b2 = _mm256_loadu_ps(wr[2] + k);
        for (int i = 0; i < 4; i++) {
            __m256 xv = _mm256_loadu_ps(xr[i] + k);
            a[i][0] = _mm256_fmadd_ps(xv, b0, a[i][0]);
            a[i][1] = _mm256_fmadd_ps(xv, b1, a[i][1]);
            a[i][2] = _mm256_fmadd_ps(xv, b2, a[i][2]);
        }
    }
    *cursor = pf;
    for (int i = 0; i < 4; i++) /* constant bounds: a stays in registers */
        for (int j = 0; j < 3; j++)
            if (i < mm && j < nn) y[(size_t)i * N + j] = lane_sum(a[i][j]);
}

void echo_decode_gemm(const float *x, const float *w, float *y, int M, int K, int N, int threads) {
    int tiles = (N + 2) / 3;
    /* spread the next tile's 3K floats (3K/16 lines) over this tile's ceil(M/4) passes of K/8 steps */
    int every = (2 * ((M + 3) / 4)) / 3;
    if (every < 1) every = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < tiles; t++) {
        int n = 3 * t, nn = N - n < 3 ? N - n : 3;
        const float *next = w + (size_t)(n + nn) * K, *end = w + (size_t)N * K;
        if (next + 3 * (size_t)K < end) end = next + 3 * (size_t)K;
        for (int m = 0; m < M; m += 4)
            tile(x + (size_t)m * K, M - m < 4 ? M - m : 4, w + (size_t)n * K, nn, K, y + (size_t)m * N + n, N,
                 &next, end, every);
    }
}
