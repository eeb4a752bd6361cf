// @parley/client: a client for Parley's parley.v1 WebSocket protocol.
export * from "./client.js";
export * from "./close.js";
export { Emitter } from "./emitter.js";
export { COMMAND_REQUIRED, SERVER_FRAME_REQUIRED, SERVER_FRAME_SCHEMA } from "./protocol.js";
export { validate } from "./validate.js";
