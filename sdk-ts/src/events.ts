/** A small typed event emitter: `on(name, listener)` returns the unsubscribe function. */

export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<(value: never) => void>>();

  on<K extends keyof Events>(name: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(listener as (value: never) => void);
    return () => void set.delete(listener as (value: never) => void);
  }

  emit<K extends keyof Events>(name: K, value: Events[K]): void {
    for (const l of [...(this.listeners.get(name) ?? [])]) {
      try {
        (l as (value: Events[K]) => void)(value);
      } catch (err) {
        // A failing listener must not break the SDK or the other listeners.
        console.error('kwaainet: an event listener threw', err);
      }
    }
  }

  clear(): void {
    this.listeners.clear();
  }
}
