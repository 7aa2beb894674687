"""Vendor value vocabularies (channel names, directions, event types) as named transforms.

Each vendor module of ``mappings`` adds its tables here so that mapping files stay declarative.
"""

from __future__ import annotations

from mappings.transforms import value_map

value_map("direction", {"inbound": "inbound", "outbound": "outbound", "incoming": "inbound",
                        "outgoing": "outbound", "in": "inbound", "out": "outbound",
                        "outbound-api": "outbound", "outbound-reply": "outbound",
                        "outbound-call": "outbound"})
