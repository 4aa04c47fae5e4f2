//! `tidings.v1.PreferenceService`: opt-in per user, channel and category.

use tidings_kafka::now_millis;
use tidings_schemas::Channel;
use tidings_schemas::proto::v1::{
    self as pb, GetPreferencesRequest, GetPreferencesResponse, SetPreferenceRequest,
    SetPreferenceResponse, preference_service_server::PreferenceService,
};
use tidings_store::Preference;
use tonic::{Request, Response, Status};

use crate::{Gateway, store_status, validate};

fn channel_name(field: &str, raw: i32) -> Result<&'static str, Status> {
    Channel::from_proto(raw)
        .map(Channel::as_str)
        .ok_or_else(|| {
            validate::invalid(
                field,
                "must be CHANNEL_IOS, CHANNEL_ANDROID, CHANNEL_SMS, CHANNEL_EMAIL or CHANNEL_WEB",
            )
        })
}

fn channel_of(name: &str) -> pb::Channel {
    name.parse::<Channel>()
        .map_or(pb::Channel::Unspecified, Channel::to_proto)
}

#[tonic::async_trait]
impl PreferenceService for Gateway {
    async fn get_preferences(
        &self,
        request: Request<GetPreferencesRequest>,
    ) -> Result<Response<GetPreferencesResponse>, Status> {
        self.authorize(&request, "preferences").await?;
        let user_id = request.into_inner().user_id;
        validate::id("user_id", &user_id)?;
        let preferences = self
            .store
            .preferences
            .list(&user_id)
            .await
            .map_err(store_status)?;
        let preferences = preferences
            .into_iter()
            .map(|p| pb::Preference {
                channel: channel_of(&p.channel) as i32,
                category: p.category.unwrap_or_default(),
                opt_in: p.opt_in,
            })
            .collect();
        Ok(Response::new(GetPreferencesResponse { preferences }))
    }

    async fn set_preference(
        &self,
        request: Request<SetPreferenceRequest>,
    ) -> Result<Response<SetPreferenceResponse>, Status> {
        self.authorize(&request, "preferences").await?;
        let r = request.into_inner();
        validate::id("user_id", &r.user_id)?;
        let p = r
            .preference
            .ok_or_else(|| validate::invalid("preference", "is required"))?;
        let channel = channel_name("preference.channel", p.channel)?;
        if !p.category.is_empty() {
            validate::id("preference.category", &p.category)?;
        }
        let preference = Preference {
            user_id: r.user_id,
            channel: channel.to_owned(),
            category: (!p.category.is_empty()).then_some(p.category),
            opt_in: p.opt_in,
            updated_at: now_millis(),
        };
        self.store
            .preferences
            .set(&preference)
            .await
            .map_err(store_status)?;
        Ok(Response::new(SetPreferenceResponse {}))
    }
}
