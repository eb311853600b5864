// Fused CPU kernels for the plastic recurrent layer (the maths: plasticity/rules/README.md;
// the contract: contract.py; the torch-op kernels, kernels_torch.py, are the reference these
// are tested against).
//
// The rule's elementwise maths is not written here: kernels_cpp.py puts a `PlasticRule`
// functor before this file (update, inverse, d_h, d_pre, d_post, d_eta, and d_mod for a
// neuromodulated rule, as static inline functions f(h, pre, post, eta, mod); `modulated`
// says whether the rule reads M(t)), translated from the rule's Python functions by
// plasticity/rules/elementwise.py, and compiles one module per rule. It also puts there
// `enum Prev`, the backward modes, from contract.py. A rule with a second
// trace (`traces == 2`, e.g. retroactive's eligibility trace E) has functions f(h, e, pre,
// post, eta, mod): update and update_e, the derivatives of h(t+1) (d_h, d_e, d_pre, ...) and
// of e(t+1) (e_d_h, e_d_e, ...), and no inverse: its kernels read and write E beside Hebb
// (`x2` rows), and its backward always takes step t-1's state from a stored one.
//
// Shapes: Hebb / gradient buffers [B, N, N] (rows presynaptic i, columns postsynaptic j),
// activities [B, N], alpha, w and eta given as rows with a row stride (N for one value per
// connection, 0 for one shared value broadcast along a single row of N values; w not
// given: a row of zeros), M(t) of a neuromodulated rule [B, N] (one value per episode and
// postsynaptic neuron; not given: a row of zeros for every episode).
//
// Each kernel makes exactly one pass over its [B, N, N] tensors. Rows i are split
// between threads in blocks of kRowBlock; inside a block the batch loop b sits outside
// the rows, so the block's alpha / w / eta / dalpha / deta rows (shared by the batch) stay
// in L2 while the [B, N, N] tensors stream through once. Column sums (over i) go to one
// partial buffer per thread, summed at the end. Inside the parallel lambdas, what the
// inner loops read is first copied into the worker's own variables (see backward_impl).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

namespace {

// The rule as a type that depends on T: in a branch that `if constexpr` leaves out for this
// rule (the two-trace code for a one-trace rule, and the reverse), its functions are then
// looked up only where used, so each rule's functor needs its own functions alone.
template <typename T>
struct Rule : PlasticRule {};

// The rule's functions at one connection of its state (h, x), for the kernels' one loop
// body: x, a two-trace rule's second trace, is 0 and unread for a one-trace rule. The
// derivatives take the gradients of both traces and return g * d h'/d arg + gx * d x'/d arg
// (one-trace: g * d h'/d arg, the same arithmetic as the rule's own d_<arg>).
template <typename T>
struct Step {
  static constexpr bool two = PlasticRule::traces == 2;
  static inline T update(T h, T x, T p, T q, T e, T m) {
    if constexpr (two) return Rule<T>::update(h, x, p, q, e, m);
    else return Rule<T>::update(h, p, q, e, m);
  }
  static inline T inverse(T h, T p, T q, T e, T m) {
    if constexpr (two) return h;  // never called: a two-trace rule is not inverted (backward_stage checks)
    else return Rule<T>::inverse(h, p, q, e, m);
  }
#define PLASTIC_THROUGH(D)                                                                           \
  static inline T D(T g, T gx, T h, T x, T p, T q, T e, T m) {                                       \
    if constexpr (two) return g * Rule<T>::D(h, x, p, q, e, m) + gx * Rule<T>::e_##D(h, x, p, q, e, m); \
    else return g * Rule<T>::D(h, p, q, e, m);                                                        \
  }
  PLASTIC_THROUGH(d_h)
  PLASTIC_THROUGH(d_e)  // called for two-trace rules only
  PLASTIC_THROUGH(d_pre)
  PLASTIC_THROUGH(d_post)
  PLASTIC_THROUGH(d_eta)
  PLASTIC_THROUGH(d_mod)
#undef PLASTIC_THROUGH
};

#ifndef PLASTIC_ROW_BLOCK
#define PLASTIC_ROW_BLOCK 16
#endif
constexpr int64_t kRowBlock = PLASTIC_ROW_BLOCK;
constexpr int64_t kGrain = kRowBlock;

// Subnormal floats (below 1.2e-38 in float32: gradients and traces that decayed over many
// steps) take a slow microcode path on x86; a training run of the reference pattern task
// met enough of them to cost 10% of its time. Each worker treats them as zero while it
// runs a kernel (FTZ and DAZ in its MXCSR, restored after): the results differ from
// IEEE arithmetic only in values below 1.2e-38 (float64: 2.2e-308), and the caller's
// own floating-point mode is untouched.
struct FlushSubnormals {
#if defined(__SSE2__)
  unsigned int saved = _mm_getcsr();
  FlushSubnormals() { _mm_setcsr(saved | 0x8040u); }  // bit 15: flush to zero, bit 6: denormals are zero
  ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

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

// Per-thread partial sums ([B, N] each) sit one partial_stride apart: rounded up to whole
// 64-byte lines plus one spare line, so no two threads ever write the same cache line
// (packed back to back, the end of one thread's block and the start of the next shared one).
constexpr int64_t kLineFloats = 16;
inline int64_t partial_stride(int64_t B, int64_t N) {
  return (B * N + kLineFloats - 1) / kLineFloats * kLineFloats + kLineFloats;
}

// Zeroed per-thread partial sums (see partial_stride), and their total [B, N].
at::Tensor thread_partials(int64_t nthreads, int64_t B, int64_t N, const at::TensorOptions& options) {
  return at::zeros({nthreads, partial_stride(B, N)}, options);
}
at::Tensor total_of(const at::Tensor& partials, int64_t B, int64_t N) {
  return partials.narrow(1, 0, B * N).sum(0).view({B, N});
}

// M(t) as rows for the kernels: (the contiguous [B, N] tensor, episode stride N), or
// (`zero_row`, stride 0) where none is given (a rule that is not modulated).
std::pair<at::Tensor, int64_t> mod_rows_of(const c10::optional<at::Tensor>& mod, const at::Tensor& zero_row,
                                           int64_t B, int64_t N) {
  if (!mod.has_value() || !mod->defined()) return {zero_row, 0};
  TORCH_CHECK(mod->is_contiguous() && mod->numel() == B * N && mod->scalar_type() == zero_row.scalar_type(),
              "fused kernel: mod must be a contiguous [B, N] tensor of the activities' dtype");
  return {*mod, N};
}

// w as rows for the kernels: (the contiguous [N, N] matrix, row stride N), or (`zero_row`,
// row stride 0) where none is given.
std::pair<at::Tensor, int64_t> w_rows_of(const c10::optional<at::Tensor>& w, const at::Tensor& zero_row, int64_t N) {
  if (!w.has_value() || !w->defined()) return {zero_row, 0};
  TORCH_CHECK(w->is_contiguous() && w->dim() == 2 && w->size(0) == N && w->size(1) == N &&
                  w->scalar_type() == zero_row.scalar_type(),
              "fused kernel: w must be a contiguous [N, N] matrix of the activities' dtype");
  return {*w, N};
}

void check_vec(const at::Tensor& t, int64_t b, int64_t n, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.numel() == b * n, "fused kernel: ", name, " must be contiguous [B, N]");
}

// ---------------------------------------------------------------------------------------
// Forward: h_next = clip(rule(h, pre, post)); z[b, j] = sum_i post[b, i] (w_ij + alpha_ij h_next[b, i, j]),
// the next step's recurrent pre-activation (w given as zero rows: its plastic part alone),
// in the same pass over Hebb as the update: no separate matrix-vector product over w.
// Returns whether any value was clipped.
// The update of one row i of episode b; `h` and `out` may be the same row (IN_PLACE).
// A two-trace rule also reads its second trace from `x2` and writes it into `x2_out`.
template <typename T, bool CLIP, bool WANT_Z>
inline int forward_row(const T* h, T* out, const T* x2, T* x2_out, const T* __restrict__ a,
                       const T* __restrict__ wr, const T* __restrict__ e, const T* __restrict__ q,
                       const T* __restrict__ m, T* __restrict__ z, T p, T y, T clip, int64_t N) {
  int any = 0;
#pragma omp simd reduction(| : any)
  for (int64_t j = 0; j < N; ++j) {
    const T hv = h[j];
    const T xv = Step<T>::two ? x2[j] : T(0);
    T v = Step<T>::update(hv, xv, p, q[j], e[j], m[j]);
    if constexpr (Step<T>::two) x2_out[j] = Rule<T>::update_e(hv, xv, p, q[j], e[j], m[j]);
    if (CLIP) {
      any |= (v > clip) | (v < -clip);
      v = std::min(std::max(v, -clip), clip);
    }
    out[j] = v;
    if (WANT_Z) z[j] += y * (wr[j] + a[j] * v);
  }
  return any;
}

// Rows in blocks of kRowBlock, episodes inside a block: the block's alpha / w / eta rows
// stay in L2 while every episode's rows of the block stream through once, and each
// episode's z row stays in L2 (at one episode per chunk: one contiguous run). Written in place
// (h_next == h) where the caller does not keep H_t: a read-modify-write of the same
// lines moves 2 bytes per byte of Hebb where writing elsewhere moves 3 (the write
// allocates its line first).
template <typename T, bool CLIP, bool WANT_Z, bool IN_PLACE>
bool forward_impl(Rows hr, T* hn, Rows xr, T* xn, const T* pre, const T* post, const T* alpha, int64_t a_rs, const T* w,
                  int64_t w_rs, const T* eta, int64_t e_rs, const T* mod, int64_t m_bs, T clip, T* zpart, int64_t B,
                  int64_t N) {
  const int64_t nthreads = at::get_num_threads();
  std::vector<int> clipped(nthreads, 0);
  at::parallel_for(0, N, kGrain, [&](int64_t i0, int64_t i1) {
    const FlushSubnormals flush;
    const int tid = at::get_thread_num();
    const int64_t B_ = B, N_ = N, m_bs_ = m_bs;  // this thread's own copies (see backward_impl)
    T* zp = zpart + tid * partial_stride(B_, N_);
    int any = 0;
    for (int64_t blk = i0; blk < i1; blk += kRowBlock)
    for (int64_t b = 0; b < B_; ++b) {
      const T* __restrict__ q = post + b * N_;
      const T* __restrict__ m = mod + b * m_bs_;
      T* __restrict__ z = zp + b * N_;
      for (int64_t i = blk; i < std::min(blk + kRowBlock, i1); ++i) {
        T* out = hn + (b * N_ + i) * N_;
        const T* h = IN_PLACE ? out : row<T>(hr, b, i);
        T* x2_out = nullptr;  // a two-trace rule's second trace: its rows in and out
        const T* x2 = nullptr;
        if constexpr (PlasticRule::traces == 2) {
          x2_out = xn + (b * N_ + i) * N_;
          x2 = IN_PLACE ? x2_out : row<T>(xr, b, i);
        }
        any |= forward_row<T, CLIP, WANT_Z>(h, out, x2, x2_out, alpha + i * a_rs, w + i * w_rs, eta + i * e_rs, q,
                                            m, z, pre[b * N_ + i], post[b * N_ + i], clip, N_);
      }
    }
    clipped[tid] |= any;
  });
  return std::any_of(clipped.begin(), clipped.end(), [](int c) { return c != 0; });
}

template <typename T, bool CLIP>
bool forward_want(bool want_z, bool in_place, Rows hr, T* hn, Rows xr, T* xn, const T* pre, const T* post, const T* alpha,
                  int64_t a_rs, const T* w, int64_t w_rs, const T* eta, int64_t e_rs, const T* mod, int64_t m_bs,
                  T clip, T* zpart, int64_t B, int64_t N) {
#define PLASTIC_FWD(Z, P) \
  forward_impl<T, CLIP, Z, P>(hr, hn, xr, xn, pre, post, alpha, a_rs, w, w_rs, eta, e_rs, mod, m_bs, clip, zpart, B, N)
  if (in_place) return want_z ? PLASTIC_FWD(true, true) : PLASTIC_FWD(false, true);
  return want_z ? PLASTIC_FWD(true, false) : PLASTIC_FWD(false, false);
#undef PLASTIC_FWD
}

// h: [B, N, N] or None (zeros); h_next may be h itself (updated in place); w: [N, N] or None
// (z is then the plastic part alone); mod: M(t) [B, N] or None. A two-trace rule: x2 (its
// second trace, or None: zeros) and x2_next (in place exactly when h_next is). Writes
// h_next (and x2_next); returns (clipped, z or empty).
std::tuple<bool, at::Tensor> forward_step(const c10::optional<at::Tensor>& h, at::Tensor h_next, at::Tensor pre,
                                          at::Tensor post, at::Tensor alpha, int64_t alpha_rs, at::Tensor eta,
                                          int64_t eta_rs, double clip, bool want_z,
                                          const c10::optional<at::Tensor>& w, const c10::optional<at::Tensor>& mod,
                                          const c10::optional<at::Tensor>& x2,
                                          const c10::optional<at::Tensor>& x2_next) {
  const int64_t B = pre.size(0), N = pre.size(1);
  check_vec(pre, B, N, "pre");
  check_vec(post, B, N, "post");
  TORCH_CHECK(h_next.is_contiguous() && h_next.numel() == B * N * N, "fused kernel: h_next must be [B, N, N]");
  const at::Tensor zero_row = at::zeros({N}, pre.options());
  const Rows hr = rows_of(h, zero_row);
  const auto w_given = w_rows_of(w, zero_row, N);  // (rows, row stride)
  const at::Tensor& w_rows = w_given.first;
  const int64_t w_rs = w_given.second;
  const auto mod_given = mod_rows_of(mod, zero_row, B, N);  // (rows, episode stride)
  const bool in_place = h.has_value() && h->defined() && h->data_ptr() == h_next.data_ptr();
  const bool two = PlasticRule::traces == 2;
  TORCH_CHECK(two == (x2_next.has_value() && x2_next->defined()),
              "fused kernel: give x2_next exactly for a rule with a second trace");
  if (two) {
    TORCH_CHECK(x2_next->is_contiguous() && x2_next->sizes() == h_next.sizes(), "fused kernel: x2_next must be [B, N, N]");
    const bool x2_in_place = x2.has_value() && x2->defined() && x2->data_ptr() == x2_next->data_ptr();
    TORCH_CHECK(x2_in_place == in_place, "fused kernel: update h and x2 both in place or neither");
  }
  const Rows xr = rows_of(x2, zero_row);
  const int64_t nthreads = at::get_num_threads();
  at::Tensor zpart = want_z ? thread_partials(nthreads, B, N, pre.options()) : at::Tensor();
  bool clipped = false;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "plastic_forward_step", [&] {
    using T = scalar_t;
    T* zp = want_z ? zpart.data_ptr<T>() : nullptr;
    auto args = std::make_tuple(in_place, hr, h_next.data_ptr<T>(), xr, two ? x2_next->data_ptr<T>() : nullptr,
                                pre.data_ptr<T>(), post.data_ptr<T>(),
                                alpha.data_ptr<T>(), alpha_rs, w_rows.data_ptr<T>(), w_rs, eta.data_ptr<T>(), eta_rs,
                                mod_given.first.data_ptr<T>(), mod_given.second, static_cast<T>(clip), zp, B, N);
    const bool has_clip = clip > 0;
    auto call = [&](auto fn) { return std::apply([&](auto... a) { return fn(want_z, a...); }, args); };
    clipped = has_clip ? call(forward_want<T, true>) : call(forward_want<T, false>);
  });
  return {clipped, want_z ? total_of(zpart, B, N) : at::Tensor()};
}

// ---------------------------------------------------------------------------------------
// Backward, one pass per step, walking time backwards. On entry `h` holds H_t (the Hebb
// state step t read, after its reset mask) and `g` the gradient w.r.t. the rule's
// unclipped output at step t. The pass
//   STAGE: backpropagates step t: d pre_t (row sums), dalpha, and g <- dL/dH_t (times keep_t);
//   PREV:  rebuilds H_{t-1} into `h` (INVERT: by inverting step t-1's update; CKPT: from the
//          stored exact state), masks g by step t-1's clip where it clipped, and accumulates
//          step t-1's rule gradients: d post_{t-1} (column sums), deta, and for a
//          neuromodulated rule d M(t-1) (column sums).
// Step t's update reads M(t) (`mod`), step t-1's M(t-1) (`mod_p`).
// enum Prev { kNone, kInvert, kCkpt }: put before this file from contract.py (NONE, INVERT, CKPT).

// ETA_ROW: eta per connection (a row of N values per i). Otherwise eta is one value: no
// eta row to stream, deta summed in registers, and what depends on eta alone (e.g. the
// decaying rule's 1 / (1 - eta)) hoisted out of the loop by the compiler.
template <typename T, int PREV, bool CLIP, bool STAGE, bool ETA_ROW>
void backward_impl(T* hbuf, T* gbuf, Rows ck, T* xbuf, T* gxbuf, Rows ckx, const T* pre, const T* post, const T* grad_a, const T* keep,
                   const T* pre_p, const T* post_p, const T* alpha, int64_t a_rs, const T* w, int64_t w_rs,
                   const T* eta, int64_t e_rs, const T* mod, const T* mod_p, int64_t m_bs, T clip, T* dpre,
                   T* dalpha, T* deta, T* col_sums_part, T* dmod_part, int64_t B, int64_t N) {
  const int64_t nthreads = at::get_num_threads();
  std::vector<T> deta_part(nthreads, T(0));
  const T eta0 = eta[0];
  at::parallel_for(0, N, kGrain, [&](int64_t i0, int64_t i1) {
    // Scalars the inner loop reads are copied into this thread's own variables: read
    // through the lambda's references they live on the calling thread's stack, beside
    // what that thread writes, and the cache line bounced between the cores on every
    // vector of every row (the 2-thread backward ran 2.4x slower than 1 thread).
    const T E = eta0, clip_ = clip;
    const int64_t B_ = B, N_ = N, m_bs_ = m_bs;
    const FlushSubnormals flush;
    const int tid = at::get_thread_num();
    T* col_sums = col_sums_part + tid * partial_stride(B_, N_);
    T* dmods = PlasticRule::modulated ? dmod_part + tid * partial_stride(B_, N_) : nullptr;
    T de_thread = 0;
    for (int64_t blk = i0; blk < i1; blk += kRowBlock)
    for (int64_t b = 0; b < B_; ++b) {
      for (int64_t i = blk; i < std::min(blk + kRowBlock, i1); ++i) {
        const T* __restrict__ a = alpha + i * a_rs;
        const T* __restrict__ wr = w + i * w_rs;
        const T* __restrict__ e = eta + i * e_rs;
        T* __restrict__ dal = dalpha + i * N_;
        T* __restrict__ det = deta + i * N_;
        T* __restrict__ h = hbuf + (b * N_ + i) * N_;
        T* __restrict__ g = gbuf + (b * N_ + i) * N_;
        const T* __restrict__ c = PREV == kCkpt ? row<T>(ck, b, i) : nullptr;
        // A two-trace rule: its second trace, that trace's gradient and stored state.
        constexpr bool two = PlasticRule::traces == 2;
        T* __restrict__ x2 = two ? xbuf + (b * N_ + i) * N_ : nullptr;
        T* __restrict__ gx = two ? gxbuf + (b * N_ + i) * N_ : nullptr;
        const T* __restrict__ cx = two && PREV == kCkpt ? row<T>(ckx, b, i) : nullptr;
        const T* __restrict__ q = STAGE ? post + b * N_ : nullptr;
        const T* __restrict__ grad_a_b = STAGE ? grad_a + b * N_ : nullptr;
        const T* __restrict__ qp = PREV ? post_p + b * N_ : nullptr;
        const T* __restrict__ m = mod + b * m_bs_;
        const T* __restrict__ mp = mod_p + b * m_bs_;
        T* __restrict__ col_sum = col_sums + b * N_;
        T* __restrict__ dmod = PlasticRule::modulated ? dmods + b * N_ : nullptr;
        const T p = STAGE ? pre[b * N_ + i] : T(0);
        const T k = STAGE ? keep[b] : T(1);
        const T pp = PREV ? pre_p[b * N_ + i] : T(0);
        T dp = 0, de = 0;
#pragma omp simd reduction(+ : dp, de)
        for (int64_t j = 0; j < N_; ++j) {
          const T ej = ETA_ROW ? e[j] : E;
          const T hv = h[j];
          T grad_h = g[j];
          const T xv = two ? x2[j] : T(0);  // a two-trace rule's second trace and its gradient
          T grad_x = two ? gx[j] : T(0);
          if (STAGE) {
            // Step t: H_{t+1} = update(H_t, pre_t, post_t); grad_h is dL/dH_{t+1} on entry.
            const T alpha_ga = a[j] * grad_a_b[j];
            // d pre_t through the rule, through alpha * H_t and (w given) through w: row i of
            // grad_a @ (w + alpha * H_t)^T, in this pass rather than a separate product over w.
            dp += Step<T>::d_pre(grad_h, grad_x, hv, xv, p, q[j], ej, m[j]) + alpha_ga * hv + grad_a_b[j] * wr[j];
            dal[j] += p * hv * grad_a_b[j];
            const T gh = (Step<T>::d_h(grad_h, grad_x, hv, xv, p, q[j], ej, m[j]) + alpha_ga * p) * k;
            if constexpr (two) grad_x = Step<T>::d_e(grad_h, grad_x, hv, xv, p, q[j], ej, m[j]) * k;
            grad_h = gh;
          }
          if (PREV) {
            // Step t-1: H_t = update(H_{t-1}, pre_{t-1}, post_{t-1}); grad_h is dL/dH_t. A
            // two-trace rule's state is always stored (c, cx; zero rows for zeros).
            const T mj = mp[j];
            const T h_prev = PREV == kInvert ? Step<T>::inverse(hv, pp, qp[j], ej, mj) : c[j];
            const T x_prev = two && PREV == kCkpt ? cx[j] : T(0);
            if (CLIP) {
              const T raw = Step<T>::update(h_prev, x_prev, pp, qp[j], ej, mj);
              grad_h = (raw > clip_ || raw < -clip_) ? T(0) : grad_h;
            }
            col_sum[j] += Step<T>::d_post(grad_h, grad_x, h_prev, x_prev, pp, qp[j], ej, mj);
            if constexpr (PlasticRule::modulated)
              dmod[j] += Step<T>::d_mod(grad_h, grad_x, h_prev, x_prev, pp, qp[j], ej, mj);
            const T dej = Step<T>::d_eta(grad_h, grad_x, h_prev, x_prev, pp, qp[j], ej, mj);
            if (ETA_ROW) {
              det[j] += dej;
            } else {
              de += dej;
            }
            h[j] = h_prev;
            if constexpr (two) x2[j] = x_prev;
          }
          g[j] = grad_h;
          if constexpr (two) gx[j] = grad_x;
        }
        if (STAGE) dpre[b * N_ + i] = dp;
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
void backward_flags(bool clip_on, bool stage, bool eta_row, T* hbuf, T* gbuf, Rows ck, T* xbuf, T* gxbuf, Rows ckx,
                    const T* pre, const T* post,
                    const T* grad_a, const T* keep, const T* pre_p, const T* post_p, const T* alpha, int64_t a_rs,
                    const T* w, int64_t w_rs, const T* eta, int64_t e_rs, const T* mod, const T* mod_p, int64_t m_bs,
                    T clip, T* dpre, T* dalpha, T* deta, T* col_sums_part, T* dmod_part, int64_t B, int64_t N) {
#define PLASTIC_CALL(C, S, R)                                                                                       \
  backward_impl<T, PREV, C, S, R>(hbuf, gbuf, ck, xbuf, gxbuf, ckx, pre, post, grad_a, keep, pre_p, post_p, alpha, a_rs, w, w_rs, \
                                  eta, e_rs, mod, mod_p, m_bs, clip, dpre, dalpha, deta, col_sums_part, dmod_part, \
                                  B, N)
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
// d post_{t-1} [B, N] (zeros when prev == 0). dpre, dalpha, deta are written / accumulated;
// dpre includes grad_a @ w^T where w ([N, N]) is given. A neuromodulated rule: mod, mod_p
// are M(t), M(t-1) [B, N], and dmod [B, N], where given, receives d M(t-1) (zeros when
// prev == 0). A two-trace rule: x2 and gx hold its second trace and that trace's gradient
// (updated like h and g), ckpt_x its stored state (None: zeros); prev is never 1 (invert).
at::Tensor backward_stage(at::Tensor h, at::Tensor g, const c10::optional<at::Tensor>& ckpt, int64_t prev,
                          bool stage, at::Tensor pre, at::Tensor post, at::Tensor grad_a, at::Tensor keep,
                          at::Tensor pre_p, at::Tensor post_p, at::Tensor alpha, int64_t alpha_rs, at::Tensor eta,
                          int64_t eta_rs, double clip, at::Tensor dpre, at::Tensor dalpha,
                          at::Tensor deta, const c10::optional<at::Tensor>& w, const c10::optional<at::Tensor>& mod,
                          const c10::optional<at::Tensor>& mod_p, const c10::optional<at::Tensor>& dmod,
                          const c10::optional<at::Tensor>& x2, const c10::optional<at::Tensor>& gx,
                          const c10::optional<at::Tensor>& ckpt_x) {
  const int64_t B = h.size(0), N = h.size(1);
  TORCH_CHECK(h.is_contiguous() && g.is_contiguous() && h.sizes() == g.sizes(), "fused kernel: h, g must match");
  TORCH_CHECK(prev == kNone || prev == kInvert || prev == kCkpt,
              "fused kernel: prev must be NONE, INVERT or CKPT (contract.py)");
  const bool two = PlasticRule::traces == 2;
  TORCH_CHECK(two == (x2.has_value() && x2->defined() && gx.has_value() && gx->defined()),
              "fused kernel: give x2 and gx exactly for a rule with a second trace");
  if (two) {
    TORCH_CHECK(x2->is_contiguous() && gx->is_contiguous() && x2->sizes() == h.sizes() && gx->sizes() == h.sizes(),
                "fused kernel: x2, gx must be [B, N, N] like h");
    TORCH_CHECK(prev != kInvert, "fused kernel: a two-trace rule's states are stored, never inverted");
  }
  for (const auto* t : {&pre, &post, &grad_a, &pre_p, &post_p, &dpre}) check_vec(*t, B, N, "activity");
  TORCH_CHECK(dalpha.is_contiguous() && deta.is_contiguous() && dalpha.numel() == N * N && deta.numel() == N * N,
              "fused kernel: dalpha, deta must be [N, N]");
  const at::Tensor zero_row = at::zeros({N}, h.options());
  const Rows ck = rows_of(ckpt, zero_row);
  const Rows ckx = rows_of(ckpt_x, zero_row);
  const auto w_given = w_rows_of(w, zero_row, N);  // (rows, row stride)
  const at::Tensor& w_rows = w_given.first;
  const int64_t w_rs = w_given.second;
  const auto mod_given = mod_rows_of(mod, zero_row, B, N);  // (rows, episode stride)
  const auto mod_p_given = mod_rows_of(mod_p, zero_row, B, N);
  TORCH_CHECK(mod_given.second == mod_p_given.second, "fused kernel: give both mod and mod_p, or neither");
  const bool want_dmod = PlasticRule::modulated && dmod.has_value() && dmod->defined();
  if (want_dmod) check_vec(*dmod, B, N, "dmod");
  const int64_t nthreads = at::get_num_threads();
  at::Tensor col_sums_part = thread_partials(nthreads, B, N, h.options());
  at::Tensor dmod_part = PlasticRule::modulated ? thread_partials(nthreads, B, N, h.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "plastic_backward_stage", [&] {
    using T = scalar_t;
    const bool clip_on = clip > 0;
    T* hebb_data = h.data_ptr<T>();
    T* grad_data = g.data_ptr<T>();
    auto go = [&](auto fn) {
      fn(clip_on, stage, eta_rs != 0, hebb_data, grad_data, ck, two ? x2->data_ptr<T>() : nullptr,
         two ? gx->data_ptr<T>() : nullptr, ckx, pre.data_ptr<T>(), post.data_ptr<T>(), grad_a.data_ptr<T>(), keep.data_ptr<T>(),
         pre_p.data_ptr<T>(), post_p.data_ptr<T>(), alpha.data_ptr<T>(), alpha_rs, w_rows.data_ptr<T>(), w_rs,
         eta.data_ptr<T>(), eta_rs, mod_given.first.data_ptr<T>(), mod_p_given.first.data_ptr<T>(), mod_given.second,
         static_cast<T>(clip), dpre.data_ptr<T>(), dalpha.data_ptr<T>(), deta.data_ptr<T>(), col_sums_part.data_ptr<T>(),
         PlasticRule::modulated ? dmod_part.data_ptr<T>() : nullptr, B, N);
    };
    if (prev == kNone) go(backward_flags<T, kNone>);
    else if (prev == kInvert) go(backward_flags<T, kInvert>);
    else go(backward_flags<T, kCkpt>);
  });
  if (want_dmod) dmod->copy_(total_of(dmod_part, B, N));
  return total_of(col_sums_part, B, N);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_step", &forward_step, "fused Hebb update + recurrent matvec (one pass over Hebb)");
  m.def("backward_stage", &backward_stage, "one backward step with Hebb reconstruction (one pass)");
}
