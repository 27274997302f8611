// Tests only: ack_accumulate's CUDA kernels run on the CPU (emulation.h). Each block's reader table is filled by all
// its threads before any of them gathers (the kernel's barrier), with the arguments and variants the CUDA launcher
// would pick (accumulate_plan.h): the tests check the tiles, masks, index arithmetic (int32 and int64), the reader
// tables and their sizes, and the alignment of every vector access.
#include <cmath>
#include <limits>

#include <torch/library.h>

#include "../accumulate_plan.h"
#include "../checks.h"
#include "emulation.h"

namespace ackd_fast {
namespace {

using namespace tiles;

at::Tensor emulated_forward(at::TensorList sources, const at::Tensor& weights, at::IntArrayRef size,
                            c10::string_view mode_name, bool wide_index) {
  check_accumulate_args(sources, weights, size);
  check_cpu(sources);
  check_cpu({weights});
  const Resize mode = parse_resize(std::string(mode_name));
  const int64_t B = sources[0].size(0), C = sources[0].size(1);
  const auto out = guarded_output({B, C, size[0], size[1]}, sources[0].options(), output_format(sources[0]));
  const ForwardPlan plan = plan_forward(sources, out.view, wide_index);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.view.scalar_type(), "emulated_ack_accumulate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t>(plan.vec, plan.wide, [&](auto vec, auto index) {
      using index_t = typename decltype(index)::type;
      const auto args = forward_args<scalar_t, acc_t, index_t>(sources, weights, out.view, mode, vec.value);
      for (int64_t tile = 0; tile < args.tiling.tiles; ++tile)
        for (int t = 0; t < kThreads; ++t) accumulate_forward_thread<decltype(vec)::value>(args, tile, t);
    });
  });
  check_guards(out, "the output");
  return out.view;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> emulated_backward(const at::Tensor& grad, at::TensorList sources,
                                                                  const at::Tensor& weights,
                                                                  c10::string_view mode_name, int64_t grid,
                                                                  bool wide_index, bool weight_table) {
  check_accumulate_backward_args(grad, sources, weights);
  check_cpu(sources);
  check_cpu({weights});
  TORCH_CHECK_VALUE(grid >= 0, "grid must be >= 0 (0: one block per tile), got ", grid);
  const Resize mode = parse_resize(std::string(mode_name));
  std::vector<Guarded> guarded;
  std::vector<at::Tensor> grad_sources;
  for (const auto& a : sources) {
    guarded.push_back(guarded_output(a.sizes(), a.options(), output_format(a)));
    grad_sources.push_back(guarded.back().view);
  }
  const auto grad_weights = guarded_output({weights.size(0)}, weights.options(), at::MemoryFormat::Contiguous);
  const BackwardPlan plan = plan_backward(grad, sources, wide_index, weight_table);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "emulated_ack_accumulate_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_variant<scalar_t>(plan.vec, plan.wide, [&](auto vec, auto index) {
      using index_t = typename decltype(index)::type;
      const auto args = backward_args<scalar_t, acc_t, index_t>(grad, sources, weights, grad_sources, mode, plan);
      const int64_t total = args.tile_begin[args.n];
      const int64_t blocks = grid > 0 ? std::min(grid, total) : total;
      std::vector<double> smem((plan.shared_bytes + sizeof(double) - 1) / sizeof(double));  // 8-byte aligned
      auto* base = reinterpret_cast<unsigned char*>(smem.data());
      std::vector<acc_t> partials(static_cast<size_t>(args.n * blocks), acc_t(0));
      for (int64_t block = 0; block < blocks; ++block) {
        acc_t part[kSources] = {};
        for (int64_t walk = block; walk < total; walk += blocks) {
          int64_t tile;
          const int j = source_of(args, walk, tile);
          const auto table = reader_table<acc_t, index_t>(base, args.tiling[j]);
          // the table must lie within the shared memory the launch asks for
          const int rows = table_rows(args.tiling[j]), cols = table_cols(args.tiling[j]);
          const auto* end = plan.weight_table
                                ? reinterpret_cast<unsigned char*>(table.weight + rows * args.readers_y[j] +
                                                                   cols * args.readers_x[j])
                                : reinterpret_cast<unsigned char*>(table.count + rows + cols);
          TORCH_CHECK(end <= base + plan.shared_bytes, "ack_accumulate emulation: the reader table needs ",
                      end - base, " bytes of shared memory, the launch gives ", plan.shared_bytes);
          for (int t = 0; t < kThreads; ++t) backward_fill(args, j, tile, t, table);
          for (int t = 0; t < kThreads; ++t)
            part[j] += backward_thread<decltype(vec)::value>(args, j, tile, t, table);
        }
        for (int j = 0; j < args.n; ++j) partials[j * blocks + block] = part[j];
      }
      for (int j = 0; j < args.n; ++j) {
        acc_t sum = 0;
        for (int64_t i = 0; i < blocks; ++i) sum += partials[j * blocks + i];
        store_param(grad_weights.view.mutable_data_ptr(), args.weights_dtype, j, sum);
      }
    });
  });
  for (size_t j = 0; j < guarded.size(); ++j) check_guards(guarded[j], "grad of sources[" + std::to_string(j) + "]");
  check_guards(grad_weights, "the weights' gradient");
  return {grad_sources, grad_weights.view};
}

}  // namespace

TORCH_LIBRARY_IMPL(ackd_fast, CPU, m) {
  m.impl("_emulated_cuda_ack_accumulate", &emulated_forward);
  m.impl("_emulated_cuda_ack_accumulate_backward", &emulated_backward);
}

}  // namespace ackd_fast
