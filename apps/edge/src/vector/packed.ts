/**
 * Vectors as one message: their values end to end in one float32 buffer, so that handing them
 * to another object copies one buffer instead of cloning an array per vector.
 */
export interface PackedVectors {
  ids: string[];
  dimensions: number;
  values: Float32Array;
  metadata: (Record<string, VectorizeVectorMetadata> | null)[];
  namespaces: (string | null)[];
}

export function packVectors(vectors: readonly VectorizeVector[]): PackedVectors {
  const dimensions = vectors[0]?.values.length ?? 0;
  const values = new Float32Array(vectors.length * dimensions);
  vectors.forEach((v, i) => {
    if (v.values.length !== dimensions)
      throw new Error(`vector ${v.id} has ${v.values.length} dimensions, not ${dimensions}`);
    values.set(v.values, i * dimensions);
  });
  return {
    ids: vectors.map((v) => v.id),
    dimensions,
    values,
    metadata: vectors.map((v) => v.metadata ?? null),
    namespaces: vectors.map((v) => v.namespace ?? null),
  };
}

export function unpackVectors(p: PackedVectors): VectorizeVector[] {
  return p.ids.map((id, i) => {
    const metadata = p.metadata[i];
    const namespace = p.namespaces[i];
    return {
      id,
      values: p.values.subarray(i * p.dimensions, (i + 1) * p.dimensions),
      ...(metadata ? { metadata } : {}),
      ...(namespace ? { namespace } : {}),
    };
  });
}
