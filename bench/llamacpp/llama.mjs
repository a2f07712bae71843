// Loads llama.cpp through node-llama-cpp on the CPU, from the prebuilt binaries of the
// @node-llama-cpp/linux-x64 package only: no GPU backend, no download and no source build.
import { readFileSync } from "node:fs";

// node-llama-cpp reads these when it is imported, so they are set before the dynamic import
// below. They keep it from fetching or compiling llama.cpp when no prebuilt binary fits.
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
process.env.NODE_LLAMA_CPP_GPU = "false";
const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");

// Version of the installed node-llama-cpp package. Its package.json is read from the file
// because the package's "exports" map does not export it.
export function nodeLlamaCppVersion() {
  const path = new URL("./node_modules/node-llama-cpp/package.json", import.meta.url);
  return JSON.parse(readFileSync(path, "utf8")).version;
}

// Returns the Llama instance and the ggml CPU variant that llama.cpp loaded (for example
// "sapphirerapids"), taken from its "load_backend" log line. Warnings and errors of llama.cpp
// go to stderr; the rest of its log is dropped.
export async function loadLlama({ threads }) {
  const state = { cpuVariant: null, cpuBackendPath: null, modelBuffers: [] };
  const logger = (level, message) => {
    const match = /load_backend: loaded CPU backend from (\S*libggml-cpu-([\w-]+)\.so)/.exec(message);
    if (match) {
      state.cpuBackendPath = match[1];
      state.cpuVariant = match[2];
    }
    // Lines such as "CPU_REPACK model buffer size = 1200.00 MiB" show whether the weights
    // were repacked for the AMX or the repacked CPU kernels.
    const buffer = /(\S+) model buffer size\s*=\s*([\d.]+ MiB)/.exec(message);
    if (buffer) state.modelBuffers.push(`${buffer[1]} ${buffer[2]}`);
    if (level === LlamaLogLevel.error || level === LlamaLogLevel.fatal ||
        level === LlamaLogLevel.warn) {
      process.stderr.write(`llama.cpp ${level}: ${message.trimEnd()}\n`);
    }
  };
  const llama = await getLlama({
    gpu: false,
    build: "never",
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    maxThreads: threads,
    // The "load_backend" line is logged below the info level.
    logLevel: LlamaLogLevel.debug,
    logger,
  });
  if (llama.gpu !== false) {
    throw new Error(`node-llama-cpp selected the GPU backend "${llama.gpu}"; this benchmark ` +
      "measures the CPU only, so install without the CUDA and Vulkan packages.");
  }
  return { llama, state };
}

// Facts about the llama.cpp build for the report.
export function describeBuild(llama, state) {
  return {
    node_llama_cpp: nodeLlamaCppVersion(),
    llama_cpp_release: llama.llamaCppRelease.release,
    llama_cpp_repo: llama.llamaCppRelease.repo,
    build_type: llama.buildType,
    ggml_cpu_variant: state.cpuVariant,
    ggml_cpu_backend: state.cpuBackendPath,
    model_buffers: state.modelBuffers,
    system_info: llama.systemInfo.trim(),
  };
}
