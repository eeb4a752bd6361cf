// A small typed event emitter: `on(type, listener)` returns the unsubscribe.
export class Emitter {
    listeners = new Map();
    /** Calls `listener` for every `type` event; returns a function that stops it. */
    on(type, listener) {
        let set = this.listeners.get(type);
        if (!set)
            this.listeners.set(type, (set = new Set()));
        set.add(listener);
        return () => this.off(type, listener);
    }
    /** Like `on`, for the next event only. */
    once(type, listener) {
        const off = this.on(type, (ev) => {
            off();
            listener(ev);
        });
        return off;
    }
    off(type, listener) {
        this.listeners.get(type)?.delete(listener);
    }
    /** Resolves with the next `type` event that passes `filter`. */
    next(type, filter = () => true) {
        return new Promise((resolve) => {
            const off = this.on(type, (ev) => {
                if (filter(ev)) {
                    off();
                    resolve(ev);
                }
            });
        });
    }
    emit(type, ev) {
        const set = this.listeners.get(type);
        if (!set)
            return;
        for (const l of [...set]) {
            try {
                l(ev);
            }
            catch (e) {
                // a throwing listener must not break delivery to the others
                queueMicrotask(() => {
                    throw e;
                });
            }
        }
    }
}
