// TensorFlow op -> ONNX op mapping for the TF.js graph of Universal Sentence Encoder lite.
// It covers the 41 op types that graph uses (plus a few trivial neighbours) and refuses, with
// a clear error, any attribute combination it does not implement, so a different graph fails
// loudly at conversion time instead of computing something else.
//
// Integer convention: every TF integer tensor (int32 or int64) becomes INT64 in ONNX. Shape,
// NonZero, Reshape, Slice, GatherND and ScatterND all speak int64, so this avoids a Cast at
// every shape computation; the two int32 graph inputs are cast once at the start.
import { type GraphBuilder, type OnnxElemType, OnnxType } from "../onnx-builder.js";

/** One attribute of a TF.js `modelTopology` node (protobuf JSON). */
interface TfAttr {
  i?: string | number;
  b?: boolean;
  f?: number;
  s?: string | number[];
  type?: string | number;
  list?: { i?: (string | number)[] };
}

/** One node of a TF.js `modelTopology`. */
export interface TfNode {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfAttr>;
}

/** What an op handler gets: its node, resolved inputs and the builder to emit into. */
export interface OpContext {
  node: TfNode;
  b: GraphBuilder;
  /** ONNX name of the node's k-th input (constants are emitted on first use). */
  in(k: number): string;
  /** Values of the k-th input, which must be an integer constant (axes, perms, sizes). */
  ints(k: number): number[];
  /** Preferred ONNX name for output 0 (the TF node name keeps the graph readable). */
  out: string;
}

type Handler = (c: OpContext) => string | string[];

// Larger than any dimension; ONNX Slice clamps it to the dimension size.
const TO_END = Number.MAX_SAFE_INTEGER;

const TF_DTYPES: Record<string, OnnxElemType> = {
  "1": OnnxType.FLOAT,
  DT_FLOAT: OnnxType.FLOAT,
  "3": OnnxType.INT64,
  DT_INT32: OnnxType.INT64,
  "9": OnnxType.INT64,
  DT_INT64: OnnxType.INT64,
  "10": OnnxType.BOOL,
  DT_BOOL: OnnxType.BOOL,
};

const ELEM_BYTES: Record<OnnxElemType, number> = {
  [OnnxType.FLOAT]: 4,
  [OnnxType.INT32]: 4,
  [OnnxType.INT64]: 8,
  [OnnxType.BOOL]: 1,
};

function unsupported(node: TfNode, what: string): never {
  throw new Error(`TF->ONNX: ${node.op} node "${node.name}": unsupported ${what}`);
}

/** Integer attribute (TF.js stores int64 attributes as strings). */
function attrInt(node: TfNode, name: string, dflt = 0): number {
  const v = node.attr?.[name]?.i;
  return v === undefined ? dflt : Number(v);
}

function attrBool(node: TfNode, name: string): boolean {
  return node.attr?.[name]?.b === true;
}

function attrInts(node: TfNode, name: string): number[] {
  return (node.attr?.[name]?.list?.i ?? []).map(Number);
}

function attrString(node: TfNode, name: string): string | undefined {
  const s = node.attr?.[name]?.s;
  if (s === undefined) return undefined;
  // protobuf JSON writes bytes as base64; some exporters leave a byte array.
  return Array.isArray(s) ? String.fromCharCode(...s) : Buffer.from(s, "base64").toString("latin1");
}

/** ONNX element type of a TF dtype attribute such as `T` or `DstT`. */
function attrType(node: TfNode, name: string): OnnxElemType {
  const t = node.attr?.[name]?.type;
  const mapped = t === undefined ? undefined : TF_DTYPES[String(t)];
  if (mapped === undefined) unsupported(node, `dtype ${name}=${String(t)}`);
  return mapped;
}

function requireNhwc(node: TfNode): void {
  const f = attrString(node, "data_format");
  if (f !== undefined && f !== "NHWC") unsupported(node, `data_format ${f}`);
}

const same =
  (opType: string): Handler =>
  (c) =>
    c.b.op(opType, c.node.input?.map((_, k) => c.in(k)) ?? [], {}, c.out);

const reduce =
  (opType: string): Handler =>
  (c) =>
    c.b.op(
      opType,
      [c.in(0), c.b.int64(c.ints(1))],
      { keepdims: attrBool(c.node, "keep_dims") ? 1 : 0 },
      c.out,
    );

function stridedSlice(c: OpContext): string {
  const { node, b } = c;
  if (attrInt(node, "ellipsis_mask") !== 0) unsupported(node, "ellipsis_mask");
  if (attrInt(node, "new_axis_mask") !== 0) unsupported(node, "new_axis_mask");
  const begin = c.ints(1);
  const end = c.ints(2);
  const strides = c.ints(3);
  const beginMask = attrInt(node, "begin_mask");
  const endMask = attrInt(node, "end_mask");
  const shrinkMask = attrInt(node, "shrink_axis_mask");
  const starts: number[] = [];
  const ends: number[] = [];
  const shrink: number[] = [];
  for (let k = 0; k < begin.length; k++) {
    const bit = 1 << k;
    const step = strides[k] ?? 1;
    const start = begin[k] ?? 0;
    if (shrinkMask & bit) {
      // A shrunk axis takes exactly element `start` and then disappears.
      starts.push(start);
      ends.push(start === -1 ? TO_END : start + 1);
      shrink.push(k);
      continue;
    }
    if (step !== 1) unsupported(node, `stride ${step}`);
    starts.push(beginMask & bit ? 0 : start);
    ends.push(endMask & bit ? TO_END : (end[k] ?? TO_END));
  }
  const axes = begin.map((_, k) => k);
  const sliced = b.op("Slice", [
    c.in(0),
    b.int64(starts),
    b.int64(ends),
    b.int64(axes),
    b.int64(axes.map(() => 1)),
  ]);
  return shrink.length > 0 ? b.op("Squeeze", [sliced, b.int64(shrink)], {}, c.out) : sliced;
}

function batchMatMul(c: OpContext): string {
  const adjX = attrBool(c.node, "adj_x");
  const adjY = attrBool(c.node, "adj_y");
  if (!adjX && !adjY) return c.b.op("MatMul", [c.in(0), c.in(1)], {}, c.out);
  // Einsum transposes the last two axes without knowing the rank (a Transpose would need it).
  const lhs = adjX ? "...ji" : "...ij";
  const rhs = adjY ? "...kj" : "...jk";
  return c.b.op("Einsum", [c.in(0), c.in(1)], { equation: `${lhs},${rhs}->...ik` }, c.out);
}

function matMul(c: OpContext): string {
  const { b, node } = c;
  const t = (x: string) => b.op("Transpose", [x], { perm: [1, 0] });
  const a = attrBool(node, "transpose_a") ? t(c.in(0)) : c.in(0);
  const m = attrBool(node, "transpose_b") ? t(c.in(1)) : c.in(1);
  return b.op("MatMul", [a, m], {}, c.out);
}

/** Conv2D with a constant 1x1 kernel, stride 1, NHWC: a MatMul over the channel axis. */
function conv2d1x1(kernel: { dims: number[]; name: string }) {
  return (c: OpContext): string => {
    const { node } = c;
    requireNhwc(node);
    const [kh, kw, cin, cout] = kernel.dims;
    if (kh !== 1 || kw !== 1 || cin === undefined || cout === undefined) {
      unsupported(node, `kernel shape [${kernel.dims}] (only 1x1)`);
    }
    for (const a of ["strides", "dilations"]) {
      if (attrInts(node, a).some((v) => v !== 1)) unsupported(node, `${a} != 1`);
    }
    // A [1,1,C,O] kernel has the same bytes as a [C,O] matrix; `kernel.name` is that matrix.
    return c.b.op("MatMul", [c.in(0), kernel.name], {}, c.out);
  };
}

const handlers: Record<string, Handler> = {
  Identity: (c) => c.in(0),
  Add: same("Add"),
  AddV2: same("Add"),
  Sub: same("Sub"),
  Mul: same("Mul"),
  RealDiv: same("Div"),
  Maximum: same("Max"),
  Minimum: same("Min"),
  Less: same("Less"),
  Greater: same("Greater"),
  LogicalNot: same("Not"),
  Relu: same("Relu"),
  Tanh: same("Tanh"),
  Sin: same("Sin"),
  Cos: same("Cos"),
  Sqrt: same("Sqrt"),
  Shape: same("Shape"),
  Reshape: same("Reshape"),
  GatherNd: same("GatherND"),
  Range: same("Range"),
  Softmax: (c) => c.b.op("Softmax", [c.in(0)], { axis: -1 }, c.out),
  Square: (c) => c.b.op("Mul", [c.in(0), c.in(0)], {}, c.out),
  Rsqrt: (c) => c.b.op("Reciprocal", [c.b.op("Sqrt", [c.in(0)])], {}, c.out),
  BiasAdd: (c) => {
    requireNhwc(c.node);
    return c.b.op("Add", [c.in(0), c.in(1)], {}, c.out);
  },
  Cast: (c) => c.b.op("Cast", [c.in(0)], { to: attrType(c.node, "DstT") }, c.out),
  ExpandDims: (c) => c.b.op("Unsqueeze", [c.in(0), c.b.int64(c.ints(1))], {}, c.out),
  Squeeze: (c) => {
    const axes = attrInts(c.node, "squeeze_dims");
    const inputs = axes.length > 0 ? [c.in(0), c.b.int64(axes)] : [c.in(0)];
    return c.b.op("Squeeze", inputs, {}, c.out);
  },
  Transpose: (c) => c.b.op("Transpose", [c.in(0)], { perm: c.ints(1) }, c.out),
  ConcatV2: (c) => {
    const n = (c.node.input?.length ?? 1) - 1;
    const inputs = Array.from({ length: n }, (_, k) => c.in(k));
    return c.b.op("Concat", inputs, { axis: c.ints(n)[0] ?? 0 }, c.out);
  },
  Pack: (c) => {
    const axis = attrInt(c.node, "axis");
    const axes = c.b.int64([axis]);
    const parts = (c.node.input ?? []).map((_, k) => c.b.op("Unsqueeze", [c.in(k), axes]));
    return c.b.op("Concat", parts, { axis }, c.out);
  },
  GatherV2: (c) => {
    if (attrInt(c.node, "batch_dims") !== 0) unsupported(c.node, "batch_dims");
    return c.b.op("Gather", [c.in(0), c.in(1)], { axis: c.ints(2)[0] ?? 0 }, c.out);
  },
  Sum: reduce("ReduceSum"),
  Mean: reduce("ReduceMean"),
  Max: reduce("ReduceMax"),
  Min: reduce("ReduceMin"),
  Prod: reduce("ReduceProd"),
  MatMul: matMul,
  BatchMatMul: batchMatMul,
  BatchMatMulV2: batchMatMul,
  Where: (c) => {
    const n = c.node.input?.length ?? 0;
    if (n === 3) return c.b.op("Where", [c.in(0), c.in(1), c.in(2)], {}, c.out);
    // TF returns [num_true, rank] coordinates in row-major order; NonZero gives [rank, num_true].
    return c.b.op("Transpose", [c.b.op("NonZero", [c.in(0)])], { perm: [1, 0] }, c.out);
  },
  ScatterNd: (c) => {
    // TF scatters into zeros and sums duplicates; ScatterND overwrites. The graph scatters
    // the coordinates of a Where, which are unique, so both agree.
    const type = attrType(c.node, "T");
    const zero = { t: { type, dims: [1], raw: new Uint8Array(ELEM_BYTES[type]) } };
    const zeros = c.b.op("ConstantOfShape", [c.in(2)], { value: zero });
    return c.b.op("ScatterND", [zeros, c.in(0), c.in(1)], {}, c.out);
  },
  SparseToDense: (c) => {
    // Dense tensor of the default value, then the sparse values written at their indices.
    // Indices are [n, rank] (the rank-1 `[n]` form of TF is not used by this graph).
    const dense = c.b.op("Expand", [c.in(3), c.in(1)]);
    return c.b.op("ScatterND", [dense, c.in(0), c.in(2)], {}, c.out);
  },
  SplitV: (c) => {
    const sizes = c.ints(1);
    if (sizes.some((s) => s < 0)) unsupported(c.node, "size_splits with -1");
    const outs = sizes.map((_, k) => (k === 0 ? c.out : `${c.node.name}:${k}`));
    return c.b.node("Split", [c.in(0), c.b.int64(sizes)], outs, { axis: c.ints(2)[0] ?? 0 });
  },
  Slice: (c) => {
    const begin = c.ints(1);
    const size = c.ints(2);
    const ends = begin.map((s, k) => ((size[k] ?? -1) < 0 ? TO_END : s + (size[k] ?? 0)));
    const axes = begin.map((_, k) => k);
    return c.b.op(
      "Slice",
      [c.in(0), c.b.int64(begin), c.b.int64(ends), c.b.int64(axes)],
      {},
      c.out,
    );
  },
  StridedSlice: stridedSlice,
};

/**
 * Emits the ONNX equivalent of one TF node and returns its output name(s).
 * `kernel1x1` resolves the constant kernel of a Conv2D as a [C,O] matrix.
 */
export function emitOp(
  c: OpContext,
  kernel1x1: (ref: string) => { dims: number[]; name: string },
): string[] {
  const { node } = c;
  if (node.op === "Conv2D") return [conv2d1x1(kernel1x1(node.input?.[1] ?? ""))(c)];
  const h = handlers[node.op];
  if (!h) throw new Error(`TF->ONNX: op ${node.op} (node "${node.name}") is not supported`);
  const out = h(c);
  return Array.isArray(out) ? out : [out];
}
