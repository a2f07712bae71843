#!/usr/bin/env node
// Prints llama.cpp's greedy continuation of a prompt as one JSON object: the prompt's token
// ids (with BOS when the model adds one), the generated ids, and the generated text. It stops
// at the end-of-generation token, as `w8a8 generate` does without --ignore-eos.
//
// Usage: node greedy.mjs --model FILE.gguf --prompt TEXT [--max-tokens 40] [--threads 1]
import { parseArgs } from "node:util";
import { describeBuild, loadLlama } from "./llama.mjs";

const usage = "usage: node greedy.mjs --model FILE.gguf --prompt TEXT [--max-tokens N] [--threads N]";

function fail(message) {
  process.stderr.write(`greedy.mjs: ${message}\n${usage}\n`);
  process.exit(2);
}

function positiveInteger(name, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value <= 0) {
    fail(`--${name} must be a positive integer, got "${text}".`);
  }
  return value;
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        model: { type: "string" },
        prompt: { type: "string" },
        "max-tokens": { type: "string", default: "40" },
        threads: { type: "string", default: "1" },
      },
    }));
  } catch (error) {
    fail(error.message);
  }
  if (!values.model) fail("--model is missing; give a .gguf file.");
  if (values.prompt === undefined) fail("--prompt is missing.");
  const maxTokens = positiveInteger("max-tokens", values["max-tokens"]);
  const threads = positiveInteger("threads", values.threads);

  const { llama, state } = await loadLlama({ threads });
  const model = await llama.loadModel({ modelPath: values.model, gpuLayers: 0 });
  const promptTokens = model.tokenize(values.prompt);
  if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) {
    promptTokens.unshift(model.tokens.bos);
  }
  const context = await model.createContext({
    contextSize: promptTokens.length + maxTokens + 1,
    sequences: 1,
    threads,
  });
  const sequence = context.getSequence();
  const tokens = [];
  for await (const token of sequence.evaluate(promptTokens, { temperature: 0 })) {
    tokens.push(token);
    if (tokens.length >= maxTokens) break;
  }
  const text = model.detokenize(tokens, false, promptTokens);
  const build = describeBuild(llama, state);
  await context.dispose();
  await model.dispose();
  await llama.dispose();
  process.stdout.write(`${JSON.stringify({
    prompt_tokens: promptTokens,
    tokens,
    text,
    llama_cpp_release: build.llama_cpp_release,
    node_llama_cpp: build.node_llama_cpp,
    ggml_cpu_variant: build.ggml_cpu_variant,
  })}\n`);
}

try {
  await main();
} catch (error) {
  process.stderr.write(`greedy.mjs: ${error.stack ?? error}\n`);
  process.exit(1);
}
