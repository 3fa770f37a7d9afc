/**
 * Small runtime checks for values that come from outside the type system (`event.data`,
 * script-tag attributes, user options). Each throws the error its caller chooses, naming
 * the offending path, and never echoes more than a short prefix of the bad value.
 */

export type Fail = (message: string) => Error;

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `the string "${value.length > 32 ? `${value.slice(0, 32)}…` : value}"`;
  if (typeof value === 'number') return `the number ${value}`;
  return typeof value;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function record(value: unknown, path: string, fail: Fail): Record<string, unknown> {
  if (!isRecord(value)) throw fail(`${path}: expected an object, got ${describe(value)}`);
  return value;
}

export function string(value: unknown, path: string, fail: Fail, maxLength: number): string {
  if (typeof value !== 'string') throw fail(`${path}: expected a string, got ${describe(value)}`);
  if (value.length > maxLength) throw fail(`${path}: longer than ${maxLength} characters`);
  return value;
}

export function number(value: unknown, path: string, fail: Fail, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw fail(`${path}: expected a finite number, got ${describe(value)}`);
  }
  if (value < min || value > max) throw fail(`${path}: ${value} is outside [${min}, ${max}]`);
  return value;
}

export function integer(value: unknown, path: string, fail: Fail, min: number, max: number): number {
  const n = number(value, path, fail, min, max);
  if (!Number.isInteger(n)) throw fail(`${path}: expected an integer, got ${n}`);
  return n;
}

export function boolean(value: unknown, path: string, fail: Fail): boolean {
  if (typeof value !== 'boolean') throw fail(`${path}: expected a boolean, got ${describe(value)}`);
  return value;
}

export function array(value: unknown, path: string, fail: Fail, maxLength: number): unknown[] {
  if (!Array.isArray(value)) throw fail(`${path}: expected an array, got ${describe(value)}`);
  if (value.length > maxLength) throw fail(`${path}: more than ${maxLength} entries`);
  return value;
}

export function oneOf<T extends string>(value: unknown, path: string, fail: Fail, options: readonly T[]): T {
  if (typeof value === 'string' && (options as readonly string[]).includes(value)) return value as T;
  throw fail(`${path}: expected one of ${options.join(', ')}, got ${describe(value)}`);
}

/** `check(value)` when the value is present (not undefined / null), else undefined. */
export function optional<T>(value: unknown, check: (v: unknown) => T): T | undefined {
  return value === undefined || value === null ? undefined : check(value);
}

export const SHA256_HEX = /^[0-9a-f]{64}$/;
