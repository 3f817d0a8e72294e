/* Causal self-attention forward and backward for training on CPU (AVX2 + FMA), called by
 * echo_nemo/cpu/attention.py. One thread takes one (batch, kv head) pair at a time and
 * all of its query heads, so every gradient is summed by one thread in one fixed order:
 * the results do not depend on the thread count.
 *
 * Why: torch's CPU flash-attention kernel runs the study's head sizes (32-128) at ~50
 * GFLOP/s on this project's machines, a fifth of the matmul peak, and the tiny model
 * spends a fifth of its training step there. Here the score rows of a block of R queries
 * against all the keys they see are held whole (sequences are at most a few thousand
 * tokens), so softmax needs no running rescale, and every product is one register-tiled
 * kernel, C (+)= A B over row-major blocks (`mm`).
 *
 * Tensors are [b, heads, s, d] views given by element strides (batch, head, position),
 * d contiguous and a multiple of 8; q head h uses kv head h / per (grouped-query).
 *   forward:  o = softmax(scale q k^T + causal mask) v,  lse = log sum exp(scale q k^T)
 *   backward: P = exp(scale q k^T - lse);  dv = P^T do;  dP = do v^T;
 *             dS = P (dP - rowsum(do o));  dq = scale dS k;  dk = scale dS^T q
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define R 32 /* query rows per block */

/* ----------------------------------------------------------------- C (+)= A B kernel */
/* C[4 x 8*NV] for rows r < nr (missing rows repeat row 0, not stored), over k < K.
 * Twelve named accumulators, not an array: GCC keeps an array of them on the stack. */
#define LOAD_C(i, v) (acc && (i) < nr && (v) < NV ? _mm256_loadu_ps(C + (size_t)(i) * ldc + 8 * (v)) : _mm256_setzero_ps())
#define ROW_FMA(i)                                                                                 \
    x = _mm256_broadcast_ss(a##i + k);                                                             \
    c##i##0 = _mm256_fmadd_ps(x, b0, c##i##0);                                                     \
    if (NV > 1) c##i##1 = _mm256_fmadd_ps(x, b1, c##i##1);                                         \
    if (NV > 2) c##i##2 = _mm256_fmadd_ps(x, b2, c##i##2);
#define ROW_STORE(i)                                                                               \
    if ((i) < nr) {                                                                                \
        _mm256_storeu_ps(C + (size_t)(i) * ldc, c##i##0);                                          \
        if (NV > 1) _mm256_storeu_ps(C + (size_t)(i) * ldc + 8, c##i##1);                          \
        if (NV > 2) _mm256_storeu_ps(C + (size_t)(i) * ldc + 16, c##i##2);                         \
    }
#define TILE(N)                                                                                    \
    static void tile##N(float *C, int ldc, const float *A, int lda, const float *B, int ldb,      \
                        int nr, int K, int acc) {                                                  \
        enum { NV = N };                                                                           \
        const float *a0 = A, *a1 = A + (nr > 1 ? lda : 0), *a2 = A + (nr > 2 ? 2 * lda : 0);      \
        const float *a3 = A + (nr > 3 ? 3 * (size_t)lda : 0);                                      \
        __m256 c00 = LOAD_C(0, 0), c01 = LOAD_C(0, 1), c02 = LOAD_C(0, 2);                         \
        __m256 c10 = LOAD_C(1, 0), c11 = LOAD_C(1, 1), c12 = LOAD_C(1, 2);                         \
        __m256 c20 = LOAD_C(2, 0), c21 = LOAD_C(2, 1), c22 = LOAD_C(2, 2);                         \
        __m256 c30 = LOAD_C(3, 0), c31 = LOAD_C(3, 1), c32 = LOAD_C(3, 2);                         \
        for (int k = 0; k < K; k++) {                                                              \
            const float *bk = B + (size_t)k * ldb;                                                 \
            __m256 x, b0 = _mm256_loadu_ps(bk);                                                    \
            __m256 b1 = NV > 1 ? _mm256_loadu_ps(bk + 8) : b0, b2 = NV > 2 ? _mm256_loadu_ps(bk + 16) : b0; \
            ROW_FMA(0) ROW_FMA(1) ROW_FMA(2) ROW_FMA(3)                                            \
        }                                                                                          \
        ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3)                                        \
    }
TILE(1)
TILE(2)
TILE(3)

/* C[n x m] = (acc ? C : 0) + A[n x K] B[K x m]; m % 8 == 0. */
static void mm(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int n, int K, int m, int acc) {
    for (int r = 0; r < n; r += 4) {
        int nr = n - r < 4 ? n - r : 4;
        float *c = C + (size_t)r * ldc;
        const float *a = A + (size_t)r * lda;
        int j = 0;
        for (; j + 24 <= m; j += 24) tile3(c + j, ldc, a, lda, B + j, ldb, nr, K, acc);
        if (m - j == 16) tile2(c + j, ldc, a, lda, B + j, ldb, nr, K, acc);
        else if (m - j == 8) tile1(c + j, ldc, a, lda, B + j, ldb, nr, K, acc);
    }
}

/* ----------------------------------------------------------------- elementwise helpers */
/* exp(x) for x <= 0 (a Cephes-style polynomial; relative error ~2e-7); x < -87 gives 0. */
static inline __m256 exp_neg(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 zero = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* scale * x[0..8) - shift, with lanes from `valid` on (the causal edge) at -inf */
static inline __m256 scores(const float *x, float scale, float shift, int valid) {
    __m256 y = _mm256_fmsub_ps(_mm256_loadu_ps(x), _mm256_set1_ps(scale), _mm256_set1_ps(shift));
    if (valid >= 8) return y;
    __m256 keep = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps((float)valid), _CMP_LT_OQ);
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), y, keep);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Row t of a [b, heads, s, d] view. */
typedef struct {
    long sb, sh, st;
} strides;

static inline const float *row(const float *base, strides s, int b, int h, int t) {
    return base + b * s.sb + h * s.sh + t * s.st;
}

static float *scratch(size_t floats) {
    return aligned_alloc(32, (floats * sizeof(float) + 31) / 32 * 32);
}

/* dst[n x d] (dense) = n rows of src at stride st */
static void gather(float *dst, const float *src, long st, int n, int d) {
    for (int t = 0; t < n; t++) memcpy(dst + (size_t)t * d, src + (size_t)t * st, sizeof(float) * d);
}

/* dst[d x ld] = src[s x d]^T (dense rows), zero in columns s .. ld */
static void transpose(float *dst, int ld, const float *src, int s, int d) {
    for (int e = 0; e < d; e++)
        for (int t = 0; t < ld; t++) dst[(size_t)e * ld + t] = t < s ? src[(size_t)t * d + e] : 0.0f;
}

/* dst[n x R] = src[r x n]^T (leading dimension lds) */
static void transpose_block(float *dst, const float *src, int lds, int r, int n) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < r; i++) dst[(size_t)j * R + i] = src[(size_t)i * lds + j];
}

/* Rows of length s are held with leading dimension ld = s rounded up to 8, plus 8: a
 * power-of-two stride (s = 512, 2048) would put every row of a block in the same L1
 * sets. Keys and values are gathered into dense [s x d] copies for the same reason
 * (their rows sit heads * d or 3 * heads * d floats apart in the model's layout). */
static int padded(int s) { return (s + 7) / 8 * 8 + 8; }

/* ----------------------------------------------------------------- forward */
void echo_attention_fwd(const float *q, strides qs, const float *k, strides ks, const float *v, strides vs,
                        float *o, strides os, float *lse, int B, int H, int G, int S, int D, float scale,
                        int threads) {
    int per = H / G, ld = padded(S);
#pragma omp parallel num_threads(threads)
    {
        float *kt = scratch((size_t)D * ld + (size_t)R * ld + (size_t)S * D + (size_t)R * D);
        float *p = kt + (size_t)D * ld, *vc = p + (size_t)R * ld, *qb = vc + (size_t)S * D;
#pragma omp for schedule(static)
        for (int bg = 0; bg < B * G; bg++) {
            int b = bg / G, g = bg % G;
            gather(vc, row(k, ks, b, g, 0), ks.st, S, D);
            transpose(kt, ld, vc, S, D);
            gather(vc, row(v, vs, b, g, 0), vs.st, S, D);
            for (int hp = 0; hp < per; hp++) {
                int h = g * per + hp;
                for (int i0 = 0; i0 < S; i0 += R) {
                    int r = S - i0 < R ? S - i0 : R, n = i0 + r, n8 = (n + 7) / 8 * 8;
                    gather(qb, row(q, qs, b, h, i0), qs.st, r, D);
                    mm(p, ld, qb, D, kt, ld, r, D, n8, 0);
                    for (int a = 0; a < r; a++) {
                        float *pr = p + (size_t)a * ld;
                        int len = i0 + a + 1; /* keys 0 .. i0 + a */
                        __m256 vm = _mm256_set1_ps(-INFINITY), sum = _mm256_setzero_ps();
                        for (int j = 0; j < n8; j += 8) vm = _mm256_max_ps(vm, scores(pr + j, scale, 0.0f, len - j));
                        float m = hmax8(vm);
                        for (int j = 0; j < n8; j += 8) {
                            __m256 e = exp_neg(scores(pr + j, scale, m, len - j));
                            _mm256_storeu_ps(pr + j, e);
                            sum = _mm256_add_ps(sum, e);
                        }
                        float total = hsum8(sum);
                        __m256 inv = _mm256_set1_ps(1.0f / total);
                        for (int j = 0; j < n8; j += 8) _mm256_storeu_ps(pr + j, _mm256_mul_ps(_mm256_loadu_ps(pr + j), inv));
                        lse[((size_t)b * H + h) * S + i0 + a] = m + logf(total);
                    }
                    /* o rows = P[r x n] v[n x D] */
                    mm(o + b * os.sb + h * os.sh + (long)i0 * os.st, (int)os.st, p, ld, vc, D, r, n, D, 0);
                }
            }
        }
        free(kt);
    }
}

/* ----------------------------------------------------------------- backward */
void echo_attention_bwd(const float *q, strides qs, const float *k, strides ks, const float *v, strides vs,
                        const float *o, strides os, const float *dout, strides dos, const float *lse,
                        float *dq, strides dqs, float *dk, strides dks, float *dv, strides dvs,
                        int B, int H, int G, int S, int D, float scale, int threads) {
    int per = H / G, ld = padded(S);
#pragma omp parallel num_threads(threads)
    {
        size_t need = 2 * (size_t)D * ld + 2 * (size_t)R * ld + 2 * (size_t)ld * R + 4 * (size_t)S * D
                      + 2 * (size_t)R * D + S;
        float *kt = scratch(need);
        float *vt = kt + (size_t)D * ld, *p = vt + (size_t)D * ld, *ds = p + (size_t)R * ld;
        float *pt = ds + (size_t)R * ld, *dst = pt + (size_t)ld * R, *kc = dst + (size_t)ld * R;
        float *vc = kc + (size_t)S * D, *dka = vc + (size_t)S * D, *dva = dka + (size_t)S * D;
        float *qb = dva + (size_t)S * D, *db = qb + (size_t)R * D, *delta = db + (size_t)R * D;
#pragma omp for schedule(static)
        for (int bg = 0; bg < B * G; bg++) {
            int b = bg / G, g = bg % G;
            gather(kc, row(k, ks, b, g, 0), ks.st, S, D);
            gather(vc, row(v, vs, b, g, 0), vs.st, S, D);
            transpose(kt, ld, kc, S, D);
            transpose(vt, ld, vc, S, D);
            memset(dka, 0, sizeof(float) * (size_t)S * D);
            memset(dva, 0, sizeof(float) * (size_t)S * D);
            for (int hp = 0; hp < per; hp++) {
                int h = g * per + hp;
                for (int i = 0; i < S; i++) {
                    const float *x = row(dout, dos, b, h, i), *y = row(o, os, b, h, i);
                    __m256 acc = _mm256_setzero_ps();
                    for (int e = 0; e < D; e += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + e), _mm256_loadu_ps(y + e), acc);
                    delta[i] = hsum8(acc);
                }
                const float *lrow = lse + ((size_t)b * H + h) * S;
                for (int i0 = 0; i0 < S; i0 += R) {
                    int r = S - i0 < R ? S - i0 : R, n = i0 + r, n8 = (n + 7) / 8 * 8;
                    gather(qb, row(q, qs, b, h, i0), qs.st, r, D);
                    gather(db, row(dout, dos, b, h, i0), dos.st, r, D);
                    mm(p, ld, qb, D, kt, ld, r, D, n8, 0);  /* scores */
                    mm(ds, ld, db, D, vt, ld, r, D, n8, 0); /* dP */
                    for (int a = 0; a < r; a++) {
                        float *pr = p + (size_t)a * ld, *dr = ds + (size_t)a * ld;
                        int len = i0 + a + 1;
                        __m256 vd = _mm256_set1_ps(delta[i0 + a]), vs8 = _mm256_set1_ps(scale);
                        for (int j = 0; j < n8; j += 8) {
                            __m256 pj = exp_neg(scores(pr + j, scale, lrow[i0 + a], len - j));
                            _mm256_storeu_ps(pr + j, pj);
                            __m256 dsj = _mm256_mul_ps(pj, _mm256_sub_ps(_mm256_loadu_ps(dr + j), vd));
                            _mm256_storeu_ps(dr + j, _mm256_mul_ps(dsj, vs8));
                        }
                    }
                    /* dq rows = dS[r x n] k[n x D] */
                    mm(dq + b * dqs.sb + h * dqs.sh + (long)i0 * dqs.st, (int)dqs.st, ds, ld, kc, D, r, n, D, 0);
                    transpose_block(pt, p, ld, r, n);
                    transpose_block(dst, ds, ld, r, n);
                    mm(dva, D, pt, R, db, D, n, r, D, 1); /* dv += P^T do */
                    mm(dka, D, dst, R, qb, D, n, r, D, 1); /* dk += dS^T q */
                }
            }
            for (int t = 0; t < S; t++) {
                memcpy(dk + b * dks.sb + g * dks.sh + t * dks.st, dka + (size_t)t * D, sizeof(float) * D);
                memcpy(dv + b * dvs.sb + g * dvs.sh + t * dvs.st, dva + (size_t)t * D, sizeof(float) * D);
            }
        }
        free(kt);
    }
}
