"""SendGrid vocabularies: Event Webhook event types as interaction status, direction and consent."""

from __future__ import annotations

from typing import Any

from mappings.transforms import register, value_map

# What happened to the email, in the words an agent reads on the timeline.
value_map("sendgrid_event_status", {
    "processed": "processed", "deferred": "deferred", "delivered": "delivered", "dropped": "dropped",
    "bounce": "bounced", "open": "opened", "click": "clicked", "spamreport": "spam_reported",
    "unsubscribe": "unsubscribed", "group_unsubscribe": "group_unsubscribed",
    "group_resubscribe": "group_resubscribed",
})

# Who acted: SendGrid's delivery steps are outbound; opens, clicks and list choices are the customer's.
value_map("sendgrid_event_direction", {
    "processed": "outbound", "deferred": "outbound", "delivered": "outbound", "dropped": "outbound",
    "bounce": "outbound", "open": "inbound", "click": "inbound", "spamreport": "inbound",
    "unsubscribe": "inbound", "group_unsubscribe": "inbound", "group_resubscribe": "inbound",
})

_CONSENT = {"unsubscribe": "opted_out", "group_unsubscribe": "opted_out", "spamreport": "opted_out",
            "group_resubscribe": "opted_in"}


def _consent(v: Any) -> str | None:
    """Consent carried by an event; every other event type (delivered, open...) carries none."""
    if v in (None, ""):
        return None
    return _CONSENT.get(str(v).strip().lower())


register("sendgrid_consent", _consent)
