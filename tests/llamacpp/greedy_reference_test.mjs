// Checks `w8a8 generate` against llama.cpp, the reference implementation of the GGUF llama
// architecture: for fixed prompts, the stories260K model's greedy continuation (temperature
// 0, up to 40 tokens) must be the same text in both, and the prompt must encode to the same
// token ids. llama.cpp runs from the prebuilt CPU binaries of node-llama-cpp through
// bench/llamacpp/greedy.mjs.
//
// Needs W8A8_TOOL_BINARY (set by tests/llamacpp/CMakeLists.txt), the npm packages of
// bench/llamacpp (scripts/install-deps.sh installs them) and the model folder
// ($W8A8_MODELS_DIR, else ../shared/models beside the repository). Exits with 77, which CTest
// reports as skipped, when bench/llamacpp/node_modules is missing.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const benchDir = path.join(repoDir, "bench", "llamacpp");
const greedyScript = path.join(benchDir, "greedy.mjs");
const modelsDir = process.env.W8A8_MODELS_DIR || path.join(repoDir, "..", "shared", "models");
const modelFile = path.join(modelsDir, "stories260K", "stories260K.gguf");
const toolBinary = process.env.W8A8_TOOL_BINARY;
const maxTokens = 40;

// Prompts whose continuations run past a sentence end and through quotes and names.
const prompts = ["Once upon a time", "Tom and his dog", "The sun was hot. Mia said"];

if (!fs.existsSync(path.join(benchDir, "node_modules", "node-llama-cpp"))) {
  console.log(`SKIPPED: ${benchDir}/node_modules is missing; run scripts/install-deps.sh ` +
    "(npm install in bench/llamacpp) to enable the llama.cpp reference check.");
  process.exit(77);
}

// llama.cpp's result for each prompt, computed once and shared by the tests of that prompt.
const llamaCppResults = new Map();

function llamaCppGreedy(prompt) {
  if (!llamaCppResults.has(prompt)) {
    llamaCppResults.set(prompt, run(process.execPath, [
      greedyScript, "--model", modelFile, "--prompt", prompt,
      "--max-tokens", String(maxTokens), "--threads", "1",
    ], { timeout: 20000 }).then(({ stdout }) => JSON.parse(stdout)));
  }
  return llamaCppResults.get(prompt);
}

async function w8a8Generate(prompt) {
  const { stdout } = await run(toolBinary, [
    "generate", "--model", modelFile, "--prompt", prompt, "--max-tokens", String(maxTokens),
    "--temperature", "0", "--threads", "1",
  ], { timeout: 20000 });
  return stdout;
}

async function w8a8Tokenize(text) {
  const child = execFile(toolBinary, ["tokenize", "--model", modelFile], { timeout: 20000 });
  const output = new Promise((resolve, reject) => {
    let stdout = "";
    child.stdout.on("data", (chunk) => { stdout += chunk; });
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`w8a8 tokenize exited with ${code}`));
    });
  });
  child.stdin.end(text);
  return JSON.parse(await output);
}

test("inputs exist", () => {
  assert.ok(toolBinary, "W8A8_TOOL_BINARY is not set; run this check through ctest");
  assert.ok(fs.existsSync(toolBinary), `W8A8_TOOL_BINARY ${toolBinary} does not exist`);
  assert.ok(fs.existsSync(modelFile), `${modelFile} is missing; set W8A8_MODELS_DIR`);
});

for (const prompt of prompts) {
  test(`prompt ids match llama.cpp: ${prompt}`, async () => {
    const reference = await llamaCppGreedy(prompt);
    assert.deepEqual(await w8a8Tokenize(prompt), reference.prompt_tokens);
  });

  test(`greedy continuation matches llama.cpp: ${prompt}`, async () => {
    const reference = await llamaCppGreedy(prompt);
    assert.equal(reference.tokens.length, maxTokens,
      `llama.cpp stopped after ${reference.tokens.length} tokens; pick a prompt whose ` +
      `continuation has no end-of-sequence token in the first ${maxTokens}`);
    // `w8a8 generate` prints the prompt, the continuation and a newline.
    const ours = await w8a8Generate(prompt);
    assert.equal(ours, `${prompt}${reference.text}\n`);
  });
}
