// Runs the hf-download init container's script (deploy/k8s/components/hf-download) with sh and
// curl against a mock of the Hugging Face hub's /REPO/resolve/REVISION/FILE endpoint on
// 127.0.0.1. Like the hub, the mock requires a token for a gated repository and redirects each
// file to a storage host, here a second mock on 127.0.0.2.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, beforeEach, describe, test } from "node:test";

import { deployDir } from "./lib.mjs";

const script = path.join(deployDir, "k8s", "components", "hf-download", "download-model.sh");
const token = "hf_test_token_0123456789";
const files = {
  "open/model/resolve/main/config.json": '{"architectures": ["LlamaForCausalLM"]}',
  "open/model/resolve/main/sub/dir/stories.gguf": "GGUF\u0003fake-weights",
  "gated/model/resolve/v1/tokenizer.json": '{"model": {"type": "BPE"}}',
};

let server;
let storage;
let storageAddress;
let endpoint;
let requests = [];
let scratch;

before(async () => {
  storage = http.createServer((request, response) => {
    requests.push({ host: "storage", url: request.url, authorization: request.headers.authorization });
    const body = files[decodeURIComponent(request.url.slice("/storage/".length))];
    response.writeHead(200, { "content-type": "application/octet-stream" });
    response.end(body);
  });
  await new Promise((resolve) => storage.listen(0, "127.0.0.2", resolve));
  storageAddress = `http://127.0.0.2:${storage.address().port}`;

  server = http.createServer((request, response) => {
    requests.push({ host: "hub", url: request.url, authorization: request.headers.authorization });
    const key = decodeURIComponent(request.url.slice(1));
    if (key.startsWith("gated/") && request.headers.authorization !== `Bearer ${token}`) {
      response.writeHead(401).end("Access to model gated/model is restricted.");
      return;
    }
    if (!(key in files)) {
      response.writeHead(404).end("Entry not found");
      return;
    }
    response.writeHead(302, { location: `${storageAddress}/storage/${encodeURIComponent(key)}` }).end();
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint = `http://127.0.0.1:${server.address().port}`;
});

after(() => {
  server.close();
  storage.close();
});

beforeEach(() => {
  requests = [];
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), "w8a8-hf-download-"));
});

function runScript(environment) {
  return new Promise((resolve) => {
    const child = spawn("sh", [script], {
      env: { PATH: process.env.PATH, HF_ENDPOINT: endpoint, TMPDIR: scratch, ...environment },
    });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk));
    child.stderr.on("data", (chunk) => (output += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, output });
    });
  });
}

function listFiles(dir) {
  return fs.readdirSync(dir, { recursive: true }).filter((name) => fs.statSync(path.join(dir, name)).isFile()).sort();
}

describe("download-model.sh", () => {
  test("downloads every file", async () => {
    const modelDir = path.join(scratch, "models", "open");
    const result = await runScript({ HF_REPO: "open/model", HF_FILES: "config.json sub/dir/stories.gguf", MODEL_DIR: modelDir });
    assert.equal(result.status, 0, result.output);
    assert.deepEqual(listFiles(modelDir), [".hf-download-complete", "config.json", "sub/dir/stories.gguf"]);
    assert.equal(fs.readFileSync(path.join(modelDir, "sub/dir/stories.gguf"), "utf8"), files["open/model/resolve/main/sub/dir/stories.gguf"]);
    assert.ok(requests.every((request) => request.authorization === undefined), "sent a token without HF_TOKEN");
  });

  test("skips a complete download", async () => {
    const environment = { HF_REPO: "open/model", HF_FILES: "config.json", MODEL_DIR: path.join(scratch, "m") };
    assert.equal((await runScript(environment)).status, 0);
    requests = [];
    const again = await runScript(environment);
    assert.equal(again.status, 0, again.output);
    assert.deepEqual(requests, []);
    assert.match(again.output, /nothing to download/);
  });

  test("downloads again for another revision", async () => {
    const modelDir = path.join(scratch, "m");
    assert.equal((await runScript({ HF_REPO: "open/model", HF_FILES: "config.json", MODEL_DIR: modelDir })).status, 0);
    requests = [];
    const result = await runScript({ HF_REPO: "gated/model", HF_REVISION: "v1", HF_FILES: "tokenizer.json", MODEL_DIR: modelDir, HF_TOKEN: token });
    assert.equal(result.status, 0, result.output);
    assert.equal(requests[0].url, "/gated/model/resolve/v1/tokenizer.json");
  });

  test("sends the token to the hub only", async () => {
    const modelDir = path.join(scratch, "gated");
    const result = await runScript({ HF_REPO: "gated/model", HF_REVISION: "v1", HF_FILES: "tokenizer.json", MODEL_DIR: modelDir, HF_TOKEN: token });
    assert.equal(result.status, 0, result.output);
    assert.deepEqual(requests.map((request) => [request.host, request.authorization]), [
      ["hub", `Bearer ${token}`],
      ["storage", undefined],
    ]);
    assert.doesNotMatch(result.output, new RegExp(token), "the token appears in the output");
    assert.deepEqual(listFiles(scratch).filter((name) => name.startsWith("tmp")), [], "the header file was left behind");
  });

  test("gated repository without token fails", async () => {
    const modelDir = path.join(scratch, "gated");
    const result = await runScript({ HF_REPO: "gated/model", HF_REVISION: "v1", HF_FILES: "tokenizer.json", MODEL_DIR: modelDir });
    assert.notEqual(result.status, 0);
    assert.match(result.output, /401/);
    assert.match(result.output, /Secret w8a8-hf-token/);
    assert.deepEqual(listFiles(modelDir), [], "a partial file or the marker was left behind");
  });

  test("missing file fails", async () => {
    const modelDir = path.join(scratch, "open");
    const result = await runScript({ HF_REPO: "open/model", HF_FILES: "config.json missing.safetensors", MODEL_DIR: modelDir });
    assert.notEqual(result.status, 0);
    assert.match(result.output, /404/);
    assert.deepEqual(listFiles(modelDir), ["config.json"]);
  });

  test("path outside the model directory fails", async () => {
    const result = await runScript({ HF_REPO: "open/model", HF_FILES: "../escape.json", MODEL_DIR: path.join(scratch, "m") });
    assert.notEqual(result.status, 0);
    assert.match(result.output, /invalid file path '\.\.\/escape\.json'/);
    assert.deepEqual(requests, []);
  });

  test("missing settings fail", async () => {
    const result = await runScript({ HF_FILES: "config.json", MODEL_DIR: path.join(scratch, "m") });
    assert.notEqual(result.status, 0);
    assert.match(result.output, /HF_REPO is not set/);
  });
});
