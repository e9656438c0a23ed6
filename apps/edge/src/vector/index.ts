export function getVectorIndex(env: Env, _model: string): any {
  return env.VECTORIZE;
}
