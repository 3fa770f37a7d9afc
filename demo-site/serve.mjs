#!/usr/bin/env node
// A small static server for the demo, until the native `kwaainet` node serves it:
//
//   node cdn/build.mjs && node demo-site/serve.mjs [--port 8080] [--model PATH]
//
// Listens on 127.0.0.1 only; what it serves is described in server.mjs. The model is
// --model, else $KWAAINET_MODEL, else the CLI's cache
// ($KWAAINET_CACHE or ~/.cache/kwaainet)/models/SmolLM2-135M-Instruct.Q4_1.gguf
// (`kwaainet fetch-model` puts it there and prints its path).
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cdnDir, findModel, startDemoServer } from './server.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PORT ?? '8080' },
    model: { type: 'string' },
  },
});
const server = await startDemoServer({ port: Number(args.port), modelPath: args.model ?? findModel() });
console.log(`demo: ${server.url}`);
console.log(`demo: cdn ${existsSync(cdnDir) ? cdnDir : `${cdnDir} is missing — run: node cdn/build.mjs`}`);
console.log(server.model ? `demo: model ${server.model.path} (${(server.model.size / 1048576).toFixed(1)} MiB)` :
  'demo: no model (set KWAAINET_MODEL or pass --model, or run `npm start` once to fetch the default)');
