// Checks the monitoring files under deploy/monitoring with promtool (Debian's prometheus
// package): the rule file, the scrape configs, and every PromQL expression of the Grafana
// dashboard. Also keeps the Prometheus Operator copy of the rules equal to the rule file.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";

import YAML from "yaml";

import {
  dashboardExpressions,
  dashboardFile,
  deployDir,
  metricNamesIn,
  readYaml,
  ruleExpressions,
  rulesFile,
  substituteGrafanaVariables,
} from "./lib.mjs";

const monitoringDir = path.join(deployDir, "monitoring");
const scratchDir = fs.mkdtempSync(path.join(os.tmpdir(), "w8a8-deploy-monitoring-"));
after(() => fs.rmSync(scratchDir, { recursive: true, force: true }));

function promtool(...args) {
  const result = spawnSync("promtool", args, { encoding: "utf8" });
  if (result.error) throw new Error(`promtool could not run (install Debian's prometheus package): ${result.error.message}`);
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("prometheus rules", () => {
  const rules = readYaml(rulesFile);

  test("rule file passes promtool", () => {
    const { status, output } = promtool("check", "rules", rulesFile);
    assert.equal(status, 0, output);
  });

  test("operator copy equals rule file", () => {
    const resource = readYaml(path.join(monitoringDir, "prometheus-rule.yaml"));
    assert.deepEqual(resource.spec.groups, rules.groups);
  });

  test("alerts have severity and text", () => {
    const alerts = rules.groups.flatMap((group) => group.rules).filter((rule) => rule.alert);
    assert.ok(alerts.length > 0);
    for (const alert of alerts) {
      assert.match(alert.labels?.severity ?? "", /^(critical|warning|info)$/, `${alert.alert}: severity`);
      assert.ok(alert.annotations?.summary, `${alert.alert}: no summary`);
      assert.ok(alert.annotations?.description, `${alert.alert}: no description`);
    }
  });

  test("alerts cover the required signals", () => {
    const expressions = rules.groups.flatMap((group) => group.rules).map((rule) => String(rule.expr)).join("\n");
    for (const metric of [
      "w8a8_requests_total",
      "w8a8_time_to_first_token_seconds_bucket",
      "w8a8_requests_waiting",
      "w8a8_kv_cache_usage_ratio",
    ]) {
      assert.ok(expressions.includes(metric), `no rule reads ${metric}`);
    }
  });

  test("recorded series are defined", () => {
    const records = new Set(rules.groups.flatMap((group) => group.rules).map((rule) => rule.record).filter(Boolean));
    for (const { rule, expr } of [...ruleExpressions(), ...dashboardExpressions().map((e) => ({ rule: e.panel, expr: e.expr }))]) {
      for (const name of metricNamesIn(expr).recorded) {
        assert.ok(records.has(name), `${rule} reads ${name}, which no recording rule defines`);
      }
    }
  });
});

describe("prometheus configs", () => {
  test("static config passes promtool", () => {
    const { status, output } = promtool("check", "config", path.join(monitoringDir, "prometheus", "prometheus.yml"));
    assert.equal(status, 0, output);
  });

  test("kubernetes config passes promtool", (t) => {
    const { status, output } = promtool("check", "config", path.join(monitoringDir, "prometheus", "prometheus-kubernetes.yml"));
    if (status !== 0 && /field kubernetes_sd_configs not found/.test(output)) {
      t.skip("this promtool is built without Kubernetes service discovery (Debian 12's prometheus 2.42 is)");
      return;
    }
    assert.equal(status, 0, output);
  });

  // Checks the relabelling and the rest of the file with any promtool, Debian's included.
  test("kubernetes config without discovery passes promtool", () => {
    const config = readYaml(path.join(monitoringDir, "prometheus", "prometheus-kubernetes.yml"));
    for (const job of config.scrape_configs) {
      assert.ok(job.kubernetes_sd_configs, `${job.job_name} does not use Kubernetes discovery`);
      delete job.kubernetes_sd_configs;
    }
    config.rule_files = config.rule_files.map((file) => path.join(monitoringDir, "prometheus", file));
    const file = path.join(scratchDir, "prometheus-kubernetes.yml");
    fs.writeFileSync(file, YAML.stringify(config));
    const { status, output } = promtool("check", "config", file);
    assert.equal(status, 0, output);
  });

  test("adapter rule serves the HPA metric", () => {
    const adapter = readYaml(path.join(monitoringDir, "prometheus-adapter-rules.yaml"));
    const hpa = readYaml(path.join(deployDir, "k8s", "base", "hpa.yaml"));
    const served = adapter.rules.custom.map((rule) => rule.name.as);
    for (const metric of hpa.spec.metrics.filter((m) => m.type === "Pods")) {
      assert.ok(served.includes(metric.pods.metric.name), `no adapter rule serves ${metric.pods.metric.name}`);
    }
  });
});

describe("grafana dashboard", () => {
  const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8"));
  const panels = dashboard.panels.filter((panel) => panel.type !== "row");

  test("panel ids are unique", () => {
    const ids = dashboard.panels.map((panel) => panel.id);
    assert.equal(new Set(ids).size, ids.length);
  });

  test("rows cover every topic", () => {
    const rows = dashboard.panels.filter((panel) => panel.type === "row").map((panel) => panel.title);
    for (const topic of ["Latency", "Throughput", "Batching", "KV cache", "Quantization plan", "Quantization accuracy"]) {
      assert.ok(rows.includes(topic), `no row ${topic}`);
    }
  });

  test("panels query the data source variable", () => {
    for (const panel of panels) {
      assert.equal(panel.datasource?.uid, "${datasource}", `${panel.title}: data source`);
      assert.ok(panel.targets?.length > 0, `${panel.title}: no query`);
    }
  });

  test("panels fit the grid", () => {
    for (const panel of dashboard.panels) {
      const { x, w } = panel.gridPos;
      assert.ok(x >= 0, `${panel.title}: gridPos.x ${x} is negative`);
      assert.ok(w > 0, `${panel.title}: gridPos.w ${w} is not positive`);
      assert.ok(x + w <= 24, `${panel.title}: gridPos x ${x} + w ${w} exceeds the 24 columns`);
    }
  });

  test("expressions parse", () => {
    // promtool parses rule expressions, so each query becomes a recording rule.
    const queries = dashboardExpressions().filter(({ expr }) => !expr.startsWith("label_values("));
    const file = path.join(scratchDir, "dashboard-rules.yml");
    const groups = [{
      name: "dashboard",
      rules: queries.map(({ expr }, index) => ({ record: `dashboard:query_${index}`, expr: substituteGrafanaVariables(expr) })),
    }];
    fs.writeFileSync(file, YAML.stringify({ groups }));
    const { status, output } = promtool("check", "rules", file);
    assert.equal(status, 0, output);
    assert.match(output, new RegExp(`SUCCESS: ${queries.length} rules found`));
  });

  test("expression check rejects broken PromQL", () => {
    const file = path.join(scratchDir, "broken-rules.yml");
    fs.writeFileSync(file, YAML.stringify({ groups: [{ name: "broken", rules: [{ record: "broken:query", expr: "sum(rate(w8a8_requests_total[5m])" }] }] }));
    assert.notEqual(promtool("check", "rules", file).status, 0);
  });

  test("variables query a server metric", () => {
    const variables = dashboard.templating.list.filter((variable) => variable.type === "query");
    for (const variable of variables) {
      assert.match(variable.definition, /^label_values\(w8a8_\w+/, `variable ${variable.name}`);
    }
  });
});
