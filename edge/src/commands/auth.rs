//! `auth` (a token, anonymous sign-in or a development login) and `refresh`.

use common::ErrorCode;
use proto::auth::v1::{DevLoginRequest, Identity, SignInAnonymousRequest, SignInResponse};
use protocol::{Auth, AuthReply, Refresh, RefreshReply, ReplyResult, SignIn, User};

use super::{Outcome, failed, missing, reply};
use crate::frames::CommandError;
use crate::session::{Session, verify};

pub(super) async fn auth(s: &mut Session, args: Auth) -> Result<Outcome, CommandError> {
    if s.identity.is_some() {
        return Err(CommandError::bad_request("already authenticated"));
    }
    let client_ip = s.link.peer.ip().to_string();
    let mut auth = s.shared().backends.auth.clone();
    let (identity, token) = match args.sign_in() {
        SignIn::Anonymous { name } => {
            let request = SignInAnonymousRequest {
                name: name.to_string(),
                client_ip,
            };
            signed_in(auth.sign_in_anonymous(request).await)?
        }
        SignIn::Dev { user } => {
            let request = DevLoginRequest {
                user: user.to_string(),
                client_ip,
            };
            signed_in(auth.dev_login(request).await)?
        }
        SignIn::Token(token) => (verify(s.shared(), token, s.link.peer).await?, None),
    };
    let mut answer = AuthReply {
        user: User::from(&identity),
        session_id: identity.session_id.clone(),
        expires_at: identity.expires_at,
        token,
        frame_secret: None,
    };
    s.authenticated(identity).await?;
    answer.frame_secret = s.signed.as_ref().map(|signed| signed.secret().to_string());
    Ok(reply(ReplyResult::Auth(answer)))
}

/// The identity and token of an anonymous or development sign-in.
fn signed_in(
    response: Result<tonic::Response<SignInResponse>, tonic::Status>,
) -> Result<(Identity, Option<String>), CommandError> {
    let response = response.map_err(failed("auth"))?.into_inner();
    let identity = response.identity.ok_or_else(|| missing("identity"))?;
    Ok((identity, Some(response.access_token)))
}

/// `refresh{token}`: verifies the new token and swaps it in place. It must
/// be the same user's; a refused token leaves the connection on its old one.
pub(super) async fn refresh(s: &mut Session, args: Refresh) -> Result<Outcome, CommandError> {
    let current = s.actor()?.user_id;
    let identity = verify(s.shared(), &args.token, s.link.peer)
        .await
        .map_err(|mut e| {
            e.close = None;
            e
        })?;
    if identity.user_id != current {
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "the token is for another user; reconnect to switch users",
        ));
    }
    let expires_at = identity.expires_at;
    s.refreshed(identity);
    Ok(reply(ReplyResult::Refresh(RefreshReply { expires_at })))
}
