#include "core/quant_chart.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace w8a8 {
namespace {

constexpr double kWidth = 960;
constexpr double kHeight = 420;
constexpr double kLeft = 70;
constexpr double kRight = 20;
constexpr double kTop = 50;
constexpr double kBottom = 60;

std::string EscapeXml(const std::string& text) {
  std::string escaped;
  for (char c : text) {
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      default: escaped += c;
    }
  }
  return escaped;
}

// Errors of exactly zero cannot be drawn on a log scale, so they sit at the bottom edge.
double ClampError(double error, double floor) { return std::max(error, floor); }

}  // namespace

std::string RenderLayerErrorChart(const ModelAnalysis& analysis, const QuantPlan& plan,
                                  const std::string& title) {
  const std::vector<LayerAnalysis>& layers = analysis.layers;
  double min_error = 1.0;
  double max_error = 1e-6;
  for (const LayerAnalysis& layer : layers) {
    for (double error : {layer.per_channel.relative_error, layer.per_group.relative_error}) {
      if (error > 0) {
        min_error = std::min(min_error, error);
        max_error = std::max(max_error, error);
      }
    }
  }
  if (min_error > max_error) std::swap(min_error, max_error);
  // Whole decades around the data keep the axis labels round.
  const double low_decade = std::floor(std::log10(min_error));
  const double high_decade = std::max(low_decade + 1, std::ceil(std::log10(max_error)));
  const double floor_error = std::pow(10.0, low_decade);

  const double plot_width = kWidth - kLeft - kRight;
  const double plot_height = kHeight - kTop - kBottom;
  const size_t count = std::max<size_t>(layers.size(), 1);
  auto x_of = [&](size_t index) {
    return kLeft + plot_width * (static_cast<double>(index) + 0.5) / static_cast<double>(count);
  };
  auto y_of = [&](double error) {
    const double decade = std::log10(ClampError(error, floor_error));
    return kTop + plot_height * (high_decade - decade) / (high_decade - low_decade);
  };

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
      kWidth, kHeight, kWidth, kHeight);
  absl::StrAppend(&svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.0f\" y=\"24\" font-size=\"15\">%s</text>\n",
                                        kLeft, EscapeXml(title)));

  // Horizontal grid lines and labels, one per decade.
  for (double decade = low_decade; decade <= high_decade + 1e-9; decade += 1) {
    const double y = y_of(std::pow(10.0, decade));
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                                          "stroke=\"#ddd\"/>\n",
                                          kLeft, y, kWidth - kRight, y));
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">"
                                          "1e%.0f</text>\n",
                                          kLeft - 6, y + 4, decade));
  }
  absl::StrAppend(&svg, absl::StrFormat(
                            "<text transform=\"translate(16 %.1f) rotate(-90)\" "
                            "text-anchor=\"middle\">relative weight error</text>\n",
                            kTop + plot_height / 2));
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">"
                                        "linear layers in model order (%zu)</text>\n",
                                        kLeft + plot_width / 2, kHeight - 14, layers.size()));

  // Per-group layers of the plan as shaded columns behind the series.
  const double column = plot_width / static_cast<double>(count);
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerPlan* decision = plan.Find(layers[i].name);
    if (decision != nullptr && decision->scheme == WeightScheme::kPerGroup) {
      absl::StrAppend(&svg, absl::StrFormat(
                                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                                "fill=\"#fde2c8\"><title>%s: per-group in the plan</title>"
                                "</rect>\n",
                                x_of(i) - column / 2, kTop, column, plot_height,
                                EscapeXml(layers[i].name)));
    }
  }

  const auto polyline = [&](bool per_group, const char* color) {
    std::string points;
    for (size_t i = 0; i < layers.size(); ++i) {
      const double error = per_group ? layers[i].per_group.relative_error
                                     : layers[i].per_channel.relative_error;
      absl::StrAppend(&points, absl::StrFormat("%.1f,%.1f ", x_of(i), y_of(error)));
    }
    std::string out = absl::StrFormat(
        "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", color,
        points);
    for (size_t i = 0; i < layers.size(); ++i) {
      const double error = per_group ? layers[i].per_group.relative_error
                                     : layers[i].per_channel.relative_error;
      absl::StrAppend(&out, absl::StrFormat(
                                "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\">"
                                "<title>%s %s: %.3g</title></circle>\n",
                                x_of(i), y_of(error), color, EscapeXml(layers[i].name),
                                per_group ? "per-group" : "per-channel", error));
    }
    return out;
  };
  absl::StrAppend(&svg, polyline(false, "#c0392b"));
  absl::StrAppend(&svg, polyline(true, "#2471a3"));

  // Legend.
  const double legend_x = kWidth - kRight - 330;
  absl::StrAppend(&svg, absl::StrFormat(
                            "<rect x=\"%.0f\" y=\"32\" width=\"12\" height=\"4\" fill=\"#c0392b\"/>"
                            "<text x=\"%.0f\" y=\"38\">per-channel</text>\n",
                            legend_x, legend_x + 16));
  absl::StrAppend(&svg, absl::StrFormat(
                            "<rect x=\"%.0f\" y=\"32\" width=\"12\" height=\"4\" fill=\"#2471a3\"/>"
                            "<text x=\"%.0f\" y=\"38\">per-group (G=%lld)</text>\n",
                            legend_x + 95, legend_x + 111,
                            static_cast<long long>(analysis.group_size)));
  absl::StrAppend(&svg, absl::StrFormat(
                            "<rect x=\"%.0f\" y=\"30\" width=\"12\" height=\"10\" fill=\"#fde2c8\"/>"
                            "<text x=\"%.0f\" y=\"38\">per-group in plan</text>\n",
                            legend_x + 215, legend_x + 231));
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

}  // namespace w8a8
