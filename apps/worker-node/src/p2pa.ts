import { main } from "./p2pa/main.js";

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`p2pa: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
