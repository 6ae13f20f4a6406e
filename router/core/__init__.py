"""The sans-I/O core: plain objects with no sockets, no clock and no event loop."""

from router.core.clients import ClientInfo, Connection
from router.core.edge_reports import ClientFigures, DropIncrease, EdgeFigures, EdgeTotals
from router.core.errors import ErrorCode, RecoveryStatus, RefusedError
from router.core.history import HistoryEntry, HistoryLimits, Missing, TopicHistory, Window
from router.core.manager import (
    SESSION_EXPIRED,
    Action,
    ClientDropped,
    ConnectionManager,
    ConnectionStats,
    DemandChanged,
    HistoryView,
    Limits,
    PolicyChanged,
    Recovery,
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
from router.core.views import ClientView, EdgeView, HistorySize, TopicView

__all__ = [
    "DEFAULT_POLICY",
    "SESSION_EXPIRED",
    "Action",
    "AllowAllSessions",
    "ClientDropped",
    "ClientFigures",
    "ClientInfo",
    "ClientView",
    "Connection",
    "ConnectionManager",
    "ConnectionStats",
    "DeliveryPolicy",
    "DemandChanged",
    "DropIncrease",
    "EdgeFigures",
    "EdgeTotals",
    "EdgeView",
    "ErrorCode",
    "HistoryEntry",
    "HistoryLimits",
    "HistorySize",
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
    "TopicView",
    "UnwatchTopic",
    "WatchTopic",
    "Window",
    "check_topic",
    "topic_error",
]
