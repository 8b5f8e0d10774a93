// 1-D k-means codebooks (slim/kmeans.h). Follows slimkernels/quant/codebook.py (_SortedRows,
// _kmeanspp_inits, _lloyd_sorted, _reseed_empty, _kmeans_rows, _fit_rows, _codes_from_sort) step for
// step and in the same float32 / float64 arithmetic, one row at a time per thread, so that a row's
// sorted weights and prefix sums stay in L1/L2 (the reference gathers from a [rows, M + 1, 5] table
// of the whole batch). The prefix sums run in the reference's order (torch's cumsum is sequential);
// only the final sum of a fit's squared error may round differently. No FMA contraction (the reference
// rounds every product): x86-64 without ISA flags has no FMA, and the pragmas below keep it off elsewhere.
#include "slim/kmeans.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "slim/thread_pool.h"

namespace slim {
namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("kmeans_codebook: " + msg); }

constexpr int kMaxEntries = 256;
constexpr double kSqrt3 = 1.7320508075688772;  // the reference's 3 ** 0.5

// The reference's five prefix sums at sorted index j: the counted weights before j; the sum and sum of
// squares of the positives before j, and of the negatives from j on (every sum runs outward from 0).
struct Sums {
  double count, pos, neg, pos2, neg2;
};

struct Run {
  double count, total, squares;
};

inline Run between(const Sums& a, const Sums& b) {
  return {b.count - a.count, (b.pos - a.pos) - (b.neg - a.neg), (b.pos2 - a.pos2) - (b.neg2 - a.neg2)};
}

// Squared error of a run around c, unclamped (the reference's squares - 2 c total + c^2 count).
inline double run_error(const Run& r, double c) { return r.squares - 2 * c * r.total + c * c * r.count; }

// float32 -> uint32 with the same order (negatives flipped), and back.
inline uint32_t sort_key(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float key_value(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// fn(task) for task in [0, tasks) on up to `threads` threads (inline for one): the split into tasks is
// fixed by the caller, whatever number of threads the runtime gives.
template <class Fn>
void run_tasks(int tasks, int threads, const Fn& fn) {
  if (threads <= 1 || tasks <= 1) {
    for (int t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::atomic<int> next{0};
  parallel_for(std::min(threads, tasks), [&](int, int) {
    for (int t; (t = next.fetch_add(1)) < tasks;) fn(t);
  });
}

// The first item of slice t of n items cut into `slices` (slice t ends where slice t + 1 starts).
inline int64_t slice_start(int64_t n, int t, int slices) { return n * t / slices; }

// One row, sorted, with its prefix sums; the scratch of the sort is kept for the next row.
//
// The reference's prefix table is stored in 16 bytes an index instead of 40: the count before j is
// min(j, kept); the positives' sums are 0 up to the end p0 of the negative run and the negatives' sums
// 0 from there on, so one (sum, sum of squares) pair an index holds whichever is not 0. The values are
// the reference's, summed in its order.
class SortedRow {
 public:
  int64_t m = 0;
  int64_t kept = 0;             // counted weights: the first kept of xs (all, unless keep_zero)
  int64_t p0 = 0;               // counted negative weights: xs[0, p0)
  std::vector<float> xs;        // [m] ascending
  std::vector<uint32_t> order;  // [m] xs[j] = row[order[j]] when has_order
  bool has_order = false;

  // keep_zero: the nonzero weights sorted to the front, the rest filled with uncounted copies of the
  // largest (0 when there is none), as the reference pads its rows. with_order: keep the sort's
  // permutation (for the codes; plain rows only). threads > 1: one long row, sorted on several threads.
  void build(const float* row, int64_t cols, bool keep_zero, bool with_order, int threads) {
    m = cols;
    xs.resize(m);
    sums_.resize(m + 1);
    kept = 0;
    has_order = with_order && !keep_zero;
    if (has_order) {  // (key << 32) | index
      order.resize(m);
      items_.resize(m);
      titems_.resize(m);
      for (int64_t j = 0; j < m; ++j) items_[j] = (uint64_t(sort_key(row[j])) << 32) | uint64_t(j);
      kept = m;
      const uint64_t* sorted = radix_sort(items_.data(), titems_.data(), m, 32, 1);
      for (int64_t j = 0; j < m; ++j) {
        xs[j] = key_value(uint32_t(sorted[j] >> 32));
        order[j] = uint32_t(sorted[j]);
      }
    } else {
      keys_.resize(m);
      tkeys_.resize(m);
      for (int64_t j = 0; j < m; ++j)
        if (!keep_zero || row[j] != 0.f) keys_[kept++] = sort_key(row[j]);
      const uint32_t* sorted = radix_sort(keys_.data(), tkeys_.data(), kept, 0, threads);
      const int slices = threads;
      run_tasks(slices, threads, [&](int t) {
        for (int64_t j = slice_start(kept, t, slices), end = slice_start(kept, t + 1, slices); j < end; ++j)
          xs[j] = key_value(sorted[j]);
      });
    }
    std::fill(xs.begin() + kept, xs.end(), kept > 0 ? xs[kept - 1] : 0.f);
    p0 = std::lower_bound(xs.data(), xs.data() + kept, 0.f) - xs.data();
    // uncounted padding adds nothing (the reference multiplies it by 0), nor do the zeros added before
    // the first nonzero term of a sum: each sum starts where its terms start, the two independently
    run_tasks(2, threads, [&](int side) {
      double sum = 0, squares = 0;
      if (side == 0) {
        sums_[p0] = {0, 0};
        for (int64_t j = p0 - 1; j >= 0; --j) {
          const double x = xs[j];
          sum += x;
          squares += x * x;
          sums_[j] = {sum, squares};
        }
        return;
      }
      for (int64_t j = p0; j < m; ++j) {
        const double x = j < kept && xs[j] > 0 ? double(xs[j]) : 0.0;
        sum += x;
        squares += x * x;
        sums_[j + 1] = {sum, squares};
      }
    });
  }

  double count(int64_t j) const { return double(std::min(j, kept)); }

  Sums at(int64_t j) const {
    const Pair& s = sums_[j];
    return j > p0 ? Sums{count(j), s.sum, 0.0, s.squares, 0.0} : Sums{count(j), 0.0, s.sum, 0.0, s.squares};
  }

  Run run(int64_t lo, int64_t hi) const { return between(at(lo), at(hi)); }

  // The first index in [from, to) whose weight is above v, or to (std::upper_bound without branches to
  // mispredict: the searches are most of the time of a fit).
  int64_t upper(float v, int64_t from, int64_t to) const {
    int64_t len = to - from;
    if (len <= 0) return to;
    const float* base = xs.data() + from;
    while (len > 1) {  // the answer lies in [base, base + len]
      const int64_t half = len / 2;
      base = base[half] <= v ? base + half : base;
      len -= half;
    }
    return (base - xs.data()) + (*base <= v);
  }

  // The same over [from, m), galloping out from a guess (a Lloyd step moves the edges a little).
  int64_t upper_near(float v, int64_t from, int64_t guess) const {
    guess = std::max(from, guess);
    int64_t lo, hi, step = 1;
    if (guess < m && xs[guess] <= v) {  // the answer is above guess
      for (lo = guess + 1;; step *= 2) {
        const int64_t p = lo + step - 1;
        if (p >= m) {
          hi = m;
          break;
        }
        if (xs[p] > v) {
          hi = p;
          break;
        }
        lo = p + 1;
      }
    } else {  // at or below guess
      for (hi = guess;; step *= 2) {
        const int64_t p = hi - step;
        if (p < from) {
          lo = from;
          break;
        }
        if (xs[p] <= v) {
          lo = p + 1;
          break;
        }
        hi = p;
      }
    }
    return upper(v, lo, hi);
  }

 private:
  struct Pair {
    double sum, squares;
  };
  std::vector<Pair> sums_;                // [m + 1]
  std::vector<uint64_t> items_, titems_;  // (key << 32) | index
  std::vector<uint32_t> keys_, tkeys_;
  std::vector<int64_t> hist_;

  // LSD radix sort of items[0, n) by their 32 bits from key_shift up, 8 bits a pass (256 buckets: the
  // scatter stays in L1), a pass whose digit is the same for all items skipped; tmp [n] is scratch.
  // threads > 1: each pass counts and scatters slices of the items on their own threads (stable: slice
  // t's items go after slice t - 1's in every bucket). -> the sorted items (items or tmp).
  template <class T>
  const T* radix_sort(T* items, T* tmp, int64_t n, int key_shift, int threads) {
    constexpr int kBits = 8, kBuckets = 1 << kBits, kPasses = 4;
    const int slices = n >= (int64_t(1) << 16) ? threads : 1;
    hist_.resize(size_t(slices) * kBuckets);
    T *src = items, *dst = tmp;
    for (int p = 0; p < kPasses; ++p) {
      const int shift = key_shift + p * kBits;
      run_tasks(slices, threads, [&](int t) {
        int64_t* h = hist_.data() + t * kBuckets;
        std::fill(h, h + kBuckets, 0);
        for (int64_t j = slice_start(n, t, slices), end = slice_start(n, t + 1, slices); j < end; ++j)
          ++h[(src[j] >> shift) & (kBuckets - 1)];
      });
      int64_t sum = 0;  // bucket b of slice t starts after the smaller buckets and slice t - 1's
      bool constant = false;
      for (int b = 0; b < kBuckets && !constant; ++b) {
        const int64_t before = sum;
        for (int t = 0; t < slices; ++t) {
          const int64_t c = hist_[t * kBuckets + b];
          hist_[t * kBuckets + b] = sum;
          sum += c;
        }
        constant = sum - before == n;  // every item in bucket b: the pass would move nothing
      }
      if (constant) continue;
      run_tasks(slices, threads, [&](int t) {
        int64_t* h = hist_.data() + t * kBuckets;
        for (int64_t j = slice_start(n, t, slices), end = slice_start(n, t + 1, slices); j < end; ++j)
          dst[h[(src[j] >> shift) & (kBuckets - 1)]++] = src[j];
      });
      std::swap(src, dst);
    }
    return src;
  }
};

// The runs of the nearest-centroid clusters of sorted centroids c[0, e): edges[0] = 0, edges[e] = m,
// edges[i] the first index above the midpoint of c[i - 1] and c[i] (a weight exactly halfway goes to
// the lower entry). The midpoints are nondecreasing, so each search starts at the previous edge;
// with guesses (the edges of nearby centroids) each gallops out from its guess.
void bounds(const SortedRow& row, const float* c, int e, int64_t* edges, const int64_t* guesses = nullptr) {
  edges[0] = 0;
  for (int i = 1; i < e; ++i) {
    const float mid = c[i - 1] / 2 + c[i] / 2;
    edges[i] = guesses ? row.upper_near(mid, edges[i - 1], guesses[i]) : row.upper(mid, edges[i - 1], row.m);
  }
  edges[e] = row.m;
}

// _reseed_empty: the empty clusters (in order) move onto the worst-fitted run ends (stable, descending).
void reseed_empty(const SortedRow& row, float* next, const int64_t* edges, const bool* empty, int e) {
  float cand[2 * kMaxEntries], err[2 * kMaxEntries];
  int rank[2 * kMaxEntries];
  for (int i = 0; i < e; ++i) {
    const float first = row.xs[std::min(edges[i], row.m - 1)];
    const float last = row.xs[std::max<int64_t>(edges[i + 1] - 1, 0)];
    cand[i] = first;
    cand[e + i] = last;
    err[i] = empty[i] ? -1.f : std::fabs(next[i] - first);
    err[e + i] = empty[i] ? -1.f : std::fabs(last - next[i]);
  }
  std::iota(rank, rank + 2 * e, 0);
  std::stable_sort(rank, rank + 2 * e, [&](int a, int b) { return err[a] > err[b]; });
  for (int i = 0, k = 0; i < e; ++i)
    if (empty[i]) next[i] = cand[rank[k++]];
}

// _lloyd_sorted for one fit: at most iters steps, stopped when the sorted centroids stop moving (a
// fixed point stays one, so this equals the reference's batch-wide stop). edges [e + 1]: the runs of the
// last centroids searched; state: kNoEdges, kNearEdges (of the step before: guesses) or kExactEdges (of c).
enum EdgeState { kNoEdges, kNearEdges, kExactEdges };

void lloyd(const SortedRow& row, float* c, int e, int iters, int64_t* edges, EdgeState& state) {
  float next[kMaxEntries];
  bool empty[kMaxEntries];
  state = kNoEdges;
  for (int it = 0; it < iters; ++it) {
    bounds(row, c, e, edges, state == kNoEdges ? nullptr : edges);
    state = kExactEdges;
    bool any_empty = false;
    for (int i = 0; i < e; ++i) {
      const Run r = row.run(edges[i], edges[i + 1]);
      empty[i] = r.count == 0;
      any_empty |= empty[i];
      next[i] = r.count > 0 ? float(r.total / std::max(r.count, 1.0)) : c[i];
    }
    if (any_empty) reseed_empty(row, next, edges, empty, e);
    std::sort(next, next + e);
    if (std::equal(next, next + e, c)) break;
    std::copy(next, next + e, c);
    state = kNearEdges;
  }
}

// Squared error of the row under sorted centroids c[0, e); edges as lloyd leaves them.
double fit_error(const SortedRow& row, const float* c, int e, int64_t* edges, EdgeState state) {
  if (state != kExactEdges) bounds(row, c, e, edges, state == kNearEdges ? edges : nullptr);
  double sum = 0;
  for (int i = 0; i < e; ++i) sum += std::max(run_error(row.run(edges[i], edges[i + 1]), double(c[i])), 0.0);
  return sum;
}

// _quantile_points: the weights at the counted quantiles (j + 1/2) / e.
void quantile_init(const SortedRow& row, int e, float* c) {
  const double total = row.count(row.m);
  for (int j = 0; j < e; ++j) {
    const double target = (double(j) + 0.5) / e * total;
    int64_t lo = 0, hi = row.m;  // the first i whose count up to and including i exceeds target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (row.count(mid + 1) > target)
        hi = mid;
      else
        lo = mid + 1;
    }
    c[j] = row.xs[std::min(lo, row.m - 1)];
  }
}

// The Lloyd-Max levels of a normal fit, mean + sqrt(3) std z[j], clamped to the row's range.
void normal_init(const SortedRow& row, int e, const double* z, float* c) {
  const Run all = row.run(0, row.m);
  const double count = std::max(all.count, 1.0);
  const double mean = all.total / count;
  const double std_dev = std::sqrt(std::max(all.squares / count - mean * mean, 0.0));
  for (int j = 0; j < e; ++j)
    c[j] = std::min(std::max(float(mean + std_dev * kSqrt3 * z[j]), row.xs[0]), row.xs[row.m - 1]);
}

// draw() of _kmeanspp_inits: a weight of the run [start, end) drawn with probability proportional to
// its count (uniform) or its squared distance to c, by inverse CDF over the prefix sums.
float draw(const SortedRow& row, int64_t start, int64_t end, double c, bool uniform, double u) {
  const Sums first = row.at(start);
  auto mass = [&](int64_t j) {
    const Run r = between(first, row.at(j));
    return uniform ? r.count : run_error(r, c);
  };
  const double target = u * mass(end);
  int64_t lo = start, hi = end;  // the first j whose mass up to j + 1 exceeds target
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (mass(std::min(mid + 1, end)) <= target)
      lo = mid + 1;
    else
      hi = mid;
  }
  return row.xs[std::max<int64_t>(std::min(lo, end - 1), 0)];
}

// One k-means++ seeding from the uniforms u[2 e - 1]: u[0] the first centroid, u[2 t - 1] and u[2 t]
// the cluster and the weight of centroid t.
void kmeanspp_init(const SortedRow& row, int e, const double* u, float* c) {
  int64_t edges[kMaxEntries + 1];
  double weight[kMaxEntries], count[kMaxEntries], cdf[kMaxEntries];
  c[0] = draw(row, 0, row.m, 0.0, true, u[0]);
  for (int t = 1; t < e; ++t) {
    std::sort(c, c + t);
    bounds(row, c, t, edges);
    bool placed = true;  // every weight is a centroid already (few distinct values): draw uniformly
    for (int i = 0; i < t; ++i) {
      const Run r = row.run(edges[i], edges[i + 1]);
      weight[i] = std::max(run_error(r, double(c[i])), 0.0);
      count[i] = r.count;
      placed &= !(weight[i] > 0);
    }
    double acc = 0;
    for (int i = 0; i < t; ++i) cdf[i] = acc += placed ? count[i] : weight[i];
    const double target = u[2 * t - 1] * cdf[t - 1];
    const int which = std::min<int>(int(std::upper_bound(cdf, cdf + t, target) - cdf), t - 1);
    c[t] = draw(row, edges[which], edges[which + 1], double(c[which]), placed, u[2 * t]);
  }
  std::sort(c, c + e);
}

struct Plan {
  const KmeansArgs& a;
  int fitted;  // entries fitted to the data: entries, or entries - 1 beside the kept 0
  int fits;    // quantile, normal, restarts k-means++ seedings

  // Fit f of row r from its init through Lloyd -> its squared error; cent [fitted].
  double run_fit(const SortedRow& row, int64_t r, int f, float* cent) const {
    if (f == 0)
      quantile_init(row, fitted, cent);
    else if (f == 1)
      normal_init(row, fitted, a.normal_z, cent);
    else
      kmeanspp_init(row, fitted, a.uniforms + (r * a.restarts + (f - 2)) * (2 * fitted - 1), cent);
    int64_t edges[kMaxEntries + 1];
    EdgeState state;
    lloyd(row, cent, fitted, a.iters, edges, state);
    return fit_error(row, cent, fitted, edges, state);
  }

  // The row's codebook from its best fit, and its codes (codes_row may be null).
  // The row's codebook from its best fit, and the codes of row r of code_data (codes_row may be null):
  // off the sort when the row kept its order, else by searching each weight among the midpoints, as
  // assign_codes (the same codes: a weight goes to the entry whose run holds it, the lower one at a
  // midpoint).
  void finish(const SortedRow& row, int64_t r, const float* best, float* book, uint8_t* codes_row,
              int threads) const {
    const int e = a.entries;
    if (a.keep_zero) {
      book[0] = 0.f;
      for (int i = 0; i < fitted; ++i) book[i + 1] = row.kept > 0 ? best[i] : 0.f;
      std::sort(book, book + e);
    } else {
      std::copy(best, best + e, book);
    }
    if (!codes_row) return;
    if (row.has_order) {
      int64_t edges[kMaxEntries + 1];
      bounds(row, book, e, edges);
      for (int i = 0; i < e; ++i)
        for (int64_t j = edges[i]; j < edges[i + 1]; ++j) codes_row[row.order[j]] = uint8_t(i);
      return;
    }
    float mids[kMaxEntries];  // the number of midpoints below a weight is its code
    for (int i = 0; i + 1 < e; ++i) mids[i] = book[i] / 2 + book[i + 1] / 2;
    const float* data_row = a.code_data ? a.code_data + r * a.code_cols : a.data + r * a.cols;
    const int64_t cols = a.code_data ? a.code_cols : a.cols;
    const int slices = threads;
    run_tasks(slices, threads, [&](int t) {
      constexpr int64_t kBlock = 4096;  // codes counted midpoint by midpoint over a block (vectorizes)
      for (int64_t j0 = slice_start(cols, t, slices), end = slice_start(cols, t + 1, slices); j0 < end;
           j0 += kBlock) {
        const int64_t n = std::min(kBlock, end - j0);
        const float* x = data_row + j0;
        uint8_t code[kBlock] = {};  // local: no aliasing with x for the vectorizer
        for (int i = 0; i + 1 < e; ++i) {
          const float mid = mids[i];
          for (int64_t j = 0; j < n; ++j) code[j] += uint8_t(x[j] > mid);
        }
        std::copy(code, code + n, codes_row + j0);
      }
    });
  }

  // The codes come off the sort for rows fitted one a thread to the weights they code.
  void build(SortedRow& row, int64_t r, bool with_codes, int threads) const {
    row.build(a.data + r * a.cols, a.cols, a.keep_zero, with_codes && threads == 1 && !a.code_data, threads);
  }
};

void validate(const KmeansArgs& a, const float* codebook, int num_threads) {
  if (a.rows < 0) bad("rows must be >= 0, got " + std::to_string(a.rows));
  if (a.cols < 1 || a.cols > (int64_t(1) << 31))
    bad("cols must be in 1..2^31, got " + std::to_string(a.cols));
  const int lowest = a.keep_zero ? 2 : 1;
  if (a.entries < lowest || a.entries > kMaxEntries)
    bad("entries must be in " + std::to_string(lowest) + "..256" + (a.keep_zero ? " with keep_zero" : "") + ", got " +
        std::to_string(a.entries));
  if (a.iters < 0) bad("iters must be >= 0, got " + std::to_string(a.iters));
  if (a.restarts < 0) bad("restarts must be >= 0, got " + std::to_string(a.restarts));
  if (num_threads < 1) bad("num_threads must be >= 1, got " + std::to_string(num_threads));
  if (a.rows == 0) return;
  if (!a.data) bad("data must not be null");
  if (!codebook) bad("codebook must not be null");
  if (!a.normal_z) bad("normal_z must not be null");
  if (a.restarts > 0 && !a.uniforms) bad("uniforms must not be null");
  if (a.code_data && a.code_cols < 1) bad("code_cols must be >= 1, got " + std::to_string(a.code_cols));
}

}  // namespace

void kmeans_codebook(const KmeansArgs& a, float* codebook, uint8_t* codes, int num_threads) {
  validate(a, codebook, num_threads);
  if (a.rows == 0) return;
  const Plan plan{a, a.keep_zero ? a.entries - 1 : a.entries, 2 + a.restarts};
  const bool with_codes = codes != nullptr;
  if (a.rows == 1 && num_threads > 1) {  // one long row (per="layer"): its fits in parallel
    SortedRow row;
    plan.build(row, 0, with_codes, num_threads);
    std::vector<float> cents(size_t(plan.fits) * plan.fitted);
    std::vector<double> errors(plan.fits);
    std::atomic<int> next{0};
    parallel_for(std::min(num_threads, plan.fits), [&](int, int) {
      for (int f; (f = next.fetch_add(1)) < plan.fits;)
        errors[f] = plan.run_fit(row, 0, f, cents.data() + f * plan.fitted);
    });
    const int best = int(std::min_element(errors.begin(), errors.end()) - errors.begin());  // the first of equals
    plan.finish(row, 0, cents.data() + best * plan.fitted, codebook, codes, num_threads);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(num_threads, [&](int, int) {
    SortedRow row;
    float cent[kMaxEntries], best[kMaxEntries];
    for (int64_t r; (r = next.fetch_add(1, std::memory_order_relaxed)) < a.rows;) {
      plan.build(row, r, with_codes, 1);
      double best_error = 0;
      for (int f = 0; f < plan.fits; ++f) {
        const double error = plan.run_fit(row, r, f, cent);
        if (f == 0 || error < best_error) {
          best_error = error;
          std::copy(cent, cent + plan.fitted, best);
        }
      }
      const int64_t code_cols = a.code_data ? a.code_cols : a.cols;
      plan.finish(row, r, best, codebook + r * a.entries, with_codes ? codes + r * code_cols : nullptr, 1);
    }
  });
}

}  // namespace slim
