#!/usr/bin/env node
// Measures llama.cpp (through node-llama-cpp, CPU only) on a GGUF file: prefill of random
// prompts, and greedy decode of 1 to 16 sequences that share one context, so that each decode
// step is one llama_decode over every sequence. The figures line up with the model suite of
// `w8a8 bench`, and --json prints them with the same field names where they correspond.
//
// Usage: node bench.mjs --model FILE.gguf [--threads 2] [--json] [--runs 3]
//            [--prompt-tokens 128,512] [--sequences 1,2,4,8,16] [--decode-prompt-tokens 128]
//            [--decode-tokens 64] [--flash-attention auto|on|off]
import { statSync } from "node:fs";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { describeBuild, loadLlama } from "./llama.mjs";

const usage = "usage: node bench.mjs --model FILE.gguf [--threads N] [--json] [--runs N] " +
  "[--prompt-tokens 128,512] [--sequences 1,2,4,8,16] [--decode-prompt-tokens N] " +
  "[--decode-tokens N] [--flash-attention auto|on|off]";

function fail(message) {
  process.stderr.write(`bench.mjs: ${message}\n${usage}\n`);
  process.exit(2);
}

function positiveInteger(name, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) {
    fail(`--${name} must be a positive integer, got "${text}".`);
  }
  return value;
}

function positiveIntegerList(name, text) {
  return text.split(",").map((item) => positiveInteger(name, item.trim()));
}

function parseOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        model: { type: "string" },
        threads: { type: "string", default: "2" },
        json: { type: "boolean", default: false },
        runs: { type: "string", default: "3" },
        "prompt-tokens": { type: "string", default: "128,512" },
        sequences: { type: "string", default: "1,2,4,8,16" },
        "decode-prompt-tokens": { type: "string", default: "128" },
        "decode-tokens": { type: "string", default: "64" },
        "flash-attention": { type: "string", default: "auto" },
        help: { type: "boolean", default: false },
      },
    }));
  } catch (error) {
    fail(error.message);
  }
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    process.exit(0);
  }
  if (!values.model) fail("--model is missing; give a .gguf file.");
  try {
    if (!statSync(values.model).isFile()) fail(`--model ${values.model} is not a file.`);
  } catch (error) {
    fail(`--model ${values.model} cannot be read: ${error.message}`);
  }
  const flashAttention = { auto: "auto", on: true, off: false }[values["flash-attention"]];
  if (flashAttention === undefined) {
    fail(`--flash-attention must be auto, on or off, got "${values["flash-attention"]}".`);
  }
  return {
    model: values.model,
    threads: positiveInteger("threads", values.threads),
    json: values.json,
    runs: positiveInteger("runs", values.runs),
    promptTokens: positiveIntegerList("prompt-tokens", values["prompt-tokens"]),
    sequences: positiveIntegerList("sequences", values.sequences),
    decodePromptTokens: positiveInteger("decode-prompt-tokens", values["decode-prompt-tokens"]),
    decodeTokens: positiveInteger("decode-tokens", values["decode-tokens"]),
    flashAttention,
  };
}

// Deterministic 32-bit generator (mulberry32), so that every run draws the same prompts.
function seededRandom(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function vocabularySize(model) {
  const tokens = model.fileInfo.metadata?.tokenizer?.ggml?.tokens;
  if (Array.isArray(tokens) && tokens.length > 0) return tokens.length;
  throw new Error(`${model.filename}: the GGUF metadata has no tokenizer.ggml.tokens array, ` +
    "so the vocabulary size for random prompts is unknown.");
}

// `count` random token ids, none of them a control token such as BOS or EOS.
function randomTokens(model, count, seed) {
  const random = seededRandom(seed);
  const vocabulary = vocabularySize(model);
  const tokens = [];
  while (tokens.length < count) {
    const token = Math.floor(random() * vocabulary);
    if (!model.isSpecialToken(token)) tokens.push(token);
  }
  return tokens;
}

// Batch prioritization that gives every pending sequence an equal share of the batch, and
// counts the batches: node-llama-cpp calls it once per llama_decode of the context.
function countingStrategy(counter) {
  return ({ items, size }) => {
    counter.batches += 1;
    const share = Math.max(1, Math.floor(size / items.length));
    const prioritized = [];
    let left = size;
    for (const item of items) {
      const amount = Math.min(item.tokens.length, share, left);
      if (amount <= 0) break;
      prioritized.push({ item, processAmount: amount });
      left -= amount;
    }
    counter.tokens += size - left;
    return prioritized;
  };
}

// Prefill of one random prompt per length into an emptied sequence; the fastest of `runs`
// timed runs after one untimed run, which pages in the mapped weights.
async function measurePrefill(model, options) {
  const longest = Math.max(...options.promptTokens);
  const context = await model.createContext({
    contextSize: longest,
    batchSize: Math.min(512, longest),
    sequences: 1,
    threads: options.threads,
    flashAttention: options.flashAttention,
  });
  const sequence = context.getSequence();
  const results = [];
  for (const length of options.promptTokens) {
    const tokens = randomTokens(model, length, 5);
    let fastest = Infinity;
    for (let run = 0; run <= options.runs; run += 1) {
      await sequence.clearHistory();
      const begin = performance.now();
      await sequence.evaluateWithoutGeneratingNewTokens(tokens);
      const seconds = (performance.now() - begin) / 1000;
      if (run > 0) fastest = Math.min(fastest, seconds);
    }
    results.push({
      prompt_tokens: length,
      seconds: fastest,
      tokens_per_second: length / fastest,
      runs: options.runs,
    });
  }
  const flashAttention = context.flashAttention;
  await context.dispose();
  return { results, flashAttention };
}

// Generates `count` greedy tokens in every sequence of `members`, end of generation ignored,
// starting from each member's `next` token. The sequences advance in lockstep: every step
// requests the next token of all of them in the same event loop turn, so that node-llama-cpp
// puts them into one batch. Without that, a sequence whose sampling finishes first can be
// dispatched alone. Leaves in `next` the last sampled token of each, which is not evaluated
// yet.
async function generateLockstep(members, count) {
  const generators = members.map(({ sequence, next }) =>
    sequence.evaluate([next], { temperature: 0, yieldEogToken: true }));
  for (let step = 0; step < count; step += 1) {
    const results = await Promise.all(generators.map((generator) => generator.next()));
    results.forEach((result, i) => {
      if (result.done) throw new Error(`sequence ${i} stopped generating at step ${step}.`);
      members[i].next = result.value;
    });
  }
  await Promise.all(generators.map((generator) => generator.return()));
}

// Aggregate decode of `sequences` sequences in one context, each after its own random prompt
// of options.decodePromptTokens tokens. Two untimed steps build the compute graph for this
// batch size, then options.decodeTokens steps are timed.
async function measureDecode(model, sequences, options) {
  const counter = { batches: 0, tokens: 0 };
  const warmupTokens = 2;
  const context = await model.createContext({
    contextSize: options.decodePromptTokens + options.decodeTokens + warmupTokens + 8,
    batchSize: 512,
    sequences,
    threads: options.threads,
    flashAttention: options.flashAttention,
    batching: { itemPrioritizationStrategy: countingStrategy(counter) },
  });
  const members = [];
  for (let i = 0; i < sequences; i += 1) {
    members.push({
      sequence: context.getSequence(),
      prompt: randomTokens(model, options.decodePromptTokens, 100 + i),
    });
  }
  await Promise.all(members.map(({ sequence, prompt }) =>
    sequence.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1))));
  for (const member of members) member.next = member.prompt[member.prompt.length - 1];
  await generateLockstep(members, warmupTokens);

  counter.batches = 0;
  counter.tokens = 0;
  const begin = performance.now();
  await generateLockstep(members, options.decodeTokens);
  const seconds = (performance.now() - begin) / 1000;
  await context.dispose();

  const tokens = sequences * options.decodeTokens;
  return {
    sequences,
    prompt_tokens: options.decodePromptTokens,
    generated_tokens: options.decodeTokens,
    llama_decode_calls: counter.batches,
    mean_batch_tokens: counter.tokens / counter.batches,
    seconds,
    step_seconds: seconds / options.decodeTokens,
    tokens_per_second: tokens / seconds,
  };
}

function formatRate(value) {
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function printTable(report) {
  const lines = [];
  lines.push(`llama.cpp ${report.build.llama_cpp_release} through node-llama-cpp ` +
    `${report.build.node_llama_cpp} (${report.build.build_type}), ggml CPU variant ` +
    `${report.build.ggml_cpu_variant}, ${report.threads} threads, flash attention ` +
    `${report.flash_attention}`);
  lines.push(`model: ${report.path} (${report.model.description}, ` +
    `${(report.model.size_bytes / 2 ** 20).toFixed(0)} MiB), weight buffers: ` +
    `${report.build.model_buffers.join(", ")}`);
  lines.push("");
  lines.push("prefill   tokens/s   seconds (fastest of " + report.prefill[0]?.runs + ")");
  for (const entry of report.prefill) {
    lines.push(`pp${String(entry.prompt_tokens).padEnd(7)} ${formatRate(entry.tokens_per_second)
      .padStart(8)}   ${entry.seconds.toFixed(3)}`);
  }
  lines.push("");
  lines.push("decode sequences   tokens/s   step ms   llama_decode calls   tokens per call");
  for (const entry of report.decode) {
    lines.push(`${String(entry.sequences).padStart(16)}   ${formatRate(entry.tokens_per_second)
      .padStart(8)}   ${(entry.step_seconds * 1000).toFixed(1).padStart(7)}   ` +
      `${String(entry.llama_decode_calls).padStart(18)}   ${entry.mean_batch_tokens.toFixed(2)
        .padStart(15)}`);
  }
  lines.push(`(decode: ${report.decode[0]?.generated_tokens} greedy tokens per sequence after ` +
    `${report.decode[0]?.prompt_tokens}-token prompts)`);
  process.stdout.write(`${lines.join("\n")}\n`);
}

async function main() {
  const options = parseOptions();
  const { llama, state } = await loadLlama({ threads: options.threads });
  const model = await llama.loadModel({ modelPath: options.model, gpuLayers: 0 });

  const prefill = await measurePrefill(model, options);
  const decode = [];
  for (const sequences of options.sequences) {
    decode.push(await measureDecode(model, sequences, options));
  }

  const report = {
    engine: "llama.cpp",
    build: describeBuild(llama, state),
    path: options.model,
    threads: options.threads,
    flash_attention: prefill.flashAttention,
    model: {
      description: `${model.typeDescription}`,
      size_bytes: model.size,
      vocabulary_size: vocabularySize(model),
    },
    prefill: prefill.results,
    decode,
  };
  await model.dispose();
  await llama.dispose();
  if (options.json) {
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } else {
    printTable(report);
  }
}

try {
  await main();
} catch (error) {
  process.stderr.write(`bench.mjs: ${error.stack ?? error}\n`);
  process.exit(1);
}
