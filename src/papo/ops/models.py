"""The operator's tables: alert states and process observations (migration 0019), and the UNLOGGED
throttles, rate-limit buckets (0015) and sign-in guards (0023): worth nothing after a crash, so no WAL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Double, Integer, LargeBinary, PrimaryKeyConstraint, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from papo.db.base import Base


class AlertState(Base):
    """What the alert evaluator remembers of one alert between rounds."""

    __tablename__ = "alert_states"

    key: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    firing: Mapped[bool] = mapped_column()
    summary: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Double)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # Declared inline in the migration, so PostgreSQL named the primary key itself.
    __table_args__ = (PrimaryKeyConstraint("key", name="alert_states_pkey"),)


class OpsObservation(Base):
    """A process's latest value of one counter (recent errors), read by the alert evaluator."""

    __tablename__ = "ops_observations"

    process: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[float] = mapped_column(Double)
    observed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RateLimitBucket(Base):
    """One limited key (a hash) and its GCRA theoretical arrival time, in epoch seconds."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[bytes] = mapped_column(LargeBinary)
    tat: Mapped[float] = mapped_column(Double)

    __table_args__ = (PrimaryKeyConstraint("key", name="rate_limit_buckets_pkey"), {"prefixes": ["UNLOGGED"]})


class SignInGuard(Base):
    """Failed sign-in attempts of one key (a hash) and when the next attempt may start, in epoch seconds."""

    __tablename__ = "sign_in_guards"

    key: Mapped[bytes] = mapped_column(LargeBinary)
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    not_before: Mapped[float] = mapped_column(Double, server_default=text("0"))
    forget_at: Mapped[float] = mapped_column(Double, server_default=text("0"))

    __table_args__ = (PrimaryKeyConstraint("key", name="sign_in_guards_pkey"), {"prefixes": ["UNLOGGED"]})
