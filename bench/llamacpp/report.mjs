#!/usr/bin/env node
// Prints the figures of llama.cpp (two `bench.mjs --json` reports, Q8_0 and BF16 weights)
// and of `w8a8 bench --suite model --json` side by side. Then prints the ratios that the
// performance targets name: our prefill over llama.cpp's Q8_0 and BF16 prefill, our
// 1-sequence decode over Q8_0, and our 8-sequence aggregate decode over Q8_0.
//
// Usage: node report.mjs --q8-0 Q8_0.json --bf16 BF16.json --ours W8A8.json [--json]
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const usage = "usage: node report.mjs --q8-0 Q8_0.json --bf16 BF16.json --ours W8A8.json [--json]";

function fail(message) {
  process.stderr.write(`report.mjs: ${message}\n${usage}\n`);
  process.exit(2);
}

function readJson(flag, file) {
  if (!file) fail(`--${flag} is missing.`);
  let text;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    fail(`--${flag} ${file} cannot be read: ${error.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    fail(`--${flag} ${file} is not valid JSON (${error.message}); rerun the benchmark that ` +
      "writes it.");
  }
  return null;
}

const prefillRate = (report, tokens) =>
  report.prefill.find((entry) => entry.prompt_tokens === tokens)?.tokens_per_second;
const decodeRate = (report, sequences) =>
  report.decode.find((entry) => entry.sequences === sequences)?.tokens_per_second;

function format(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return "-";
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function main() {
  const { values } = parseArgs({
    options: {
      "q8-0": { type: "string" },
      bf16: { type: "string" },
      ours: { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const q8 = readJson("q8-0", values["q8-0"]);
  const bf16 = readJson("bf16", values.bf16);
  const ours = readJson("ours", values.ours);
  if (!ours.model?.plans) {
    fail(`--ours ${values.ours} has no model.plans; produce it with ` +
      "`w8a8 bench --suite model --json`.");
  }

  const promptLengths = [128, 512];
  const sequenceCounts = [1, 2, 4, 8, 16];
  const rows = [
    { name: "llama.cpp Q8_0", report: q8 },
    { name: "llama.cpp BF16", report: bf16 },
    ...ours.model.plans.map((plan) => ({ name: `w8a8 ${plan.plan}`, report: plan })),
  ];

  const ratios = {};
  for (const plan of ours.model.plans) {
    const entry = {};
    for (const tokens of promptLengths) {
      entry[`prefill_${tokens}_over_q8_0`] = prefillRate(plan, tokens) / prefillRate(q8, tokens);
      entry[`prefill_${tokens}_over_bf16`] = prefillRate(plan, tokens) / prefillRate(bf16, tokens);
    }
    entry.decode_1_over_q8_0 = decodeRate(plan, 1) / decodeRate(q8, 1);
    entry.decode_8_over_q8_0 = decodeRate(plan, 8) / decodeRate(q8, 8);
    ratios[plan.plan] = entry;
  }

  if (values.json) {
    process.stdout.write(`${JSON.stringify({ llama_cpp_q8_0: q8, llama_cpp_bf16: bf16, w8a8: ours, ratios })}\n`);
    return;
  }

  const lines = [];
  lines.push(`llama.cpp ${q8.build.llama_cpp_release} (node-llama-cpp ${q8.build.node_llama_cpp}), ` +
    `ggml CPU variant ${q8.build.ggml_cpu_variant}, ${q8.threads} threads, flash attention ` +
    `${q8.flash_attention}`);
  lines.push(`llama.cpp decode: ${q8.decode[0]?.generated_tokens} tokens per sequence after ` +
    `${q8.decode[0]?.prompt_tokens}-token prompts; w8a8 decode: 32 tokens of context`);
  lines.push("");
  const header = ["engine", ...promptLengths.map((tokens) => `pp${tokens}`),
    ...sequenceCounts.map((count) => `decode ${count}`)];
  lines.push(header.map((cell, i) => (i === 0 ? cell.padEnd(22) : cell.padStart(9))).join(" "));
  for (const { name, report } of rows) {
    const cells = [
      ...promptLengths.map((tokens) => format(prefillRate(report, tokens))),
      ...sequenceCounts.map((count) => format(decodeRate(report, count))),
    ];
    lines.push([name.padEnd(22), ...cells.map((cell) => cell.padStart(9))].join(" "));
  }
  lines.push("(tokens/s; decode N is the aggregate over N sequences, one decode step for all)");
  for (const { name, report } of rows.slice(0, 2)) {
    const split = report.decode.filter((entry) =>
      entry.llama_decode_calls !== entry.generated_tokens || entry.mean_batch_tokens !== entry.sequences);
    lines.push(split.length === 0
      ? `${name}: every decode step was one llama_decode call over all sequences`
      : `${name}: decode steps were split over more llama_decode calls for ` +
        `${split.map((entry) => `${entry.sequences} sequences (${entry.llama_decode_calls} calls ` +
          `for ${entry.generated_tokens} steps)`).join(", ")}`);
  }
  lines.push("");
  lines.push("ratio".padEnd(44) + Object.keys(ratios).map((plan) => plan.padStart(12)).join(""));
  const ratioNames = [
    ["prefill_128_over_q8_0", "our prefill 128 / llama.cpp Q8_0"],
    ["prefill_512_over_q8_0", "our prefill 512 / llama.cpp Q8_0"],
    ["prefill_128_over_bf16", "our prefill 128 / llama.cpp BF16"],
    ["prefill_512_over_bf16", "our prefill 512 / llama.cpp BF16"],
    ["decode_1_over_q8_0", "our decode 1 seq / llama.cpp Q8_0 1 seq"],
    ["decode_8_over_q8_0", "our decode 8 seq / llama.cpp Q8_0 8 seq"],
  ];
  for (const [key, label] of ratioNames) {
    lines.push(label.padEnd(44) +
      Object.values(ratios).map((entry) => format(entry[key]).padStart(12)).join(""));
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

main();
