export * from "./access.js";
export * from "./api.js";
export * from "./base64.js";
export * from "./chunker.js";
export * from "./models.js";
export * from "./protocol.js";
export * from "./tokenizers/use-lite.js";
export * from "./vector-codec.js";
