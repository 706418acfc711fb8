"""Admission: may a request run now, or must it wait? Priority bands, fair share between tenants, a window per
engine pool that adapts to the engines' load, and protection mode when they saturate."""

from sluice.admission._controller import AdmissionObserver, GateSettings, Permit, PoolController, ticket_for
from sluice.admission._fair_queue import FairQueue
from sluice.admission._protection import ProtectionMode
from sluice.admission._saturation import STALE, LoadReading, SaturationDetector
from sluice.admission._ticket import Outcome, Ticket
from sluice.admission._window import AIMDLimit, FixedLimit, GradientLimit, Limit, Sample

__all__ = [
    "STALE",
    "AIMDLimit",
    "AdmissionObserver",
    "FairQueue",
    "FixedLimit",
    "GateSettings",
    "GradientLimit",
    "Limit",
    "LoadReading",
    "Outcome",
    "Permit",
    "PoolController",
    "ProtectionMode",
    "Sample",
    "SaturationDetector",
    "Ticket",
    "ticket_for",
]
