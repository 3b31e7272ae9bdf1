"""Retry policies as Flow stores them: the wire form of `coda.RetryPolicy.to_wire()`.

Pure: the state machine decides retries and backoff from the policy recorded with a task
(or sent with a workflow failure) and the time the leader stamped into the command.
"""

from __future__ import annotations

from coda.errors import InvalidArgument

DEFAULT = {"initial_interval": 1.0, "backoff_coefficient": 2.0, "maximum_interval": 100.0,
           "maximum_attempts": 0, "non_retryable_errors": []}
# Used where a failure must not be retried (a payload Flow can't store, an unknown type).
NO_RETRY = dict(DEFAULT, maximum_attempts=1)
NON_RETRYABLE_NAMES_MAX = 100


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(policy, field: str = "retry") -> dict:
    """A complete policy from a possibly partial map; InvalidArgument names the field."""
    if policy is None:
        return dict(DEFAULT)
    if not isinstance(policy, dict):
        raise InvalidArgument(f"{field} must be a map", field=field)
    out = dict(DEFAULT, **{k: v for k, v in policy.items() if k in DEFAULT})
    if "maximum_interval" not in policy and _number(out["initial_interval"]):
        out["maximum_interval"] = 100 * out["initial_interval"]
    if not _number(out["initial_interval"]) or out["initial_interval"] <= 0:
        raise InvalidArgument(f"{field}.initial_interval must be > 0", field=field)
    if not _number(out["backoff_coefficient"]) or out["backoff_coefficient"] < 1:
        raise InvalidArgument(f"{field}.backoff_coefficient must be >= 1", field=field)
    if not _number(out["maximum_interval"]) or out["maximum_interval"] < out["initial_interval"]:
        raise InvalidArgument(f"{field}.maximum_interval must be >= initial_interval", field=field)
    attempts = out["maximum_attempts"]
    if type(attempts) is not int or attempts < 0:
        raise InvalidArgument(f"{field}.maximum_attempts must be an integer >= 0", field=field)
    names = out["non_retryable_errors"]
    if (not isinstance(names, list) or len(names) > NON_RETRYABLE_NAMES_MAX
            or not all(isinstance(n, str) and 0 < len(n) <= 255 for n in names)):
        raise InvalidArgument(f"{field}.non_retryable_errors must be a list of type names",
                              field=field)
    return out


def retries_after(policy: dict, attempt: int, error_type: str) -> bool:
    """Whether failed attempt `attempt` (1-based) is followed by another."""
    if error_type in policy["non_retryable_errors"]:
        return False
    return policy["maximum_attempts"] == 0 or attempt < policy["maximum_attempts"]


def delay_ms(policy: dict, attempt: int) -> int:
    """Milliseconds between failed attempt `attempt` and the next one."""
    exponent = min(attempt - 1, 64)  # past this the cap applies anyway; no float overflow
    delay_s = min(policy["initial_interval"] * policy["backoff_coefficient"] ** exponent,
                  policy["maximum_interval"])
    return int(round(delay_s * 1000))
