// Runs the real w8a8-server on the stories260K model with the arguments and quantization config
// of the dev overlay, on 127.0.0.1 only. Sends one Generate call and one plan update with
// w8a8-client, scrapes /metrics, and checks that the server exports every metric and label that
// the alerting rules, the dashboard and the autoscaler read. Then runs Debian's Prometheus on
// 127.0.0.1 with deploy/monitoring/prometheus/prometheus.yml pointed at the server, and checks
// that every rule evaluates without error and every dashboard query runs. Last, it stops the
// server with SIGTERM, as the kubelet does, and expects a clean exit.
//
// Needs W8A8_SERVER_BINARY and W8A8_CLIENT_BINARY (set by tests/deploy/CMakeLists.txt) and the
// model folder ($W8A8_MODELS_DIR, else ../shared/models beside the repository).
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import YAML from "yaml";

import {
  dashboardExpressions,
  deployDir,
  findGenerated,
  findObject,
  metricNamesIn,
  parseQuantity,
  readYaml,
  renderObjects,
  repoDir,
  ruleExpressions,
  substituteGrafanaVariables,
} from "./lib.mjs";

const run = promisify(execFile);

const serverBinary = process.env.W8A8_SERVER_BINARY;
const clientBinary = process.env.W8A8_CLIENT_BINARY;
const modelsDir = process.env.W8A8_MODELS_DIR || path.join(repoDir, "..", "shared", "models");
const modelFile = path.join(modelsDir, "stories260K", "stories260K.gguf");

// Labels that Prometheus or the scrape configuration attach, and the histogram bucket label.
const scrapeLabels = new Set(["namespace", "pod", "job", "instance", "le"]);

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Parses the Prometheus text format into series names with their label names, and the
// declared type of each family.
function parseExposition(text) {
  const types = new Map();
  const series = new Map();
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      types.set(type[1], type[2]);
      continue;
    }
    if (line === "" || line.startsWith("#")) continue;
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? /.exec(line);
    assert.ok(sample, `unparsable metrics line: ${line}`);
    const labels = series.get(sample[1]) ?? new Set();
    for (const [, label] of (sample[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="/g)) labels.add(label);
    series.set(sample[1], labels);
  }
  return { types, series };
}

// Label names an expression reads: `by (...)`, `without (...)` and selector matchers.
function labelNamesIn(expr) {
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  const labels = new Set();
  for (const [, list] of withoutStrings.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) {
    for (const label of list.split(",").map((name) => name.trim()).filter(Boolean)) labels.add(label);
  }
  for (const [, matchers] of withoutStrings.matchAll(/\{([^}]*)\}/g)) {
    for (const [, label] of matchers.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)/g)) labels.add(label);
  }
  return labels;
}

describe("server metrics", { skip: serverBinary && clientBinary ? false : "W8A8_SERVER_BINARY and W8A8_CLIENT_BINARY are not set" }, () => {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "w8a8-deploy-server-"));
  let server;
  let serverLog = "";
  let serverExit;
  let ports;
  let exposition;
  let graceSeconds;
  let memoryLimit;

  before(async () => {
    assert.ok(fs.existsSync(modelFile), `model ${modelFile} not found: set W8A8_MODELS_DIR to the folder with stories260K/`);

    // The dev overlay's container, with its $(VAR) references resolved from its environment.
    const objects = renderObjects(path.join(deployDir, "k8s", "overlays", "dev"));
    const container = findObject(objects, "Deployment", "w8a8-server").spec.template.spec.containers.find((c) => c.name === "server");
    const configMap = findGenerated(objects, "ConfigMap", "w8a8-quant-config");
    const planFile = path.join(scratch, "quant-config.yaml");
    fs.writeFileSync(planFile, configMap.data["quant-config.yaml"]);

    ports = { grpc: await freePort(), metrics: await freePort(), admin: await freePort() };
    const environment = Object.fromEntries(container.env.filter((v) => "value" in v).map((v) => [v.name, v.value]));
    environment.COMPUTE_THREADS = "1";
    environment.MODEL_PATH = modelFile;
    const replacements = {
      "--port=": String(ports.grpc),
      "--metrics-port=": String(ports.metrics),
      "--plan=": planFile,
    };
    const args = container.args.map((argument) => {
      const flag = Object.keys(replacements).find((prefix) => argument.startsWith(prefix));
      if (flag) return flag + replacements[flag];
      return argument.replace(/\$\((\w+)\)/g, (_, name) => {
        assert.ok(name in environment, `${argument} uses $(${name}), which the container does not define`);
        return environment[name];
      });
    });
    graceSeconds = Number(environment.GRACE_PERIOD_SECONDS);
    memoryLimit = parseQuantity(container.resources.limits.memory);
    // Listen on loopback only, and on a free admin port so parallel test runs do not collide.
    args.push("--host=127.0.0.1", `--admin-port=${ports.admin}`);

    server = spawn(serverBinary, args, { stdio: ["ignore", "pipe", "pipe"] });
    server.stdout.on("data", (chunk) => (serverLog += chunk));
    server.stderr.on("data", (chunk) => (serverLog += chunk));
    serverExit = new Promise((resolve) => server.on("exit", (code, signal) => resolve({ code, signal })));

    // Ready when the gRPC health service reports SERVING, the state the readiness probe checks.
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (server.exitCode !== null) assert.fail(`w8a8-server exited with ${server.exitCode} while starting:\n${serverLog}`);
      try {
        await run(clientBinary, ["health", `--address=127.0.0.1:${ports.grpc}`, "--timeout-seconds=2"]);
        break;
      } catch (error) {
        if (Date.now() > deadline) assert.fail(`w8a8-server was not SERVING after 120 s:\n${serverLog}`);
      }
      await sleep(250);
    }
  });

  after(async () => {
    if (server && server.exitCode === null && server.signalCode === null) {
      server.kill("SIGKILL");
      await serverExit;
    }
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  test("generate succeeds", async () => {
    const { stdout } = await run(clientBinary, [
      "generate", `--address=127.0.0.1:${ports.grpc}`, "--prompt=Once upon a time", "--max-tokens=16",
      "--temperature=0", "--timeout-seconds=60",
    ]);
    assert.ok(stdout.trim().length > 0, "w8a8-client generate printed nothing");
  });

  test("plan update succeeds", async () => {
    // Without an admin token, the admin listener on 127.0.0.1 serves admin RPCs to any caller.
    await run(clientBinary, [
      "quant", "update", `--address=127.0.0.1:${ports.admin}`, "--plan=per-channel", "--wait", "--timeout-seconds=120",
    ]);
  });

  test("metrics endpoint serves text", async () => {
    const response = await fetch(`http://127.0.0.1:${ports.metrics}/metrics`);
    assert.equal(response.status, 200);
    exposition = parseExposition(await response.text());
    assert.ok(exposition.series.size > 0, "no series in /metrics");
  });

  test("monitored metrics are exported", () => {
    assert.ok(exposition, "/metrics was not scraped");
    const missing = [];
    const uses = [
      ...ruleExpressions().map(({ rule, expr }) => ({ where: `rule ${rule}`, expr })),
      ...dashboardExpressions().map(({ panel, expr }) => ({ where: `panel ${panel}`, expr })),
    ];
    for (const { where, expr } of uses) {
      for (const name of metricNamesIn(expr).names) {
        if (name === "up") continue;
        const histogram = /^(.*)_(bucket|sum|count)$/.exec(name);
        const exported =
          exposition.series.has(name) || (histogram && exposition.types.get(histogram[1]) === "histogram");
        if (!exported) missing.push(`${name} (${where})`);
      }
    }
    assert.deepEqual(missing, []);
  });

  test("histogram suffixes read histograms", () => {
    for (const { expr } of [...ruleExpressions(), ...dashboardExpressions()]) {
      for (const name of metricNamesIn(expr).names) {
        const histogram = /^(.*)_bucket$/.exec(name);
        if (histogram) assert.equal(exposition.types.get(histogram[1]), "histogram", `${name} is read as a histogram`);
      }
    }
  });

  test("monitored labels are exported", () => {
    const problems = [];
    const uses = [...ruleExpressions(), ...dashboardExpressions()];
    for (const { expr } of uses) {
      const text = substituteGrafanaVariables(expr);
      const { names } = metricNamesIn(text);
      const available = new Set(scrapeLabels);
      for (const name of names) for (const label of exposition.series.get(name) ?? []) available.add(label);
      for (const label of labelNamesIn(text)) {
        if (!available.has(label)) problems.push(`label ${label} is on none of ${[...names].join(", ")} in: ${expr}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  test("autoscaler metric is exported", () => {
    const hpa = readYaml(path.join(deployDir, "k8s", "base", "hpa.yaml"));
    for (const metric of hpa.spec.metrics.filter((m) => m.type === "Pods")) {
      assert.ok(exposition.series.has(metric.pods.metric.name), `${metric.pods.metric.name} is not exported`);
    }
  });

  // VmHWM is the peak resident set size since start, after loading, quantizing, generating and
  // re-quantizing, so it bounds what the dev pod needs under this light load.
  test("peak memory fits the dev limit", () => {
    const status = fs.readFileSync(`/proc/${server.pid}/status`, "utf8");
    const peakKib = Number(/^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1]);
    assert.ok(peakKib > 0, `no VmHWM in /proc/${server.pid}/status`);
    assert.ok(peakKib * 1024 < memoryLimit, `peak RSS ${peakKib} KiB exceeds the dev memory limit of ${memoryLimit / 1024} KiB`);
  });

  describe("with prometheus", () => {
    let prometheus;
    let prometheusLog = "";
    let prometheusUrl;

    async function query(expr) {
      const response = await fetch(`${prometheusUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
      return { status: response.status, body: await response.json() };
    }

    before(async () => {
      // The shipped config with the server's port and 1 s intervals, so rate() over two scrapes
      // has data within seconds.
      const config = readYaml(path.join(deployDir, "monitoring", "prometheus", "prometheus.yml"));
      config.global.scrape_interval = "1s";
      config.global.evaluation_interval = "1s";
      config.rule_files = config.rule_files.map((file) => path.join(deployDir, "monitoring", "prometheus", file));
      assert.equal(config.scrape_configs.length, 1);
      config.scrape_configs[0].static_configs[0].targets = [`127.0.0.1:${ports.metrics}`];
      const configFile = path.join(scratch, "prometheus.yml");
      fs.writeFileSync(configFile, YAML.stringify(config));

      const port = await freePort();
      prometheusUrl = `http://127.0.0.1:${port}`;
      prometheus = spawn("prometheus", [
        `--config.file=${configFile}`, `--storage.tsdb.path=${path.join(scratch, "tsdb")}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ], { stdio: ["ignore", "pipe", "pipe"] });
      prometheus.stdout.on("data", (chunk) => (prometheusLog += chunk));
      prometheus.stderr.on("data", (chunk) => (prometheusLog += chunk));

      // Ready when the request-rate recording rule has a value, which needs two scrapes.
      const deadline = Date.now() + 90_000;
      for (;;) {
        if (prometheus.exitCode !== null) assert.fail(`prometheus exited with ${prometheus.exitCode}:\n${prometheusLog}`);
        try {
          const { body } = await query("namespace:w8a8_requests:rate5m");
          if (body.data?.result?.length > 0) break;
        } catch {
          // Not listening yet.
        }
        if (Date.now() > deadline) assert.fail(`no value of namespace:w8a8_requests:rate5m after 90 s:\n${prometheusLog}`);
        await sleep(500);
      }
    });

    after(async () => {
      if (prometheus && prometheus.exitCode === null) {
        const exited = new Promise((resolve) => prometheus.on("exit", resolve));
        prometheus.kill("SIGTERM");
        await exited;
      }
    });

    test("scrape target is up", async () => {
      const { body } = await query('up{job="w8a8-server-static"}');
      assert.equal(body.data.result.length, 1);
      assert.equal(body.data.result[0].value[1], "1");
      assert.equal(body.data.result[0].metric.namespace, "local");
    });

    test("rules evaluate without error", async () => {
      // Every group is evaluated each second, so a second pass follows the first value above.
      await sleep(2000);
      const response = await fetch(`${prometheusUrl}/api/v1/rules`);
      const { data } = await response.json();
      const rules = data.groups.flatMap((group) => group.rules);
      assert.equal(rules.length, ruleExpressions().length);
      for (const rule of rules) {
        assert.equal(rule.health, "ok", `rule ${rule.name}: ${rule.lastError ?? rule.health}`);
      }
    });

    test("dashboard queries run", async () => {
      const empty = [];
      for (const { panel, expr } of dashboardExpressions()) {
        if (expr.startsWith("label_values(")) continue;
        const text = substituteGrafanaVariables(expr).replaceAll('namespace="default"', 'namespace="local"');
        const { status, body } = await query(text);
        assert.equal(status, 200, `panel ${panel}: ${body.error}`);
        assert.equal(body.status, "success", `panel ${panel}: ${body.error}`);
        if (body.data.result.length === 0) empty.push(panel);
      }
      // Only the error ratio may be empty: no request has failed, so its numerator has no
      // series, and the quotient of an empty vector is empty.
      assert.deepEqual([...new Set(empty)], ["Server error ratio"]);
    });
  });

  test("SIGTERM drains and exits cleanly", async () => {
    server.kill("SIGTERM");
    // Generous bound: the kubelet allows terminationGracePeriodSeconds, which is larger.
    const timeout = sleep((graceSeconds + 30) * 1000).then(() => "timeout");
    const result = await Promise.race([serverExit, timeout]);
    assert.notEqual(result, "timeout", `w8a8-server still ran ${graceSeconds + 30} s after SIGTERM:\n${serverLog}`);
    assert.deepEqual(result, { code: 0, signal: null }, serverLog);
  });
});
