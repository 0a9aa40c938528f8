/* The two limits the CPU scan is measured against, on this machine, with T threads:
 *   read bandwidth: summing a 2 GiB array of floats with AVX2 loads (no writes);
 *   f32 arithmetic: independent AVX2 fused multiply-add chains, no memory traffic.
 * Build and run: cc -O3 -mavx2 -mfma -fopenmp benches/machine_limits.c -o /tmp/limits && /tmp/limits 2
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static double now(void) { return omp_get_wtime(); }

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    omp_set_num_threads(threads);
    size_t n = (size_t)512 << 20; /* floats: 2 GiB */
    float *a = aligned_alloc(64, n * sizeof(float));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023) * 1e-3f;

    double best_bw = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        float total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
        for (size_t i = 0; i < n; i += 32) {
            __m256 s0 = _mm256_load_ps(a + i), s1 = _mm256_load_ps(a + i + 8);
            s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i + 16));
            s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 24));
            s0 = _mm256_add_ps(s0, s1);
            float lanes[8];
            _mm256_storeu_ps(lanes, s0);
            total += lanes[0];
        }
        double bw = n * sizeof(float) / (now() - t);
        if (bw > best_bw) best_bw = bw;
        if (total == 42.0f) printf("!");
    }

    double best_flops = 0;
    for (int rep = 0; rep < 5; rep++) {
        long iters = 50000000;
        double t = now();
        float sink = 0;
#pragma omp parallel reduction(+ : sink)
        {
            __m256 acc[12];
            __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
            for (int j = 0; j < 12; j++) acc[j] = _mm256_set1_ps((float)j);
            for (long i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) acc[j] = _mm256_fmadd_ps(acc[j], x, y);
            float lanes[8];
            __m256 s = acc[0];
            for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, acc[j]);
            _mm256_storeu_ps(lanes, s);
            sink += lanes[0];
        }
        double flops = (double)threads * iters * 12 * 8 * 2 / (now() - t);
        if (flops > best_flops) best_flops = flops;
        if (sink == 42.0f) printf("!");
    }
    printf("limits threads=%d read_gb_per_s=%.1f f32_gflop_per_s=%.1f\n", threads, best_bw / 1e9,
           best_flops / 1e9);
    free(a);
    return 0;
}
