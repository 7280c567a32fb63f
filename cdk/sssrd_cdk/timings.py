"""The fleet's timeouts, derived from sssrd's own settings so the layers never cut each other.

A stream passes CloudFront, the ALB and sssrd; each has its own idle timer. The rules:
- sssrd closes an idle keep-alive connection only after the ALB would have (ALB idle timeout
  below `keepalive_timeout`), else the ALB may send a request on a connection sssrd is closing
  and the viewer gets a 502. CloudFront, in turn, drops an idle origin connection before the
  ALB does (CloudFront keep-alive below the ALB idle timeout).
- While sssrd waits for the Lambda's callback (`callback_timeout`) or for the next body bytes
  (`idle_timeout`), nothing flows; the ALB's idle timeout and CloudFront's origin read timeout
  (which applies to the first byte and to every gap) must outlast both, so sssrd, which answers
  504 or ends the stream properly, is the one that decides.
- Scale-in never cuts a stream that sssrd would let finish: the target group's deregistration
  delay, which the Auto Scaling group waits for before terminating, is at least `drain_timeout`.
- A draining instance (`/healthz` 503) leaves the target group within a few seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sssrd import config as sssrd_config

from .parameters import ParameterError

# The ALB closes idle connections this long before sssrd's keep-alive would (75 s → 60 s,
# the ALB's own default).
KEEPALIVE_MARGIN_S = 15
# CloudFront drops an idle origin connection this long before the ALB would.
ORIGIN_KEEPALIVE_MARGIN_S = 5
CLOUDFRONT_READ_TIMEOUT_S = 60  # the choice; 1..120 s without a quota increase
CLOUDFRONT_MAX_KEEPALIVE_S = 60  # without a quota increase
ALB_MAX_IDLE_S = 4000
MAX_DEREGISTRATION_DELAY_S = 3600
HEALTH_INTERVAL_S = 5
HEALTH_TIMEOUT_S = 3
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# Boot, cloud-init and the sssrd restart, before the ASG believes the ALB's health check.
HEALTH_CHECK_GRACE_S = 120


@dataclass(frozen=True, slots=True)
class Timings:
    alb_idle_timeout_s: int
    deregistration_delay_s: int
    origin_read_timeout_s: int
    origin_keepalive_s: int
    health_interval_s: int = HEALTH_INTERVAL_S
    health_timeout_s: int = HEALTH_TIMEOUT_S
    healthy_threshold: int = HEALTHY_THRESHOLD
    unhealthy_threshold: int = UNHEALTHY_THRESHOLD
    health_check_grace_s: int = HEALTH_CHECK_GRACE_S

    @property
    def draining_instance_leaves_after_s(self) -> int:
        return self.health_interval_s * self.unhealthy_threshold


def derive_timings(settings: sssrd_config.Settings) -> Timings:
    """The fleet's timeouts for these sssrd settings, or ParameterError naming the key to change."""
    silence = max(settings.callback_timeout, settings.idle_timeout)
    slowest = "callback_timeout" if settings.callback_timeout >= silence else "idle_timeout"
    alb_idle = min(math.floor(settings.keepalive_timeout) - KEEPALIVE_MARGIN_S, ALB_MAX_IDLE_S)
    if alb_idle <= silence:
        raise ParameterError(
            f"context sssrd.keepalive_timeout: {settings.keepalive_timeout:g} s leaves an ALB "
            f"idle timeout of {alb_idle} s ({KEEPALIVE_MARGIN_S} s less), which must exceed "
            f"{slowest} ({silence:g} s); raise keepalive_timeout above "
            f"{math.floor(silence) + KEEPALIVE_MARGIN_S + 1} s or lower {slowest}"
        )
    if silence >= CLOUDFRONT_READ_TIMEOUT_S:
        raise ParameterError(
            f"context sssrd.{slowest}: {silence:g} s must stay below CloudFront's origin read "
            f"timeout ({CLOUDFRONT_READ_TIMEOUT_S} s), which applies to every gap in a response"
        )
    delay = math.ceil(settings.drain_timeout)
    if delay > MAX_DEREGISTRATION_DELAY_S:
        raise ParameterError(
            f"context sssrd.drain_timeout: {settings.drain_timeout:g} s exceeds the longest "
            f"deregistration delay a target group allows ({MAX_DEREGISTRATION_DELAY_S} s)"
        )
    return Timings(
        alb_idle_timeout_s=alb_idle,
        deregistration_delay_s=delay,
        origin_read_timeout_s=CLOUDFRONT_READ_TIMEOUT_S,
        origin_keepalive_s=max(
            1, min(CLOUDFRONT_MAX_KEEPALIVE_S, alb_idle - ORIGIN_KEEPALIVE_MARGIN_S)
        ),
    )
