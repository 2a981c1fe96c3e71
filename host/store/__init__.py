"""The host's store: named queries over ``cronbox.db`` and each session's files.

:mod:`host.store.base` holds the repository Protocols (the seams a later issue
implements on PostgreSQL), :mod:`host.store.central` and :mod:`host.store.files` their
SQLite implementations, :mod:`host.store.records` the frozen records they return.
No module here decides anything; the commands are in :mod:`host.service`.
"""

from host.store.records import AuditEntry, Lease, Run, RunRecord, Session, SessionView, TaskView

__all__ = ["AuditEntry", "Lease", "Run", "RunRecord", "Session", "SessionView", "TaskView"]
