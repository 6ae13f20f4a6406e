"""The sans-I/O core: plain objects with no sockets, no clock and no event loop."""

from router.core.clients import ClientInfo, Connection
from router.core.errors import ErrorCode, RefusedError
from router.core.history import HistoryEntry, HistoryLimits, Missing, TopicHistory, Window
from router.core.manager import (
    SESSION_EXPIRED,
    Action,
    ClientDropped,
    ConnectionManager,
    ConnectionStats,
    HistoryView,
    Limits,
    PolicyChanged,
    Recovery,
    RecoveryStatus,
    Resume,
    Route,
    Subscribed,
    TokenRefresh,
    UnwatchTopic,
    WatchTopic,
)
from router.core.policy import DEFAULT_POLICY, DeliveryPolicy
from router.core.sessions import AllowAllSessions, Identity, SessionManager
from router.core.topics import TopicRegistry, TopicSpec, check_topic, topic_error

__all__ = [
    "DEFAULT_POLICY",
    "SESSION_EXPIRED",
    "Action",
    "AllowAllSessions",
    "ClientDropped",
    "ClientInfo",
    "Connection",
    "ConnectionManager",
    "ConnectionStats",
    "DeliveryPolicy",
    "ErrorCode",
    "HistoryEntry",
    "HistoryLimits",
    "HistoryView",
    "Identity",
    "Limits",
    "Missing",
    "PolicyChanged",
    "Recovery",
    "RecoveryStatus",
    "RefusedError",
    "Resume",
    "Route",
    "SessionManager",
    "Subscribed",
    "TokenRefresh",
    "TopicHistory",
    "TopicRegistry",
    "TopicSpec",
    "UnwatchTopic",
    "WatchTopic",
    "Window",
    "check_topic",
    "topic_error",
]
