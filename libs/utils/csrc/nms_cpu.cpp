// 1D non-maximum suppression for temporal segments (CPU), built as libs.utils._nms_cpp.
//
// Both kernels work on "grouped" input: the candidates of group g (one class in multi-class
// NMS, or everything in class-agnostic NMS) occupy rows offsets[g] .. offsets[g+1]-1 of
// `segs` (N x 2, float32 [start, end] in feature-grid steps) and `scores` (N, float32).
// Groups are independent, so they are processed in parallel when there is enough work.
//
// Arithmetic follows the reference kernels exactly: single precision, segment
// "area" = end - start + 1e-6, IoU = inter / (area_i + area_j - inter), std::exp on floats.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <tuple>
#include <vector>

namespace {

// Below this many candidates in total, groups are processed serially (threading costs more).
constexpr int64_t kParallelMinSegments = 2048;

enum SoftMethod : int64_t { kHard = 0, kLinear = 1, kGaussian = 2 };

inline float segment_iou(float ix1, float ix2, float iarea, float jx1, float jx2, float jarea) {
  const float xx1 = std::max(ix1, jx1);
  const float xx2 = std::min(ix2, jx2);
  const float inter = std::max(0.f, xx2 - xx1);
  return inter / (iarea + jarea - inter);
}

void check_inputs(const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets) {
  TORCH_CHECK(!segs.is_cuda() && !scores.is_cuda() && !offsets.is_cuda(),
              "the C++ NMS runs on CPU tensors only");
  TORCH_CHECK(segs.dim() == 2 && segs.size(1) == 2, "segs must be N x 2, got ", segs.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == segs.size(0),
              "scores must have one entry per segment");
  TORCH_CHECK(segs.scalar_type() == at::kFloat && scores.scalar_type() == at::kFloat,
              "segs and scores must be float32");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.scalar_type() == at::kLong,
              "offsets must be a 1-D int64 tensor of group boundaries");
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t num_groups = offsets.size(0) - 1;
  TORCH_CHECK(off[0] == 0 && off[num_groups] == segs.size(0),
              "offsets must start at 0 and end at N");
  for (int64_t g = 0; g < num_groups; g++) {
    TORCH_CHECK(off[g] <= off[g + 1], "offsets must be non-decreasing");
  }
}

// Calls fn(g) for every group; groups are handed out dynamically to up to
// at::get_num_threads() threads when there is enough work. (std::thread rather than
// at::parallel_for, whose OpenMP path compiles to a serial loop without -fopenmp.)
template <typename Fn>
void for_each_group(int64_t num_groups, int64_t num_segs, const Fn& fn) {
  const int64_t num_threads =
      std::min<int64_t>(at::get_num_threads(), num_groups);
  if (num_segs < kParallelMinSegments || num_threads < 2) {
    for (int64_t g = 0; g < num_groups; g++) fn(g);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t g = next++; g < num_groups; g = next++) fn(g);
  };
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < num_threads; t++) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// Greedy hard NMS over one group whose candidates are visited in `order` (descending score).
// Writes the kept candidates' indices to `out` and returns how many were kept.
int64_t hard_nms_group(const float* x1, const float* x2, const float* areas,
                       const int64_t* order, int64_t n, float iou_threshold,
                       std::vector<char>& select, int64_t* out) {
  select.assign(n, 1);
  int64_t num_kept = 0;
  for (int64_t oi = 0; oi < n; oi++) {
    if (!select[oi]) continue;
    const int64_t i = order[oi];
    out[num_kept++] = i;
    for (int64_t oj = oi + 1; oj < n; oj++) {
      if (!select[oj]) continue;
      const int64_t j = order[oj];
      if (segment_iou(x1[i], x2[i], areas[i], x1[j], x2[j], areas[j]) >= iou_threshold) {
        select[oj] = 0;
      }
    }
  }
  return num_kept;
}

// Soft-NMS over one group of n candidates, in place (all arrays point at the group's rows).
// Round i moves the best remaining candidate to slot i and decays the others; a candidate
// whose score drops below min_score is replaced by the last live one.
int64_t soft_nms_group(float* x1, float* x2, float* sc, float* areas, int64_t* inds, float* dets,
                       int64_t n, float iou_threshold, float sigma, float min_score,
                       int64_t method) {
  for (int64_t i = 0; i < n; i++) {
    float max_score = sc[i];
    int64_t max_pos = i;
    for (int64_t pos = i + 1; pos < n; pos++) {
      if (max_score < sc[pos]) {
        max_score = sc[pos];
        max_pos = pos;
      }
    }
    const float ix1 = dets[i * 3 + 0] = x1[max_pos];
    const float ix2 = dets[i * 3 + 1] = x2[max_pos];
    const float iscore = dets[i * 3 + 2] = sc[max_pos];
    const float iarea = areas[max_pos];
    const int64_t iind = inds[max_pos];
    x1[max_pos] = x1[i];
    x2[max_pos] = x2[i];
    sc[max_pos] = sc[i];
    areas[max_pos] = areas[i];
    inds[max_pos] = inds[i];
    x1[i] = ix1;
    x2[i] = ix2;
    sc[i] = iscore;
    areas[i] = iarea;
    inds[i] = iind;

    int64_t pos = i + 1;
    while (pos < n) {
      const float ovr = segment_iou(ix1, ix2, iarea, x1[pos], x2[pos], areas[pos]);
      float weight = 1.f;
      if (method == kHard) {
        if (ovr >= iou_threshold) weight = 0.f;
      } else if (method == kLinear) {
        if (ovr >= iou_threshold) weight = 1 - ovr;
      } else {
        weight = std::exp(-(ovr * ovr) / sigma);
      }
      sc[pos] *= weight;
      if (sc[pos] < min_score) {
        x1[pos] = x1[n - 1];
        x2[pos] = x2[n - 1];
        sc[pos] = sc[n - 1];
        areas[pos] = areas[n - 1];
        inds[pos] = inds[n - 1];
        n -= 1;
      } else {
        pos += 1;
      }
    }
  }
  return n;
}

}  // namespace

// Hard NMS per group. Returns (inds N int64, counts G int64): the kept row indices of group g,
// in descending-score order, are inds[offsets[g] : offsets[g] + counts[g]] (rest unspecified).
std::tuple<at::Tensor, at::Tensor> nms_hard_grouped(const at::Tensor& segs,
                                                    const at::Tensor& scores,
                                                    const at::Tensor& offsets,
                                                    double iou_threshold) {
  check_inputs(segs, scores, offsets);
  const int64_t num_segs = segs.size(0);
  const int64_t num_groups = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  const auto x1_t = segs.select(1, 0).contiguous();
  const auto x2_t = segs.select(1, 1).contiguous();
  const auto areas_t = x2_t - x1_t + 1e-6;
  const auto scores_c = scores.contiguous();

  // Per-group descending sort with the same ATen call as the reference (tie order included).
  auto order_t = at::empty({num_segs}, segs.options().dtype(at::kLong));
  int64_t* order = order_t.data_ptr<int64_t>();
  for (int64_t g = 0; g < num_groups; g++) {
    if (off[g + 1] == off[g]) continue;
    const auto group_order = std::get<1>(scores_c.slice(0, off[g], off[g + 1]).sort(0, true));
    std::copy_n(group_order.data_ptr<int64_t>(), off[g + 1] - off[g], order + off[g]);
  }

  auto inds_t = at::full({num_segs}, -1, segs.options().dtype(at::kLong));
  auto counts_t = at::zeros({num_groups}, segs.options().dtype(at::kLong));
  int64_t* inds = inds_t.data_ptr<int64_t>();
  int64_t* counts = counts_t.data_ptr<int64_t>();
  const float* x1 = x1_t.data_ptr<float>();
  const float* x2 = x2_t.data_ptr<float>();
  const float* areas = areas_t.data_ptr<float>();
  const float thr = static_cast<float>(iou_threshold);

  for_each_group(num_groups, num_segs, [&](int64_t g) {
    std::vector<char> select;
    const int64_t start = off[g];
    counts[g] = hard_nms_group(x1 + start, x2 + start, areas + start, order + start,
                               off[g + 1] - start, thr, select, inds + start);
    for (int64_t k = 0; k < counts[g]; k++) inds[start + k] += start;
  });
  return std::make_tuple(inds_t, counts_t);
}

// Soft-NMS per group. Returns (dets N x 3 float32 [start, end, decayed score], inds N int64,
// counts G int64): group g's output rows are offsets[g] : offsets[g] + counts[g] of dets and
// inds, in selection order; inds are row indices into the grouped input.
std::tuple<at::Tensor, at::Tensor, at::Tensor> nms_soft_grouped(
    const at::Tensor& segs, const at::Tensor& scores, const at::Tensor& offsets,
    double iou_threshold, double sigma, double min_score, int64_t method) {
  check_inputs(segs, scores, offsets);
  TORCH_CHECK(method == kHard || method == kLinear || method == kGaussian,
              "soft-NMS method must be 0 (hard), 1 (linear) or 2 (gaussian), got ", method);
  const int64_t num_segs = segs.size(0);
  const int64_t num_groups = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  auto x1_t = segs.select(1, 0).contiguous().clone();
  auto x2_t = segs.select(1, 1).contiguous().clone();
  auto areas_t = x2_t - x1_t + 1e-6;
  auto sc_t = scores.contiguous().clone();
  auto inds_t = at::arange(num_segs, segs.options().dtype(at::kLong));
  auto dets_t = at::zeros({num_segs, 3}, segs.options());
  auto counts_t = at::zeros({num_groups}, segs.options().dtype(at::kLong));

  float* x1 = x1_t.data_ptr<float>();
  float* x2 = x2_t.data_ptr<float>();
  float* areas = areas_t.data_ptr<float>();
  float* sc = sc_t.data_ptr<float>();
  int64_t* inds = inds_t.data_ptr<int64_t>();
  float* dets = dets_t.data_ptr<float>();
  int64_t* counts = counts_t.data_ptr<int64_t>();
  const float thr = static_cast<float>(iou_threshold);
  const float sig = static_cast<float>(sigma);
  const float min_sc = static_cast<float>(min_score);

  for_each_group(num_groups, num_segs, [&](int64_t g) {
    const int64_t s = off[g];
    counts[g] = soft_nms_group(x1 + s, x2 + s, sc + s, areas + s, inds + s, dets + 3 * s,
                               off[g + 1] - s, thr, sig, min_sc, method);
  });
  return std::make_tuple(dets_t, inds_t, counts_t);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "1D hard NMS and soft-NMS for temporal segments (CPU, grouped, parallel over groups)";
  m.def("nms_hard_grouped", &nms_hard_grouped, "hard NMS per group (CPU)", py::arg("segs"),
        py::arg("scores"), py::arg("offsets"), py::arg("iou_threshold"));
  m.def("nms_soft_grouped", &nms_soft_grouped, "soft-NMS per group (CPU)", py::arg("segs"),
        py::arg("scores"), py::arg("offsets"), py::arg("iou_threshold"), py::arg("sigma"),
        py::arg("min_score"), py::arg("method"));
}
