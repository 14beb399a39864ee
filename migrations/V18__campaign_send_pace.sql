-- A campaign's own send stream (shared/src/delivery/pace.rs, `CampaignStream`): for a campaign with a per-second
-- limit, the earliest instant its next request may go. Every bridge takes it with its partner's send slot in one
-- transaction, so batches of the campaign delivered late together still keep to the limit at the partner.
CREATE TABLE campaign_send_pace (
    campaign_id  text PRIMARY KEY REFERENCES campaigns ON DELETE CASCADE,
    next_send_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
