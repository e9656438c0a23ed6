export * from "./api.js";
export * from "./chunker.js";
export * from "./models.js";
export * from "./protocol.js";
export * from "./vector-codec.js";
