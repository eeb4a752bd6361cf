//! A text frame's way through the edge: signed-frame check, envelope,
//! trace span, rate limits, sign-in and switch checks by the command's
//! [`Spec`](protocol::Spec), typed decoding, content inspection, then the
//! command's handler — each turning one command into one gRPC call — and
//! the reply.

mod assistant;
mod auth;
mod blocks;
mod invitations;
mod messages;
mod moderation;
mod presence;
mod rooms;

use std::sync::Arc;

use common::ErrorCode;
use common::grpc::{Actor, ServiceChannel};
use opentelemetry::trace::TraceContextExt;
use proto::chat::v1::Sanction;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use protocol::{ClientCommand, CommandKind, PingReply, ReplyResult};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Shared;
use crate::frames::{self, CommandError, Envelope};
use crate::outbox::Outbox;
use crate::pipeline::{Command, Pipeline};
use crate::session::Session;

/// What a successful command produced.
pub(crate) enum Outcome {
    /// The reply's result (sent when the command carried an `id`); boxed,
    /// as results differ widely in size.
    Reply(Box<ReplyResult>),
    /// The handler already queued its reply (ordering with live events).
    Sent,
}

/// A reply with `result`'s fields.
fn reply(result: ReplyResult) -> Outcome {
    Outcome::Reply(Box::new(result))
}

/// A reply with no result fields.
fn done() -> Outcome {
    reply(ReplyResult::Empty(protocol::Empty {}))
}

/// Whether the read loop goes on.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Runs one text frame; `Flow::Close` when its failure ends the connection.
/// A room-ordered command (see [`protocol::Spec::room_ordered`]) is queued
/// on `pipeline` and answers when it is done; any other command first waits
/// for everything in flight, then runs here. Every frame is counted once in
/// `parley_edge_commands_total` and timed in
/// `parley_edge_command_duration_seconds`, under its command kind (or
/// `unknown`) and outcome (`ok` or the error code).
pub(crate) async fn handle(
    session: &mut Session,
    pipeline: &mut Option<Box<Pipeline>>,
    text: &str,
) -> Flow {
    let started = std::time::Instant::now();
    let (envelope, span) = match parse(session, text).await {
        Ok(parsed) => parsed,
        Err((kind, outcome, flow)) => {
            let metrics = &session.shared().metrics;
            record(metrics, kind.as_deref(), outcome, started, None);
            return flow;
        }
    };
    let Envelope { kind, id, body, .. } = envelope;
    let finish = Finish {
        outbox: session.outbox().clone(),
        metrics: session.shared().metrics.clone(),
        tracing: session.shared().tracing,
        started,
        kind,
        id,
        span,
    };
    let admitted = admit(session, &finish.kind, body)
        .instrument(finish.span.clone())
        .await;
    let (spec, command, flags) = match admitted {
        Ok(admitted) => admitted,
        Err(error) => return finish.done(Err(error)),
    };
    if spec.room_ordered
        && let Some(room) = room_of(&command)
    {
        let room = room.to_string();
        let ctx = match RoomCtx::of(session) {
            Ok(ctx) => ctx,
            Err(error) => return finish.done(Err(error)),
        };
        let pipeline = pipeline.get_or_insert_with(Box::default);
        if let ClientCommand::MessageSend(args) = command {
            // Handed to chat in the lane's order; answered beside what follows.
            // The first poll hands the send on, once the lane lets it start.
            let hand_on = futures::future::lazy(move |_| {
                let span = finish.span.clone();
                let answer = span.in_scope(|| messages::send(&ctx, args, &flags));
                let answered: Command = Box::pin(async move {
                    let result = answer.instrument(span).await;
                    let _ = finish.done(result);
                });
                answered
            });
            pipeline.push_staged(room, Box::pin(hand_on));
            return Flow::Continue;
        }
        let run = async move {
            let result = dispatch_room(&ctx, command, flags)
                .instrument(finish.span.clone())
                .await;
            // A failure that closes has queued its close frame; the
            // connection ends when the writer has sent it.
            let _ = finish.done(result);
        };
        pipeline.push(room, Box::pin(run));
        return Flow::Continue;
    }
    // A barrier: everything before it finishes first.
    if let Some(mut running) = pipeline.take() {
        running.drain().await;
    }
    let result = dispatch(session, command, id, flags)
        .instrument(finish.span.clone())
        .await;
    finish.done(result)
}

/// Counts and times one frame.
fn record(
    metrics: &common::metrics::EdgeMetrics,
    kind: Option<&str>,
    outcome: &'static str,
    started: std::time::Instant,
    trace: Option<common::metrics::TraceExemplar>,
) {
    let command = kind
        .and_then(CommandKind::from_name)
        .map_or("unknown", CommandKind::name);
    metrics
        .commands
        .get_or_create(&[("command", command), ("outcome", outcome)])
        .inc();
    metrics
        .command_duration
        .get_or_create(&[("command", command)])
        .observe(started.elapsed().as_secs_f64(), trace, None);
}

/// A refused frame: its type (if it had one), the outcome label, and
/// whether the read loop goes on.
type Refused = (Option<String>, &'static str, Flow);

/// Opens a signed frame and reads the envelope; the command's span.
async fn parse(session: &mut Session, text: &str) -> Result<(Envelope, tracing::Span), Refused> {
    let opened;
    let text = match session.signed.as_mut() {
        Some(signed) if session.identity.is_some() => {
            match signed.open(text, common::ids::now_ms()) {
                Ok(payload) => {
                    opened = payload;
                    opened.as_str()
                }
                Err((id, refusal)) => {
                    let user = session.user().map(|(id, _)| id);
                    common::security::log(
                        common::security::SecurityEvent::AuthFailed,
                        Some(session.link.peer.ip()),
                        user,
                        refusal.as_str(),
                    );
                    let (flow, outcome) = refuse(session, None, id, refusal.error()).await;
                    return Err((None, outcome, flow));
                }
            }
        }
        _ => text,
    };
    let envelope = match frames::parse(text) {
        Ok(envelope) => envelope,
        Err((kind, id, error)) => {
            let (flow, outcome) = refuse(session, kind.as_deref(), id, error).await;
            return Err((kind, outcome, flow));
        }
    };
    let span = tracing::info_span!(
        "ws.frame",
        otel.name = %format!("ws {}", envelope.kind),
        otel.kind = "server",
        parley.command = %envelope.kind,
        parley.conn_id = %session.link.id,
        enduser.id = tracing::field::Empty,
        parley.room = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        parley.error_code = tracing::field::Empty,
    );
    if let Some((user, _)) = session.user() {
        span.record("enduser.id", user);
    }
    if let Some(room) = envelope.body.get("room").and_then(|r| r.as_str()) {
        span.record("parley.room", room);
    }
    let parent = match &envelope.traceparent {
        Some(tp) => common::trace::context_from_traceparent(tp),
        None => session.parent.clone(),
    };
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    Ok((envelope, span))
}

/// What answers a command once it has run: owned, so a command in the
/// pipeline answers by itself.
struct Finish {
    outbox: Outbox,
    metrics: common::metrics::EdgeMetrics,
    /// Whether spans are exported (exemplars and `trace_id` in errors).
    tracing: bool,
    started: std::time::Instant,
    kind: String,
    id: Option<u64>,
    span: tracing::Span,
}

impl Finish {
    /// Queues the reply (or the failure, and the close it asks for), and
    /// counts the command.
    fn done(self, result: Result<Outcome, CommandError>) -> Flow {
        let Finish {
            outbox,
            metrics,
            tracing,
            started,
            kind,
            id,
            span,
        } = self;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => {
                span.record("otel.status_code", "ERROR");
                span.record("parley.error_code", error.code.as_str());
                error.code.as_str()
            }
        };
        let trace = if tracing {
            span.in_scope(common::metrics::trace_exemplar)
        } else {
            None
        };
        let flow = match result {
            Ok(Outcome::Reply(result)) => {
                if let Some(id) = id {
                    outbox.push(frames::reply_ok(id, *result));
                }
                Flow::Continue
            }
            Ok(Outcome::Sent) => Flow::Continue,
            Err(error) => {
                let trace_id = if tracing {
                    span.in_scope(common::trace::current_trace_id)
                } else {
                    None
                };
                if error.code == ErrorCode::Internal {
                    tracing::error!(parent: &span, command = %kind, message = %error.message, "command failed");
                }
                outbox.push(frames::failure(Some(&kind), id, &error, trace_id));
                match error.close {
                    Some(close) => {
                        outbox.close(close);
                        Flow::Close
                    }
                    None => Flow::Continue,
                }
            }
        };
        record(&metrics, Some(&kind), outcome, started, trace);
        flow
    }
}

/// Answers a frame that is not a command (unreadable, or a bad signature).
/// It still counts against the connection's command window, so a flood of
/// garbage is limited and closed (4029) like a flood of commands.
async fn refuse(
    session: &mut Session,
    kind: Option<&str>,
    id: Option<u64>,
    error: CommandError,
) -> (Flow, &'static str) {
    let user = session
        .identity
        .as_ref()
        .map(|i| (i.user_id.as_str(), i.anonymous));
    let ip = session.link.peer.ip();
    let error =
        match crate::limits::admit(&session.link.shared, &mut session.limits, user, ip, None).await
        {
            Ok(()) => error,
            Err(limited) => limited,
        };
    session
        .outbox()
        .push(frames::failure(kind, id, &error, None));
    let flow = match error.close {
        Some(close) => {
            session.outbox().close(close);
            Flow::Close
        }
        None => Flow::Continue,
    };
    (flow, error.code.as_str())
}

/// Admits and decodes one command: its spec, the command, and content
/// inspection's findings.
async fn admit(
    session: &mut Session,
    kind: &str,
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<(&'static protocol::Spec, ClientCommand, Vec<&'static str>), CommandError> {
    let known = CommandKind::from_name(kind);
    let spec = known.map(CommandKind::spec);
    let ip = session.link.peer.ip();
    let user = session
        .identity
        .as_ref()
        .map(|i| (i.user_id.as_str(), i.anonymous));
    crate::limits::admit(&session.link.shared, &mut session.limits, user, ip, spec).await?;
    let (Some(kind), Some(spec)) = (known, spec) else {
        return Err(CommandError::bad_request(format!(
            "unknown command type `{kind}`"
        )));
    };
    if spec.needs_auth && session.identity.is_none() {
        return Err(CommandError::new(
            ErrorCode::Unauthorized,
            "authenticate first (send `auth`)",
        ));
    }
    if spec.assistant && !session.shared().ai_enabled() {
        return Err(CommandError::new(
            ErrorCode::Disabled,
            "the assistant is switched off on this server",
        ));
    }
    let command = kind.decode(body)?;
    let flags = match inspected_text(&command) {
        Some(text) if spec.inspects_text => crate::inspect::check(
            session.shared().config.content_inspection,
            ip,
            session.user().map(|(id, _)| id),
            text,
        )?,
        _ => Vec::new(),
    };
    Ok((spec, command, flags))
}

/// The room a room-ordered command acts on.
pub(crate) fn room_of(command: &ClientCommand) -> Option<&str> {
    use ClientCommand as C;
    match command {
        C::MessageSend(args) => Some(&args.room),
        C::MessageHistory(args) => Some(&args.room),
        C::MessageEdit(args) => Some(&args.room),
        C::MessageDelete(args) => Some(&args.room),
        C::ReactionAdd(args) | C::ReactionRemove(args) => Some(&args.room),
        _ => None,
    }
}

/// What a room-ordered command needs of its connection: owned, so the
/// command runs beside the connection's others (see [`crate::pipeline`]).
pub(crate) struct RoomCtx {
    shared: Arc<Shared>,
    actor: Actor,
    conn_id: String,
}

impl RoomCtx {
    fn of(session: &Session) -> Result<Self, CommandError> {
        Ok(Self {
            shared: session.link.shared.clone(),
            actor: session.actor()?,
            conn_id: session.link.id.clone(),
        })
    }

    /// The lane of this connection's sends to `room` (see [`crate::sends`]).
    pub(crate) fn lane(&self, room: &str) -> u64 {
        crate::sends::lane(&self.conn_id, room)
    }

    /// The signed-in user, as gRPC calls name their caller.
    pub(crate) fn actor(&self) -> &Actor {
        &self.actor
    }

    /// A client of chat-service.
    pub(crate) fn chat(&self) -> ChatServiceClient<ServiceChannel> {
        self.shared.backends.chat.clone()
    }
}

/// One handler per room-ordered command.
async fn dispatch_room(
    s: &RoomCtx,
    command: ClientCommand,
    flags: Vec<&'static str>,
) -> Result<Outcome, CommandError> {
    use ClientCommand as C;
    match command {
        C::MessageSend(args) => messages::send(s, args, &flags).await,
        C::MessageHistory(args) => messages::history(s, args).await,
        C::MessageEdit(args) => messages::edit(s, args).await,
        C::MessageDelete(args) => messages::delete(s, args).await,
        C::ReactionAdd(args) => messages::reaction(s, args, true).await,
        C::ReactionRemove(args) => messages::reaction(s, args, false).await,
        other => Err(CommandError::new(
            ErrorCode::Internal,
            format!("`{}` is not room-ordered", other.kind().name()),
        )),
    }
}

/// The text content inspection reads, for commands that carry one.
pub(crate) fn inspected_text(command: &ClientCommand) -> Option<&str> {
    match command {
        ClientCommand::MessageSend(args) => Some(&args.text),
        ClientCommand::MessageEdit(args) => Some(&args.text),
        ClientCommand::AiAsk(args) => Some(&args.prompt),
        _ => None,
    }
}

/// One handler per command.
async fn dispatch(
    s: &mut Session,
    command: ClientCommand,
    id: Option<u64>,
    flags: Vec<&'static str>,
) -> Result<Outcome, CommandError> {
    use ClientCommand as C;
    match command {
        C::Ping(_) => Ok(reply(ReplyResult::Ping(PingReply {
            server_time: common::ids::now_ms(),
        }))),
        C::Auth(args) => auth::auth(s, args).await,
        C::Refresh(args) => auth::refresh(s, args).await,
        C::RoomCreate(args) => rooms::create(s, args).await,
        C::RoomJoin(args) => rooms::join(s, args, id).await,
        C::RoomLeave(args) => rooms::leave(s, args).await,
        C::RoomList(args) => rooms::list(s, args).await,
        C::RoomInvite(args) => rooms::invite(s, args).await,
        C::RoomRemoveMember(args) => rooms::remove_member(s, args).await,
        command @ (C::MessageSend(_)
        | C::MessageHistory(_)
        | C::MessageEdit(_)
        | C::MessageDelete(_)
        | C::ReactionAdd(_)
        | C::ReactionRemove(_)) => dispatch_room(&RoomCtx::of(s)?, command, flags).await,
        C::ReceiptRead(args) => messages::receipt(s, args, true).await,
        C::ReceiptDelivered(args) => messages::receipt(s, args, false).await,
        C::NotificationList(args) => messages::notification_list(s, args).await,
        C::NotificationRead(args) => messages::notification_read(s, args).await,
        C::NotificationClear(args) => messages::notification_clear(s, args).await,
        C::RoomUpdate(args) => moderation::update(s, args).await,
        C::RoomDelete(args) => moderation::delete(s, args).await,
        C::RoomMembers(args) => moderation::members(s, args).await,
        C::RoomSetRole(args) => moderation::set_role(s, args).await,
        C::RoomMute(args) => moderation::sanction(s, args, Sanction::Mute).await,
        C::RoomUnmute(args) => moderation::undo(s, args, Sanction::Unmute).await,
        C::RoomBan(args) => moderation::sanction(s, args, Sanction::Ban).await,
        C::RoomUnban(args) => moderation::undo(s, args, Sanction::Unban).await,
        C::MessageReport(args) => moderation::report(s, args).await,
        C::RoomDirectory(args) => moderation::directory(s, args).await,
        C::AiAsk(args) => assistant::ask(s, args).await,
        C::AiCancel(args) => assistant::cancel(s, args).await,
        C::PresenceSet(args) => presence::set(s, args).await,
        C::PresenceSubscribe(args) => presence::subscribe(s, args).await,
        C::PresenceUnsubscribe(args) => presence::unsubscribe(s, args).await,
        C::TypingStart(args) => {
            moderation::may_type(s, &args.room).await?;
            presence::typing(s, args, true)
        }
        C::TypingStop(args) => presence::typing(s, args, false),
        C::CallInvite(args) => presence::call_invite(s, args).await,
        C::CallAnswer(args) => presence::call_act(s, "answer", args).await,
        C::CallReject(args) => presence::call_act(s, "reject", args).await,
        C::CallEnd(args) => presence::call_act(s, "end", args).await,
        C::CallIce(args) => presence::call_act(s, "ice", args).await,
        C::UserBlock(args) => blocks::block(s, args, true).await,
        C::UserUnblock(args) => blocks::block(s, args, false).await,
        C::UserBlocks(_) => blocks::list(s).await,
        C::InvitationList(_) => invitations::list(s).await,
        C::InvitationAccept(args) => invitations::answer(s, args, true).await,
        C::InvitationDecline(args) => invitations::answer(s, args, false).await,
        C::AttachmentUrl(args) => messages::attachment_url(s, args).await,
    }
}

/// Maps a failed call to `service` to the client's error.
fn failed(service: &'static str) -> impl Fn(tonic::Status) -> CommandError {
    move |status| CommandError::from_status(service, &status)
}

/// A reply the service should have filled in.
fn missing(what: &str) -> CommandError {
    CommandError::new(
        ErrorCode::Internal,
        format!("{what} missing from the reply"),
    )
}
