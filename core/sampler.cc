#include "core/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace w8a8 {
namespace {

// Top-p without min-p sorts only the tokens at least this likely relative to the most likely
// one, unless they carry less than top_p of the probability.
constexpr double kShortlistFloor = 1e-7;
// Tokens whose logit is more than this many temperatures below the best have a relative
// probability under exp(-40) = 4.2e-18. Even 128K of them move the total by under 6e-13.
constexpr double kNegligibleLogit = 40.0;

// Returns a seed for a sampler whose request has none. Each thread seeds its own generator
// once from std::random_device, because in libstdc++ (GCC 12) its constructor runs CPUID,
// which exits to the hypervisor on a VM. Seeding every request from it took 1.4% of the
// samples in a `perf record` of a stories260K server.
uint64_t UnseededDraw() {
  thread_local std::mt19937_64 generator = [] {
    std::random_device device;
    return std::mt19937_64((static_cast<uint64_t>(device()) << 32) ^ device());
  }();
  return generator();
}

absl::Status OutOfRange(const char* field, double value, const char* range) {
  return absl::InvalidArgumentError(
      absl::StrCat(field, " is ", value, "; it must be ", range, "."));
}

// A uniform double in [0, 1) from the top 53 bits of one 64-bit draw. Written out instead of
// std::uniform_real_distribution, whose output differs between standard libraries.
double UniformDouble(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Index of the largest logit; the lowest index wins a tie.
int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

}  // namespace

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0) {
    return OutOfRange("temperature", temperature, "a finite number >= 0 (0 selects greedy)");
  }
  if (!(top_p > 0.0 && top_p <= 1.0)) return OutOfRange("top_p", top_p, "in (0, 1]");
  if (top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k is ", top_k, "; it must be >= 0 (0 keeps every token)."));
  }
  if (!(min_p >= 0.0 && min_p <= 1.0)) return OutOfRange("min_p", min_p, "in [0, 1]");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0) {
    return OutOfRange("repetition_penalty", repetition_penalty,
                      "a finite number > 0 (1 disables it)");
  }
  if (!(frequency_penalty >= -2.0 && frequency_penalty <= 2.0)) {
    return OutOfRange("frequency_penalty", frequency_penalty, "in [-2, 2]");
  }
  if (!(presence_penalty >= -2.0 && presence_penalty <= 2.0)) {
    return OutOfRange("presence_penalty", presence_penalty, "in [-2, 2]");
  }
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens is ", max_tokens, "; it must be >= 1."));
  }
  for (size_t i = 0; i < stop.size(); ++i) {
    if (stop[i].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop[", i, "] is an empty string; remove it or give a non-empty one."));
    }
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    if (stop_token_ids[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stop_token_ids[", i, "] is ", stop_token_ids[i], "; token ids are >= 0."));
    }
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  rng_.seed(params.has_seed ? params.seed : UnseededDraw());
}

void Sampler::ApplyPenalties(std::span<float> logits, std::span<const int32_t> history) const {
  const bool repetition = params_.repetition_penalty != 1.0;
  const bool frequency = params_.frequency_penalty != 0.0;
  const bool presence = params_.presence_penalty != 0.0;
  if (!repetition && !frequency && !presence) return;

  absl::flat_hash_map<int32_t, int64_t> counts;
  for (const int32_t token : history) {
    if (token >= 0 && static_cast<size_t>(token) < logits.size()) ++counts[token];
  }
  const float repetition_penalty = static_cast<float>(params_.repetition_penalty);
  for (const auto& [token, count] : counts) {
    float& logit = logits[static_cast<size_t>(token)];
    if (repetition) logit = logit > 0.0f ? logit / repetition_penalty : logit * repetition_penalty;
    logit -= static_cast<float>(static_cast<double>(count) * params_.frequency_penalty +
                                params_.presence_penalty);
  }
}

int32_t Sampler::Sample(std::span<float> logits, std::span<const int32_t> history) {
  ApplyPenalties(logits, history);
  if (params_.temperature == 0.0) return Argmax(logits);

  // Candidates in order of decreasing logit (lower id first on ties). Without top-k, top-p or
  // min-p every token stays and no order is needed.
  std::vector<int32_t> candidates(logits.size());
  std::iota(candidates.begin(), candidates.end(), 0);
  const auto higher = [&logits](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)];
    const float lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  const bool truncate = params_.top_k > 0 || params_.top_p < 1.0 || params_.min_p > 0.0;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const float logit : logits) max_logit = std::max(max_logit, logit);
  const auto relative = [&](int32_t id) {
    return std::exp((static_cast<double>(logits[static_cast<size_t>(id)]) - max_logit) /
                    params_.temperature);
  };
  // Top-p normalizes by the mass of every candidate, which a shortlist below leaves out.
  std::optional<double> full_total;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < candidates.size()) {
    const auto kth = candidates.begin() + params_.top_k;
    std::partial_sort(candidates.begin(), kth, candidates.end(), higher);
    candidates.erase(kth, candidates.end());
  } else if (truncate) {
    // Sorting a 128K vocabulary per token costs milliseconds, and only the most likely tokens
    // can survive top-p and min-p. The shortlist keeps the tokens whose probability is at
    // least kShortlistFloor (or min_p, which drops the rest anyway) times the largest one, with
    // slack for rounding. Every other token has a smaller logit, so the sorted shortlist is
    // the start of the fully sorted order. Min-p then applies its exact test below.
    const double floor = params_.min_p > 0.0 ? params_.min_p : kShortlistFloor;
    const double cutoff = max_logit + params_.temperature * (std::log(floor) - 1e-3);
    std::vector<int32_t> shortlist;
    for (const int32_t id : candidates) {
      if (static_cast<double>(logits[static_cast<size_t>(id)]) >= cutoff) shortlist.push_back(id);
    }
    std::sort(shortlist.begin(), shortlist.end(), higher);
    bool complete = params_.min_p > 0.0;
    if (params_.top_p < 1.0) {
      // The exponentials of negligible tokens are skipped.
      const double negligible = max_logit - params_.temperature * kNegligibleLogit;
      double total = 0.0;
      for (const int32_t id : candidates) {
        const double logit = logits[static_cast<size_t>(id)];
        if (logit >= negligible) total += relative(id);
      }
      double cumulative = 0.0;
      for (const int32_t id : shortlist) cumulative += relative(id);
      // Without min-p, a shortlist short of top_p of the mass is not enough: sort everything.
      complete = complete || cumulative / total >= params_.top_p;
      full_total = total;
    }
    if (complete) {
      candidates = std::move(shortlist);
    } else {
      std::sort(candidates.begin(), candidates.end(), higher);
    }
  }

  // Softmax of logit / temperature over the candidates, in double.
  std::vector<double> probs(candidates.size());
  double total = 0.0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    probs[i] = relative(candidates[i]);
    total += probs[i];
  }
  if (full_total.has_value()) total = *full_total;

  // Top-p keeps the shortest prefix whose probability reaches top_p; min-p then drops tokens
  // below min_p times the most likely one. Both always keep the most likely token.
  size_t kept = candidates.size();
  if (params_.top_p < 1.0) {
    double cumulative = 0.0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params_.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0) {
    const double threshold = params_.min_p * probs[0];
    size_t i = 1;
    while (i < kept && probs[i] >= threshold) ++i;
    kept = i;
  }
  double kept_total = 0.0;
  for (size_t i = 0; i < kept; ++i) kept_total += probs[i];

  // Inverse-CDF draw over the kept candidates, in candidate order.
  const double target = UniformDouble(rng_) * kept_total;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += probs[i];
    if (target < cumulative) return candidates[i];
  }
  return candidates[kept - 1];  // Rounding left target at or above the last cumulative sum.
}

void LogSoftmax(std::span<const float> logits, std::span<float> out) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const float logit : logits) max_logit = std::max(max_logit, logit);
  double sum = 0.0;
  for (const float logit : logits) sum += std::exp(static_cast<double>(logit - max_logit));
  const float log_sum = static_cast<float>(std::log(sum));
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - max_logit - log_sum;
}

}  // namespace w8a8
