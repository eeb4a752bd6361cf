//! Membership changes by others: invites (who may invite where, under both
//! invite policies) and removal by the owner.

use common::config::InvitePolicy;
use proto::chat::v1::Visibility;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn a_member_invites_someone_into_a_private_room_who_then_accepts() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB]).await;
    assert_eq!(code(app.join(CAROL, &room.id, None).await), Code::NotFound);

    app.invite(BOB, &room.id, CAROL)
        .await
        .expect("a member invites");
    // Invited is not a member: no room, no list, no sending.
    assert_eq!(code(app.join(CAROL, &room.id, None).await), Code::NotFound);
    assert!(app.list_rooms(CAROL).await.is_empty());
    assert_eq!(
        code(app.send(CAROL, &room.id, "sneaking in").await),
        Code::NotFound
    );
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log),
        [
            "member.joined",
            "member.invited",
            "member.joined",
            "member.invited"
        ]
    );
    let invited = json(&log[3]);
    assert_eq!(invited["user"]["id"], CAROL);
    assert_eq!(invited["by"]["id"], BOB);
    assert_eq!(invited["seq"], 4);
    let pending = app.invitations(CAROL).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].room.as_ref().map(|r| r.id.as_str()),
        Some(room.id.as_str())
    );
    assert_eq!(pending[0].by.as_ref().map(|u| u.id.as_str()), Some(BOB));

    let accepted = app.accept(CAROL, &room.id).await.expect("carol accepts");
    assert_eq!(accepted.last_seq, 5);
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(kinds(&log).last(), Some(&"member.joined"));
    assert_eq!(json(&log[4])["user"]["id"], CAROL);
    let carol = app.join(CAROL, &room.id, None).await.expect("carol joins");
    assert_eq!(carol.last_seq, 5, "joining as a member logs nothing");
    let sent = app
        .send(CAROL, &room.id, "hello")
        .await
        .expect("carol sends");
    assert_eq!(sent.seq, 6);
    assert_eq!(room_ids(&app.list_rooms(CAROL).await), [room.id.as_str()]);
    assert!(app.invitations(CAROL).await.is_empty());
    assert_eq!(code(app.accept(CAROL, &room.id).await), Code::NotFound);

    app.invite(ALICE, &room.id, CAROL)
        .await
        .expect("inviting a member again succeeds");
    app.invite(ALICE, &room.id, BOB)
        .await
        .expect("inviting a member succeeds");
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        6,
        "inviting existing members logs nothing"
    );
}

#[tokio::test]
async fn a_declined_invitation_is_logged_and_leaves_no_membership() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[]).await;
    app.invite(ALICE, &room.id, CAROL).await.expect("invite");
    app.invite(ALICE, &room.id, CAROL)
        .await
        .expect("inviting again changes nothing");
    app.decline(CAROL, &room.id).await.expect("carol declines");
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log),
        ["member.joined", "member.invited", "member.declined"]
    );
    assert_eq!(json(&log[2])["user"]["id"], CAROL);
    assert_eq!(json(&log[2])["by"]["id"], ALICE);
    assert_eq!(code(app.decline(CAROL, &room.id).await), Code::NotFound);
    assert_eq!(code(app.accept(CAROL, &room.id).await), Code::NotFound);
    assert_eq!(code(app.accept(DAVE, &room.id).await), Code::NotFound);
    assert!(app.list_rooms(CAROL).await.is_empty());
}

#[tokio::test]
async fn outsiders_cannot_invite_and_direct_rooms_take_no_invites() {
    let app = spawn_app().await;
    let private = app.private_room(ALICE, "secret", &[BOB]).await;
    let public = app.public_room(ALICE, "general", &[]).await;
    let direct = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB])
        .await
        .expect("direct room");

    let hidden = app.invite(CAROL, &private.id, DAVE).await;
    assert_eq!(code(hidden), Code::NotFound, "a private room is invisible");
    let unknown = app.invite(ALICE, "r_no_such_room", DAVE).await;
    assert_eq!(code(unknown), Code::NotFound);
    let outsider = app.invite(CAROL, &public.id, DAVE).await;
    assert_eq!(
        code(outsider),
        Code::PermissionDenied,
        "a visible room, but carol is no member"
    );
    for user in [ALICE, BOB] {
        let refused = app.invite(user, &direct.id, CAROL).await;
        assert_eq!(code(refused), Code::PermissionDenied, "{user}");
    }

    assert_eq!(app.log(ALICE, &private.id).await.len(), 3);
    assert_eq!(app.log(ALICE, &public.id).await.len(), 1);
    assert_eq!(app.log(ALICE, &direct.id).await.len(), 2);
    assert!(app.list_rooms(DAVE).await.is_empty());
    assert!(app.list_rooms(CAROL).await.is_empty());
}

#[tokio::test]
async fn under_the_owner_policy_only_the_owner_invites_into_private_rooms() {
    let app = spawn_app_with(|config| config.invite_policy = InvitePolicy::Owner).await;
    let private = app.private_room(ALICE, "secret", &[BOB]).await;

    let refused = app.invite(BOB, &private.id, CAROL).await;
    assert_eq!(code(refused), Code::PermissionDenied);
    assert_eq!(
        code(app.join(CAROL, &private.id, None).await),
        Code::NotFound
    );
    assert_eq!(app.log(ALICE, &private.id).await.len(), 3, "nothing logged");

    app.invite(ALICE, &private.id, CAROL)
        .await
        .expect("the owner invites");
    let log = app.log(ALICE, &private.id).await;
    assert_eq!(kinds(&log).last(), Some(&"member.invited"));
    assert_eq!(json(&log[3])["user"]["id"], CAROL);
    app.accept(CAROL, &private.id).await.expect("carol accepts");
    app.send(CAROL, &private.id, "thanks")
        .await
        .expect("carol is a member");

    // Public rooms stay open to invites by any member.
    let public = app.public_room(ALICE, "general", &[BOB]).await;
    app.invite(BOB, &public.id, DAVE)
        .await
        .expect("a member invites into a public room");
    assert!(
        app.list_rooms(DAVE).await.is_empty(),
        "invited, not a member"
    );
    app.accept(DAVE, &public.id).await.expect("dave accepts");
    assert_eq!(room_ids(&app.list_rooms(DAVE).await), [public.id.as_str()]);
}

#[tokio::test]
async fn the_owner_removes_a_member() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB, CAROL]).await;

    app.remove_member(ALICE, &room.id, BOB)
        .await
        .expect("the owner removes bob");
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log),
        [
            "member.joined",
            "member.invited",
            "member.invited",
            "member.joined",
            "member.joined",
            "member.left"
        ]
    );
    let left = &log[5];
    assert_eq!(left.seq, 6);
    assert_eq!(json(left)["user"]["id"], BOB);
    assert_eq!(json(left)["seq"], 6);

    assert_eq!(code(app.join(BOB, &room.id, None).await), Code::NotFound);
    assert_eq!(
        code(app.send(BOB, &room.id, "still here?").await),
        Code::NotFound
    );
    assert_eq!(
        code(app.history(BOB, history_of(&room.id, 0)).await),
        Code::NotFound
    );
    assert!(app.list_rooms(BOB).await.is_empty());
    app.send(CAROL, &room.id, "bye bob")
        .await
        .expect("carol stays a member");
}

#[tokio::test]
async fn only_the_owner_removes_and_only_other_members() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB, CAROL]).await;

    let by_member = app.remove_member(BOB, &room.id, CAROL).await;
    assert_eq!(code(by_member), Code::PermissionDenied);
    let by_outsider = app.remove_member(DAVE, &room.id, CAROL).await;
    assert_eq!(code(by_outsider), Code::NotFound, "invisible to dave");
    let not_a_member = app.remove_member(ALICE, &room.id, DAVE).await;
    assert_eq!(code(not_a_member), Code::NotFound);
    let herself = app.remove_member(ALICE, &room.id, ALICE).await;
    assert_eq!(code(herself), Code::InvalidArgument);

    assert_eq!(app.log(ALICE, &room.id).await.len(), 5, "nothing logged");
    for user in [ALICE, BOB, CAROL] {
        assert_eq!(
            room_ids(&app.list_rooms(user).await),
            [room.id.as_str()],
            "{user} is still a member"
        );
    }
}

/// `member.joined` names a member by the name they joined under, but the
/// `member.left` that `RemoveMember` logs names them by their id.
#[tokio::test]
async fn member_left_names_a_removed_member_as_they_joined() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    app.join_as(&actor_named(DAVE, "Dave Doe"), &room.id, None)
        .await
        .expect("dave joins");
    app.remove_member(ALICE, &room.id, DAVE)
        .await
        .expect("the owner removes dave");
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log),
        ["member.joined", "member.joined", "member.left"]
    );
    assert_eq!(
        json(&log[1])["user"],
        serde_json::json!({"id": DAVE, "name": "Dave Doe"})
    );
    assert_eq!(
        json(&log[2])["user"],
        json(&log[1])["user"],
        "the same user as joined"
    );
}
