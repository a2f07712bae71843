#include "core/outliers.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/quantization.h"
#include "core/status_macros.h"
#include "core/tokenizer_files.h"
#include "spdlog/spdlog.h"

namespace w8a8 {
namespace {

constexpr double kMaxOutlierFraction = 0.03;

double Rms(const float* data, int64_t count, int64_t stride) {
  double squares = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    squares += static_cast<double>(data[i * stride]) * data[i * stride];
  }
  return std::sqrt(squares / static_cast<double>(count));
}

// Sets `per_row` weights at random columns of every row to sign * factor * RMS of the row.
// This changes what the layer computes.
void MakeRandomOutliers(std::vector<float>& weight, int64_t rows, int64_t columns,
                        const OutlierOptions& options, std::mt19937_64& rng) {
  const int64_t per_row = std::min(options.per_row, columns);
  std::vector<int64_t> order(static_cast<size_t>(columns));
  for (int64_t row = 0; row < rows; ++row) {
    float* data = weight.data() + row * columns;
    const double rms = Rms(data, columns, 1);
    // A partial Fisher-Yates shuffle picks distinct columns.
    for (int64_t i = 0; i < columns; ++i) order[i] = i;
    for (int64_t i = 0; i < per_row; ++i) {
      std::uniform_int_distribution<int64_t> pick(i, columns - 1);
      std::swap(order[i], order[pick(rng)]);
      float& value = data[order[i]];
      value = static_cast<float>((value < 0.0f ? -1.0 : 1.0) * options.factor * rms);
    }
  }
}

// A weight [rows, columns] loaded as FP32 for modification.
struct Matrix {
  std::vector<float> values;
  int64_t rows = 0;
  int64_t columns = 0;
  float& at(int64_t row, int64_t column) { return values[row * columns + column]; }
};

absl::StatusOr<Matrix> LoadMatrix(const Checkpoint& source, const std::string& tensor_name) {
  ASSIGN_OR_RETURN(const TensorView view, source.Tensor(tensor_name));
  if (view.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", tensor_name, " in ", source.path().string(), " is not 2-D"));
  }
  Matrix matrix;
  matrix.rows = view.shape[0];
  matrix.columns = view.shape[1];
  ASSIGN_OR_RETURN(matrix.values, ToFloat32(view));
  return matrix;
}

// Makes outliers in `per_row` channels of down_proj (or o_proj) without changing what the
// model computes. Input channel c of the layer is a linear function of row c of `partner`,
// because down_proj reads silu(gate) * up and o_proj reads attention-weighted rows of v_proj.
// Multiplying the layer's column(s) for c by s and dividing the partner's row c by s leaves
// the product unchanged, and a scaled partner row costs per-channel quantization nothing.
// `columns_of_row` maps a partner row to the layer columns that read it (several under
// grouped-query attention). The least important channels by weight norms are chosen, and
// s makes their columns `factor` times the RMS of the rest of the layer.
void MakeCompensatedOutliers(Matrix& layer, Matrix& partner,
                             const std::vector<std::vector<int64_t>>& columns_of_row,
                             const OutlierOptions& options) {
  const int64_t channels = partner.rows;
  std::vector<std::pair<double, int64_t>> importance;
  for (int64_t row = 0; row < channels; ++row) {
    double column_squares = 0.0;
    for (int64_t column : columns_of_row[row]) {
      const double rms = Rms(&layer.at(0, column), layer.rows, layer.columns);
      column_squares += rms * rms;
    }
    importance.emplace_back(
        std::sqrt(column_squares) * Rms(&partner.at(row, 0), partner.columns, 1), row);
  }
  std::sort(importance.begin(), importance.end());
  const double layer_rms = Rms(layer.values.data(), layer.rows * layer.columns, 1);
  const int64_t count = std::min(options.per_row, channels);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t row = importance[i].second;
    // All columns of a channel share one scale, which the partner row is divided by.
    double column_squares = 0.0;
    for (int64_t column : columns_of_row[row]) {
      const double rms = Rms(&layer.at(0, column), layer.rows, layer.columns);
      column_squares += rms * rms;
    }
    const double columns_rms =
        std::sqrt(column_squares / static_cast<double>(columns_of_row[row].size()));
    if (columns_rms <= 0.0) continue;
    const double scale = options.factor * layer_rms / columns_rms;
    for (int64_t column : columns_of_row[row]) {
      for (int64_t r = 0; r < layer.rows; ++r) layer.at(r, column) *= static_cast<float>(scale);
    }
    for (int64_t c = 0; c < partner.columns; ++c) partner.at(row, c) /= static_cast<float>(scale);
  }
}

}  // namespace

int64_t MaxOutlierLayers(int64_t linear_layers) {
  return std::max<int64_t>(
      1, static_cast<int64_t>(std::floor(kMaxOutlierFraction * static_cast<double>(linear_layers))));
}

absl::Status ParseOutlierLayers(const std::string& argument, OutlierOptions& options) {
  const std::string trimmed(absl::StripAsciiWhitespace(argument));
  if (trimmed.empty()) {
    return absl::InvalidArgumentError(
        "missing --layers: pass a count such as 1 or comma-separated layer names");
  }
  int64_t count = 0;
  if (absl::SimpleAtoi(trimmed, &count)) {
    if (count < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid --layers ", trimmed, ": expected a count of at least 1"));
    }
    options.count = count;
    options.layers.clear();
    return absl::OkStatus();
  }
  options.layers.clear();
  for (absl::string_view name : absl::StrSplit(trimmed, ',', absl::SkipWhitespace())) {
    options.layers.emplace_back(absl::StripAsciiWhitespace(name));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ChooseOutlierLayers(const Checkpoint& source,
                                                             const OutlierOptions& options) {
  const std::vector<std::string> all = LinearLayerNames(source, /*include_lm_head=*/false);
  const int64_t limit = MaxOutlierLayers(static_cast<int64_t>(all.size()));
  std::vector<std::string> chosen;
  if (!options.layers.empty()) {
    std::set<std::string> seen;
    for (const std::string& name : options.layers) {
      if (std::find(all.begin(), all.end(), name) == all.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", name, " is not a linear layer of ", source.path().string(),
            "; names look like ", all.empty() ? "model.layers.0.self_attn.q_proj" : all.front()));
      }
      if (seen.insert(name).second) chosen.push_back(name);
    }
  } else {
    if (options.count > static_cast<int64_t>(all.size())) {
      return absl::InvalidArgumentError(absl::StrCat("cannot modify ", options.count,
                                                     " layers: the model has ", all.size()));
    }
    std::mt19937_64 rng(options.seed);
    std::vector<std::string> shuffled = all;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    chosen.assign(shuffled.begin(), shuffled.begin() + options.count);
    // Keep model order so the output reads naturally.
    std::sort(chosen.begin(), chosen.end(), [&all](const std::string& a, const std::string& b) {
      return std::find(all.begin(), all.end(), a) < std::find(all.begin(), all.end(), b);
    });
  }
  if (static_cast<int64_t>(chosen.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot modify ", chosen.size(), " layers: at most ", limit, " of the model's ",
        all.size(), " linear layers (3%, at least 1) may get outliers"));
  }
  return chosen;
}

absl::StatusOr<std::vector<std::string>> InjectOutliers(const Checkpoint& source,
                                                        const OutlierOptions& options,
                                                        const std::filesystem::path& out_dir) {
  if (!(options.factor > 1.0) || !std::isfinite(options.factor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid factor ", options.factor, ": expected a finite number > 1"));
  }
  if (options.per_row < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid outliers per row ", options.per_row, ": expected at least 1"));
  }
  ASSIGN_OR_RETURN(const std::vector<std::string> chosen, ChooseOutlierLayers(source, options));

  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create output directory ", out_dir.string(),
                                            ": ", error.message()));
  }

  // Modified tensors, computed before writing. Layers named down_proj or o_proj keep the
  // model's function (see MakeCompensatedOutliers); other layers get random outliers.
  std::map<std::string, std::vector<float>> modified;
  std::mt19937_64 rng(options.seed);
  const ModelConfig& config = source.config();
  for (const std::string& layer_name : chosen) {
    const std::string prefix = layer_name.substr(0, layer_name.rfind('.'));
    const bool down = layer_name.ends_with("mlp.down_proj");
    const bool output = layer_name.ends_with("self_attn.o_proj");
    ASSIGN_OR_RETURN(Matrix layer, LoadMatrix(source, layer_name + ".weight"));
    if (!down && !output) {
      MakeRandomOutliers(layer.values, layer.rows, layer.columns, options, rng);
      modified[layer_name + ".weight"] = std::move(layer.values);
      continue;
    }
    const std::string partner_name =
        prefix + (down ? ".up_proj.weight" : ".v_proj.weight");
    ASSIGN_OR_RETURN(Matrix partner, LoadMatrix(source, partner_name));
    std::vector<std::vector<int64_t>> columns_of_row(static_cast<size_t>(partner.rows));
    if (down) {
      for (int64_t row = 0; row < partner.rows; ++row) columns_of_row[row] = {row};
    } else {
      // o_proj column (head h, dimension d) reads v_proj row (h / group, d).
      const int64_t head_dim = config.head_dim;
      const int64_t group = config.num_attention_heads / config.num_key_value_heads;
      for (int64_t column = 0; column < layer.columns; ++column) {
        const int64_t head = column / head_dim;
        const int64_t row = (head / group) * head_dim + column % head_dim;
        if (row < partner.rows) columns_of_row[row].push_back(column);
      }
    }
    MakeCompensatedOutliers(layer, partner, columns_of_row, options);
    modified[layer_name + ".weight"] = std::move(layer.values);
    modified[partner_name] = std::move(partner.values);
  }

  // Unmodified float tensors are written straight from the memory map.
  std::vector<std::unique_ptr<std::vector<float>>> owned;
  std::vector<TensorToWrite> tensors;
  for (const std::string& name : source.TensorNames()) {
    ASSIGN_OR_RETURN(const TensorView view, source.Tensor(name));
    if (const auto found = modified.find(name); found != modified.end()) {
      tensors.push_back({name, DType::kF32, view.shape,
                         std::as_bytes(std::span<const float>(found->second))});
      continue;
    }
    const bool float_dtype =
        view.dtype == DType::kF32 || view.dtype == DType::kF16 || view.dtype == DType::kBF16;
    if (float_dtype || view.dtype == DType::kI8 || view.dtype == DType::kI32) {
      tensors.push_back({name, view.dtype, view.shape,
                         std::span<const std::byte>(view.data, view.size_bytes)});
      continue;
    }
    ASSIGN_OR_RETURN(std::vector<float> values, ToFloat32(view));
    owned.push_back(std::make_unique<std::vector<float>>(std::move(values)));
    tensors.push_back(
        {name, DType::kF32, view.shape, std::as_bytes(std::span<const float>(*owned.back()))});
  }

  const std::string label = absl::StrCat(
      "synthetic model: outlier weights (", options.per_row, " per row, about ", options.factor,
      "x the rest, seed ", options.seed, ") injected into ", absl::StrJoin(chosen, ", "),
      " of ", source.path().string(),
      "; down_proj and o_proj outliers are compensated in up_proj and v_proj rows");
  RETURN_IF_ERROR(WriteSafetensors(out_dir / "model.safetensors", tensors,
                                   {{"format", "pt"}, {"w8a8_synthetic", label}}));

  nlohmann::json hf_config = source.format() == "safetensors" ? source.raw_config()
                                                              : ToHfConfigJson(config);
  hf_config["w8a8_synthetic"] = {{"description", label},
                              {"source", source.path().string()},
                              {"outlier_layers", chosen},
                              {"factor", options.factor},
                              {"outliers_per_row", options.per_row},
                              {"seed", options.seed}};
  std::ofstream config_file(out_dir / "config.json", std::ios::binary | std::ios::trunc);
  config_file << hf_config.dump(2) << "\n";
  if (!config_file) {
    return absl::InternalError(
        absl::StrCat("failed to write ", (out_dir / "config.json").string()));
  }
  if (absl::Status status = WriteTokenizerFiles(source, out_dir); !status.ok()) {
    if (!absl::IsFailedPrecondition(status)) return status;
    spdlog::warn("{}, so {} has no tokenizer files", status.ToString(), out_dir.string());
  }
  spdlog::info("wrote {}: {}", out_dir.string(), label);
  return chosen;
}

}  // namespace w8a8
