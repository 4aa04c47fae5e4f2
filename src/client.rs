//! Client commands: what a calling service does, from the command line.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use tidings_schemas::proto::v1::{
    self as pb, contact_service_client::ContactServiceClient,
    feed_service_client::FeedServiceClient, notification_service_client::NotificationServiceClient,
    preference_service_client::PreferenceServiceClient, send_request::Content,
    template_service_client::TemplateServiceClient,
};
use tonic::{Request, transport::Channel as GrpcChannel};

/// A connection to a gateway, with the caller's credentials.
pub struct Client {
    channel: GrpcChannel,
    app_key: Option<String>,
    app_secret: Option<String>,
}

impl Client {
    pub async fn connect(
        endpoint: &str,
        app_key: Option<String>,
        app_secret: Option<String>,
    ) -> Result<Self> {
        let channel = GrpcChannel::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid gateway address {endpoint}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {endpoint}; is `tidings dev` or `tidings gateway` running?"))?;
        Ok(Self {
            channel,
            app_key,
            app_secret,
        })
    }

    pub fn request<T>(&self, message: T) -> Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(key) = &self.app_key {
            request.metadata_mut().insert(
                "x-app-key",
                key.parse().context("app key is not valid metadata")?,
            );
        }
        if let Some(secret) = &self.app_secret {
            request.metadata_mut().insert(
                "x-app-secret",
                secret.parse().context("app secret is not valid metadata")?,
            );
        }
        Ok(request)
    }

    pub fn notifications(&self) -> NotificationServiceClient<GrpcChannel> {
        NotificationServiceClient::new(self.channel.clone())
    }

    pub fn contacts(&self) -> ContactServiceClient<GrpcChannel> {
        ContactServiceClient::new(self.channel.clone())
    }

    pub fn preferences(&self) -> PreferenceServiceClient<GrpcChannel> {
        PreferenceServiceClient::new(self.channel.clone())
    }

    pub fn templates(&self) -> TemplateServiceClient<GrpcChannel> {
        TemplateServiceClient::new(self.channel.clone())
    }

    pub async fn set_preference(
        &self,
        user_id: &str,
        channel: pb::Channel,
        category: &str,
        opt_in: bool,
    ) -> Result<()> {
        let request = pb::SetPreferenceRequest {
            user_id: user_id.into(),
            preference: Some(pb::Preference {
                channel: channel as i32,
                category: category.into(),
                opt_in,
            }),
        };
        self.preferences()
            .set_preference(self.request(request)?)
            .await
            .map_err(status)?;
        Ok(())
    }

    /// Creates the next version of a template; returns its number.
    pub async fn put_template(&self, template: pb::Template) -> Result<u32> {
        let request = pb::PutTemplateRequest {
            template: Some(template),
        };
        Ok(self
            .templates()
            .put_template(self.request(request)?)
            .await
            .map_err(status)?
            .into_inner()
            .version)
    }

    pub async fn upsert_user(&self, user: pb::UpsertUserRequest) -> Result<()> {
        self.contacts()
            .upsert_user(self.request(user)?)
            .await
            .map_err(status)?;
        Ok(())
    }

    pub async fn register_device(
        &self,
        user_id: &str,
        platform: pb::Platform,
        token: &str,
    ) -> Result<()> {
        let request = pb::RegisterDeviceRequest {
            user_id: user_id.into(),
            platform: platform as i32,
            token: token.into(),
        };
        self.contacts()
            .register_device(self.request(request)?)
            .await
            .map_err(status)?;
        Ok(())
    }

    pub async fn send(&self, send: pb::SendRequest) -> Result<pb::SendResponse> {
        Ok(self
            .notifications()
            .send(self.request(send)?)
            .await
            .map_err(status)?
            .into_inner())
    }

    pub async fn status(&self, notification_id: &str) -> Result<pb::GetStatusResponse> {
        let request = pb::GetStatusRequest {
            notification_id: notification_id.into(),
        };
        Ok(self
            .notifications()
            .get_status(self.request(request)?)
            .await
            .map_err(status)?
            .into_inner())
    }
}

/// The news feed as one user: every call carries the user's bearer token.
/// Errors are the gateway's statuses as they came, for callers that act on
/// the code.
pub struct FeedClient {
    feed: FeedServiceClient<GrpcChannel>,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl FeedClient {
    pub async fn connect(endpoint: &str, user_token: &str) -> Result<Self> {
        let channel = GrpcChannel::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid gateway address {endpoint}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {endpoint}; is `tidings dev` or `tidings gateway` running?"))?;
        Ok(Self {
            feed: FeedServiceClient::new(channel),
            authorization: format!("Bearer {user_token}")
                .parse()
                .context("the user token is not valid metadata")?,
        })
    }

    /// The same connection, acting for the user of `user_token`.
    pub fn with_token(&self, user_token: &str) -> Result<Self> {
        Ok(Self {
            feed: self.feed.clone(),
            authorization: format!("Bearer {user_token}")
                .parse()
                .context("the user token is not valid metadata")?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    pub async fn publish(
        &self,
        body: &str,
        media_urls: Vec<String>,
    ) -> Result<pb::PublishResponse, tonic::Status> {
        self.publish_to(body, media_urls, Vec::new()).await
    }

    /// Publishes to the followers among `audience` only (empty: everyone).
    pub async fn publish_to(
        &self,
        body: &str,
        media_urls: Vec<String>,
        audience: Vec<String>,
    ) -> Result<pb::PublishResponse, tonic::Status> {
        let request = pb::PublishRequest {
            body: body.into(),
            media_urls,
            audience,
        };
        Ok(self
            .feed
            .clone()
            .publish(self.request(request))
            .await?
            .into_inner())
    }

    /// One page, newest first; `cursor` is "" for the newest page.
    pub async fn page(
        &self,
        cursor: &str,
        limit: u32,
    ) -> Result<pb::GetFeedResponse, tonic::Status> {
        let request = pb::GetFeedRequest {
            cursor: cursor.into(),
            limit,
        };
        Ok(self
            .feed
            .clone()
            .get_feed(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn follow(&self, user_id: &str, follow: bool) -> Result<(), tonic::Status> {
        let request = self.request(pb::FollowRequest {
            user_id: user_id.into(),
        });
        let mut feed = self.feed.clone();
        if follow {
            feed.follow(request).await?;
        } else {
            feed.unfollow(request).await?;
        }
        Ok(())
    }

    pub async fn mute(&self, user_id: &str, muted: bool) -> Result<(), tonic::Status> {
        let request = self.request(pb::MuteRequest {
            user_id: user_id.into(),
            muted,
        });
        self.feed.clone().mute(request).await?;
        Ok(())
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// Parses `ios`, `android`, `sms`, `email`.
pub fn parse_channel(s: &str) -> Result<pb::Channel> {
    Ok(match s {
        "ios" => pb::Channel::Ios,
        "android" => pb::Channel::Android,
        "sms" => pb::Channel::Sms,
        "email" => pb::Channel::Email,
        other => bail!("unknown channel `{other}` (ios, android, sms, email)"),
    })
}

pub fn parse_platform(s: &str) -> Result<pb::Platform> {
    Ok(match s {
        "ios" => pb::Platform::Ios,
        "android" => pb::Platform::Android,
        "web" => pb::Platform::Web,
        other => bail!("unknown platform `{other}` (ios, android, web)"),
    })
}

/// Builds the content of a send from CLI flags.
pub fn content(
    title: Option<String>,
    body: Option<String>,
    template: Option<String>,
    params: &[String],
) -> Result<Content> {
    if let Some(name) = template {
        let mut map = HashMap::new();
        for p in params {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param `{p}` is not key=value"))?;
            map.insert(k.to_owned(), v.to_owned());
        }
        return Ok(Content::Template(pb::TemplateRef {
            name,
            version: 0,
            params: map,
        }));
    }
    let body = body.context("give --body (and optionally --title) or --template")?;
    Ok(Content::Raw(pb::RawContent {
        title: title.clone().unwrap_or_default(),
        email_subject: title.unwrap_or_default(),
        sms_text: body.clone(),
        email_text: body.clone(),
        body,
        ..Default::default()
    }))
}
