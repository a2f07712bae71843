// Weight statistics behind the automatic plan: per-layer figures and robust location and
// spread of a sample. The public types live in core/quantization.h.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/quantization.h"

namespace w8a8 {

// Computes the statistics and the per-tensor, per-channel and per-group errors of one weight
// matrix (row-major [out_features, in_features]) with the rounding QuantizeWeight uses.
// Parallel over rows with OpenMP. Non-finite weights make the figures non-finite.
LayerAnalysis AnalyzeWeight(const std::string& name, std::span<const float> weight,
                            int64_t out_features, int64_t in_features, int64_t group_size);

struct RobustStatistics {
  double median = 0.0;
  double mad = 0.0;  // Median absolute deviation from the median, unscaled.
};
// Median and MAD of `values`; both 0 for an empty sample.
RobustStatistics MedianAndMad(std::vector<double> values);

// Robust z-score (value - median) / (1.4826 * MAD). The factor makes the MAD estimate the
// standard deviation of a normal sample. A MAD below 1e-9 is raised to 1e-9 so that equal
// errors give large but finite scores.
double RobustZScore(double value, const RobustStatistics& statistics);

}  // namespace w8a8
