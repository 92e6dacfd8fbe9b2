"""Keeping the fake processor's state in a store, so it behaves like a processor across restarts.

A real processor never hands out an id twice and never forgets a customer because we
restarted. ``FakeLedger``'s tables are :class:`Table` dicts that remember which rows an
operation touched; after each operation :class:`LedgerPersistence` writes the rows that
changed (and the id counters) through a :class:`FakeStateStore`, one versioned write. Before
each operation it reloads everything if another process wrote since (``make run`` runs the
API and the webhook sidecar, each with its own fake, on one store). A write that lost the
version race reloads and runs the operation again.

Rows are plain documents: the fake's records through the store's dataclass codec (client
secrets included: this is the processor's side, not ours), idempotency outcomes with their
result tagged by type and errors as ``error_to_record`` stores them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from billing_service.adapters.mongo.codecs import decode, encode
from billing_service.adapters.processors._fake_records import (
    CustomerRecord,
    FakeCharge,
    InvoiceRecord,
    PaymentMethodRecord,
    PaymentRecord,
    PriceRecord,
    RefundRecord,
    SubscriptionRecord,
)
from billing_service.domain.errors import BillingError
from billing_service.domain.payments import NextAction, ProcessorPaymentState, ProcessorRefundState
from billing_service.domain.subscriptions import ProcessorSubscriptionState
from billing_service.service_layer.idempotency import error_from_record, error_to_record
from billing_service.service_layer.ports import AttachedPaymentMethod

V = TypeVar("V")
Row = tuple[str, str, dict[str, Any]]

#: The ledger's tables and the record type of their rows.
RECORD_TABLES: Mapping[str, type[Any]] = {
    "customers": CustomerRecord,
    "payment_methods": PaymentMethodRecord,
    "payments": PaymentRecord,
    "refunds": RefundRecord,
    "prices": PriceRecord,
    "subscriptions": SubscriptionRecord,
    "invoices": InvoiceRecord,
}
IDEMPOTENCY = "idempotency"
CHARGES = "charges"
# What a write verb can return, stored by name for replays.
_RESULTS: Mapping[str, type[Any]] = {
    cls.__name__: cls
    for cls in (AttachedPaymentMethod, ProcessorPaymentState, ProcessorRefundState, ProcessorSubscriptionState)
}


class FakeStateConflict(Exception):
    """Another process wrote the state since we read it."""


@dataclass
class FakeSnapshot:
    """Everything a store holds: its version, the id counters and every row."""

    version: int
    counters: dict[str, int]
    rows: list[Row]


class FakeStateStore(Protocol):
    """Where a fake processor keeps its state (``adapters.mongo.fake_state``)."""

    async def version(self) -> int:
        """The version of the stored state; 0 when nothing was stored yet."""
        ...

    async def load(self) -> FakeSnapshot:
        """Everything stored."""
        ...

    async def save(self, expected_version: int, counters: dict[str, int], rows: list[Row]) -> int:
        """Writes the counters and rows at once if the version is still ``expected_version``.

        Returns:
            The new version.

        Raises:
            FakeStateConflict: Another process wrote first; nothing was written.
        """
        ...


class Table(dict[str, V]):
    """A dict that remembers the keys read or written since the last :meth:`take_touched`."""

    def __init__(self) -> None:
        super().__init__()
        self.touched: set[str] = set()

    def __getitem__(self, key: str) -> V:
        self.touched.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: V | None = None) -> V | None:  # type: ignore[override]
        """``dict.get`` that marks ``key`` as touched."""
        self.touched.add(key)
        return super().get(key, default)

    def __setitem__(self, key: str, value: V) -> None:
        self.touched.add(key)
        super().__setitem__(key, value)

    def values(self) -> Any:
        """All values; every row counts as touched (callers may change any of them)."""
        self.touched.update(self.keys())
        return super().values()

    def take_touched(self) -> set[str]:
        """Returns and forgets the touched keys."""
        touched, self.touched = self.touched, set()
        return touched

    def replace_all(self, rows: Mapping[str, V]) -> None:
        """Replaces the content (after a reload); nothing counts as touched."""
        super().clear()
        super().update(rows)
        self.touched = set()


# -- rows ------------------------------------------------------------------------------


def _encode(obj: Any) -> dict[str, Any]:
    doc = encode(obj)
    # The codec never writes client secrets (our rule for our records); a processor keeps them.
    action = getattr(obj, "next_action", None)
    if isinstance(action, NextAction) and action.client_secret:
        doc["next_action"]["client_secret"] = action.client_secret
    return doc


def _decode(kind: type[V], doc: Mapping[str, Any]) -> V:
    obj = decode(kind, doc)
    secret = (doc.get("next_action") or {}).get("client_secret", "")
    action = getattr(obj, "next_action", None)
    if secret and isinstance(action, NextAction):
        setattr(obj, "next_action", dataclasses.replace(action, client_secret=secret))  # noqa: B010
    return obj


def encode_outcome(fingerprint: str, result: object, error: BillingError | None) -> dict[str, Any]:
    """An idempotency key's first outcome as a document."""
    if result is None or isinstance(result, str):
        tagged: dict[str, Any] = {"type": "scalar", "value": result}
    elif isinstance(result, dict):
        tagged = {"type": "dict", "value": dict(result)}
    else:
        tagged = {"type": type(result).__name__, "value": _encode(result)}
    return {"fingerprint": fingerprint, "result": tagged, "error": None if error is None else error_to_record(error)}


def decode_outcome(doc: Mapping[str, Any]) -> tuple[str, object, BillingError | None]:
    """(fingerprint, result, error) of a stored outcome."""
    tagged = doc["result"]
    kind = tagged["type"]
    result: object = tagged["value"] if kind in ("scalar", "dict") else _decode(_RESULTS[kind], tagged["value"])
    error = None if doc.get("error") is None else error_from_record(doc["error"])
    return doc["fingerprint"], result, error


# -- the sync ----------------------------------------------------------------------------


class LedgerPersistence:
    """Loads and saves one ledger (and its idempotency outcomes) through a store.

    Args:
        store: Where the state lives.
        outcome_row: Encodes one stored idempotency outcome of the fake.
        outcome_from_row: Decodes one.
    """

    def __init__(
        self,
        store: FakeStateStore,
        outcome_row: Callable[[Any], dict[str, Any]],
        outcome_from_row: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        self._store = store
        self._outcome_row = outcome_row
        self._outcome_from_row = outcome_from_row
        self._version = -1  # never loaded
        self._saved: dict[tuple[str, str], dict[str, Any]] = {}
        self._saved_counters: dict[str, int] = {}
        self._saved_charges = 0

    async def refresh(self, ledger: Any, outcomes: Table[Any]) -> None:
        """Reloads everything when the stored version is not the one we hold."""
        if await self._store.version() == self._version:
            return
        snapshot = await self._store.load()
        by_table: dict[str, dict[str, dict[str, Any]]] = {}
        for table, key, doc in snapshot.rows:
            by_table.setdefault(table, {})[key] = doc
        for table, kind in RECORD_TABLES.items():
            getattr(ledger, table).replace_all({k: _decode(kind, d) for k, d in by_table.get(table, {}).items()})
        for sub in ledger.subscriptions.values():
            sub.price = ledger.prices.get(sub.price.id, sub.price)  # one price object, as before the restart
        ledger.subscriptions.take_touched()
        ledger.prices.take_touched()
        outcomes.replace_all({k: self._outcome_from_row(d) for k, d in by_table.get(IDEMPOTENCY, {}).items()})
        charges = by_table.get(CHARGES, {})
        ledger.charges[:] = [decode(FakeCharge, charges[k]) for k in sorted(charges)]
        ledger.counters.clear()
        ledger.counters.update(snapshot.counters)
        self._saved = {(t, k): d for t, k, d in snapshot.rows}
        self._saved_counters = dict(snapshot.counters)
        self._saved_charges = len(ledger.charges)
        self._version = snapshot.version

    async def save(self, ledger: Any, outcomes: Table[Any]) -> bool:
        """Writes the rows that changed; False when another process wrote first (reload and redo)."""
        rows = list(self._changed_rows(ledger, outcomes))
        counters = dict(ledger.counters)
        if not rows and counters == self._saved_counters:
            return True
        try:
            self._version = await self._store.save(self._version, counters, rows)
        except FakeStateConflict:
            self._version = -1  # the next refresh reloads
            return False
        self._saved.update({(t, k): d for t, k, d in rows})
        self._saved_counters = counters
        self._saved_charges = len(ledger.charges)
        return True

    def _changed_rows(self, ledger: Any, outcomes: Table[Any]) -> Iterator[Row]:
        for table in RECORD_TABLES:
            rows: Table[Any] = getattr(ledger, table)
            for key in rows.take_touched():
                if key in rows:
                    yield from self._if_changed(table, key, _encode(dict.__getitem__(rows, key)))
        for key in outcomes.take_touched():
            if key in outcomes:
                yield from self._if_changed(IDEMPOTENCY, key, self._outcome_row(dict.__getitem__(outcomes, key)))
        for index in range(self._saved_charges, len(ledger.charges)):
            yield CHARGES, f"{index:012d}", encode(ledger.charges[index])

    def _if_changed(self, table: str, key: str, doc: dict[str, Any]) -> Iterator[Row]:
        if self._saved.get((table, key)) != doc:
            yield table, key, doc
