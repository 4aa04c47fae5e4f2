//! Conformance of [`ReactionStore`](tidings_store::ReactionStore): likes,
//! replies and tallies behave the same on SQLite and on Cassandra/Scylla;
//! and of the author counts feed items show beside them.

mod engines;

use std::collections::HashSet;

use tidings_store::{PostTally, Reply, Store, TallyMember, TallyUpdate};
use uuid::Uuid;

/// A unique id: tests share the Cassandra keyspace.
fn id(name: &str) -> String {
    format!("{name}-{}", Uuid::new_v4().simple())
}

fn like(user: &str) -> TallyMember {
    TallyMember::Like(user.to_owned())
}

on_both_engines! {
    a_like_is_one_row_however_often_it_is_given,
    liked_by_answers_only_the_posts_asked,
    replies_page_oldest_first_after_a_cursor,
    tallies_count_each_member_once,
    a_large_tally_update_is_written_whole,
    following_counts_each_followee_once,
}

async fn a_like_is_one_row_however_often_it_is_given(store: &Store) {
    let reactions = &store.reactions;
    let (ann, post) = (id("ann"), id("post"));
    let asked = [post.clone()];
    assert!(reactions.liked_by(&ann, &asked).await.unwrap().is_empty());
    reactions.like(&ann, &post, 1_000).await.unwrap();
    reactions.like(&ann, &post, 2_000).await.unwrap();
    assert_eq!(
        reactions.liked_by(&ann, &asked).await.unwrap(),
        HashSet::from([post.clone()])
    );
    reactions.unlike(&ann, &post).await.unwrap();
    assert!(reactions.liked_by(&ann, &asked).await.unwrap().is_empty());
    // Unliking what is not liked is a no-op; liking again works.
    reactions.unlike(&ann, &post).await.unwrap();
    reactions.like(&ann, &post, 3_000).await.unwrap();
    assert_eq!(reactions.liked_by(&ann, &asked).await.unwrap().len(), 1);
}

async fn liked_by_answers_only_the_posts_asked(store: &Store) {
    let reactions = &store.reactions;
    let (ann, bob) = (id("ann"), id("bob"));
    let posts: Vec<String> = (0..4).map(|i| id(&format!("post{i}"))).collect();
    for post in &posts[..3] {
        reactions.like(&ann, post, 1).await.unwrap();
    }
    reactions.like(&bob, &posts[3], 1).await.unwrap();
    let asked = [posts[1].clone(), posts[3].clone(), id("unknown")];
    assert_eq!(
        reactions.liked_by(&ann, &asked).await.unwrap(),
        HashSet::from([posts[1].clone()])
    );
    assert_eq!(
        reactions.liked_by(&bob, &asked).await.unwrap(),
        HashSet::from([posts[3].clone()])
    );
    assert!(reactions.liked_by(&ann, &[]).await.unwrap().is_empty());
}

async fn replies_page_oldest_first_after_a_cursor(store: &Store) {
    let reactions = &store.reactions;
    let (post, other) = (id("post"), id("other"));
    // Two replies share a millisecond: the id orders them.
    let at = [100, 200, 200, 300, 400];
    let replies: Vec<Reply> = at
        .iter()
        .enumerate()
        .map(|(i, at)| Reply {
            reply_id: format!("r{i}"),
            post_id: post.clone(),
            author_id: format!("user{i}"),
            body: format!("reply {i}"),
            created_at: *at,
        })
        .collect();
    for reply in replies.iter().rev() {
        reactions.put_reply(reply).await.unwrap();
    }
    // Idempotent per reply, and another post's replies stay apart.
    reactions.put_reply(&replies[2]).await.unwrap();
    reactions
        .put_reply(&Reply {
            post_id: other.clone(),
            ..replies[0].clone()
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = reactions.replies(&post, after.clone(), 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|r| (r.created_at, r.reply_id.clone()));
        seen.extend(page);
    }
    assert_eq!(seen, replies, "every reply once, oldest first, whole");
    assert_eq!(
        reactions.replies(&other, None, 10).await.unwrap().len(),
        1,
        "another post's replies"
    );
    assert!(
        reactions
            .replies(&id("quiet"), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn tallies_count_each_member_once(store: &Store) {
    let reactions = &store.reactions;
    let (post, quiet) = (id("post"), id("quiet"));
    let (ann, bob, cat) = (id("ann"), id("bob"), id("cat"));
    let reply = TallyMember::Reply(id("reply"));
    let asked = [like(&ann), like(&cat), reply.clone()];
    let state = reactions.tally_state(&post, &asked).await.unwrap();
    assert_eq!(state.tally, PostTally::default());
    assert!(state.counted.is_empty());

    let update = TallyUpdate {
        post_id: post.clone(),
        count: vec![like(&ann), like(&bob), reply.clone()],
        uncount: vec![],
        tally: PostTally {
            likes: 2,
            replies: 1,
        },
    };
    reactions.update_tally(&update).await.unwrap();
    // Written again (a retried write): nothing changes.
    reactions.update_tally(&update).await.unwrap();
    let state = reactions.tally_state(&post, &asked).await.unwrap();
    assert_eq!(state.tally, update.tally);
    assert_eq!(state.counted, HashSet::from([like(&ann), reply.clone()]));

    let tallies = reactions
        .tallies(&[post.clone(), quiet.clone()])
        .await
        .unwrap();
    assert_eq!(tallies.len(), 2);
    assert_eq!(tallies[&post], update.tally);
    assert_eq!(tallies[&quiet], PostTally::default());

    let unliked = TallyUpdate {
        post_id: post.clone(),
        count: vec![],
        uncount: vec![like(&ann)],
        tally: PostTally {
            likes: 1,
            replies: 1,
        },
    };
    reactions.update_tally(&unliked).await.unwrap();
    let state = reactions.tally_state(&post, &asked).await.unwrap();
    assert_eq!(state.tally, unliked.tally);
    assert_eq!(state.counted, HashSet::from([reply]));
    assert!(
        reactions
            .tally_state(&post, &[])
            .await
            .unwrap()
            .counted
            .is_empty()
    );
}

async fn a_large_tally_update_is_written_whole(store: &Store) {
    let reactions = &store.reactions;
    let post = id("post");
    let likers: Vec<TallyMember> = (0..250).map(|i| like(&format!("fan{i}"))).collect();
    let update = TallyUpdate {
        post_id: post.clone(),
        count: likers.clone(),
        uncount: vec![],
        tally: PostTally {
            likes: 250,
            replies: 0,
        },
    };
    reactions.update_tally(&update).await.unwrap();
    let state = reactions.tally_state(&post, &likers).await.unwrap();
    assert_eq!(state.tally, update.tally);
    assert_eq!(state.counted.len(), 250);
}

async fn following_counts_each_followee_once(store: &Store) {
    let graph = &store.social_graph;
    let (ann, bob, cat) = (id("ann"), id("bob"), id("cat"));
    assert_eq!(graph.following_count(&ann).await.unwrap(), 0);
    graph.follow(&ann, &bob, 1).await.unwrap();
    graph.follow(&ann, &bob, 2).await.unwrap();
    graph.follow(&ann, &cat, 3).await.unwrap();
    graph.follow(&bob, &cat, 4).await.unwrap();
    assert_eq!(graph.following_count(&ann).await.unwrap(), 2);
    assert_eq!(graph.following_count(&bob).await.unwrap(), 1);
    graph.unfollow(&ann, &bob).await.unwrap();
    assert_eq!(graph.following_count(&ann).await.unwrap(), 1);
    assert_eq!(graph.follower_count(&cat).await.unwrap(), 2);
}
