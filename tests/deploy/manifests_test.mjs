// Renders every kustomization under deploy/ with `kubectl kustomize`, validates each object
// offline against the Kubernetes, Prometheus Operator and Gateway API schemas, and checks the
// contracts between the objects that no schema covers: selectors, port names, probes, the
// shutdown timing, security settings and resource sizes.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";

import {
  deployDir,
  findGenerated,
  findObject,
  parseQuantity,
  renderObjects,
  schemaErrors,
  selects,
  unknownFieldErrors,
} from "./lib.mjs";

const k8sDir = path.join(deployDir, "k8s");

// A kustomization that adds the grpc-route component to the base, because a component does not
// render on its own.
const gatewayDir = fs.mkdtempSync(path.join(os.tmpdir(), "w8a8-deploy-gateway-"));
after(() => fs.rmSync(gatewayDir, { recursive: true, force: true }));
fs.writeFileSync(
  path.join(gatewayDir, "kustomization.yaml"),
  [
    "apiVersion: kustomize.config.k8s.io/v1beta1",
    "kind: Kustomization",
    "resources:",
    `  - ${path.relative(gatewayDir, path.join(k8sDir, "base"))}`,
    "components:",
    `  - ${path.relative(gatewayDir, path.join(k8sDir, "components", "grpc-route"))}`,
    "",
  ].join("\n"),
);

const renders = {
  base: path.join(k8sDir, "base"),
  dev: path.join(k8sDir, "overlays", "dev"),
  prod: path.join(k8sDir, "overlays", "prod"),
  "base with grpc-route": gatewayDir,
  monitoring: path.join(deployDir, "monitoring"),
};

const serverRenders = ["base", "dev", "prod", "base with grpc-route"];

function podChecks(deployment) {
  const pod = deployment.spec.template.spec;
  const server = pod.containers.find((container) => container.name === "server");
  assert.ok(server, `Deployment ${deployment.metadata.name} has no container named server`);
  return { pod, server, labels: deployment.spec.template.metadata.labels };
}

function envValue(container, name) {
  const entry = (container.env ?? []).find((variable) => variable.name === name);
  assert.ok(entry, `container ${container.name} has no environment variable ${name}`);
  return entry.value;
}

// The value of `--flag=` in the server's arguments, with $(VAR) references expanded.
function flagValue(container, flag) {
  const argument = (container.args ?? []).find((arg) => arg.startsWith(`--${flag}=`));
  assert.ok(argument, `container ${container.name} has no --${flag} argument`);
  const value = argument.slice(flag.length + 3);
  const reference = /^\$\((\w+)\)$/.exec(value);
  return reference ? envValue(container, reference[1]) : value;
}

// Every render's objects are type-checked in one TypeScript program.
const renderedObjects = Object.entries(renders).flatMap(([name, dir]) => renderObjects(dir).map((object) => ({ name, object })));
const fieldErrors = await unknownFieldErrors(renderedObjects.map(({ object }) => object));

for (const [name, dir] of Object.entries(renders)) {
  describe(`${name} render`, () => {
    const objects = renderObjects(dir);

    test("renders objects", () => {
      assert.ok(objects.length > 0, `kubectl kustomize ${dir} rendered nothing`);
    });

    test("objects match their schemas", async () => {
      assert.deepEqual(await schemaErrors(objects), []);
    });

    test("objects have no unknown fields", () => {
      const errors = fieldErrors.filter((error) => renderedObjects[error.index].name === name);
      assert.deepEqual(errors.map((error) => error.message), []);
    });
  });
}

for (const name of serverRenders) {
  describe(`${name} server deployment`, () => {
    const objects = renderObjects(renders[name]);
    const deployment = findObject(objects, "Deployment", "w8a8-server");
    const { pod, server, labels } = podChecks(deployment);

    test("selector matches pod labels", () => {
      assert.ok(selects(deployment.spec.selector.matchLabels, labels));
    });

    test("probes use the gRPC health service", () => {
      const grpcPort = server.ports.find((port) => port.name === "grpc");
      assert.equal(grpcPort?.containerPort, 50051);
      assert.equal(flagValue(server, "port"), "50051");
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        assert.equal(server[probe]?.grpc?.port, 50051, `${probe} is not a grpc probe on port 50051`);
      }
    });

    test("metrics port matches the flag", () => {
      const metricsPort = server.ports.find((port) => port.name === "metrics");
      assert.equal(String(metricsPort?.containerPort), flagValue(server, "metrics-port"));
    });

    test("grace period covers drain and preStop", () => {
      const grace = Number(flagValue(server, "grace-period-seconds"));
      const command = server.lifecycle?.preStop?.exec?.command ?? [];
      const preStopSeconds = command[0] === "sleep" ? Number(command[1]) : 0;
      assert.ok(grace > 0, `invalid --grace-period-seconds ${grace}: expected a positive number`);
      assert.ok(
        pod.terminationGracePeriodSeconds >= preStopSeconds + grace + 10,
        `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} < preStop ` +
          `${preStopSeconds} s + drain grace ${grace} s + 10 s margin`,
      );
    });

    test("argument references are defined", () => {
      for (const container of [...pod.containers, ...(pod.initContainers ?? [])]) {
        const defined = new Set((container.env ?? []).map((variable) => variable.name));
        for (const argument of [...(container.args ?? []), ...(container.command ?? [])]) {
          for (const [, variable] of argument.matchAll(/\$\((\w+)\)/g)) {
            assert.ok(defined.has(variable), `${container.name}: ${argument} uses undefined $(${variable})`);
          }
        }
      }
    });

    test("containers run as non-root", () => {
      assert.equal(pod.securityContext?.runAsNonRoot, true);
      assert.ok(pod.securityContext?.runAsUser > 0, "pod runAsUser must be a non-zero id");
      for (const container of [...pod.containers, ...(pod.initContainers ?? [])]) {
        const context = container.securityContext ?? {};
        assert.equal(context.readOnlyRootFilesystem, true, `${container.name}: root filesystem is writable`);
        assert.equal(context.allowPrivilegeEscalation, false, `${container.name}: privilege escalation allowed`);
        assert.deepEqual(context.capabilities?.drop, ["ALL"], `${container.name}: capabilities not dropped`);
        assert.notEqual(context.runAsUser, 0, `${container.name}: runs as root`);
      }
    });

    test("containers have requests and limits", () => {
      for (const container of [...pod.containers, ...(pod.initContainers ?? [])]) {
        for (const resource of ["cpu", "memory"]) {
          const request = container.resources?.requests?.[resource];
          const limit = container.resources?.limits?.[resource];
          assert.ok(request, `${container.name}: ${resource} request missing`);
          assert.ok(limit, `${container.name}: ${resource} limit missing`);
          assert.ok(parseQuantity(request) <= parseQuantity(limit), `${container.name}: ${resource} request above limit`);
        }
      }
    });

    test("KV cache fits the memory limit", () => {
      const kvCacheBytes = Number(flagValue(server, "kv-cache-mib")) * 2 ** 20;
      const memoryLimit = parseQuantity(server.resources.limits.memory);
      assert.ok(kvCacheBytes < memoryLimit / 2, `--kv-cache-mib ${kvCacheBytes / 2 ** 20} takes half the memory limit or more`);
    });

    test("threads follow the CPU limit", () => {
      const threads = server.env.find((variable) => variable.name === "COMPUTE_THREADS");
      assert.equal(threads?.valueFrom?.resourceFieldRef?.resource, "limits.cpu");
      assert.equal(threads?.valueFrom?.resourceFieldRef?.containerName, server.name);
      assert.ok(server.args.includes("--threads=$(COMPUTE_THREADS)"), "--threads does not use COMPUTE_THREADS");
    });

    test("volumes reference rendered objects", () => {
      const volumes = Object.fromEntries(pod.volumes.map((volume) => [volume.name, volume]));
      const mounts = Object.fromEntries(server.volumeMounts.map((mount) => [mount.mountPath, mount]));

      assert.ok(volumes[mounts["/tmp"]?.name]?.emptyDir, "/tmp is not an emptyDir");
      const model = mounts["/models"];
      assert.equal(model?.readOnly, true, "the model volume is not mounted read-only");
      findObject(objects, "PersistentVolumeClaim", volumes[model.name].persistentVolumeClaim.claimName);

      const config = volumes[mounts["/etc/w8a8"]?.name]?.configMap;
      assert.ok(config, "/etc/w8a8 is not a ConfigMap volume");
      const configMap = findObject(objects, "ConfigMap", config.name);
      const planPath = flagValue(server, "plan");
      assert.ok(planPath.startsWith("/etc/w8a8/"), `--plan ${planPath} is outside the ConfigMap mount`);
      assert.ok(path.basename(planPath) in configMap.data, `ConfigMap ${config.name} has no key ${path.basename(planPath)}`);
    });

    test("topology spread selects the pods", () => {
      assert.ok(pod.topologySpreadConstraints?.length > 0);
      for (const constraint of pod.topologySpreadConstraints) {
        assert.ok(selects(constraint.labelSelector.matchLabels, labels), `${constraint.topologyKey} selects no pod`);
      }
    });

    test("services select the pods", () => {
      const containerPorts = new Set(server.ports.map((port) => port.name));
      const services = objects.filter((object) => object.kind === "Service");
      assert.ok(services.length >= 2);
      for (const service of services) {
        assert.ok(selects(service.spec.selector, labels), `Service ${service.metadata.name} selects no pod`);
        for (const port of service.spec.ports) {
          assert.ok(containerPorts.has(port.targetPort), `Service ${service.metadata.name} targets unknown port ${port.targetPort}`);
        }
      }
      assert.equal(findObject(objects, "Service", "w8a8-server-grpc").spec.clusterIP, "None");
    });

    test("autoscaler scales the deployment", () => {
      const hpa = findObject(objects, "HorizontalPodAutoscaler", "w8a8-server");
      assert.equal(hpa.spec.scaleTargetRef.kind, "Deployment");
      assert.equal(hpa.spec.scaleTargetRef.name, deployment.metadata.name);
      assert.ok(hpa.spec.minReplicas <= hpa.spec.maxReplicas);
      const metrics = hpa.spec.metrics.map((metric) => metric.resource?.name ?? metric.pods?.metric?.name);
      assert.deepEqual(metrics, ["cpu", "w8a8_requests_waiting"]);
    });

    test("disruption budget selects the pods", () => {
      const budget = findObject(objects, "PodDisruptionBudget", "w8a8-server");
      assert.ok(selects(budget.spec.selector.matchLabels, labels));
    });
  });
}

for (const name of ["dev", "prod"]) {
  describe(`${name} model download`, () => {
    const objects = renderObjects(renders[name]);
    const { pod, server } = podChecks(findObject(objects, "Deployment", "w8a8-server"));
    const init = (pod.initContainers ?? []).find((container) => container.name === "hf-download");

    test("init container fills the model volume", () => {
      assert.ok(init, "no hf-download init container");
      const modelVolume = server.volumeMounts.find((mount) => mount.mountPath === "/models").name;
      const initMount = init.volumeMounts.find((mount) => mount.name === modelVolume);
      assert.equal(initMount?.mountPath, "/models");
      assert.notEqual(initMount?.readOnly, true);
    });

    test("model path is a downloaded file", () => {
      const configMap = findGenerated(objects, "ConfigMap", "w8a8-hf-download");
      assert.equal(init.envFrom[0].configMapRef.name, configMap.metadata.name);
      const { HF_REPO, HF_FILES, MODEL_DIR } = configMap.data;
      assert.ok(HF_REPO, "HF_REPO is not set");
      assert.ok(HF_FILES, "HF_FILES is not set");
      assert.ok(MODEL_DIR, "MODEL_DIR is not set");
      const files = HF_FILES.split(/\s+/).filter(Boolean);
      const model = flagValue(server, "model");
      if (model.endsWith(".gguf")) {
        assert.ok(files.map((file) => `${MODEL_DIR}/${file}`).includes(model), `${model} is not among HF_FILES under ${MODEL_DIR}`);
      } else {
        assert.equal(model, MODEL_DIR);
        for (const file of ["config.json", "tokenizer.json"]) {
          assert.ok(files.includes(file), `HF_FILES lacks ${file}`);
        }
      }
    });

    test("token comes from an optional secret", () => {
      const token = init.env.find((variable) => variable.name === "HF_TOKEN");
      assert.equal(token?.valueFrom?.secretKeyRef?.optional, true);
    });
  });
}

describe("monitoring", () => {
  const monitoring = renderObjects(renders.monitoring);
  const base = renderObjects(renders.base);

  test("service monitor selects the metrics service", () => {
    const monitor = findObject(monitoring, "ServiceMonitor", "w8a8-server");
    const selected = base.filter(
      (object) => object.kind === "Service" && selects(monitor.spec.selector.matchLabels, object.metadata.labels),
    );
    assert.deepEqual(selected.map((service) => service.metadata.name), ["w8a8-server-metrics"]);
    const portNames = selected[0].spec.ports.map((port) => port.name);
    for (const endpoint of monitor.spec.endpoints) {
      assert.ok(portNames.includes(endpoint.port), `ServiceMonitor port ${endpoint.port} is not a port of the Service`);
    }
  });

  test("dashboard config map carries the sidecar label", () => {
    const configMap = findObject(monitoring, "ConfigMap", "w8a8-grafana-dashboard");
    assert.equal(configMap.metadata.labels.grafana_dashboard, "1");
    JSON.parse(configMap.data["w8a8-serve.json"]);
  });
});

// The checks above must be able to fail: broken objects are reported.
describe("validators", () => {
  const deployment = findObject(renderObjects(renders.base), "Deployment", "w8a8-server");

  test("schema check rejects a wrong type", async () => {
    const broken = structuredClone(deployment);
    broken.spec.template.spec.containers[0].ports[0].containerPort = "grpc";
    const errors = await schemaErrors([broken]);
    assert.equal(errors.length, 1);
    assert.match(errors[0], /containerPort must be integer/);
  });

  test("schema check rejects an unknown kind", async () => {
    const errors = await schemaErrors([{ apiVersion: "apps/v1", kind: "Deploymnt", metadata: { name: "x" } }]);
    assert.match(errors[0], /no schema for kind Deploymnt/);
  });

  test("field check rejects a misspelled field", async () => {
    const broken = structuredClone(deployment);
    broken.spec.template.spec.terminationGracePeriodSecond = 30;
    const errors = await unknownFieldErrors([broken]);
    assert.equal(errors.length, 1);
    assert.match(errors[0].message, /terminationGracePeriodSecond/);
  });
});
