// An SVG chart of per-layer weight quantization error, so outlier layers stand out at a glance.
#pragma once

#include <string>

#include "core/quantization.h"

namespace w8a8 {

// Renders the relative Frobenius error of per-channel and per-group weights for every analysed
// layer (x: layers in model order, y: error on a log scale). Layers that `plan` gives per-group
// scales are marked. Returns a standalone SVG document.
std::string RenderLayerErrorChart(const ModelAnalysis& analysis, const QuantPlan& plan,
                                  const std::string& title);

}  // namespace w8a8
