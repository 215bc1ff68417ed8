export * from "./client.js";
export * from "./tensor.js";
