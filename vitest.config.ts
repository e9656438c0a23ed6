import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: ["packages/shared", "apps/worker-node", "apps/edge", "test/e2e"],
  },
});
