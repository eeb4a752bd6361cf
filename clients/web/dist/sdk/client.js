// The Parley client: one WebSocket, re-opened with jittered backoff, that
// re-joins every room from the last seq it delivered and re-sends unstored
// messages under their client_msg_id, so nothing is lost or duplicated.
import { SERVER_FRAME_SCHEMA } from "./protocol.js";
import { validate } from "./validate.js";
import { closePolicy } from "./close.js";
import { Emitter } from "./emitter.js";
/**
 * Each command's reply result, by its definition in the schema: gives
 * `CommandResults` its types and `checkReply` what to check.
 */
const RESULT_DEFS = {
    ping: "PingReply",
    auth: "AuthReply",
    refresh: "RefreshReply",
    "room.create": "RoomReply",
    "room.join": "RoomJoinReply",
    "room.leave": "Empty",
    "room.list": "RoomListReply",
    "message.send": "MessageReply",
    "message.history": "HistoryReply",
    "ai.ask": "AiAskReply",
    "ai.cancel": "Empty",
    "room.invite": "Empty",
    "room.remove_member": "Empty",
    "message.edit": "MessageReply",
    "message.delete": "Empty",
    "reaction.add": "Empty",
    "reaction.remove": "Empty",
    "receipt.read": "ReceiptReply",
    "receipt.delivered": "ReceiptReply",
    "notification.list": "NotificationListReply",
    "notification.read": "Empty",
    "notification.clear": "Empty",
    "room.update": "RoomReply",
    "room.delete": "Empty",
    "room.members": "MembersReply",
    "room.set_role": "Empty",
    "room.mute": "Empty",
    "room.unmute": "Empty",
    "room.ban": "Empty",
    "room.unban": "Empty",
    "message.report": "ReportReply",
    "room.directory": "DirectoryReply",
    "presence.set": "Empty",
    "presence.subscribe": "PresenceReply",
    "presence.unsubscribe": "Empty",
    "typing.start": "Empty",
    "typing.stop": "Empty",
    "call.invite": "CallInviteReply",
    "call.answer": "Empty",
    "call.reject": "Empty",
    "call.end": "Empty",
    "call.ice": "Empty",
    "user.block": "Empty",
    "user.unblock": "Empty",
    "user.blocks": "BlocksReply",
    "invitation.list": "InvitationsReply",
    "invitation.accept": "RoomReply",
    "invitation.decline": "Empty",
    "attachment.url": "AttachmentUrlReply",
};
/** A failed request: the server's error object, or a client-side cause. */
export class ParleyError extends Error {
    code;
    temporary;
    retryAfterMs;
    reason;
    constructor(code, message, temporary = false, extra = {}) {
        super(message);
        this.name = "ParleyError";
        this.code = code;
        this.temporary = temporary;
        if (extra.retry_after_ms != null)
            this.retryAfterMs = extra.retry_after_ms;
        if (extra.reason != null)
            this.reason = extra.reason;
    }
    static from(e) {
        return new ParleyError(e.code, e.message, e.temporary, e);
    }
}
const ROOM_EVENT_TYPES = new Set([
    "message.new",
    "message.updated",
    "message.deleted",
    "reaction.added",
    "reaction.removed",
    "member.joined",
    "member.left",
]);
const OPEN = 1;
/** Full-jitter exponential backoff: a random delay in [min, min(max, min·2^attempt)]. */
export function backoffDelay(attempt, min, max, random = Math.random) {
    const cap = Math.min(max, min * 2 ** Math.min(attempt, 30));
    return Math.max(min, Math.floor(random() * cap));
}
let msgCounter = 0;
/** A fresh `client_msg_id`. */
export function newClientMsgId() {
    const c = globalThis.crypto;
    if (c?.randomUUID)
        return c.randomUUID();
    msgCounter += 1;
    return `m-${Date.now().toString(36)}-${msgCounter}-${Math.random().toString(36).slice(2, 10)}`;
}
export class ParleyClient extends Emitter {
    options;
    state = "disconnected";
    user;
    hello;
    ws;
    nextId = 1;
    inflight = new Map();
    queue = [];
    rooms = new Map();
    ready = false;
    attempt = 0;
    slow = false;
    reconnectTimer;
    pingTimer;
    /** The token this client signs in with (issued by anonymous/dev sign-in, or from getToken). */
    token;
    everConnected = false;
    stopped = false;
    detachHints;
    constructor(options) {
        super();
        this.options = {
            requestTimeoutMs: 10_000,
            sendTimeoutMs: 120_000,
            minReconnectDelayMs: 500,
            maxReconnectDelayMs: 20_000,
            slowReconnectDelayMs: 5_000,
            maxSlowReconnectDelayMs: 60_000,
            maxQueue: 100,
            pingIntervalMs: 30_000,
            ...options,
        };
        this.token = options.token;
    }
    // ---- lifecycle -------------------------------------------------------
    /** Opens the connection; resolves once signed in and rooms are re-joined. */
    connect() {
        this.stopped = false;
        this.attachHints();
        const done = new Promise((resolve, reject) => {
            const offState = this.on("state", (s) => {
                if (s.state === "connected") {
                    offState();
                    offClosed();
                    resolve();
                }
            });
            const offClosed = this.on("closed", (c) => {
                offState();
                offClosed();
                reject(new ParleyError("closed", c.reason));
            });
        });
        if (this.state === "disconnected" || this.state === "closed")
            this.open();
        return done;
    }
    /** Closes the connection for good; pending requests reject. */
    close() {
        this.stop(1000, "closed by client");
    }
    /** Drops the socket now and reconnects (as after a network change). */
    reconnect() {
        if (this.stopped)
            return;
        this.drop(this.ws, "client reconnect");
    }
    stop(code, reason) {
        if (this.stopped)
            return;
        this.stopped = true;
        clearTimeout(this.reconnectTimer);
        this.detachHints?.();
        this.teardownSocket();
        const err = new ParleyError("closed", reason);
        for (const p of [...this.inflight.values(), ...this.queue])
            this.fail(p, err);
        this.inflight.clear();
        this.queue = [];
        this.setState("closed", { code, reason });
        this.emit("closed", code === undefined ? { reason } : { code, reason });
    }
    setState(state, extra = {}) {
        this.state = state;
        this.emit("state", { state, ...extra });
    }
    attachHints() {
        if (this.detachHints)
            return;
        const g = globalThis;
        if (typeof g.addEventListener !== "function")
            return;
        const wake = () => {
            if (this.state === "disconnected" && !this.stopped && !this.slow) {
                clearTimeout(this.reconnectTimer);
                this.open();
            }
        };
        const visible = () => {
            if (g.document?.visibilityState === "visible")
                wake();
        };
        // The browser knows the network is gone before TCP does: drop the socket
        // now, so sends queue and the reconnect starts at once on `online`.
        const offline = () => {
            if (!this.stopped)
                this.drop(this.ws, "network offline");
        };
        g.addEventListener("online", wake);
        g.addEventListener("offline", offline);
        g.document?.addEventListener?.("visibilitychange", visible);
        this.detachHints = () => {
            g.removeEventListener("online", wake);
            g.removeEventListener("offline", offline);
            g.document?.removeEventListener?.("visibilitychange", visible);
            this.detachHints = undefined;
        };
    }
    open() {
        const Ctor = this.options.WebSocket ?? globalThis.WebSocket;
        if (!Ctor) {
            this.stop(undefined, "no WebSocket implementation: pass options.WebSocket");
            return;
        }
        this.setState("connecting");
        let ws;
        try {
            ws = new Ctor(this.options.url, "parley.v1");
        }
        catch (e) {
            this.scheduleReconnect(undefined);
            return;
        }
        this.ws = ws;
        ws.onmessage = (ev) => {
            if (this.ws === ws)
                this.onFrame(ev.data);
        };
        ws.onclose = (ev) => {
            if (this.ws === ws)
                this.onSocketClosed(ev.code, ev.reason);
        };
        ws.onerror = () => {
            /* followed by close */
        };
    }
    teardownSocket() {
        clearInterval(this.pingTimer);
        const ws = this.ws;
        this.ws = undefined;
        this.ready = false;
        if (ws) {
            ws.onmessage = null;
            ws.onclose = null;
            ws.onerror = null;
            try {
                ws.close(1000);
            }
            catch {
                /* already closed */
            }
        }
    }
    /** Gives up on `ws` now (without waiting for a closing handshake) and reconnects. */
    drop(ws, reason) {
        if (ws && this.ws === ws)
            this.onSocketClosed(4000, reason);
    }
    onSocketClosed(code, reason) {
        this.teardownSocket();
        // In-flight requests: idempotent ones go back to the queue, others fail
        // (whether the server applied them is unknown).
        const requeue = [];
        for (const p of this.inflight.values()) {
            p.id = undefined;
            if (p.retry)
                requeue.push(p);
            else
                this.fail(p, new ParleyError("connection_lost", "the connection closed before the reply", true));
        }
        this.inflight.clear();
        this.queue = [...requeue, ...this.queue];
        if (this.stopped)
            return;
        this.scheduleReconnect(code, reason);
    }
    scheduleReconnect(code, reason = "") {
        const policy = code === undefined ? "reconnect" : closePolicy(code);
        if (policy === "stop") {
            this.stop(code, `closed by the server: ${code} ${reason}`.trim());
            return;
        }
        if (policy === "new-token") {
            if (this.options.getToken) {
                this.token = undefined; // fetched again on connect
            }
            else if (this.options.anonymous || this.options.devUser) {
                this.token = undefined; // sign in again
            }
            else {
                this.stop(code, "token expired or revoked and no getToken() to renew it");
                return;
            }
        }
        this.slow = policy === "slow";
        const delay = this.slow
            ? backoffDelay(this.attempt, this.options.slowReconnectDelayMs, this.options.maxSlowReconnectDelayMs, this.options.random)
            : backoffDelay(this.attempt, this.options.minReconnectDelayMs, this.options.maxReconnectDelayMs, this.options.random);
        this.attempt += 1;
        this.setState("disconnected", code === undefined ? {} : { code, reason });
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => {
            this.slow = false;
            if (!this.stopped)
                this.open();
        }, delay);
    }
    // ---- frames ----------------------------------------------------------
    onFrame(data) {
        let frame;
        try {
            frame = JSON.parse(String(data));
        }
        catch {
            this.emit("protocol.error", { message: "frame is not JSON", frame: data });
            return;
        }
        const problem = checkFrame(frame);
        if (problem) {
            this.emit("protocol.error", { message: problem, frame });
            return;
        }
        const f = frame;
        switch (f.type) {
            case "hello":
                this.hello = f;
                void this.signIn();
                return;
            case "reply": {
                const p = this.inflight.get(f.id);
                if (!p)
                    return;
                this.inflight.delete(f.id);
                p.id = undefined;
                if (f.ok) {
                    const { type: _t, id: _i, ok: _o, error: _e, ...result } = f;
                    const problem = checkReply(p.type, result);
                    if (problem) {
                        // The caller gets an error, not a result of the wrong shape.
                        this.emit("protocol.error", { message: problem, frame });
                        this.fail(p, new ParleyError("bad_reply", problem));
                        return;
                    }
                    this.settle(p, result);
                }
                else {
                    this.onRequestError(p, ParleyError.from(f.error ?? { code: "internal", message: "reply without error", temporary: true }));
                }
                return;
            }
            case "token.expiring":
                this.emit(f.type, f);
                void this.refreshToken();
                return;
            default:
                if (ROOM_EVENT_TYPES.has(f.type)) {
                    this.onRoomEvent(f);
                }
                else {
                    this.emit(f.type, f);
                }
        }
    }
    onRoomEvent(ev) {
        const room = this.rooms.get(ev.room);
        if (!room)
            return; // a room left on this client
        if (room.held) {
            room.held.push(ev);
            return;
        }
        this.deliver(ev.room, room, ev);
    }
    /** Delivers a room event unless it was already delivered (dedupe by seq). */
    deliver(roomId, room, ev) {
        if (room.lastSeq !== undefined && ev.seq <= room.lastSeq)
            return false;
        room.lastSeq = ev.seq;
        this.emit(ev.type, ev);
        return true;
    }
    // ---- sign-in, rooms ----------------------------------------------------
    async authFrame() {
        const o = this.options;
        if (!this.token && o.getToken)
            this.token = await o.getToken();
        if (this.token)
            return { token: this.token };
        if (o.devUser)
            return { dev_user: o.devUser };
        if (o.anonymous) {
            const name = typeof o.anonymous === "object" ? o.anonymous.name : undefined;
            return name ? { anonymous: true, name } : { anonymous: true };
        }
        throw new ParleyError("unauthorized", "no token, getToken, anonymous or devUser given");
    }
    async signIn() {
        const ws = this.ws;
        try {
            const auth = await this.authFrame();
            if (this.ws !== ws)
                return;
            const reply = await this.direct("auth", auth);
            if (this.ws !== ws)
                return;
            if (reply.token)
                this.token = reply.token;
            this.user = reply.user;
            this.emit("signedIn", { user: reply.user });
            // Re-join every room from the last delivered seq before anything else.
            const results = await Promise.all([...this.rooms.keys()].map((r) => this.sync(r).catch(() => false)));
            if (this.ws !== ws)
                return;
            const wasReconnect = this.everConnected;
            this.everConnected = true;
            this.attempt = 0;
            this.ready = true;
            this.startPing();
            this.setState("connected", wasReconnect ? { recovered: results.every((r) => r === true) } : {});
            this.flush();
        }
        catch (e) {
            if (this.ws !== ws)
                return;
            const err = e;
            if (err.code === "unauthorized" && !this.options.getToken && !this.options.anonymous && !this.options.devUser) {
                this.stop(4002, err.message);
            }
            else if (err.code === "unauthorized" && (this.options.anonymous || this.options.devUser) && this.token) {
                this.token = undefined; // the issued token is gone (server restarted with a new key): sign in afresh
                this.drop(ws, "sign in again");
            }
            else if (err.code === "unauthorized" && this.options.getToken) {
                this.token = undefined;
                this.drop(ws, "sign in again");
            }
            else {
                this.drop(ws, "sign-in failed");
            }
        }
    }
    async refreshToken() {
        if (!this.options.getToken)
            return; // anonymous/dev tokens last a day; a 4003 signs in again
        try {
            const token = await this.options.getToken();
            await this.request("refresh", { token });
            this.token = token;
        }
        catch {
            // the server closes with 4003 at exp; the reconnect fetches a new token
        }
    }
    /** (Re)joins one room from its last delivered seq, paging until caught up. Resolves with `recovered`. */
    async sync(roomId) {
        const room = this.rooms.get(roomId);
        if (!room)
            return true;
        room.held = [];
        let recovered = true;
        let missed = 0;
        let reply;
        try {
            for (;;) {
                const since = room.lastSeq;
                reply = await this.direct("room.join", since === undefined ? { room: roomId } : { room: roomId, since });
                if (since !== undefined && !reply.recovered)
                    recovered = false;
                for (const ev of reply.events) {
                    // Recovered events are checked like live ones: a bad one is reported and skipped.
                    const problem = checkFrame(ev);
                    if (problem) {
                        this.emit("protocol.error", { message: `room.join: ${problem}`, frame: ev });
                        continue;
                    }
                    if (ROOM_EVENT_TYPES.has(ev.type) && this.deliver(roomId, room, ev))
                        missed += 1;
                }
                if (!reply.has_more)
                    break;
                // an empty page with has_more would loop forever
                if (reply.events.length === 0)
                    break;
            }
            if (room.lastSeq === undefined || room.lastSeq < reply.last_seq) {
                if (room.lastSeq !== undefined && room.lastSeq < reply.last_seq && reply.events.length > 0)
                    recovered = false;
                room.lastSeq = reply.last_seq;
            }
        }
        finally {
            const held = room.held ?? [];
            room.held = undefined;
            held.sort((a, b) => a.seq - b.seq);
            for (const ev of held)
                this.deliver(roomId, room, ev);
        }
        this.emit("room.synced", { room: roomId, recovered, lastSeq: room.lastSeq ?? 0, missed, reply });
        return recovered;
    }
    /**
     * Joins a room on this and every later connection. `since` recovers from a
     * seq you already have (e.g. stored by the app); otherwise the reply's
     * events are delivered and live events follow.
     */
    async join(roomId, opts = {}) {
        if (!this.rooms.has(roomId))
            this.rooms.set(roomId, opts.since === undefined ? {} : { lastSeq: opts.since });
        const reply = await new Promise((resolve, reject) => {
            const off = this.on("room.synced", (s) => {
                if (s.room === roomId) {
                    off();
                    resolve(s.reply);
                }
            });
            this.whenReady(this.options.requestTimeoutMs)
                .then(() => this.sync(roomId))
                .catch((e) => {
                off();
                reject(e);
            });
        });
        return reply;
    }
    /** Leaves a room (and with `forget`, its membership); no more events for it. */
    async leave(roomId, forget = false) {
        this.rooms.delete(roomId);
        await this.request("room.leave", forget ? { room: roomId, forget } : { room: roomId });
    }
    /** Rooms joined on this client, with the last seq delivered. */
    joinedRooms() {
        return new Map([...this.rooms].map(([k, v]) => [k, v.lastSeq]));
    }
    whenReady(timeoutMs) {
        if (this.ready)
            return Promise.resolve();
        return this.request("ping", {}, { timeoutMs }).then(() => undefined);
    }
    // ---- requests ----------------------------------------------------------
    /**
     * Sends a command and resolves with its reply's result fields. While
     * disconnected it waits in the bounded queue; the timeout covers the wait.
     */
    request(type, body, opts = {}) {
        return new Promise((resolve, reject) => {
            if (this.stopped) {
                reject(new ParleyError("closed", "the client is closed"));
                return;
            }
            const p = { type, body: body, retry: opts.retry ?? false, resolve, reject };
            const timeoutMs = opts.timeoutMs ?? this.options.requestTimeoutMs;
            if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
                p.timer = setTimeout(() => {
                    this.forget(p);
                    reject(new ParleyError("timeout", `no reply to ${type} within ${timeoutMs} ms`, true));
                }, timeoutMs);
            }
            if (this.ready && this.ws?.readyState === OPEN) {
                this.transmit(p);
            }
            else {
                if (this.queue.length >= this.options.maxQueue) {
                    this.fail(p, new ParleyError("queue_full", `offline queue is full (${this.options.maxQueue})`));
                    return;
                }
                this.queue.push(p);
            }
        });
    }
    /** Sends on the current socket even before it is ready (sign-in, re-join). */
    direct(type, body) {
        return new Promise((resolve, reject) => {
            const p = { type, body: body, retry: false, resolve, reject };
            p.timer = setTimeout(() => {
                this.forget(p);
                reject(new ParleyError("timeout", `no reply to ${type} within ${this.options.requestTimeoutMs} ms`, true));
                this.drop(this.ws, "request timeout");
            }, this.options.requestTimeoutMs);
            this.transmit(p);
        });
    }
    transmit(p) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN) {
            if (p.retry || !this.ready)
                this.queue.push(p);
            else
                this.fail(p, new ParleyError("connection_lost", "not connected", true));
            return;
        }
        const id = this.nextId++;
        p.id = id;
        this.inflight.set(id, p);
        ws.send(JSON.stringify({ type: p.type, id, ...p.body }));
    }
    flush() {
        const q = this.queue;
        this.queue = [];
        for (const p of q)
            this.transmit(p);
    }
    forget(p) {
        if (p.id !== undefined)
            this.inflight.delete(p.id);
        this.queue = this.queue.filter((q) => q !== p);
    }
    settle(p, value) {
        clearTimeout(p.timer);
        p.resolve(value);
    }
    fail(p, e) {
        clearTimeout(p.timer);
        p.reject(e);
    }
    onRequestError(p, e) {
        // Idempotent commands retry temporary failures until their deadline.
        if (p.retry && e.temporary) {
            const wait = e.retryAfterMs ?? 1000;
            setTimeout(() => {
                if (this.stopped)
                    return;
                if (this.ready)
                    this.transmit(p);
                else
                    this.queue.push(p);
            }, wait);
            return;
        }
        this.fail(p, e);
    }
    startPing() {
        clearInterval(this.pingTimer);
        const every = this.options.pingIntervalMs;
        if (!every)
            return;
        const ws = this.ws;
        this.pingTimer = setInterval(() => {
            this.request("ping", {}, { timeoutMs: Math.min(every, 10_000) }).catch((e) => {
                if (e.code === "timeout")
                    this.drop(ws, "no ping reply");
            });
        }, every);
    }
    // ---- helpers -----------------------------------------------------------
    /**
     * Posts a message. The `client_msg_id` makes it safe to retry: it is re-sent
     * after every reconnect until stored, and stored exactly once.
     */
    async send(room, text, opts = {}) {
        const body = { room, text, client_msg_id: opts.clientMsgId ?? newClientMsgId() };
        if (opts.thread)
            body.thread = opts.thread;
        if (opts.metadata)
            body.metadata = opts.metadata;
        const reply = await this.request("message.send", body, { retry: true, timeoutMs: this.options.sendTimeoutMs });
        return reply.message;
    }
    createRoom(name, visibility = "public", members = []) {
        return this.request("room.create", { name, visibility, members }).then((r) => r.room);
    }
    /** Every room you are a member of, the most recently joined first (all pages). */
    async listRooms() {
        const rooms = [];
        let cursor;
        do {
            const page = await this.request("room.list", cursor === undefined ? {} : { cursor });
            rooms.push(...page.rooms);
            cursor = page.next_cursor ?? undefined;
        } while (cursor !== undefined);
        return rooms;
    }
    /** One page of history (ascending seq). */
    history(room, opts = {}) {
        return this.request("message.history", { room, ...opts });
    }
    /** Every page of history before `before` (newest page first), as an async iterator. */
    async *historyPages(room, opts = {}) {
        let before = opts.before;
        for (;;) {
            const page = await this.history(room, before === undefined ? { limit: opts.limit } : { before, limit: opts.limit });
            if (page.messages.length)
                yield page.messages;
            if (!page.has_more || page.messages.length === 0)
                return;
            before = page.messages[0].seq;
        }
    }
    edit(room, messageId, text) {
        return this.request("message.edit", { room, message_id: messageId, text }).then((r) => r.message);
    }
    delete(room, messageId) {
        return this.request("message.delete", { room, message_id: messageId });
    }
    react(room, messageId, emoji, on = true) {
        return this.request(on ? "reaction.add" : "reaction.remove", { room, message_id: messageId, emoji });
    }
    markRead(room, seq) {
        return this.request("receipt.read", { room, seq });
    }
    markDelivered(room, seq) {
        return this.request("receipt.delivered", { room, seq });
    }
    setPresence(status, text) {
        return this.request("presence.set", text === undefined ? { status } : { status, text });
    }
    subscribePresence(users) {
        return this.request("presence.subscribe", { users });
    }
    notifications(unreadOnly = false) {
        return this.request("notification.list", { unread_only: unreadOnly }).then((r) => r.notifications);
    }
    callInvite(to, payload, room) {
        return this.request("call.invite", { to, payload, ...(room ? { room } : {}) });
    }
    typingTimers = new Map();
    /** Call on every keystroke: sends `typing.start` once and `typing.stop` after `idleMs` without another call. */
    typing(room, idleMs = 3000) {
        const t = this.typingTimers.get(room);
        if (t)
            clearTimeout(t);
        else
            this.request("typing.start", { room }).catch(() => { });
        this.typingTimers.set(room, setTimeout(() => this.stopTyping(room), idleMs));
    }
    /** Sends `typing.stop` now (e.g. when the message is sent). */
    stopTyping(room) {
        const t = this.typingTimers.get(room);
        if (!t)
            return;
        clearTimeout(t);
        this.typingTimers.delete(room);
        this.request("typing.stop", { room }).catch(() => { });
    }
    /**
     * Asks the assistant. The result is an async iterator of text deltas that
     * ends when the reply is stored; `reply` resolves with the stored message.
     * Retried under one `client_msg_id` across reconnects (one reply only).
     */
    ask(room, prompt, opts = {}) {
        return new AiStream(this, room, prompt, opts);
    }
    /** @internal used by AiStream */
    _askRequest(body) {
        return this.request("ai.ask", body, { retry: true, timeoutMs: this.options.sendTimeoutMs });
    }
}
/** An assistant reply in progress. */
export class AiStream {
    /** Resolves with the stored reply (or rejects with the stream's error). */
    reply;
    streamId;
    chunks = [];
    nextIndex = 0;
    waiting;
    finished = false;
    error;
    early = [];
    constructor(client, room, prompt, opts) {
        let resolveReply;
        let rejectReply;
        this.reply = new Promise((res, rej) => {
            resolveReply = res;
            rejectReply = rej;
        });
        this.reply.catch(() => { });
        const offs = [];
        const end = (err, msg) => {
            if (this.finished)
                return;
            this.finished = true;
            for (const off of offs)
                off();
            if (err) {
                this.error = err;
                rejectReply(err);
            }
            else if (msg)
                resolveReply(msg);
            this.wake();
        };
        const onDelta = (d) => {
            if (!this.streamId)
                return void this.early.push({ type: "ai.delta", ...d });
            if (d.stream_id !== this.streamId || d.index < this.nextIndex)
                return;
            this.nextIndex = d.index + 1;
            this.chunks.push(d.text);
            this.wake();
        };
        const onDone = (d) => {
            if (!this.streamId)
                return void this.early.push({ type: "ai.done", ...d });
            if (d.stream_id !== this.streamId)
                return;
            if (d.message)
                end(undefined, d.message);
            else
                end(new ParleyError("internal", "ai.done without the stored reply"));
        };
        const onError = (d) => {
            if (!this.streamId)
                return void this.early.push({ type: "ai.error", ...d });
            if (d.stream_id !== this.streamId)
                return;
            end(new ParleyError(d.error.code, d.error.message, d.error.temporary));
        };
        // Finished while we were away: the stored reply arrives through recovery.
        const onMessage = (e) => {
            const sid = e.message.metadata?.["stream_id"];
            if (this.streamId && sid === this.streamId && e.message.sender.id === "assistant")
                end(undefined, e.message);
        };
        // Re-joined mid-stream: text_so_far replaces what we missed.
        const onSynced = (s) => {
            if (s.room !== room || !this.streamId)
                return;
            const st = s.reply.streams.find((x) => x.stream_id === this.streamId);
            if (st && st.index > this.nextIndex) {
                const have = this.chunks.join("").length + this.consumed;
                this.chunks.push(st.text_so_far.slice(have));
                this.nextIndex = st.index;
                this.wake();
            }
        };
        offs.push(client.on("ai.delta", onDelta), client.on("ai.done", onDone), client.on("ai.error", onError));
        offs.push(client.on("message.new", onMessage), client.on("room.synced", onSynced));
        const body = { room, prompt, client_msg_id: newClientMsgId() };
        if (opts.model)
            body.model = opts.model;
        if (opts.thread)
            body.thread = opts.thread;
        client._askRequest(body).then((r) => {
            this.streamId = r.stream_id;
            const early = this.early;
            this.early = [];
            for (const f of early) {
                if (f.type === "ai.delta")
                    onDelta(f);
                else if (f.type === "ai.done")
                    onDone(f);
                else if (f.type === "ai.error")
                    onError(f);
            }
        }, (e) => end(e));
    }
    consumed = 0;
    wake() {
        const w = this.waiting;
        this.waiting = undefined;
        w?.();
    }
    async *[Symbol.asyncIterator]() {
        for (;;) {
            if (this.chunks.length) {
                const c = this.chunks.shift();
                this.consumed += c.length;
                yield c;
                continue;
            }
            if (this.finished) {
                if (this.error)
                    throw this.error;
                return;
            }
            await new Promise((r) => (this.waiting = r));
        }
    }
}
/**
 * Checks a server frame against docs/protocol.schema.json (generated into
 * SERVER_FRAME_SCHEMA): its type, required fields, and every field's type,
 * nested objects, arrays, enums and bounds included. Returns the first
 * problem, or undefined. Fields the schema does not know are allowed.
 */
export function checkFrame(frame) {
    if (typeof frame !== "object" || frame === null || Array.isArray(frame))
        return "frame is not a JSON object";
    const type = frame.type;
    if (typeof type !== "string")
        return "frame has no type";
    const member = FRAME_SCHEMAS.get(type);
    if (!member)
        return `unknown frame type ${JSON.stringify(type)}`;
    const problem = validate(member, frame, "");
    return problem && `${type} frame${problem.startsWith("lacks ") ? " " : ": "}${problem}`;
}
/** Checks a successful reply's result fields against the command's result definition. */
export function checkReply(command, result) {
    const def = RESULT_DEFS[command];
    if (!def)
        return undefined;
    // room.join's events are checked one by one as they are delivered: a bad one is skipped, not the join.
    const checked = command === "room.join" && typeof result === "object" && result !== null ? { ...result, events: [] } : result;
    const problem = validate({ $ref: `#/$defs/${def}` }, checked, "");
    return problem && `${command} reply${problem.startsWith("lacks ") ? " " : ": "}${problem}`;
}
/** Each server frame type's schema: its body's definition and the `type` tag. */
const FRAME_SCHEMAS = new Map((SERVER_FRAME_SCHEMA["ServerFrame"]?.oneOf ?? []).map((m) => [String(m.properties?.["type"]?.const), m]));
