//! The business model. Pure: no AWS, no PostgreSQL, no I/O.

pub mod access;
pub mod batch;
pub mod campaign;
pub mod campaign_spec;
pub mod click;
pub mod events;
pub mod ids;
pub mod partner;
pub mod partner_spec;

pub use batch::BatchState;
pub use campaign::{Campaign, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode};
pub use campaign_spec::{CampaignSpec, FieldError};
pub use click::ClickState;
pub use ids::{CampaignId, ClickId, InvalidId, PartnerId};
pub use partner::{DeliveryFormat, Partner};
pub use partner_spec::{HeaderSpec, PartnerSpec};
