//! Users of the news feed as tests act for them: unique ids, bearer tokens
//! as the company's auth service would mint them, and a gRPC client per
//! user.

use std::time::Duration;

use tidings::client::FeedClient;
use tidings_gateway::user_token::UserTokens;
use tidings_schemas::proto::v1 as pb;
use uuid::Uuid;

use super::TestPipeline;

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A unique user id (tests share the Cassandra keyspace).
pub fn user(name: &str) -> String {
    format!("{name}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A bearer token for `user`, as the company's auth service would mint it.
pub fn token(t: &TestPipeline, user: &str) -> String {
    UserTokens::new(&t.config.feed.user_token_secret).mint(
        user,
        now_secs(),
        Duration::from_secs(600),
    )
}

/// The feed over gRPC as `user`.
pub async fn as_user(t: &TestPipeline, user: &str) -> FeedClient {
    FeedClient::connect(&t.grpc_endpoint(), &token(t, user))
        .await
        .expect("gateway answers")
}

/// Gives `user` a display name and an avatar.
pub async fn name_user(t: &TestPipeline, user: &str, display_name: &str) {
    t.client
        .upsert_user(pb::UpsertUserRequest {
            user_id: user.into(),
            display_name: display_name.into(),
            avatar_url: format!("https://cdn.example.com/{user}.png"),
            ..Default::default()
        })
        .await
        .expect("upsert user");
}

/// The gateway's HTTP address.
pub fn http_addr(t: &TestPipeline) -> std::net::SocketAddr {
    t.pipeline.as_ref().expect("running").gateway.http
}
