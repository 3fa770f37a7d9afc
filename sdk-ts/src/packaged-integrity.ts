/**
 * Replaced in the packed npm package by sdk-ts/scripts/pack-assets.mjs with the SRI hash of
 * each .wasm it ships (`{ 'kwaainet_wasm_bg.wasm': 'sha384-…', … }`). Empty here: a
 * workspace build cannot know what will be packed.
 */
const integrity: Readonly<Record<string, string>> = {};
export default integrity;
