//! A feed is never empty for a returning user (issue 10): once a user's
//! materialised feed rows run out (trimmed, as `FeedStore::trim` does to long
//! feeds, or never written), a feed read fills the page from the newest
//! posts of the authors they follow, and pages through them with cursors
//! that neither repeat nor skip a post. On the embedded default and on real
//! Kafka and Cassandra.
//!
//! The follows are written to the store's social graph directly, as an
//! import would: no follow event, so nothing but the fan-out writes feed
//! rows, and once it has caught up a trimmed feed stays trimmed.

mod support;

use std::{collections::HashSet, time::Duration};

use support::{
    Backend, TestPipeline, eventually,
    feed_users::{as_user, user},
};
use tidings::client::FeedClient;
use tidings_schemas::proto::v1 as pb;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the fan-out planner and the feed writers have handled every
/// post published so far: after this, no feed row is still on its way.
async fn feed_settled(t: &TestPipeline) {
    t.caught_up("feed-planner", &t.topic("feed.posts")).await;
    t.caught_up("feed-writer", &t.topic("feed.fanout")).await;
}

async fn follow(t: &TestPipeline, follower: &str, followee: &str) {
    t.store()
        .social_graph
        .follow(follower, followee, 0)
        .await
        .expect("follow");
}

/// Publishes `bodies` as `feed`'s user, a few milliseconds apart so their order
/// is the publishing order.
async fn publish(feed: &FeedClient, bodies: &[&str]) {
    for body in bodies {
        feed.publish(body, vec![]).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

fn bodies(page: &pb::GetFeedResponse) -> Vec<String> {
    page.items.iter().map(|i| i.body.clone()).collect()
}

/// Every page of `reader`'s feed, `limit` at a time: the bodies in order,
/// after checking that no post came twice.
async fn every_page(reader: &FeedClient, limit: u32) -> Vec<String> {
    let (mut seen, mut ids, mut cursor) = (Vec::new(), HashSet::new(), String::new());
    loop {
        let page = reader.page(&cursor, limit).await.expect("page");
        assert!(page.items.len() <= limit as usize);
        for item in &page.items {
            assert!(
                ids.insert(item.post_id.clone()),
                "{} shown twice",
                item.body
            );
        }
        seen.extend(bodies(&page));
        if page.next_cursor.is_empty() {
            return seen;
        }
        cursor = page.next_cursor;
    }
}

/// How many rows `owner`'s materialised feed holds.
async fn rows(t: &TestPipeline, owner: &str) -> usize {
    t.store()
        .feed
        .read(owner, None, 1_000)
        .await
        .expect("feed rows")
        .len()
}

async fn a_trimmed_feed_is_rebuilt_from_the_followed_authors(backend: Backend) {
    let t = TestPipeline::start(backend).await;
    let (ann, bob, cat, dan, eve) = (
        user("ann"),
        user("bob"),
        user("cat"),
        user("dan"),
        user("eve"),
    );
    for followee in [&ann, &cat, &dan] {
        follow(&t, &bob, followee).await;
    }
    // Bob mutes Dan; Eve he does not follow.
    let bob_feed = as_user(&t, &bob).await;
    bob_feed.mute(&dan, true).await.expect("mute");
    let (ann_feed, cat_feed) = (as_user(&t, &ann).await, as_user(&t, &cat).await);
    let (dan_feed, eve_feed) = (as_user(&t, &dan).await, as_user(&t, &eve).await);
    publish(&ann_feed, &["ann 0"]).await;
    publish(&cat_feed, &["cat 0"]).await;
    publish(&bob_feed, &["bob 0"]).await;
    publish(&dan_feed, &["dan 0"]).await;
    publish(&eve_feed, &["eve 0"]).await;
    publish(&ann_feed, &["ann 1", "ann 2"]).await;
    // Only for Cat: never in Bob's feed, rows or not.
    ann_feed
        .publish_to("ann to cat", vec![], vec![cat.clone()])
        .await
        .expect("restricted post");
    publish(&cat_feed, &["cat 1", "cat 2"]).await;
    publish(&ann_feed, &["ann 3"]).await;
    let expected = [
        "ann 3", "cat 2", "cat 1", "ann 2", "ann 1", "bob 0", "cat 0", "ann 0",
    ];

    // Pushed: once the fan-out caught up, Bob's rows hold every post he
    // sees (his own, Ann's, Cat's, Dan's muted one, the one for Cat only
    // not).
    feed_settled(&t).await;
    assert_eq!(rows(&t, &bob).await, 9);
    assert_eq!(every_page(&bob_feed, 3).await, expected);

    // Trimmed to its newest 4 rows: pages of 2 start from the rows and go
    // on past them with the authors' older posts, no post twice.
    t.store().feed.trim(&bob, 4).await.expect("trim");
    assert_eq!(rows(&t, &bob).await, 4);
    for limit in [2, 3] {
        assert_eq!(
            every_page(&bob_feed, limit).await,
            expected,
            "pages of {limit}"
        );
    }

    // Trimmed to nothing, as the writer trims a long feed: the page is
    // rebuilt from the authors he follows and his own posts, and pages of
    // 3 go through all of them once, in order.
    t.store().feed.trim(&bob, 0).await.expect("trim");
    assert_eq!(rows(&t, &bob).await, 0, "the feed rows are gone");
    let page = bob_feed.page("", 20).await.expect("page");
    assert_eq!(bodies(&page), expected);
    assert!(page.next_cursor.is_empty(), "one page holds everything");
    let cat_item = &page.items[1];
    assert_eq!(
        cat_item.author.as_ref().map(|a| a.user_id.as_str()),
        Some(cat.as_str()),
        "rebuilt items are hydrated"
    );
    for limit in [1, 3, 5] {
        assert_eq!(
            every_page(&bob_feed, limit).await,
            expected,
            "pages of {limit}"
        );
    }
    assert_eq!(rows(&t, &bob).await, 0, "a read writes no rows back");

    // A new post is pushed to the emptied feed: it leads, the rebuilt
    // posts follow.
    publish(&cat_feed, &["cat 3"]).await;
    feed_settled(&t).await;
    assert_eq!(rows(&t, &bob).await, 1, "the new post is pushed");
    let expected: Vec<&str> = ["cat 3"].iter().chain(&expected).copied().collect();
    for limit in [2, 4] {
        assert_eq!(
            every_page(&bob_feed, limit).await,
            expected,
            "pages of {limit}"
        );
    }

    // Unfollowing Ann takes her posts out of the rebuilt pages at once.
    t.store()
        .social_graph
        .unfollow(&bob, &ann)
        .await
        .expect("unfollow");
    assert_eq!(
        every_page(&bob_feed, 3).await,
        ["cat 3", "cat 2", "cat 1", "bob 0", "cat 0"]
    );
    t.stop().await;
}

/// `feed.rebuild_authors` bounds the authors read for one page: the user
/// first, then those they follow by id; 0 turns the rebuild off.
async fn the_rebuild_reads_at_most_the_configured_authors(backend: Backend) {
    let t = TestPipeline::start_with(backend, |c| c.feed.rebuild_authors = 2).await;
    // Ids sort by these names: a... before b... before c...
    let (bob, a, b) = (user("zz-bob"), user("a-author"), user("b-author"));
    for followee in [&a, &b] {
        follow(&t, &bob, followee).await;
    }
    let bob_feed = as_user(&t, &bob).await;
    publish(&as_user(&t, &b).await, &["b 0"]).await;
    publish(&as_user(&t, &a).await, &["a 0"]).await;
    publish(&bob_feed, &["bob 0"]).await;
    let every = eventually("every post pushed to bob", WAIT, || async {
        let page = bob_feed.page("", 10).await.ok()?;
        (page.items.len() == 3).then(|| bodies(&page))
    })
    .await;
    assert_eq!(every, ["bob 0", "a 0", "b 0"]);
    feed_settled(&t).await;
    t.store().feed.trim(&bob, 0).await.expect("trim");
    // Bob and the first author he follows, not the second.
    assert_eq!(every_page(&bob_feed, 1).await, ["bob 0", "a 0"]);
    t.stop().await;

    let t = TestPipeline::start_with(backend, |c| c.feed.rebuild_authors = 0).await;
    let (bob, a) = (user("bob"), user("ann"));
    follow(&t, &bob, &a).await;
    let bob_feed = as_user(&t, &bob).await;
    publish(&as_user(&t, &a).await, &["a 0"]).await;
    feed_settled(&t).await;
    assert_eq!(bodies(&bob_feed.page("", 10).await.expect("page")), ["a 0"]);
    t.store().feed.trim(&bob, 0).await.expect("trim");
    assert!(
        bob_feed.page("", 10).await.expect("page").items.is_empty(),
        "rebuild off: a trimmed feed is empty"
    );
    t.stop().await;
}

on_every_backend!(
    a_trimmed_feed_is_rebuilt_from_the_followed_authors,
    the_rebuild_reads_at_most_the_configured_authors,
);
