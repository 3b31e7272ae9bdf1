"""What the demo's supervisor runs: the weekly email and process_event examples."""

from examples.process_event import normalize_event, process_event, store_event  # noqa: F401
from examples.weekly_email import get_all_orgs, send_weekly_email, weekly_email  # noqa: F401
