// Type-checked by the package test against the installed tarball, as an app's TypeScript
// sees it (moduleResolution bundler and nodenext, skipLibCheck off): every entry of the
// exports map resolves with its types. Not part of the Vite build (nothing imports it).
import { InvalidArgumentError, KwaaiNet, KwaaiNetwork, type ChatCompletion, type ContextFull } from '@kwaainet/sdk';
import { startHost } from '@kwaainet/sdk/internal';
import { serveInWorker } from '@kwaainet/sdk/host';

const ai: KwaaiNet = new KwaaiNet({ modelUrl: '/m.gguf' });
export const answer: Promise<ChatCompletion> = ai.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }] });
export const net = new KwaaiNetwork();
export function numbers(e: unknown): ContextFull | null {
  return e instanceof InvalidArgumentError ? e.contextFull : null;
}
export const seams = [startHost, serveInWorker];
