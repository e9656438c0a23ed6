import { defineConfig } from "vitest/config";

// End-to-end tests: real wrangler dev, real worker processes, real model. One file at a time
// so the processes of two files never compete for the same two cores.
export default defineConfig({
  test: {
    name: "e2e",
    include: ["**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 300_000,
    hookTimeout: 180_000,
  },
});
