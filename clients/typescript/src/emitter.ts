// A small typed event emitter: `on(type, listener)` returns the unsubscribe.

export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners = new Map<keyof Events, Set<(ev: any) => void>>();

  /** Calls `listener` for every `type` event; returns a function that stops it. */
  on<K extends keyof Events>(type: K, listener: (ev: Events[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /** Like `on`, for the next event only. */
  once<K extends keyof Events>(type: K, listener: (ev: Events[K]) => void): () => void {
    const off = this.on(type, (ev) => {
      off();
      listener(ev);
    });
    return off;
  }

  off<K extends keyof Events>(type: K, listener: (ev: Events[K]) => void): void {
    this.listeners.get(type)?.delete(listener);
  }

  /** Resolves with the next `type` event that passes `filter`. */
  next<K extends keyof Events>(type: K, filter: (ev: Events[K]) => boolean = () => true): Promise<Events[K]> {
    return new Promise((resolve) => {
      const off = this.on(type, (ev) => {
        if (filter(ev)) {
          off();
          resolve(ev);
        }
      });
    });
  }

  protected emit<K extends keyof Events>(type: K, ev: Events[K]): void {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const l of [...set]) {
      try {
        l(ev);
      } catch (e) {
        // a throwing listener must not break delivery to the others
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}
