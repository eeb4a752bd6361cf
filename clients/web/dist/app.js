// The Parley web app: sign in, rooms, messages, replies, reactions, read
// receipts, typing, presence and the assistant, on the SDK. Every
// user-supplied string reaches the page through textContent only; the edge
// serves it under a strict CSP.
import { ParleyClient } from "./sdk/index.js";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined)
        e.textContent = text;
    if (cls)
        e.className = cls;
    return e;
}
let client;
let active;
const rooms = new Map();
/** Messages of the active room by id. */
const messages = new Map();
/** Assistant replies streaming in the active room: stream id → text. */
const streams = new Map();
const typingUsers = new Map();
const online = new Set();
const names = new Map();
/** Other members' read marks in the active room (from `room.join`, then `receipt` events): user id → seq. */
const readMarks = new Map();
/** The message the next send replies to (its thread is the root's). */
let replyTo;
function setConn(state, label) {
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = label;
}
async function signIn(ev) {
    ev.preventDefault();
    const name = $("name").value.trim();
    const how = document.querySelector('input[name="how"]:checked').value;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    client = new ParleyClient(how === "dev" ? { url, devUser: name } : { url, anonymous: { name } });
    wire(client);
    $("signin-button").disabled = true;
    try {
        await client.connect();
    }
    catch (e) {
        $("signin-button").disabled = false;
        alert(`sign-in failed: ${e.message}`);
        return;
    }
    $("signin").hidden = true;
    $("chat").hidden = false;
    $("me").textContent = client.user ? `${client.user.name}` : "";
    await refreshRooms();
    const fromLink = new URLSearchParams(location.hash.slice(1)).get("room");
    if (fromLink)
        await openRoom(fromLink);
}
function wire(c) {
    // A frame that does not match the schema is dropped by the SDK; say so where developers look.
    c.on("protocol.error", (e) => console.error(`parley: ${e.message}`));
    c.on("state", (s) => {
        if (s.state === "connected")
            setConn("connected", s.recovered === undefined ? "online" : s.recovered ? "online · recovered" : "online · gaps");
        else if (s.state === "closed")
            setConn("closed", "signed out");
        else
            setConn(s.state, "reconnecting…");
        if (s.state === "connected" && s.recovered !== undefined)
            void refreshRooms();
    });
    c.on("message.new", (e) => {
        if (e.room === active) {
            upsert(e.message);
            if (e.message.metadata?.["stream_id"])
                streams.delete(String(e.message.metadata["stream_id"]));
            render();
            if (e.message.sender.id !== c.user?.id)
                c.markRead(e.room, e.seq).catch(() => { });
        }
        else if (e.message.sender.id !== c.user?.id) {
            const r = rooms.get(e.room);
            if (r) {
                r.unread += 1;
                renderRooms();
            }
        }
    });
    c.on("message.updated", (e) => e.room === active && (upsert(e.message), render()));
    c.on("message.deleted", (e) => {
        const m = messages.get(e.message_id);
        if (e.room === active && m) {
            messages.set(m.id, { ...m, deleted: true, text: "", reactions: {} });
            render();
        }
    });
    const reacted = (add) => (e) => {
        const m = messages.get(e.message_id);
        if (e.room !== active || !m)
            return;
        const users = new Set(m.reactions[e.emoji] ?? []);
        add ? users.add(e.user.id) : users.delete(e.user.id);
        m.reactions = { ...m.reactions, [e.emoji]: [...users] };
        if (!users.size)
            delete m.reactions[e.emoji];
        render();
    };
    c.on("reaction.added", reacted(true));
    c.on("reaction.removed", reacted(false));
    c.on("ai.delta", (e) => {
        if (e.room !== active)
            return;
        streams.set(e.stream_id, (streams.get(e.stream_id) ?? "") + e.text);
        render();
    });
    c.on("ai.error", (e) => {
        if (e.room !== active)
            return;
        streams.set(e.stream_id, `${streams.get(e.stream_id) ?? ""} [${e.error.code}]`);
        render();
    });
    c.on("typing", (e) => {
        if (e.room !== active)
            return;
        clearTimeout(typingUsers.get(e.user));
        if (e.typing)
            typingUsers.set(e.user, setTimeout(() => (typingUsers.delete(e.user), renderTyping()), 8000));
        else
            typingUsers.delete(e.user);
        renderTyping();
    });
    c.on("presence", (e) => {
        e.status === "offline" ? online.delete(e.user) : online.add(e.user);
        renderOnline();
    });
    c.on("member.joined", (e) => {
        names.set(e.user.id, e.user.name);
        if (e.room === active)
            (online.add(e.user.id), renderOnline());
    });
    c.on("receipt", (e) => {
        if (e.room !== active || e.kind !== "read" || e.user === c.user?.id)
            return;
        if (e.seq > (readMarks.get(e.user) ?? -1))
            readMarks.set(e.user, e.seq);
        render();
    });
}
function upsert(m) {
    names.set(m.sender.id, m.sender.name);
    messages.set(m.id, m);
}
async function refreshRooms() {
    const list = await client.listRooms();
    for (const r of list)
        rooms.set(r.id, { name: r.name, unread: r.id === active ? 0 : r.unread });
    renderRooms();
}
function renderRooms() {
    const ul = $("rooms");
    ul.replaceChildren(...[...rooms].map(([id, r]) => {
        const li = el("li");
        li.dataset.room = id;
        if (id === active)
            li.className = "active";
        li.append(el("span", r.name || id));
        if (r.unread)
            li.append(el("span", String(r.unread), "unread"));
        li.addEventListener("click", () => void openRoom(id));
        return li;
    }));
}
async function openRoom(id) {
    active = id;
    messages.clear();
    streams.clear();
    online.clear();
    typingUsers.clear();
    readMarks.clear();
    setReplyTo(undefined);
    location.hash = `room=${encodeURIComponent(id)}`;
    const reply = await client.join(id);
    const name = reply.room?.name ?? id;
    rooms.set(id, { name, unread: 0 });
    for (const uid of reply.online)
        online.add(uid);
    for (const mark of reply.read_marks) {
        if (mark.user !== client.user?.id)
            readMarks.set(mark.user, mark.seq);
    }
    for (const s of reply.streams)
        streams.set(s.stream_id, s.text_so_far);
    const page = await client.history(id, { limit: 100 });
    for (const m of page.messages)
        upsert(m);
    $("room").hidden = false;
    $("room-title").textContent = name;
    $("room-link").textContent = `${location.origin}/#room=${id}`;
    renderRooms();
    renderOnline();
    renderTyping();
    render();
    const last = page.messages[page.messages.length - 1];
    if (last)
        client.markRead(id, last.seq).catch(() => { });
}
const bySeq = () => [...messages.values()].sort((a, b) => a.seq - b.seq);
/** Messages in display order: each thread root followed by its replies (by seq). */
function threaded() {
    const roots = [];
    const replies = new Map();
    for (const m of bySeq()) {
        // A reply whose root is not loaded (older than the page) stands alone.
        if (m.thread && messages.has(m.thread))
            replies.set(m.thread, [...(replies.get(m.thread) ?? []), m]);
        else
            roots.push(m);
    }
    return roots.flatMap((m) => [{ m, reply: !!m.thread }, ...(replies.get(m.id) ?? []).map((r) => ({ m: r, reply: true }))]);
}
/** Who has read up to each message: a reader shows at the last message at or below their mark. */
function seenAt() {
    const sorted = bySeq();
    const at = new Map();
    for (const [user, mark] of readMarks) {
        const m = sorted.filter((x) => x.seq <= mark).pop();
        if (m)
            at.set(m.id, [...(at.get(m.id) ?? []), names.get(user) ?? user]);
    }
    return at;
}
function render() {
    const ol = $("messages");
    const seen = seenAt();
    const items = threaded().map(({ m, reply }) => {
        const li = el("li", undefined, [m.sender.id === "assistant" ? "assistant" : m.deleted ? "deleted" : "", reply ? "reply" : ""].join(" ").trim());
        li.dataset.seq = String(m.seq);
        li.dataset.id = m.id;
        if (m.thread) {
            li.dataset.thread = m.thread;
            const root = messages.get(m.thread);
            li.append(el("span", root ? "↳ " : "↳ reply to an earlier message · ", "meta in-reply"));
        }
        if (online.has(m.sender.id))
            li.append(el("span", undefined, "dot"));
        li.append(el("span", m.sender.name, "who"), el("span", m.deleted ? "message deleted" : m.text, "text"));
        if (m.edited_at)
            li.append(el("span", "(edited)", "meta"));
        for (const [emoji, users] of Object.entries(m.reactions))
            li.append(el("span", `${emoji} ${users.length}`, "meta"));
        if (!m.deleted) {
            const like = el("button", "like");
            like.title = "react";
            like.addEventListener("click", () => {
                const mine = (m.reactions["👍"] ?? []).includes(client.user?.id ?? "");
                client.react(m.room, m.id, "👍", !mine).catch(() => { });
            });
            const answer = el("button", "reply", "reply");
            answer.title = "reply in this message's thread";
            answer.addEventListener("click", () => setReplyTo(m));
            li.append(like, answer);
            if (m.sender.id === client.user?.id) {
                const edit = el("button", "edit", "edit");
                edit.addEventListener("click", () => {
                    const text = prompt("Edit message", m.text);
                    if (text)
                        client.edit(m.room, m.id, text).catch((e) => alert(e.message));
                });
                const del = el("button", "delete", "delete");
                del.addEventListener("click", () => client.delete(m.room, m.id).catch((e) => alert(e.message)));
                li.append(edit, del);
            }
        }
        const readers = seen.get(m.id);
        if (readers) {
            const mark = el("span", `✓ seen by ${readers.join(", ")}`, "seen");
            mark.title = "read up to here";
            li.append(mark);
        }
        return li;
    });
    for (const [sid, text] of streams) {
        const li = el("li", undefined, "assistant streaming");
        li.dataset.stream = sid;
        li.append(el("span", "assistant", "who"), el("span", text, "text"), el("span", "…", "meta"));
        items.push(li);
    }
    const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
    ol.replaceChildren(...items);
    if (atBottom)
        ol.scrollTop = ol.scrollHeight;
}
function setReplyTo(m) {
    replyTo = m;
    $("replying").hidden = !m;
    $("replying-text").textContent = m ? `Replying to ${m.sender.name}: ${m.deleted ? "message deleted" : m.text}` : "";
    if (m)
        $("text").focus();
}
function renderTyping() {
    const who = [...typingUsers.keys()].map((u) => names.get(u) ?? u);
    $("typing").textContent = who.length ? `${who.join(", ")} ${who.length > 1 ? "are" : "is"} typing…` : "";
}
function renderOnline() {
    $("online").textContent = `${online.size} online`;
}
async function sendText(ev) {
    ev.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text || !active)
        return;
    input.value = "";
    client.stopTyping(active);
    // The server puts a reply to a reply into the root's thread.
    const thread = replyTo?.room === active ? replyTo.id : undefined;
    setReplyTo(undefined);
    try {
        if (text.startsWith("/ask ")) {
            const stream = client.ask(active, text.slice(5), thread ? { thread } : {});
            await stream.reply;
        }
        else {
            await client.send(active, text, thread ? { thread } : {});
        }
    }
    catch (e) {
        alert(`not sent: ${e.message}`);
    }
}
async function createRoom(ev) {
    ev.preventDefault();
    const input = $("room-name");
    try {
        const room = await client.createRoom(input.value.trim());
        input.value = "";
        rooms.set(room.id, { name: room.name, unread: 0 });
        await openRoom(room.id);
    }
    catch (e) {
        alert(`could not create the room: ${e.message}`);
    }
}
async function joinRoom(ev) {
    ev.preventDefault();
    const input = $("room-id");
    const id = input.value.trim().replace(/^.*#room=/, "");
    try {
        await openRoom(decodeURIComponent(id));
        input.value = "";
    }
    catch (e) {
        alert(`could not join: ${e.message}`);
    }
}
$("signin-form").addEventListener("submit", signIn);
$("send-form").addEventListener("submit", sendText);
$("create-form").addEventListener("submit", createRoom);
$("join-form").addEventListener("submit", joinRoom);
$("text").addEventListener("input", () => active && client.typing(active));
$("replying-cancel").addEventListener("click", () => setReplyTo(undefined));
