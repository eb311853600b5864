// Fused CPU kernels for the plastic recurrent layer (the maths: plasticity/rules/README.md;
// the algorithm: fused.py, whose torch-op kernels are the reference these are tested against).
//
// The rule's elementwise maths is not written here: fused.py puts a `PlasticRule` functor
// before this file (update, inverse, d_h, d_pre, d_post, d_eta as static inline
// functions f(h, pre, post, eta)), translated from the rule's Python functions by
// plasticity/rules/elementwise.py, and compiles one module per rule.
//
// Shapes: Hebb / gradient buffers [B, N, N] (rows presynaptic i, columns postsynaptic j),
// activities [B, N], alpha and eta given as rows with a row stride (N for one value per
// connection, 0 for one shared value broadcast along a single row of N values).
//
// Each kernel makes exactly one pass over its [B, N, N] tensors. Rows i are split
// between threads; inside a row the batch loop b sits outside the contiguous j loop, so
// the alpha / eta / dalpha / deta rows (shared by the batch) stay in L1 while the
// [B, N, N] tensors stream through once. Column sums (over i) go to one partial buffer
// per thread, summed at the end.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace {

#ifndef PLASTIC_ROW_BLOCK
#define PLASTIC_ROW_BLOCK 16
#endif
constexpr int64_t kRowBlock = PLASTIC_ROW_BLOCK;
constexpr int64_t kGrain = kRowBlock;

// Row i of a [B, N, N] tensor may come from a tensor with batch / row stride 0 (zeros).
struct Rows {
  const void* data;
  int64_t b_stride, i_stride;
};

template <typename T>
const T* row(const Rows& r, int64_t b, int64_t i) {
  return static_cast<const T*>(r.data) + b * r.b_stride + i * r.i_stride;
}

Rows rows_of(const c10::optional<at::Tensor>& t, const at::Tensor& zero_row) {
  if (!t.has_value() || !t->defined()) return {zero_row.data_ptr(), 0, 0};
  TORCH_CHECK(t->is_contiguous() && t->dim() == 3, "fused kernel: [B, N, N] tensors must be contiguous");
  return {t->data_ptr(), t->size(1) * t->size(2), t->size(2)};
}

void check_vec(const at::Tensor& t, int64_t b, int64_t n, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == b * n, "fused kernel: ", name, " must be contiguous [B, N]");
}

// ---------------------------------------------------------------------------------------
// Forward: h_next = clip(rule(h, pre, post)); z[b, j] = sum_i post[b, i] * alpha_ij * h_next[b, i, j]
// (the plastic part of the next step's pre-activation). Returns whether any value was clipped.
// The update of one row i of episode b; `h` and `out` may be the same row (IN_PLACE).
template <typename T, bool CLIP, bool WANT_Z>
inline int forward_row(const T* h, T* out, const T* __restrict__ a, const T* __restrict__ e,
                       const T* __restrict__ q, T* __restrict__ z, T p, T y, T clip, int64_t N) {
  int any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t j = 0; j < N; ++j) {
    const T hv = h[j];
    T v = PlasticRule::update(hv, p, q[j], e[j]);
    if (CLIP) {
      any |= (v > clip) | (v < -clip);
      v = std::min(std::max(v, -clip), clip);
    }
    out[j] = v;
    if (WANT_Z) z[j] += y * a[j] * v;
  }
  return any;
}

// Episodes outermost: each thread streams its rows of one episode's [N, N] slab at a
// time (long contiguous runs), and that episode's z row stays in L1. Written in place
// (h_next == h) where the caller does not keep H_t: a read-modify-write of the same
// lines moves 2 bytes per byte of Hebb where writing elsewhere moves 3 (the write
// allocates its line first).
template <typename T, bool CLIP, bool WANT_Z, bool IN_PLACE>
bool forward_impl(Rows hr, T* hn, const T* pre, const T* post, const T* alpha, int64_t a_rs,
                  const T* eta, int64_t e_rs, T clip, T* zpart, int64_t B, int64_t N) {
  const int64_t nthreads = at::get_num_threads();
  std::vector<int> clipped(nthreads, 0);
  at::parallel_for(0, N, kGrain, [&](int64_t i0, int64_t i1) {
    const int tid = at::get_thread_num();
    T* zp = zpart + tid * B * N;
    int any = 0;
    for (int64_t b = 0; b < B; ++b) {
      const T* __restrict__ q = post + b * N;
      T* __restrict__ z = zp + b * N;
      for (int64_t i = i0; i < i1; ++i) {
        T* out = hn + (b * N + i) * N;
        const T* h = IN_PLACE ? out : row<T>(hr, b, i);
        any |= forward_row<T, CLIP, WANT_Z>(h, out, alpha + i * a_rs, eta + i * e_rs, q, z, pre[b * N + i],
                                                 post[b * N + i], clip, N);
      }
    }
    clipped[tid] |= any;
  });
  return std::any_of(clipped.begin(), clipped.end(), [](int c) { return c != 0; });
}

template <typename T, bool CLIP>
bool forward_want(bool want_z, bool in_place, Rows hr, T* hn, const T* pre, const T* post, const T* alpha,
                  int64_t a_rs, const T* eta, int64_t e_rs, T clip, T* zpart, int64_t B, int64_t N) {
#define PLASTIC_FWD(Z, P) \
  forward_impl<T, CLIP, Z, P>(hr, hn, pre, post, alpha, a_rs, eta, e_rs, clip, zpart, B, N)
  if (in_place) return want_z ? PLASTIC_FWD(true, true) : PLASTIC_FWD(false, true);
  return want_z ? PLASTIC_FWD(true, false) : PLASTIC_FWD(false, false);
#undef PLASTIC_FWD
}

// h: [B, N, N] or None (zeros); h_next may be h itself (updated in place). Writes h_next;
// returns (clipped, z or empty).
std::tuple<bool, at::Tensor> forward_step(const c10::optional<at::Tensor>& h, at::Tensor h_next, at::Tensor pre,
                                          at::Tensor post, at::Tensor alpha, int64_t alpha_rs, at::Tensor eta,
                                          int64_t eta_rs, double clip, bool want_z) {
  const int64_t B = pre.size(0), N = pre.size(1);
  check_vec(pre, B, N, "pre");
  check_vec(post, B, N, "post");
  TORCH_CHECK(h_next.is_contiguous() && h_next.numel() == B * N * N, "fused kernel: h_next must be [B, N, N]");
  const at::Tensor zero_row = at::zeros({N}, pre.options());
  const Rows hr = rows_of(h, zero_row);
  const bool in_place = h.has_value() && h->defined() && h->data_ptr() == h_next.data_ptr();
  const int64_t nthreads = at::get_num_threads();
  at::Tensor zpart = want_z ? at::zeros({nthreads, B, N}, pre.options()) : at::Tensor();
  bool clipped = false;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "plastic_forward_step", [&] {
    using T = scalar_t;
    T* zp = want_z ? zpart.data_ptr<T>() : nullptr;
    auto args = std::make_tuple(in_place, hr, h_next.data_ptr<T>(), pre.data_ptr<T>(), post.data_ptr<T>(),
                                alpha.data_ptr<T>(), alpha_rs, eta.data_ptr<T>(), eta_rs, static_cast<T>(clip), zp,
                                B, N);
    const bool has_clip = clip > 0;
    auto call = [&](auto fn) { return std::apply([&](auto... a) { return fn(want_z, a...); }, args); };
    clipped = has_clip ? call(forward_want<T, true>) : call(forward_want<T, false>);
  });
  return {clipped, want_z ? zpart.sum(0) : at::Tensor()};
}

// ---------------------------------------------------------------------------------------
// Backward, one pass per step, walking time backwards. On entry `h` holds H_t (the Hebb
// state step t read, after its reset mask) and `g` the gradient w.r.t. the rule's
// unclipped output at step t. The pass
//   STAGE: backpropagates step t: d pre_t (row sums), dalpha, and g <- dL/dH_t (times keep_t);
//   PREV:  rebuilds H_{t-1} into `h` (INVERT: by inverting step t-1's update; CKPT: from the
//          stored exact state), masks g by step t-1's clip where it clipped, and accumulates
//          step t-1's rule gradients: d post_{t-1} (column sums) and deta.
enum Prev { kNone = 0, kInvert = 1, kCkpt = 2 };

// ETA_ROW: eta per connection (a row of N values per i). Otherwise eta is one value: no
// eta row to stream, deta summed in registers, and what depends on eta alone (e.g. the
// decaying rule's 1 / (1 - eta)) hoisted out of the loop by the compiler.
template <typename T, int PREV, bool CLIP, bool STAGE, bool ETA_ROW>
void backward_impl(T* hbuf, T* gbuf, Rows ck, const T* pre, const T* post, const T* grad_a, const T* keep,
                   const T* pre_p, const T* post_p, const T* alpha, int64_t a_rs, const T* eta, int64_t e_rs, T clip,
                   T* dpre, T* dalpha, T* deta, T* col_sums_part, int64_t B, int64_t N) {
  const int64_t nthreads = at::get_num_threads();
  std::vector<T> deta_part(nthreads, T(0));
  const T E = eta[0];
  at::parallel_for(0, N, kGrain, [&](int64_t i0, int64_t i1) {
    const int tid = at::get_thread_num();
    T* col_sums = col_sums_part + tid * B * N;
    T de_thread = 0;
    for (int64_t blk = i0; blk < i1; blk += kRowBlock)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = blk; i < std::min(blk + kRowBlock, i1); ++i) {
        const T* __restrict__ a = alpha + i * a_rs;
        const T* __restrict__ e = eta + i * e_rs;
        T* __restrict__ dal = dalpha + i * N;
        T* __restrict__ det = deta + i * N;
        T* __restrict__ h = hbuf + (b * N + i) * N;
        T* __restrict__ g = gbuf + (b * N + i) * N;
        const T* __restrict__ c = PREV == kCkpt ? row<T>(ck, b, i) : nullptr;
        const T* __restrict__ q = STAGE ? post + b * N : nullptr;
        const T* __restrict__ grad_a_b = STAGE ? grad_a + b * N : nullptr;
        const T* __restrict__ qp = PREV ? post_p + b * N : nullptr;
        T* __restrict__ col_sum = col_sums + b * N;
        const T p = STAGE ? pre[b * N + i] : T(0);
        const T k = STAGE ? keep[b] : T(1);
        const T pp = PREV ? pre_p[b * N + i] : T(0);
        T dp = 0, de = 0;
#pragma omp simd reduction(+ : dp, de)
        for (int64_t j = 0; j < N; ++j) {
          const T ej = ETA_ROW ? e[j] : E;
          const T hv = h[j];
          T grad_h = g[j];
          if (STAGE) {
            // Step t: H_{t+1} = update(H_t, pre_t, post_t); grad_h is dL/dH_{t+1} on entry.
            const T alpha_ga = a[j] * grad_a_b[j];
            dp += grad_h * PlasticRule::d_pre(hv, p, q[j], ej) + alpha_ga * hv;
            dal[j] += p * hv * grad_a_b[j];
            grad_h = (grad_h * PlasticRule::d_h(hv, p, q[j], ej) + alpha_ga * p) * k;
          }
          if (PREV) {
            // Step t-1: H_t = update(H_{t-1}, pre_{t-1}, post_{t-1}); grad_h is dL/dH_t.
            const T h_prev = PREV == kInvert ? PlasticRule::inverse(hv, pp, qp[j], ej) : c[j];
            if (CLIP) {
              const T raw = PlasticRule::update(h_prev, pp, qp[j], ej);
              grad_h = (raw > clip || raw < -clip) ? T(0) : grad_h;
            }
            col_sum[j] += grad_h * PlasticRule::d_post(h_prev, pp, qp[j], ej);
            const T dej = grad_h * PlasticRule::d_eta(h_prev, pp, qp[j], ej);
            if (ETA_ROW) {
              det[j] += dej;
            } else {
              de += dej;
            }
            h[j] = h_prev;
          }
          g[j] = grad_h;
        }
        if (STAGE) dpre[b * N + i] = dp;
        de_thread += de;
      }
    }
    deta_part[tid] += de_thread;
  });
  if (!ETA_ROW && PREV) {
    // deta is summed to one value by the caller: its first element carries the total.
    for (const T v : deta_part) deta[0] += v;
  }
}

template <typename T, int PREV>
void backward_flags(bool clip_on, bool stage, bool eta_row, T* hbuf, T* gbuf, Rows ck, const T* pre, const T* post,
                    const T* grad_a, const T* keep, const T* pre_p, const T* post_p, const T* alpha, int64_t a_rs,
                    const T* eta, int64_t e_rs, T clip, T* dpre, T* dalpha, T* deta, T* col_sums_part, int64_t B,
                    int64_t N) {
#define PLASTIC_CALL(C, S, R)                                                                                       \
  backward_impl<T, PREV, C, S, R>(hbuf, gbuf, ck, pre, post, grad_a, keep, pre_p, post_p, alpha, a_rs, eta, e_rs, \
                                       clip, dpre, dalpha, deta, col_sums_part, B, N)
#define PLASTIC_ROWS(C, S) \
  if (eta_row) PLASTIC_CALL(C, S, true); else PLASTIC_CALL(C, S, false)
  // Clipping is only undone where the state was stored (a clipped step is never inverted).
  const bool c = clip_on && PREV == kCkpt;
  if (c && stage) { PLASTIC_ROWS(true, true); }
  else if (c) { PLASTIC_ROWS(true, false); }
  else if (stage) { PLASTIC_ROWS(false, true); }
  else { PLASTIC_ROWS(false, false); }
#undef PLASTIC_ROWS
#undef PLASTIC_CALL
}

// prev: 0 none, 1 invert, 2 checkpoint (ckpt None = zeros). Returns the column sums
// d post_{t-1} [B, N] (zeros when prev == 0). dpre, dalpha, deta are written / accumulated.
at::Tensor backward_stage(at::Tensor h, at::Tensor g, const c10::optional<at::Tensor>& ckpt, int64_t prev,
                          bool stage, at::Tensor pre, at::Tensor post, at::Tensor grad_a, at::Tensor keep,
                          at::Tensor pre_p, at::Tensor post_p, at::Tensor alpha, int64_t alpha_rs, at::Tensor eta,
                          int64_t eta_rs, double clip, at::Tensor dpre, at::Tensor dalpha,
                          at::Tensor deta) {
  const int64_t B = h.size(0), N = h.size(1);
  TORCH_CHECK(h.is_contiguous() && g.is_contiguous() && h.sizes() == g.sizes(), "fused kernel: h, g must match");
  TORCH_CHECK(prev >= 0 && prev <= 2, "fused kernel: prev must be 0, 1 or 2");
  for (const auto* t : {&pre, &post, &grad_a, &pre_p, &post_p, &dpre}) check_vec(*t, B, N, "activity");
  TORCH_CHECK(dalpha.is_contiguous() && deta.is_contiguous() && dalpha.numel() == N * N && deta.numel() == N * N,
              "fused kernel: dalpha, deta must be [N, N]");
  const at::Tensor zero_row = at::zeros({N}, h.options());
  const Rows ck = rows_of(ckpt, zero_row);
  const int64_t nthreads = at::get_num_threads();
  at::Tensor col_sums_part = at::zeros({nthreads, B, N}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "plastic_backward_stage", [&] {
    using T = scalar_t;
    const bool clip_on = clip > 0;
    T* hebb_data = h.data_ptr<T>();
    T* grad_data = g.data_ptr<T>();
    auto go = [&](auto fn) {
      fn(clip_on, stage, eta_rs != 0, hebb_data, grad_data, ck, pre.data_ptr<T>(), post.data_ptr<T>(), grad_a.data_ptr<T>(), keep.data_ptr<T>(),
         pre_p.data_ptr<T>(), post_p.data_ptr<T>(), alpha.data_ptr<T>(), alpha_rs, eta.data_ptr<T>(), eta_rs,
         static_cast<T>(clip), dpre.data_ptr<T>(), dalpha.data_ptr<T>(), deta.data_ptr<T>(), col_sums_part.data_ptr<T>(),
         B, N);
    };
    if (prev == kNone) go(backward_flags<T, kNone>);
    else if (prev == kInvert) go(backward_flags<T, kInvert>);
    else go(backward_flags<T, kCkpt>);
  });
  return col_sums_part.sum(0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_step", &forward_step, "fused Hebb update + plastic matvec (one pass over Hebb)");
  m.def("backward_stage", &backward_stage, "one backward step with Hebb reconstruction (one pass)");
}
