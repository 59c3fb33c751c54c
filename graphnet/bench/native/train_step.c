/* A hand-written float32 training step of the benchmark grid's dense MLP (BENCHMARKS.md): forward,
 * loss, backward and PyTorch's Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8) in place, returning the loss.
 *
 * It is the `c-step` reference point of `graphnet bench` (graphnet/bench/ceilings.py): what a competent
 * engineer writes by hand. Plain loops in an order that keeps the innermost one unit-stride so the
 * compiler vectorises it; no intrinsics, no BLAS, one thread. The sizes are compile-time constants:
 *   LAYERS       number of dense layers
 *   BATCH        rows of the mini-batch
 *   DIMS         LAYERS + 1 widths, input first, as a comma list
 *   MAX_WIDTH    the largest width
 *   MAX_WEIGHTS  the largest in x out over the layers
 *   HIDDEN_TANH  1: tanh after each hidden layer, 0: relu
 *   LOSS         LOSS_BCE_LOGITS, LOSS_SOFTMAX_CE or LOSS_MSE (on the last layer's logits)
 * Scratch is static, so each compiled library holds the state of one model (and its Adam step count).
 */
#include <math.h>
#include <string.h>

#define LOSS_BCE_LOGITS 0
#define LOSS_SOFTMAX_CE 1
#define LOSS_MSE 2

#define LR 1e-3
#define BETA1 0.9
#define BETA2 0.999
#define EPS 1e-8f

/* A trainable array (W1, b1, W2, b2, ... in that order) with its two Adam moments. */
struct param {
    float *value, *m, *v;
};

static const int dims[LAYERS + 1] = {DIMS};
static float out[LAYERS][BATCH * MAX_WIDTH];  /* each layer's output, after the activation if hidden */
static float delta[2][BATCH * MAX_WIDTH];     /* loss gradient w.r.t. a layer's output before activation */
static float grad_w[MAX_WEIGHTS], grad_b[MAX_WIDTH];
static float w_t[MAX_WEIGHTS];                /* a weight matrix transposed, for the input gradient */
static int steps;                             /* Adam's t */

/* c += a @ b, a: rows x inner, b: inner x cols. Row k of b is scaled by a[r][k] into row r of c. */
static void matmul_add(int rows, int inner, int cols, const float *restrict a, const float *restrict b,
                       float *restrict c)
{
    for (int r = 0; r < rows; r++) {
        float *restrict c_row = c + r * cols;
        for (int k = 0; k < inner; k++) {
            const float a_rk = a[r * inner + k];
            const float *restrict b_row = b + k * cols;
            for (int j = 0; j < cols; j++)
                c_row[j] += a_rk * b_row[j];
        }
    }
}

/* c += a^T @ b, a: rows x m, b: rows x n: every row pair adds an outer product. */
static void matmul_tn_add(int rows, int m, int n, const float *restrict a, const float *restrict b,
                          float *restrict c)
{
    for (int r = 0; r < rows; r++) {
        const float *restrict b_row = b + r * n;
        for (int i = 0; i < m; i++) {
            const float a_ri = a[r * m + i];
            float *restrict c_row = c + i * n;
            for (int j = 0; j < n; j++)
                c_row[j] += a_ri * b_row[j];
        }
    }
}

static void transpose(int rows, int cols, const float *restrict a, float *restrict a_t)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            a_t[j * rows + i] = a[i * cols + j];
}

static void activate(int n, float *restrict h)
{
    for (int i = 0; i < n; i++)
        h[i] = HIDDEN_TANH ? tanhf(h[i]) : (h[i] > 0.0f ? h[i] : 0.0f);
}

/* d *= the activation's derivative, written in terms of its output h. */
static void activation_grad(int n, const float *restrict h, float *restrict d)
{
    for (int i = 0; i < n; i++)
        d[i] *= HIDDEN_TANH ? 1.0f - h[i] * h[i] : (h[i] > 0.0f ? 1.0f : 0.0f);
}

/* The loss of logits z (rows x n) against targets y, and its gradient w.r.t. z into dz. Reductions as in
 * peers.py: bce and mse take the mean over all elements, softmax cross-entropy (one-hot y) over rows. */
static float loss_and_grad(int rows, int n, const float *restrict z, const float *restrict y,
                           float *restrict dz)
{
    double total = 0.0;
    if (LOSS == LOSS_BCE_LOGITS) {
        const float scale = 1.0f / (rows * n);
        for (int i = 0; i < rows * n; i++) {
            const float e = expf(-fabsf(z[i]));  /* in (0, 1] for any z: neither form overflows */
            const float sigmoid = z[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
            total += fmaxf(z[i], 0.0f) - z[i] * y[i] + log1pf(e);
            dz[i] = (sigmoid - y[i]) * scale;
        }
        return (float)(total / (rows * n));
    }
    if (LOSS == LOSS_SOFTMAX_CE) {
        const float scale = 1.0f / rows;
        for (int r = 0; r < rows; r++) {
            const float *z_row = z + r * n, *y_row = y + r * n;
            float *dz_row = dz + r * n;
            float top = z_row[0], sum = 0.0f, target = 0.0f;
            for (int j = 1; j < n; j++)
                top = fmaxf(top, z_row[j]);
            for (int j = 0; j < n; j++) {
                dz_row[j] = expf(z_row[j] - top);
                sum += dz_row[j];
                target += y_row[j] * (z_row[j] - top);
            }
            total += logf(sum) - target;
            for (int j = 0; j < n; j++)
                dz_row[j] = (dz_row[j] / sum - y_row[j]) * scale;
        }
        return (float)(total / rows);
    }
    const float scale = 2.0f / (rows * n);
    for (int i = 0; i < rows * n; i++) {
        const float diff = z[i] - y[i];
        total += diff * diff;
        dz[i] = diff * scale;
    }
    return (float)(total / (rows * n));
}

/* p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), m and v the updated moments. */
static void adam(int n, const float *restrict g, struct param p, float step_size, float inv_sqrt_bc2)
{
    const float b1 = (float)BETA1, b2 = (float)BETA2;
    float *restrict value = p.value, *restrict m = p.m, *restrict v = p.v;
    for (int i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        value[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + EPS);
    }
}

/* One step on the batch x (BATCH x DIMS[0]), y (BATCH x DIMS[LAYERS]); params: W1, b1, W2, b2, ... */
float train_step(const float *restrict x, const float *restrict y, const struct param *params)
{
#pragma GCC unroll 16  /* one copy per layer: its sizes become constants in the loops below */
    for (int l = 0; l < LAYERS; l++) {
        const int n_in = dims[l], n_out = dims[l + 1];
        const float *bias = params[2 * l + 1].value;
        for (int r = 0; r < BATCH; r++)
            memcpy(out[l] + r * n_out, bias, n_out * sizeof(float));
        matmul_add(BATCH, n_in, n_out, l ? out[l - 1] : x, params[2 * l].value, out[l]);
        if (l < LAYERS - 1)
            activate(BATCH * n_out, out[l]);
    }
    const float loss = loss_and_grad(BATCH, dims[LAYERS], out[LAYERS - 1], y, delta[0]);

    steps++;
    const float step_size = (float)(LR / (1.0 - pow(BETA1, steps)));
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(1.0 - pow(BETA2, steps)));
#pragma GCC unroll 16
    for (int l = LAYERS - 1; l >= 0; l--) {
        const int n_in = dims[l], n_out = dims[l + 1];
        const float *in = l ? out[l - 1] : x;
        const float *d_out = delta[(LAYERS - 1 - l) % 2];
        float *d_in = delta[(LAYERS - l) % 2];
        memset(grad_w, 0, n_in * n_out * sizeof(float));
        matmul_tn_add(BATCH, n_in, n_out, in, d_out, grad_w);
        memset(grad_b, 0, n_out * sizeof(float));
        for (int r = 0; r < BATCH; r++)
            for (int j = 0; j < n_out; j++)
                grad_b[j] += d_out[r * n_out + j];
        if (l > 0) {  /* the input layer needs no input gradient */
            transpose(n_in, n_out, params[2 * l].value, w_t);
            memset(d_in, 0, BATCH * n_in * sizeof(float));
            matmul_add(BATCH, n_out, n_in, d_out, w_t, d_in);
            activation_grad(BATCH * n_in, in, d_in);
        }
        adam(n_in * n_out, grad_w, params[2 * l], step_size, inv_sqrt_bc2);
        adam(n_out, grad_b, params[2 * l + 1], step_size, inv_sqrt_bc2);
    }
    return loss;
}
