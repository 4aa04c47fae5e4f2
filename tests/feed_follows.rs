//! Follows keep feeds in step, end to end as clients use them: following
//! over gRPC or `PUT /v1/me/following/{user_id}` puts the followee's newest
//! posts into the feed at their own times, unfollowing removes their rows
//! from the store (not only from pages), and a pulled author whose
//! followers drop well below the threshold is pushed again without a post
//! missing or doubled in any follower's feed at any read. Through
//! `tidings.feed.follows` and the feed-follows stage, on the embedded
//! default and on real Kafka and Cassandra.

mod support;

use std::collections::HashMap;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use support::{
    Backend, TestPipeline, eventually,
    feed_users::{as_user, http_addr, token, user},
    http,
};
use tidings::client::FeedClient;
use tidings_schemas::{
    proto::v1 as pb,
    records::{FollowChanged, FollowKind},
};
use tidings_store::{FeedEntry, PullState, Store};

const WAIT: Duration = Duration::from_secs(60);

/// Follows (`PUT`) or unfollows (`DELETE`) `other` over HTTP as `user`.
async fn http_follow(t: &TestPipeline, user: &str, other: &str, follow: bool) {
    let auth = format!("Bearer {}", token(t, user));
    let method = if follow { "PUT" } else { "DELETE" };
    let r = http::request(
        http_addr(t),
        method,
        &format!("/v1/me/following/{other}"),
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{method} following: {}", r.body);
}

/// Waits until the feed-follows stage handled every follow change so far.
async fn follows_applied(t: &TestPipeline) {
    t.caught_up("feed-follows", &t.topic("feed.follows")).await;
}

/// Waits until every post so far is planned and its slices written.
async fn fanned_out(t: &TestPipeline) {
    t.caught_up("feed-planner", &t.topic("feed.posts")).await;
    t.caught_up("feed-writer", &t.topic("feed.fanout")).await;
}

/// `owner`'s feed rows in the store, newest first.
async fn rows(t: &TestPipeline, owner: &str) -> Vec<FeedEntry> {
    t.store()
        .feed
        .read(owner, None, 1_000)
        .await
        .expect("feed rows")
}

/// `owner`'s feed rows of `author`'s posts, newest first.
async fn rows_of(t: &TestPipeline, owner: &str, author: &str) -> Vec<FeedEntry> {
    rows(t, owner)
        .await
        .into_iter()
        .filter(|e| e.author_id == author)
        .collect()
}

/// `reader`'s newest page: (post id, created_at) of each item.
async fn page(reader: &FeedClient) -> Vec<(String, i64)> {
    reader
        .page("", 100)
        .await
        .expect("feed page")
        .items
        .into_iter()
        .map(|i| (i.post_id, i.created_at_ms))
        .collect()
}

/// Publishes `n` posts as `author`, oldest first: (post id, created_at).
async fn publish(author: &FeedClient, what: &str, n: usize) -> Vec<(String, i64)> {
    let mut posts = Vec::new();
    for i in 0..n {
        let pb::PublishResponse {
            post_id,
            created_at_ms,
        } = author
            .publish(&format!("{what} {i}"), vec![])
            .await
            .expect("publish");
        posts.push((post_id, created_at_ms));
    }
    posts
}

fn entry(author: &str, (post_id, at): &(String, i64)) -> FeedEntry {
    FeedEntry {
        post_id: post_id.clone(),
        author_id: author.to_owned(),
        created_at: *at,
    }
}

async fn following_backfills_the_newest_posts_and_unfollowing_removes_them(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.feed.backfill_posts = 3).await;
    let (ann, cat, bob) = (user("ann"), user("cat"), user("bob"));
    let ann_feed = as_user(&t, &ann).await;
    let ann_posts = publish(&ann_feed, "ann", 4).await;
    let cat_posts = publish(&as_user(&t, &cat).await, "cat", 1).await;
    // Nobody followed them yet: the posts went to their authors only.
    fanned_out(&t).await;
    assert!(rows(&t, &bob).await.is_empty());

    // Bob follows Ann over gRPC and Cat over HTTP: Ann's three newest posts
    // (backfill_posts) and Cat's post, at their own times, newest first.
    let bob_feed = as_user(&t, &bob).await;
    bob_feed.follow(&ann, true).await.expect("follow ann");
    http_follow(&t, &bob, &cat, true).await;
    let mut expected: Vec<(String, i64)> =
        ann_posts[1..].iter().chain(&cat_posts).cloned().collect();
    expected.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
    // (A read may add older posts of followed authors when the rows run
    // out, so only the backfilled ones are compared.)
    eventually("the backfilled posts on Bob's page", WAIT, || async {
        let got: Vec<(String, i64)> = page(&bob_feed)
            .await
            .into_iter()
            .filter(|p| expected.contains(p))
            .collect();
        (got == expected).then_some(())
    })
    .await;
    follows_applied(&t).await;
    let want: Vec<FeedEntry> = ann_posts[1..]
        .iter()
        .rev()
        .map(|p| entry(&ann, p))
        .collect();
    assert_eq!(
        rows_of(&t, &bob, &ann).await,
        want,
        "rows, not a read-time merge"
    );
    assert_eq!(
        rows_of(&t, &bob, &cat).await,
        vec![entry(&cat, &cat_posts[0])]
    );

    // Following again changes nothing: the same rows, once each.
    bob_feed.follow(&ann, true).await.expect("follow ann again");
    follows_applied(&t).await;
    assert_eq!(rows_of(&t, &bob, &ann).await, want);

    // A post of Ann's after the follow is pushed as usual.
    let later = publish(&ann_feed, "ann later", 1).await;
    fanned_out(&t).await;
    let theirs = rows_of(&t, &bob, &ann).await;
    assert_eq!(theirs.len(), 4);
    assert_eq!(theirs[0], entry(&ann, &later[0]));

    // Bob unfollows Ann over HTTP: off his page at once, and the stage
    // removes her rows from the store; Cat's stay.
    http_follow(&t, &bob, &ann, false).await;
    let shown = page(&bob_feed).await;
    assert!(
        shown
            .iter()
            .all(|p| !ann_posts.contains(p) && p != &later[0]),
        "hidden at once: {shown:?}"
    );
    follows_applied(&t).await;
    assert_eq!(rows_of(&t, &bob, &ann).await, Vec::new(), "rows removed");
    assert_eq!(
        rows_of(&t, &bob, &cat).await,
        vec![entry(&cat, &cat_posts[0])]
    );
    // Ann's own feed keeps her posts.
    assert_eq!(rows_of(&t, &ann, &ann).await.len(), 5);

    // Every change reached the topic once, in order, keyed by follower.
    let changes = t.read_all::<FollowChanged>(&t.topic("feed.follows")).await;
    let seen: Vec<(&str, &str, FollowKind)> = changes
        .iter()
        .map(|c| (c.follower_id.as_str(), c.followee_id.as_str(), c.kind))
        .collect();
    assert_eq!(
        seen,
        [
            (bob.as_str(), ann.as_str(), FollowKind::Followed),
            (bob.as_str(), cat.as_str(), FollowKind::Followed),
            (bob.as_str(), ann.as_str(), FollowKind::Followed),
            (bob.as_str(), ann.as_str(), FollowKind::Unfollowed),
        ]
    );
    t.stop().await;
}

async fn a_follow_taken_back_at_once_leaves_no_rows(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob) = (user("ann"), user("bob"));
    publish(&as_user(&t, &ann).await, "ann", 2).await;
    // Her posts fanned out before Bob's follows begin: a fan-out that reads
    // her followers while Bob follows her writes him a row that no later
    // unfollow is there to remove (reads hide it; the feed's cap trims it).
    // This test is about the follows stage's own writes.
    fanned_out(&t).await;
    let bob_feed = as_user(&t, &bob).await;
    for _ in 0..3 {
        bob_feed.follow(&ann, true).await.expect("follow");
        bob_feed.follow(&ann, false).await.expect("unfollow");
    }
    follows_applied(&t).await;
    assert!(rows(&t, &bob).await.is_empty());
    assert!(page(&bob_feed).await.is_empty());
    t.stop().await;
}

/// Reads each of `readers`' feeds and checks that every one of `posts` is
/// on it exactly once; answers how many reads were checked.
async fn every_post_once(readers: &[(String, FeedClient)], posts: &[(String, i64)]) -> usize {
    for (who, reader) in readers {
        let items = page(reader).await;
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (id, _) in &items {
            *count.entry(id.as_str()).or_default() += 1;
        }
        for (id, _) in posts {
            assert_eq!(
                count.get(id.as_str()).copied(),
                Some(1),
                "{who}'s feed must hold post {id} exactly once: {items:?}"
            );
        }
    }
    readers.len()
}

/// Looks at the store over and over until `stop`: at every look, each of
/// `posts` is either pulled by readers (`author` in the pulled set) or a row
/// in every one of `owners`' feeds. Answers how many looks it took.
async fn no_moment_without_the_posts(
    store: Store,
    author: String,
    owners: Vec<String>,
    posts: Vec<(String, i64)>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut looks = 0;
    while !stop.load(Ordering::Relaxed) {
        // Rows first: a row once written stays, so rows missing and then
        // the author unpulled is a moment without the post.
        let mut missing = Vec::new();
        for owner in &owners {
            let rows = store.feed.read(owner, None, 1_000).await.expect("rows");
            for (id, _) in &posts {
                if !rows.iter().any(|e| &e.post_id == id) {
                    missing.push((owner.clone(), id.clone()));
                }
            }
        }
        let pulled = store.feed.pulled_authors().await.expect("pulled");
        assert!(
            pulled.contains(&author) || missing.is_empty(),
            "{author} no longer pulled while these feeds lack these posts: {missing:?}"
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    looks
}

async fn a_star_whose_followers_drop_well_below_the_threshold_is_pushed_again(backend: Backend) {
    // Pulled above 4 followers, pushed again below 3 (0.8 x 4 = 3.2).
    let t = TestPipeline::start_with(backend, |c| {
        c.feed.pull_threshold = 4;
        c.feed.push_again_ratio = 0.8;
        c.feed.cool_down_secs = 3;
    })
    .await;
    let star = user("star");
    let fans: Vec<String> = (0..6).map(|i| user(&format!("fan{i}"))).collect();
    let mut clients = Vec::new();
    for fan in &fans {
        let client = as_user(&t, fan).await;
        client.follow(&star, true).await.expect("follow");
        clients.push(client);
    }
    // Over the threshold from the fifth follow: feed-follows marks the star
    // pulled already (the planner would at their first post).
    follows_applied(&t).await;
    let star_feed = as_user(&t, &star).await;
    let mut posts = publish(&star_feed, "star", 2).await;
    eventually("the star pulled", WAIT, || async {
        (t.store().feed.pull_state(&star).await.ok()? == PullState::Pulled).then_some(())
    })
    .await;
    fanned_out(&t).await;
    assert!(
        rows_of(&t, &fans[0], &star).await.is_empty(),
        "pulled, not pushed"
    );

    // Down to 4, then 3 followers: at or below the threshold but not below
    // 3, so still pulled (hysteresis), and a new post is not pushed.
    clients[5].follow(&star, false).await.expect("unfollow");
    clients[4].follow(&star, false).await.expect("unfollow");
    posts.extend(publish(&star_feed, "star at 4", 1).await);
    clients[3].follow(&star, false).await.expect("unfollow");
    follows_applied(&t).await;
    fanned_out(&t).await;
    assert_eq!(
        t.store().feed.pull_state(&star).await.unwrap(),
        PullState::Pulled
    );
    assert!(
        rows_of(&t, &fans[0], &star).await.is_empty(),
        "still pulled"
    );

    // The remaining followers and the star read their feeds over and over
    // from before the unfollow that cools the star down until well after
    // the cool-down ended and every gateway cache of the pulled set expired:
    // every post exactly once at every read.
    let mut readers: Vec<(String, FeedClient)> = Vec::new();
    for (i, fan) in fans.iter().enumerate().take(2) {
        readers.push((fan.clone(), as_user(&t, fan).await));
        assert_eq!(page(&clients[i]).await.len(), posts.len());
    }
    readers.push(("the star".into(), as_user(&t, &star).await));
    let mut reads = every_post_once(&readers, &posts).await;
    // Beside the reads, which a gateway's 5 s cache of the pulled set can
    // make look right, the store itself: never a moment without each post
    // pulled or in every remaining feed.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(no_moment_without_the_posts(
        t.store().clone(),
        star.clone(),
        vec![fans[0].clone(), fans[1].clone(), star.clone()],
        posts.clone(),
        stop.clone(),
    ));
    clients[2]
        .follow(&star, false)
        .await
        .expect("unfollow to 2");
    let started = Instant::now();
    let mut cooled_at: Option<Instant> = None;
    loop {
        reads += every_post_once(&readers, &posts).await;
        let state = t.store().feed.pull_state(&star).await.expect("state");
        match (state, cooled_at) {
            (PullState::Cooling { .. }, _) | (PullState::Pulled, _) => {}
            (PullState::Pushed, None) => cooled_at = Some(Instant::now()),
            // The gateway caches the pulled set for 5 s.
            (PullState::Pushed, Some(at)) if at.elapsed() > Duration::from_secs(7) => break,
            (PullState::Pushed, Some(_)) => {}
        }
        assert!(
            started.elapsed() < WAIT,
            "the star never finished cooling down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reads > 50, "only {reads} reads checked");
    stop.store(true, Ordering::Relaxed);
    let looks = watcher.await.expect("the store watcher");
    assert!(looks > 100, "only {looks} looks at the store");
    assert!(
        !t.store()
            .feed
            .pulled_authors()
            .await
            .unwrap()
            .contains(&star),
        "pushed, no longer pulled by readers"
    );

    // The posts are rows now: once each in the remaining followers' and the
    // star's feeds, at their own times; nothing for those who left.
    fanned_out(&t).await;
    let want: Vec<FeedEntry> = posts.iter().rev().map(|p| entry(&star, p)).collect();
    for owner in [&fans[0], &fans[1], &star] {
        assert_eq!(rows_of(&t, owner, &star).await, want, "{owner}");
    }
    for gone in &fans[2..] {
        assert!(rows_of(&t, gone, &star).await.is_empty(), "{gone}");
    }

    // A new post is pushed like any small author's.
    let new = publish(&star_feed, "star pushed", 1).await;
    fanned_out(&t).await;
    for owner in [&fans[0], &fans[1], &star] {
        let theirs = rows_of(&t, owner, &star).await;
        assert_eq!(theirs.first(), Some(&entry(&star, &new[0])), "{owner}");
    }
    posts.extend(new);
    every_post_once(&readers, &posts).await;
    assert_eq!(
        t.store().feed.pull_state(&star).await.unwrap(),
        PullState::Pushed
    );
    t.stop().await;
}

on_every_backend!(
    following_backfills_the_newest_posts_and_unfollowing_removes_them,
    a_follow_taken_back_at_once_leaves_no_rows,
    a_star_whose_followers_drop_well_below_the_threshold_is_pushed_again,
);
