/**
 * The OpenAI Chat Completions shapes the SDK accepts and returns (the subset that a local
 * single-choice engine can honour). Field names follow OpenAI's wire format (snake_case).
 */

export type Role = 'system' | 'user' | 'assistant';

export interface TextContentPart {
  type: 'text';
  text: string;
}

export interface ChatCompletionMessageParam {
  role: Role;
  /** A string, or text parts (joined without separator, as OpenAI does). */
  content: string | TextContentPart[];
  name?: string;
}

export interface ChatCompletionCreateParamsBase {
  /** Echoed in the response; the model actually used is the one the SDK loaded. */
  model?: string;
  messages: ChatCompletionMessageParam[];
  max_tokens?: number | null;
  /** Omitted: the engine's default, greedy (0). OpenAI's default would be 1. */
  temperature?: number | null;
  top_p?: number | null;
  /** Not an OpenAI field: top-k sampling (0 = off). */
  top_k?: number | null;
  /** Not an OpenAI field: repetition penalty (1 = off). */
  repeat_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  /** Only 1 is supported. */
  n?: number | null;
  /** Cancels the request, like `RequestOptions.signal`.
   *  @deprecated Pass `{ signal }` as `create()`'s second argument, as openai-node takes it;
   *  this field still works (with both, either one aborts the request). */
  signal?: AbortSignal;
}

/** Where a request runs: 'local', the engine in this page (its host); 'node', the node's
 *  OpenAI API at `KwaaiNetOptions.endpoint`; 'swarm', through the swarm — for now by that
 *  node's API where the model runs through the swarm there (`kwaainet start --api swarm`:
 *  the node holds the embedding and head, peers run the blocks); 'auto', here when the
 *  model is loaded in the page, else the node (swarm or whole), and the `route` event says
 *  which and why. */
export type Route = 'local' | 'node' | 'swarm' | 'auto';

/** `create()`'s second argument, as in openai-node (only the options a local engine can
 *  honour), and `route`. */
export interface RequestOptions {
  /** Cancels the request: the promise rejects (or the stream ends) with an AbortError and
   *  the engine host stops generating (or, on a node, the connection is closed). */
  signal?: AbortSignal;
  /** Default: 'node' when the KwaaiNet has an `endpoint`, else 'local'. 'node' and 'swarm'
   *  without an endpoint fail with InvalidArgumentError; 'swarm' where the node runs the
   *  model whole, with UnsupportedError. */
  route?: Route;
}

export interface ChatCompletionCreateParamsNonStreaming extends ChatCompletionCreateParamsBase {
  stream?: false | null;
}

export interface ChatCompletionCreateParamsStreaming extends ChatCompletionCreateParamsBase {
  stream: true;
}

export type ChatCompletionCreateParams =
  | ChatCompletionCreateParamsNonStreaming
  | ChatCompletionCreateParamsStreaming;

export type FinishReason = 'stop' | 'length' | 'abort';

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Not an OpenAI field: what the engine measured. */
  extra?: {
    /** Milliseconds from the request to the first generated token (prefill included). */
    time_to_first_token_ms: number;
    decode_tokens_per_s: number;
  };
}

export interface ChatCompletionMessage {
  role: 'assistant';
  content: string;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: ChatCompletionMessage;
    finish_reason: FinishReason;
    logprobs: null;
    /** Not an OpenAI field (vLLM's name for it): every generated token id. */
    token_ids?: number[];
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    delta: { role?: 'assistant'; content?: string };
    finish_reason: FinishReason | null;
    logprobs: null;
    /** Not an OpenAI field (vLLM's name for it): the token ids generated with this delta. */
    token_ids?: number[];
  }>;
  /** Present on the last chunk only. */
  usage?: CompletionUsage;
}

/** OpenAI's legacy Completions: a raw prompt, no chat template. Special tokens written in
 *  the prompt (`<|im_start|>`) are parsed as such. */
export interface CompletionCreateParamsBase extends Omit<ChatCompletionCreateParamsBase, 'messages'> {
  prompt: string;
}

export interface CompletionCreateParamsNonStreaming extends CompletionCreateParamsBase {
  stream?: false | null;
}

export interface CompletionCreateParamsStreaming extends CompletionCreateParamsBase {
  stream: true;
}

export type CompletionCreateParams = CompletionCreateParamsNonStreaming | CompletionCreateParamsStreaming;

export interface CompletionChoice {
  index: number;
  text: string;
  finish_reason: FinishReason | null;
  logprobs: null;
  /** Not an OpenAI field (vLLM's name for it): the token ids generated with this text. */
  token_ids?: number[];
}

/** A whole answer (`object: 'text_completion'`), or one streamed piece of it (the same
 *  shape, as OpenAI streams it; `usage` on the last piece only). */
export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: CompletionChoice[];
  usage?: CompletionUsage;
}
