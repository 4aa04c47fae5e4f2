//! `tidings.v1.ContactService`: users' contact points and devices.

use tidings_kafka::now_millis;
use tidings_schemas::proto::v1::{
    self as pb, ListDevicesRequest, ListDevicesResponse, RegisterDeviceRequest,
    RegisterDeviceResponse, RemoveDeviceRequest, RemoveDeviceResponse, UpsertUserRequest,
    UpsertUserResponse, contact_service_server::ContactService,
};
use tidings_schemas::web_push::WebSubscription;
use tidings_store::{Device, Platform, User};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{Gateway, store_status, validate};

fn platform(field: &str, raw: i32) -> Result<Platform, Status> {
    match pb::Platform::try_from(raw) {
        Ok(pb::Platform::Ios) => Ok(Platform::Ios),
        Ok(pb::Platform::Android) => Ok(Platform::Android),
        Ok(pb::Platform::Web) => Ok(Platform::Web),
        _ => Err(validate::invalid(
            field,
            "must be PLATFORM_IOS, PLATFORM_ANDROID or PLATFORM_WEB",
        )),
    }
}

fn to_pb_platform(p: Platform) -> pb::Platform {
    match p {
        Platform::Ios => pb::Platform::Ios,
        Platform::Android => pb::Platform::Android,
        Platform::Web => pb::Platform::Web,
    }
}

/// A web push subscription from `token` (the endpoint, keys in `web_push`,
/// or the browser's whole subscription JSON), checked field by field.
fn web_subscription(
    r: &RegisterDeviceRequest,
    loopback_http: bool,
) -> Result<WebSubscription, Status> {
    if r.token.trim_start().starts_with('{') {
        if r.web_push.is_some() {
            return Err(validate::invalid(
                "web_push",
                "give the keys either here or in the subscription JSON in `token`, not both",
            ));
        }
        return WebSubscription::from_token(&r.token, loopback_http).map_err(|e| {
            let field = match e.field {
                "token" => "token".to_owned(),
                "endpoint" => "token.endpoint".to_owned(),
                key => format!("token.keys.{key}"),
            };
            validate::invalid(field, e.problem)
        });
    }
    let Some(keys) = &r.web_push else {
        return Err(validate::invalid(
            "web_push",
            "is required for PLATFORM_WEB (the subscription's p256dh and auth keys), \
             unless `token` is the whole subscription JSON",
        ));
    };
    WebSubscription::new(&r.token, &keys.p256dh, &keys.auth, loopback_http).map_err(|e| {
        let field = match e.field {
            "endpoint" | "token" => "token".to_owned(),
            key => format!("web_push.{key}"),
        };
        validate::invalid(field, e.problem)
    })
}

#[tonic::async_trait]
impl ContactService for Gateway {
    async fn upsert_user(
        &self,
        request: Request<UpsertUserRequest>,
    ) -> Result<Response<UpsertUserResponse>, Status> {
        self.authorize(&request, "contacts").await?;
        let r = request.into_inner();
        validate::id("user_id", &r.user_id)?;
        if r.display_name.len() > 256 {
            return Err(validate::invalid(
                "display_name",
                "is longer than 256 bytes",
            ));
        }
        if !r.email.is_empty() {
            validate::email("email", &r.email)?;
        }
        if !r.phone.is_empty() {
            validate::e164("phone", &r.phone)?;
        }
        if !r.locale.is_empty()
            && (r.locale.len() > 35
                || !r
                    .locale
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(validate::invalid(
                "locale",
                "must be a BCP 47 tag like en or fr-FR",
            ));
        }
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let user = User {
            user_id: r.user_id,
            display_name: r.display_name,
            avatar_url: opt(r.avatar_url),
            locale: opt(r.locale),
            email: opt(r.email),
            phone: opt(r.phone),
            updated_at: now_millis(),
        };
        self.store
            .contacts
            .upsert_user(&user)
            .await
            .map_err(store_status)?;
        Ok(Response::new(UpsertUserResponse {}))
    }

    async fn register_device(
        &self,
        request: Request<RegisterDeviceRequest>,
    ) -> Result<Response<RegisterDeviceResponse>, Status> {
        self.authorize(&request, "contacts").await?;
        let r = request.into_inner();
        validate::id("user_id", &r.user_id)?;
        let platform = platform("platform", r.platform)?;
        let token = if platform == Platform::Web {
            web_subscription(&r, self.config.web_push_loopback_http)?.to_token()
        } else {
            if r.web_push.is_some() {
                return Err(validate::invalid(
                    "web_push",
                    "is for PLATFORM_WEB subscriptions only",
                ));
            }
            validate::device_token("token", platform.as_str(), &r.token)?;
            r.token
        };
        let device = Device {
            user_id: r.user_id,
            token,
            platform,
            registered_at: now_millis(),
            invalidated_at: None,
        };
        self.store
            .contacts
            .register_device(&device)
            .await
            .map_err(store_status)?;
        let cap = self.config.max_devices_per_user;
        // The registration stands either way; a failed trim is done by the
        // user's next registration.
        match self.store.contacts.trim_devices(&device.user_id, cap).await {
            Ok(0) => {}
            Ok(removed) => {
                info!(user = %device.user_id, removed, cap, "device rows beyond gateway.max_devices_per_user removed (tombstones and the least recently registered first)");
            }
            Err(e) => {
                warn!(user = %device.user_id, error = %e, "trimming the user's device rows failed; the next registration tries again");
            }
        }
        Ok(Response::new(RegisterDeviceResponse {}))
    }

    async fn remove_device(
        &self,
        request: Request<RemoveDeviceRequest>,
    ) -> Result<Response<RemoveDeviceResponse>, Status> {
        self.authorize(&request, "contacts").await?;
        let r = request.into_inner();
        validate::id("user_id", &r.user_id)?;
        if r.token.is_empty() {
            return Err(validate::invalid("token", "is required"));
        }
        // A web subscription may be named by its endpoint alone: remove the
        // user's subscriptions at that endpoint (its stored token is the
        // JSON with the keys).
        let mut tokens = vec![r.token.clone()];
        if r.token.starts_with("https://") || r.token.starts_with("http://") {
            let devices = self
                .store
                .contacts
                .live_devices(&r.user_id)
                .await
                .map_err(store_status)?;
            tokens.extend(
                devices
                    .into_iter()
                    .filter(|d| d.platform == Platform::Web)
                    .filter(|d| {
                        WebSubscription::from_token(&d.token, true)
                            .is_ok_and(|s| s.endpoint == r.token)
                    })
                    .map(|d| d.token),
            );
        }
        for token in &tokens {
            self.store
                .contacts
                .remove_device(&r.user_id, token)
                .await
                .map_err(store_status)?;
        }
        Ok(Response::new(RemoveDeviceResponse {}))
    }

    async fn list_devices(
        &self,
        request: Request<ListDevicesRequest>,
    ) -> Result<Response<ListDevicesResponse>, Status> {
        self.authorize(&request, "contacts").await?;
        let r = request.into_inner();
        validate::id("user_id", &r.user_id)?;
        let devices = self
            .store
            .contacts
            .live_devices(&r.user_id)
            .await
            .map_err(store_status)?;
        let devices = devices
            .into_iter()
            .map(|d| pb::Device {
                platform: to_pb_platform(d.platform) as i32,
                token: d.token,
                registered_at_ms: d.registered_at,
            })
            .collect();
        Ok(Response::new(ListDevicesResponse { devices }))
    }
}
