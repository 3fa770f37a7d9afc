/** A request in the shape the engine module's `start` takes it. */

import type { WasmStartRequest } from './engine-types.js';
import type { GenerateRequest } from './protocol.js';

/** A request as the engine's `start` takes it (the swarm client's too). */
export function startRequest(request: GenerateRequest): WasmStartRequest {
  const start: WasmStartRequest = request.prompt !== undefined
    ? { prompt: request.prompt }
    : { messages: (request.messages ?? []).map((m) => ({ role: m.role, content: m.content })) };
  if (request.max_tokens !== undefined) start.max_tokens = request.max_tokens;
  if (request.temperature !== undefined) start.temperature = request.temperature;
  if (request.top_k !== undefined) start.top_k = request.top_k;
  if (request.top_p !== undefined) start.top_p = request.top_p;
  if (request.repeat_penalty !== undefined) start.repeat_penalty = request.repeat_penalty;
  if (request.seed !== undefined) start.seed = request.seed;
  if (request.stop !== undefined) start.stop = [...request.stop];
  return start;
}
