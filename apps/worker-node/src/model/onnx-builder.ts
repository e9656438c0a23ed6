// A small writer for ONNX graphs on top of onnx-proto (protobufjs). The USE-lite converter and
// the test fixtures build graphs with it; nothing here knows about a particular model.
import onnxProto from "onnx-proto";

// onnx-proto is CommonJS and only its default export is visible to Node's ESM loader.
const { onnx } = onnxProto;

/** ONNX TensorProto element types used by this project. */
export const OnnxType = {
  FLOAT: 1,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
} as const;
export type OnnxElemType = (typeof OnnxType)[keyof typeof OnnxType];

/**
 * An attribute value. Plain numbers are INT and number arrays INTS (ONNX attributes are mostly
 * integers); floats and tensors need the tagged forms.
 */
export type AttrValue =
  | number
  | number[]
  | string
  | { f: number }
  | { floats: number[] }
  | { t: { type: OnnxElemType; dims: number[]; raw: Uint8Array } };

/** ONNX ops run by onnxruntime's CPU provider at this opset (axes as inputs for Reduce*). */
const OPSET = 18;
// IR 8 is the newest onnx-proto 8.0.1 knows and the one opset 18 requires.
const IR_VERSION = 8;

function attribute(name: string, v: AttrValue) {
  const A = onnx.AttributeProto.AttributeType;
  if (typeof v === "number") return { name, type: A.INT, i: v };
  if (typeof v === "string") return { name, type: A.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: A.INTS, ints: v };
  if ("f" in v) return { name, type: A.FLOAT, f: v.f };
  if ("floats" in v) return { name, type: A.FLOATS, floats: v.floats };
  return {
    name,
    type: A.TENSOR,
    t: { dataType: v.t.type, dims: v.t.dims, rawData: v.t.raw },
  };
}

/** Little-endian bytes of int64 values (what ONNX raw_data holds for INT64). */
export function int64Bytes(values: readonly (number | bigint)[]): Uint8Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i] as number | bigint);
  return new Uint8Array(out.buffer);
}

/** Little-endian bytes of float32 values. */
function float32Bytes(values: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

type Dim = number | string;
interface ValueInfo {
  name: string;
  type: {
    tensorType: {
      elemType: number;
      shape: { dim: ({ dimValue: number } | { dimParam: string })[] };
    };
  };
}

function valueInfo(name: string, elemType: OnnxElemType, dims: Dim[]): ValueInfo {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: {
          dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })),
        },
      },
    },
  };
}

/**
 * Accumulates nodes, initializers, inputs and outputs, then serialises a ModelProto.
 * Names are the caller's; `fresh` makes unique helper names so output stays deterministic.
 */
export class GraphBuilder {
  private readonly nodes: object[] = [];
  private readonly initializers: object[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly used = new Set<string>();
  private counter = 0;

  /** A name not used before, derived from `hint`. */
  fresh(hint: string): string {
    let name: string;
    do name = `${hint}__${this.counter++}`;
    while (this.used.has(name));
    this.used.add(name);
    return name;
  }

  /** Declares a graph input. */
  input(name: string, type: OnnxElemType, dims: Dim[]): string {
    this.used.add(name);
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Declares a graph output (the tensor must be produced by some node). */
  output(name: string, type: OnnxElemType, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** Adds an initializer from raw little-endian bytes. */
  initializer(name: string, type: OnnxElemType, dims: number[], raw: Uint8Array): string {
    this.used.add(name);
    this.initializers.push({ name, dataType: type, dims, rawData: raw });
    return name;
  }

  /** A fresh INT64 constant (1-D unless `dims` says otherwise, e.g. [] for a scalar). */
  int64(values: readonly (number | bigint)[], dims: number[] = [values.length]): string {
    return this.initializer(this.fresh("const_i64"), OnnxType.INT64, dims, int64Bytes(values));
  }

  /** A fresh FLOAT constant. */
  float32(values: ArrayLike<number>, dims: number[] = [values.length]): string {
    return this.initializer(this.fresh("const_f32"), OnnxType.FLOAT, dims, float32Bytes(values));
  }

  /**
   * Adds a node. `outputs` is either the output names or a count of fresh names to make.
   * Returns the output names.
   */
  node(
    opType: string,
    inputs: string[],
    outputs: string[] | number = 1,
    attrs: Record<string, AttrValue> = {},
  ): string[] {
    const outs =
      typeof outputs === "number"
        ? Array.from({ length: outputs }, () => this.fresh(opType))
        : outputs;
    for (const o of outs) this.used.add(o);
    this.nodes.push({
      opType,
      name: this.fresh(`n_${opType}`),
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outs;
  }

  /** Like `node` for single-output ops; returns the one output name. */
  op(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    out?: string,
  ): string {
    return this.node(opType, inputs, out ? [out] : 1, attrs)[0] as string;
  }

  /** Serialises the graph as an ONNX ModelProto. */
  toBytes(graphName: string, producer: string, metadata: Record<string, string> = {}): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: producer,
      opsetImport: [{ domain: "", version: OPSET }],
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: {
        name: graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
