#include "core/quant_chart.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace w8a8 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

size_t CountOf(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

ModelAnalysis ThreeLayers() {
  ModelAnalysis analysis;
  analysis.group_size = 128;
  const char* names[] = {"model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
                         "model.layers.1.mlp.up_proj"};
  const double errors[] = {0.01, 0.4, 0.0};
  for (int i = 0; i < 3; ++i) {
    LayerAnalysis layer;
    layer.name = names[i];
    layer.per_channel.relative_error = errors[i];
    layer.per_group.relative_error = errors[i] / 2;
    analysis.layers.push_back(layer);
  }
  return analysis;
}

TEST(LayerErrorChartTest, DrawsEveryLayerOfBothSchemes) {
  QuantPlan plan;
  const std::string svg = RenderLayerErrorChart(ThreeLayers(), plan, "stories <260K> & co");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_EQ(CountOf(svg, "<circle"), 6u);
  EXPECT_EQ(CountOf(svg, "<polyline"), 2u);
  EXPECT_THAT(svg, HasSubstr("stories &lt;260K&gt; &amp; co"));
  EXPECT_THAT(svg, HasSubstr("model.layers.0.mlp.down_proj per-channel: 0.4"));
  EXPECT_THAT(svg, Not(HasSubstr("per-group in the plan</title>")));
}

TEST(LayerErrorChartTest, MarksPerGroupLayersOfPlan) {
  QuantPlan plan;
  LayerPlan decision;
  decision.name = "model.layers.0.mlp.down_proj";
  decision.scheme = WeightScheme::kPerGroup;
  plan.layers.push_back(decision);
  const std::string svg = RenderLayerErrorChart(ThreeLayers(), plan, "chart");
  EXPECT_EQ(CountOf(svg, "per-group in the plan</title>"), 1u);
  EXPECT_THAT(svg, HasSubstr("model.layers.0.mlp.down_proj: per-group in the plan"));
}

TEST(LayerErrorChartTest, EmptyAnalysisStillRenders) {
  const std::string svg = RenderLayerErrorChart(ModelAnalysis(), QuantPlan(), "empty");
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_EQ(CountOf(svg, "<circle"), 0u);
}

}  // namespace
}  // namespace w8a8
