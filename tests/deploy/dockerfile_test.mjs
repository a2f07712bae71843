// Offline checks of deploy/Dockerfile, because no Docker engine runs on the development machines
// to build it. They run the dockerfile-utils linter and check the stage layout. They check that
// every runtime package exists in this machine's Debian 12 archive (apt-cache policy), and that
// the runtime stage installs the package of every shared library the built binaries load.
//
// The binary checks read W8A8_BUILD_DIR and W8A8_SERVER_BINARY, W8A8_CLIENT_BINARY,
// W8A8_TOOL_BINARY, which tests/deploy/CMakeLists.txt sets. Without them they are skipped.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { describe, test } from "node:test";

import { DockerfileParser } from "dockerfile-ast";
import { validate } from "dockerfile-utils";

import { deployDir } from "./lib.mjs";

const dockerfilePath = path.join(deployDir, "Dockerfile");
const text = fs.readFileSync(dockerfilePath, "utf8");
const dockerfile = DockerfileParser.parse(text);

// Libraries of the C runtime and the compiler that debian:bookworm-slim already contains.
const basePackages = new Set(["libc6", "libgcc-s1", "libstdc++6"]);

function stages() {
  const result = [];
  for (const instruction of dockerfile.getInstructions()) {
    if (instruction.getKeyword() === "FROM") result.push({ from: instruction, instructions: [] });
    else if (result.length > 0) result.at(-1).instructions.push(instruction);
  }
  return result;
}

function stageNamed(name) {
  const stage = stages().find((candidate) => candidate.from.getBuildStage() === name);
  assert.ok(stage, `no stage named ${name}`);
  return stage;
}

function instructionText(instruction) {
  return instruction.getArgumentsContent() ?? "";
}

// The instruction's source lines, flags included.
function sourceText(instruction) {
  const { start, end } = instruction.getRange();
  return text.split("\n").slice(start.line, end.line + 1).join("\n");
}

// Package names after `apt-get install` in the runtime stage.
function runtimePackages() {
  const runs = stageNamed("runtime").instructions.filter((instruction) => instruction.getKeyword() === "RUN");
  const packages = [];
  for (const run of runs) {
    const command = instructionText(run).replace(/\\\n/g, " ");
    for (const [, list] of command.matchAll(/apt-get install((?:\s+[^&|;]+)+)/g)) {
      packages.push(...list.trim().split(/\s+/).filter((word) => !word.startsWith("-")));
    }
  }
  return packages;
}

// The files the build stage copies out of the CMake build directory.
function copiedBinaries() {
  const run = stageNamed("build").instructions.find((instruction) => /\bcp\b/.test(instructionText(instruction)));
  assert.ok(run, "the build stage copies no binaries");
  const command = instructionText(run).replace(/\\\n/g, " ");
  const copy = /\bcp ([^&]+?) \/out\//.exec(command);
  assert.ok(copy, `no 'cp ... /out/' in: ${command}`);
  return copy[1].trim().split(/\s+/);
}

describe("dockerfile", () => {
  test("linter reports nothing", () => {
    const problems = validate(text).map((problem) => `line ${problem.range.start.line + 1}: ${problem.message}`);
    assert.deepEqual(problems, []);
  });

  test("stages are build and runtime on bookworm", () => {
    assert.deepEqual(stages().map((stage) => stage.from.getBuildStage()), ["build", "runtime"]);
    assert.match(text, /^ARG DEBIAN_IMAGE=debian:bookworm-slim$/m);
    for (const stage of stages()) assert.equal(stage.from.getImageName(), "${DEBIAN_IMAGE}");
  });

  test("build stage runs the CI scripts", () => {
    const commands = stageNamed("build").instructions.map(instructionText).join("\n");
    assert.match(commands, /bash scripts\/install-deps\.sh/);
    assert.match(commands, /bash scripts\/build\.sh -DW8A8_BUILD_TESTS=OFF/);
  });

  test("runtime stage copies only from build", () => {
    for (const instruction of stageNamed("runtime").instructions) {
      if (instruction.getKeyword() === "COPY" || instruction.getKeyword() === "ADD") {
        assert.match(sourceText(instruction), /^(COPY|ADD) --from=build /, `runtime ${instruction.getKeyword()} takes files from the build context`);
      }
    }
    assert.doesNotMatch(text, /\.(gguf|safetensors)\b/, "the image must not contain a model");
  });

  test("runtime stage runs as non-root", () => {
    const users = stageNamed("runtime").instructions.filter((instruction) => instruction.getKeyword() === "USER");
    assert.equal(users.length, 1);
    const [uid, gid] = instructionText(users[0]).split(":").map(Number);
    assert.ok(uid > 0, `USER ${instructionText(users[0])}: the user must be a numeric id above 0`);
    assert.ok(gid > 0, `USER ${instructionText(users[0])}: the group must be a numeric id above 0`);
  });

  test("ports and entrypoint are the server's", () => {
    const runtime = stageNamed("runtime").instructions;
    const exposed = runtime.filter((i) => i.getKeyword() === "EXPOSE").flatMap((i) => instructionText(i).split(/\s+/));
    assert.deepEqual(exposed.sort(), ["50051", "9090"]);
    const entrypoint = runtime.find((i) => i.getKeyword() === "ENTRYPOINT");
    assert.deepEqual(JSON.parse(instructionText(entrypoint)), ["/usr/local/bin/w8a8-server"]);
  });

  test("runtime packages exist in Debian", () => {
    const packages = runtimePackages();
    assert.ok(packages.length > 5, `found only ${packages.join(" ")}`);
    // apt-cache policy prints one "NAME:" block with the candidate version per package found.
    const policy = execFileSync("apt-cache", ["policy", ...packages], { encoding: "utf8" });
    const candidates = new Map();
    for (const [, name, candidate] of policy.matchAll(/^(\S+):\n(?:\s+Installed: \S+\n)?\s+Candidate: (\S+)/gm)) {
      candidates.set(name, candidate);
    }
    for (const name of packages) {
      const candidate = candidates.get(name);
      assert.ok(candidate, `apt-cache policy ${name} finds no package (run apt-get update if the lists are empty)`);
      assert.notEqual(candidate, "(none)", `apt-cache policy ${name} finds no installable version`);
    }
  });

  test("context keeps the sources", () => {
    const ignore = fs.readFileSync(path.join(deployDir, "Dockerfile.dockerignore"), "utf8");
    const patterns = ignore.split("\n").map((line) => line.trim()).filter((line) => line && !line.startsWith("#"));
    const toRegex = (pattern) =>
      new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*\*\//g, "(.*/)?").replace(/\*/g, "[^/]*")}$`);
    const needed = ["CMakeLists.txt", "core", "kernels", "tools", "proto", "server", "client", "scripts/build.sh", "scripts/install-deps.sh"];
    for (const entry of needed) {
      for (const pattern of patterns) {
        assert.doesNotMatch(entry, toRegex(pattern), `Dockerfile.dockerignore pattern ${pattern} drops ${entry}`);
      }
    }
  });
});

const buildDir = process.env.W8A8_BUILD_DIR;
const binaries = [process.env.W8A8_SERVER_BINARY, process.env.W8A8_CLIENT_BINARY, process.env.W8A8_TOOL_BINARY];
const haveBinaries = buildDir && binaries.every((binary) => binary && fs.existsSync(binary));

describe("dockerfile against the built binaries", { skip: haveBinaries ? false : "the binaries are not built" }, () => {
  test("copied paths are the CMake targets", () => {
    const expected = binaries.map((binary) => path.join("build", path.relative(buildDir, binary)));
    assert.deepEqual(copiedBinaries(), expected);
  });

  test("runtime packages provide every library", () => {
    const installed = new Set([...runtimePackages(), ...basePackages]);
    const libraryPaths = new Map();
    for (const line of execFileSync("ldconfig", ["-p"], { encoding: "utf8" }).split("\n")) {
      const match = /^\s*(\S+) \(libc6,x86-64.*\) => (\S+)$/.exec(line);
      if (match && !libraryPaths.has(match[1])) libraryPaths.set(match[1], match[2]);
    }
    // The direct dependencies of every binary, with the paths dpkg may list each library under
    // (Debian 12 merges /lib into /usr/lib, but packages still list either).
    const needs = [];
    for (const binary of binaries) {
      const dynamic = execFileSync("readelf", ["-d", binary], { encoding: "utf8" });
      for (const [, library] of dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)) {
        const libraryPath = libraryPaths.get(library);
        assert.ok(libraryPath, `${path.basename(binary)} needs ${library}, which ldconfig does not know`);
        const real = fs.realpathSync(libraryPath);
        const candidates = [libraryPath, real].flatMap((file) => [file, file.replace(/^\/usr\/lib\//, "/lib/")]);
        needs.push({ binary: path.basename(binary), library, candidates });
      }
    }

    // One dpkg -S call for all paths: it prints "package:arch: path" for each path it finds.
    const search = spawnSync("dpkg", ["-S", ...new Set(needs.flatMap((need) => need.candidates))], { encoding: "utf8" });
    const owners = new Map();
    for (const [, owner, file] of search.stdout.matchAll(/^([^:\s]+)(?::\S+)?: (\S+)$/gm)) owners.set(file, owner);

    const missing = [];
    for (const { binary, library, candidates } of needs) {
      const owner = candidates.map((file) => owners.get(file)).find(Boolean);
      assert.ok(owner, `no Debian package owns ${library}, needed by ${binary}`);
      if (!installed.has(owner)) missing.push(`${owner} (${library}, needed by ${binary})`);
    }
    assert.deepEqual([...new Set(missing)], []);
  });
});
