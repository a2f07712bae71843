// Helpers shared by the deploy checks: rendering kustomizations with kubectl, loading YAML, and
// validating Kubernetes objects offline against the OpenAPI schemas of the Kubernetes API, the
// Prometheus Operator CRDs and the Gateway API, as packaged by kubernetes-models.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import YAML from "yaml";

export const checksDir = path.dirname(fileURLToPath(import.meta.url));
export const repoDir = path.resolve(checksDir, "..", "..");
export const deployDir = path.join(repoDir, "deploy");

// The npm package that contains the models of an API group, when it is not kubernetes-models.
const packageByGroup = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
};

function packageOf(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  return packageByGroup[group] ?? "kubernetes-models";
}

let kustomizeChecked = false;

// The manifests use kustomize features (labels with includeTemplates, components) that the
// kustomize v5 in kubectl 1.27 and later has. Debian 12's kubernetes-client is kubectl 1.20 with
// kustomize v2.0.3, which predates them, so the version is checked before the first render.
function checkKustomizeVersion() {
  if (kustomizeChecked) return;
  let version;
  try {
    version = JSON.parse(execFileSync("kubectl", ["version", "--client", "-o", "json"], { encoding: "utf8" })).kustomizeVersion;
  } catch (error) {
    throw new Error(`kubectl version --client failed (install kubectl 1.27 or later): ${error.message}`);
  }
  const major = Number(/^v?(\d+)\./.exec(version ?? "")?.[1]);
  if (!(major >= 5)) {
    throw new Error(`kubectl embeds kustomize ${version ?? "(unknown)"}, but the manifests need kustomize v5: install kubectl 1.27 or later`);
  }
  kustomizeChecked = true;
}

// Runs `kubectl kustomize` on a directory and returns its output.
export function kustomize(dir) {
  checkKustomizeVersion();
  try {
    return execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    throw new Error(`kubectl kustomize ${dir} failed: ${error.stderr || error.message}`);
  }
}

// Parses every document of a YAML stream. A syntax error throws an Error that names the source.
export function parseYamlDocuments(text, source) {
  const objects = [];
  for (const document of YAML.parseAllDocuments(text)) {
    if (document.errors.length > 0) {
      throw new Error(`${source}: invalid YAML: ${document.errors[0].message}`);
    }
    const value = document.toJS();
    if (value !== null && value !== undefined) objects.push(value);
  }
  return objects;
}

export function readYaml(file) {
  const objects = parseYamlDocuments(fs.readFileSync(file, "utf8"), file);
  if (objects.length !== 1) throw new Error(`${file}: expected one YAML document, found ${objects.length}`);
  return objects[0];
}

const renderCache = new Map();

// Renders a kustomization once per process and returns a fresh copy of its objects.
export function renderObjects(dir) {
  if (!renderCache.has(dir)) renderCache.set(dir, parseYamlDocuments(kustomize(dir), `kubectl kustomize ${dir}`));
  return structuredClone(renderCache.get(dir));
}

function describe(object) {
  return `${object.kind ?? "?"} ${object.metadata?.name ?? "?"} (${object.apiVersion ?? "?"})`;
}

// Validates objects against the JSON schemas compiled into the model classes. Returns one
// message per invalid object. An apiVersion and kind without a model class is an error too.
export async function schemaErrors(objects) {
  const errors = [];
  for (const object of objects) {
    if (typeof object.apiVersion !== "string" || typeof object.kind !== "string") {
      errors.push(`${describe(object)}: apiVersion and kind are required`);
      continue;
    }
    let module;
    try {
      module = await import(`${packageOf(object.apiVersion)}/${object.apiVersion}`);
    } catch {
      errors.push(`${describe(object)}: no schema for apiVersion ${object.apiVersion}`);
      continue;
    }
    const Model = module[object.kind];
    if (typeof Model !== "function") {
      errors.push(`${describe(object)}: no schema for kind ${object.kind} in ${object.apiVersion}`);
      continue;
    }
    try {
      new Model(object).validate();
    } catch (error) {
      errors.push(`${describe(object)}: ${error.message}`);
    }
  }
  return errors;
}

// The JSON schemas of kubernetes-models allow properties they do not define, so a misspelled
// field (say "terminationGracePeriodSecond") passes them, and the API server drops it or,
// with strict field validation, rejects it. The TypeScript declarations of the same packages
// list every defined property, so each object is type-checked as an object literal: TypeScript
// reports the first unknown property of each object. Returns { index, message } per error, with
// the index into `objects`. One call for many objects is much faster than one call per object.
// TypeScript loads only here, so the checks that do not call this start faster.
export async function unknownFieldErrors(objects) {
  const { default: ts } = await import("typescript");
  const file = path.join(checksDir, "__rendered_manifests__.ts");
  const lines = [];
  objects.forEach((object, index) => {
    const typeModule = `${packageOf(object.apiVersion)}/${object.apiVersion}/${object.kind}`;
    lines.push(`import type { I${object.kind} as T${index} } from ${JSON.stringify(typeModule)};`);
  });
  const starts = [];
  objects.forEach((object, index) => {
    starts.push(lines.join("\n").length + 1);
    lines.push(`export const object${index}: T${index} = ${JSON.stringify(object)};`);
  });
  const text = lines.join("\n") + "\n";

  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
  };
  const host = ts.createCompilerHost(options);
  const readSourceFile = host.getSourceFile;
  host.getSourceFile = (name, language, ...rest) =>
    name === file ? ts.createSourceFile(name, text, language) : readSourceFile(name, language, ...rest);
  const fileExists = host.fileExists;
  host.fileExists = (name) => name === file || fileExists(name);
  const program = ts.createProgram([file], options, host);

  const errors = [];
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, "; ");
    let index = starts.length - 1;
    while (index > 0 && starts[index] > (diagnostic.start ?? 0)) index--;
    const object = objects[index];
    const context = text.slice(Math.max(0, (diagnostic.start ?? 0) - 60), (diagnostic.start ?? 0) + 60);
    errors.push({ index, message: `${object ? describe(object) : "?"}: ${message} near ...${context}...` });
  }
  return errors;
}

// Finds one object by kind and name, and throws when it is missing.
export function findObject(objects, kind, name) {
  const found = objects.find((object) => object.kind === kind && object.metadata?.name === name);
  if (!found) throw new Error(`no ${kind} named ${name} in the rendered manifests`);
  return found;
}

// The object a generated name (with kustomize's hash suffix) belongs to.
export function findGenerated(objects, kind, baseName) {
  const pattern = new RegExp(`^${baseName}(-[a-z0-9]{10})?$`);
  const found = objects.filter((object) => object.kind === kind && pattern.test(object.metadata?.name ?? ""));
  if (found.length !== 1) throw new Error(`expected one ${kind} generated from ${baseName}, found ${found.length}`);
  return found[0];
}

// True when every label of `selector` (a matchLabels map) is among `labels`.
export function selects(selector, labels) {
  return Object.entries(selector ?? {}).every(([key, value]) => labels?.[key] === value);
}

// Kubernetes quantities to numbers: CPU in cores, memory in bytes.
export function parseQuantity(quantity) {
  const match = /^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(quantity));
  if (!match) throw new Error(`invalid quantity ${quantity}`);
  const factor = {
    undefined: 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12,
    Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40,
  }[match[2]];
  return Number(match[1]) * factor;
}

export const rulesFile = path.join(deployDir, "monitoring", "prometheus", "w8a8-rules.yml");
export const dashboardFile = path.join(deployDir, "monitoring", "grafana", "w8a8-serve.json");

// Every PromQL expression of the dashboard, with Grafana's variables replaced by values that
// Prometheus accepts, so promtool can parse them.
export function dashboardExpressions() {
  const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8"));
  const expressions = [];
  const visit = (panels) => {
    for (const panel of panels ?? []) {
      for (const target of panel.targets ?? []) {
        expressions.push({ panel: panel.title, expr: target.expr });
      }
      visit(panel.panels);
    }
  };
  visit(dashboard.panels);
  for (const variable of dashboard.templating?.list ?? []) {
    if (variable.type === "query") expressions.push({ panel: `variable ${variable.name}`, expr: variable.definition });
  }
  return expressions;
}

export function substituteGrafanaVariables(expr) {
  return expr
    .replaceAll("$__rate_interval", "5m")
    .replaceAll("$__interval", "1m")
    .replaceAll("$namespace", "default")
    .replaceAll("$pod", ".*");
}

// Expressions of the recording and alerting rules.
export function ruleExpressions() {
  const rules = readYaml(rulesFile);
  return rules.groups.flatMap((group) =>
    group.rules.map((rule) => ({ rule: rule.record ?? rule.alert, expr: String(rule.expr) })),
  );
}

// Metric names in a PromQL expression (or a Grafana label_values() query): identifiers outside
// string literals that start with the server's prefix w8a8_, and Prometheus' own `up`. Names
// with a colon are recording rules and are returned in `recorded`.
export function metricNamesIn(expr) {
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  const names = new Set();
  const recorded = new Set();
  for (const [identifier] of withoutStrings.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    if (identifier.includes(":")) recorded.add(identifier);
    else if (identifier.startsWith("w8a8_") || identifier === "up") names.add(identifier);
  }
  return { names, recorded };
}
