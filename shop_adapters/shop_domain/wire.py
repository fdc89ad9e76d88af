"""The shop's wire codec: events <-> stream entries, schema versions, upcasters, price lists.

Wire formats (source: ``docs/ARCHITECTURE.md``, "The shop's wire formats")
--------------------------------------------------------------------------
An entry is a mapping of field names to values, ``bytes -> bytes`` as a log
stores it (``str`` keys and values are accepted too and read as UTF-8).

- **v1 (ours)**: ``type`` = ``TopUp`` | ``AddItem`` | ``Order``, ``v`` = ``1``,
  ``data`` = a JSON object with snake_case fields:
  ``{"user_id": 7, "amount": 500}``; ``{"item_id": "cpu", "count": 3, "price": 100}``
  (``price`` optional or null); ``{"user_id": 7, "lines": [["cpu", 2]], "order_id": "x"}``
  (``order_id`` optional or null). Money is in integer minor units.
- **v0 (the seed's Go producer)**: no ``v`` field; ``type`` = ``TopUp`` |
  ``AddItem`` | ``OrderType``; ``data`` = a MessagePack map with the Go struct's
  field names: ``{"ID", "Type", "UserID", "Amount"}``, ``{"ID", "Type", "ItemID",
  "Count"}``, ``{"ID", "Type", "UserID", "ItemIDs", "ItemQuantities"}``. v0 is
  upcast to v1 by :func:`upcast_v0_v1`: an AddItem takes its price from the
  decoder's price list (else ``None``: unpriced), an order's non-empty ``ID``
  becomes its ``order_id``; ``ID`` is otherwise ignored, ``Type`` (if present)
  must equal the entry's ``type``.

Decisions: entry fields other than ``type``/``v``/``data`` are tolerated (an
idempotency key, a trace id); a key in ``data`` that the schema does not know is
refused ("unexpected field"). JSON and MessagePack maps with a repeated key keep
the last value (what orjson and msgpack do). ``v`` other than ``1`` (including
``0``: the seed never wrote one) is an unknown schema version.

Dead letters
------------
Decoding never raises for bad input: :meth:`Decoder.decode` returns
``Failure(reason)``, a one-line human reason, for every entry that cannot become
a valid event: entry over ``max_entry_bytes`` (checked first, before any
parsing), not a mapping, field names/values neither bytes nor str, a field
given twice (as bytes and str), missing ``type``/``data``, unknown schema
version, unknown event type, invalid JSON/MessagePack (including non-UTF-8
text), ``data`` not an object/map, missing or unexpected data fields, v0
``ItemIDs``/``ItemQuantities`` of different lengths, and every refusal of the
event constructors (wrong type, float, bool, negative, > 2**63 - 1, empty or
too long id, empty or too many lines), whose message, naming the field, is
reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple, TypeAlias

import msgpack
import msgspec
import orjson
from returns.result import Failure, Result, Success

from shop_core import MAX_ID_LENGTH, MAX_INT, MAX_ORDER_LINES, AddItem, Event, Order, TopUp
from shop_core.events import _trusted_add_item, _trusted_order, _trusted_top_up

from .._json import strict_json
from ..protocols import DeadLetter, Fields, Position, Record

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "DEFAULT_LIMITS",
    "Decoder",
    "Limits",
    "decode_entry",
    "encode_event",
    "encode_event_v0",
    "load_price_list",
    "upcast_v0_v1",
]

CURRENT_SCHEMA_VERSION = 1
"""The wire schema version :func:`encode_event` writes and events are upcast to."""


class Limits(NamedTuple):
    """Bounds on what a decoder accepts, to protect memory; each violation is a dead letter.

    - ``max_entry_bytes``: sum of ``len(name) + len(value)`` over an entry's
      fields, in bytes (checked before anything is parsed);
    - ``max_lines``: most lines of an order (default :data:`shop_core.MAX_ORDER_LINES`);
    - ``max_id_length``: longest item or order id, in characters (default
      :data:`shop_core.MAX_ID_LENGTH`).
    """

    max_entry_bytes: int = 65_536
    max_lines: int = MAX_ORDER_LINES
    max_id_length: int = MAX_ID_LENGTH


DEFAULT_LIMITS = Limits()

_EventData: TypeAlias = dict[str, Any]


class _Invalid(Exception):
    """Internal: an entry cannot become an event; ``args[0]`` is the reason."""


# ---------------------------------------------------------------------------
# Encoding


def encode_event(event: Event) -> dict[str, bytes]:
    """Encode ``event`` as a v1 entry: ``{"type": ..., "v": b"1", "data": <JSON>}``.

    Raises ``TypeError`` if ``event`` is not a shop event.

    >>> encode_event(TopUp(7, 500))
    {'type': b'TopUp', 'v': b'1', 'data': b'{"user_id":7,"amount":500}'}
    """
    data: _EventData
    match event:
        case TopUp(user_id=user_id, amount=amount):
            data = {"user_id": user_id, "amount": amount}
        case AddItem(item_id=item_id, count=count, price=price):
            data = {"item_id": item_id, "count": count, "price": price}
        case Order(user_id=user_id, lines=lines, order_id=order_id):
            data = {"user_id": user_id, "lines": lines, "order_id": order_id}
        case _:
            raise TypeError(f"expected a shop event, got {type(event).__name__}")
    return {"type": _V1_NAME[type(event)], "v": b"1", "data": orjson.dumps(data)}


def encode_event_v0(event: Event) -> dict[str, bytes]:
    """Encode ``event`` as the seed's Go producer did (v0: no ``v``, MessagePack ``data``).

    v0 cannot carry an AddItem's price: it is dropped (a decoder restores it
    from its price list). An order's ``order_id`` goes to the Go ``ID`` field
    (``""`` when ``None``). For tests and the producer's ``--v0`` mode.
    Raises ``TypeError`` if ``event`` is not a shop event.

    >>> msgpack.unpackb(encode_event_v0(TopUp(8081, 500))["data"])
    {'ID': '', 'Type': 'TopUp', 'UserID': 8081, 'Amount': 500}
    """
    data: _EventData
    match event:
        case TopUp(user_id=user_id, amount=amount):
            data = {"ID": "", "Type": "TopUp", "UserID": user_id, "Amount": amount}
        case AddItem(item_id=item_id, count=count):
            data = {"ID": "", "Type": "AddItem", "ItemID": item_id, "Count": count}
        case Order(user_id=user_id, lines=lines, order_id=order_id):
            data = {
                "ID": order_id or "",
                "Type": "OrderType",
                "UserID": user_id,
                "ItemIDs": [iid for iid, _ in lines],
                "ItemQuantities": [qty for _, qty in lines],
            }
        case _:
            raise TypeError(f"expected a shop event, got {type(event).__name__}")
    return {"type": data["Type"].encode(), "data": msgpack.packb(data)}


_V1_NAME: Mapping[type, bytes] = {TopUp: b"TopUp", AddItem: b"AddItem", Order: b"Order"}


# ---------------------------------------------------------------------------
# Upcasting: v0 (Go producer) -> v1


def _check_keys(
    what: str, data: Mapping[str, Any], required: frozenset[str], allowed: frozenset[str]
) -> None:
    keys = data.keys()
    if required <= keys <= allowed:
        return
    missing = sorted(required - keys)
    if missing:
        raise _Invalid(f"{what}: missing field {missing[0]!r}")
    extra = sorted(repr(k) for k in keys - allowed)
    raise _Invalid(f"{what}: unexpected field {extra[0]:.80}")


_V0_COMMON = frozenset({"ID", "Type"})
_V0_FIELDS: Mapping[str, frozenset[str]] = {
    "TopUp": frozenset({"UserID", "Amount"}),
    "AddItem": frozenset({"ItemID", "Count"}),
    "OrderType": frozenset({"UserID", "ItemIDs", "ItemQuantities"}),
}


def upcast_v0_v1(
    event_type: str, data: Mapping[str, Any], price_list: Mapping[str, int] | None = None
) -> tuple[str, _EventData]:
    """Upcast a v0 event (Go field names) to the v1 shape (snake_case).

    ``event_type`` is the entry's ``type`` (``TopUp``, ``AddItem``, ``OrderType``)
    and ``data`` the decoded MessagePack map. Returns ``(v1 type, v1 data)``;
    values are passed through unchecked (the event constructors check them).
    An AddItem's price comes from ``price_list`` (``{item_id: minor units}``),
    else ``None``. ``ID`` is ignored except for orders, where a non-empty one
    becomes ``order_id``. Raises ``ValueError`` for a missing or unexpected
    field, a ``Type`` different from ``event_type``, or ``ItemIDs`` and
    ``ItemQuantities`` of different lengths.

    >>> v0 = {"ID": "", "UserID": 1, "ItemIDs": ["cpu"], "ItemQuantities": [2]}
    >>> upcast_v0_v1("OrderType", v0)
    ('Order', {'user_id': 1, 'lines': [('cpu', 2)], 'order_id': None})
    """
    try:
        return _upcast_v0_v1(event_type, data, price_list)
    except _Invalid as exc:
        raise ValueError(exc.args[0]) from None


def _upcast_v0_v1(
    event_type: str, data: Mapping[str, Any], price_list: Mapping[str, int] | None
) -> tuple[str, _EventData]:
    what = f"v0 {event_type} data"
    required = _V0_FIELDS.get(event_type)
    if required is None:
        raise _Invalid(f"unknown v0 event type {event_type!r:.80}")
    _check_keys(what, data, required, required | _V0_COMMON)
    declared = data.get("Type", event_type)
    if declared != event_type:
        raise _Invalid(f"{what}: Type {declared!r:.80} differs from the entry's type")
    go_id = data.get("ID", "")
    if type(go_id) is not str:
        raise _Invalid(f"{what}: ID must be a str, got {type(go_id).__name__}")
    if event_type == "TopUp":
        return "TopUp", {"user_id": data["UserID"], "amount": data["Amount"]}
    if event_type == "AddItem":
        item_id = data["ItemID"]
        price = price_list.get(item_id) if price_list and type(item_id) is str else None
        return "AddItem", {"item_id": item_id, "count": data["Count"], "price": price}
    ids, quantities = data["ItemIDs"], data["ItemQuantities"]
    if type(ids) is not list or type(quantities) is not list:
        raise _Invalid(
            f"{what}: ItemIDs and ItemQuantities must be arrays, "
            f"got {type(ids).__name__} and {type(quantities).__name__}"
        )
    if len(ids) != len(quantities):
        raise _Invalid(
            f"{what}: malformed order: ItemIDs has {len(ids)} entries "
            f"but ItemQuantities has {len(quantities)}"
        )
    lines = list(zip(ids, quantities, strict=True))
    return "Order", {"user_id": data["UserID"], "lines": lines, "order_id": go_id or None}


_Upcaster: TypeAlias = Callable[
    [str, Mapping[str, Any], Mapping[str, int] | None], tuple[str, _EventData]
]
# Explicit, stepwise: _UPCASTERS[n] takes version n to n + 1 (eventsourcing's style).
_UPCASTERS: Mapping[int, _Upcaster] = {0: _upcast_v0_v1}


# ---------------------------------------------------------------------------
# Building v1 events from their data


def _top_up(data: _EventData, limits: Limits) -> Event:
    if len(data) != 2 or "user_id" not in data or "amount" not in data:
        _check_keys("TopUp data", data, _TOPUP_KEYS, _TOPUP_KEYS)
    return TopUp(data["user_id"], data["amount"])


def _add_item(data: _EventData, limits: Limits) -> Event:
    if not _ADD_REQUIRED <= data.keys() <= _ADD_ALLOWED:
        _check_keys("AddItem data", data, _ADD_REQUIRED, _ADD_ALLOWED)
    event = AddItem(data["item_id"], data["count"], data.get("price"))
    if len(event.item_id) > limits.max_id_length:
        raise _Invalid(_id_too_long("AddItem.item_id", event.item_id, limits))
    return event


def _order(data: _EventData, limits: Limits) -> Event:
    if not _ORDER_REQUIRED <= data.keys() <= _ORDER_ALLOWED:
        _check_keys("Order data", data, _ORDER_REQUIRED, _ORDER_ALLOWED)
    lines = data["lines"]
    if type(lines) is list and len(lines) > limits.max_lines:
        raise _Invalid(f"too many lines: Order.lines has {len(lines)}, at most {limits.max_lines}")
    if type(lines) is list:
        # JSON gives [[id, qty], ...]; tuples take the constructor's fast path.
        lines = tuple([tuple(x) if type(x) is list else x for x in lines])
    event = Order(data["user_id"], lines, data.get("order_id"))
    if limits.max_id_length < MAX_ID_LENGTH:
        for index, (iid, _) in enumerate(event.lines):
            if len(iid) > limits.max_id_length:
                raise _Invalid(_id_too_long(f"Order.lines[{index}].item_id", iid, limits))
        if event.order_id is not None and len(event.order_id) > limits.max_id_length:
            raise _Invalid(_id_too_long("Order.order_id", event.order_id, limits))
    return event


def _id_too_long(field: str, value: str, limits: Limits) -> str:
    return f"id too long: {field} has {len(value)} characters, at most {limits.max_id_length}"


_TOPUP_KEYS = frozenset({"user_id", "amount"})
_ADD_REQUIRED = frozenset({"item_id", "count"})
_ADD_ALLOWED = _ADD_REQUIRED | {"price"}
_ORDER_REQUIRED = frozenset({"user_id", "lines"})
_ORDER_ALLOWED = _ORDER_REQUIRED | {"order_id"}

# ---------------------------------------------------------------------------
# The compiled v1 path: msgspec structs with the event constructors' bounds

_Nat = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
_Lines = Annotated[
    tuple[tuple[_Id, _Nat], ...], msgspec.Meta(min_length=1, max_length=MAX_ORDER_LINES)
]


class _TopUpV1(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    user_id: _Nat
    amount: _Nat


class _AddItemV1(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    item_id: _Id
    count: _Nat
    price: _Nat | None = None


class _OrderV1(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    user_id: _Nat
    lines: _Lines
    order_id: _Id | None = None


_TOPUP_V1 = msgspec.json.Decoder(_TopUpV1).decode
_ADD_ITEM_V1 = msgspec.json.Decoder(_AddItemV1).decode
_ORDER_V1 = msgspec.json.Decoder(_OrderV1).decode


def _compiled_top_up(data: bytes) -> Event:
    d = _TOPUP_V1(data)
    return _trusted_top_up(d.user_id, d.amount)


def _compiled_add_item(data: bytes) -> Event:
    d = _ADD_ITEM_V1(data)
    return _trusted_add_item(d.item_id, d.count, d.price)


def _compiled_order(data: bytes) -> Event:
    d = _ORDER_V1(data)
    return _trusted_order(d.user_id, d.lines, d.order_id)


_V1_COMPILED: Mapping[str, Callable[[bytes], Event]] = {
    "TopUp": _compiled_top_up,
    "AddItem": _compiled_add_item,
    "Order": _compiled_order,
}

_Builder: TypeAlias = Callable[[_EventData, Limits], Event]
_BUILDERS: Mapping[str, _Builder] = {"TopUp": _top_up, "AddItem": _add_item, "Order": _order}

# (type field, v field) -> (schema version, type name). The dispatch table.
_DISPATCH: Mapping[tuple[bytes, bytes | None], tuple[int, str]] = {
    (b"TopUp", b"1"): (1, "TopUp"),
    (b"AddItem", b"1"): (1, "AddItem"),
    (b"Order", b"1"): (1, "Order"),
    (b"TopUp", None): (0, "TopUp"),
    (b"AddItem", None): (0, "AddItem"),
    (b"OrderType", None): (0, "OrderType"),
}


def _huge_float(data: _EventData) -> bool:
    """Whether ``data`` holds a float that came from an integer literal too big to read.

    orjson reads integers beyond 64 bits as floats; used only to explain a failure.
    """
    for value in data.values():
        if type(value) is float and abs(value) > MAX_INT:
            return True
        if type(value) is list:
            for line in value:
                if type(line) is list and any(type(x) is float and abs(x) > MAX_INT for x in line):
                    return True
    return False


# ---------------------------------------------------------------------------
# Decoding


def _shown(raw: bytes) -> str:
    return repr(raw.decode("utf-8", errors="replace"))[:80]


def _as_bytes(value: object, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Invalid(f"{what} is not encodable as UTF-8: {exc}") from None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise _Invalid(f"{what} must be bytes or str, got {type(value).__name__}")


def _config_digest(prices: Mapping[str, int] | None) -> str | None:
    """SHA-256 hex of the canonical JSON of a price list (keys sorted, no spaces,
    ASCII), ``None`` for none: the same items and prices, the same digest."""
    if prices is None:
        return None
    canonical = json.dumps(dict(prices), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class Decoder:
    """Turns raw entries into events, or into a dead-letter reason.

    ``price_list``: ``{item_id: price in minor units}``, prices for v0 AddItem
    entries (which carry none); items not in it stay unpriced. ``limits``: see
    :class:`Limits`. Raises ``ValueError``/``TypeError`` at construction for a
    bad price list or limits. A decoder holds no mutable state; share it freely.

    >>> Decoder().decode({b"type": b"TopUp", b"v": b"1", b"data": b'{"user_id":7,"amount":5}'})
    <Success: TopUp(user_id=7, amount=5)>
    >>> Decoder().decode({"type": "TopUp", "v": "2", "data": "{}"})
    <Failure: unknown schema version '2' (this build reads v=1, or no v for the seed's v0)>
    """

    __slots__ = ("_compiled", "_config_digest", "_limits", "_price_list", "_unpack_options")

    def __init__(
        self, price_list: Mapping[str, int] | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        for name, value in zip(Limits._fields, limits, strict=True):
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {value!r:.80}")
        self._limits = limits
        self._compiled = limits == DEFAULT_LIMITS  # the compiled schemas carry these bounds
        self._price_list = _check_price_list(price_list) if price_list is not None else None
        self._config_digest = _config_digest(self._price_list)
        str_len = max(4 * limits.max_id_length, 64)  # UTF-8: up to 4 bytes a character
        self._unpack_options: dict[str, Any] = {
            "raw": False,
            "strict_map_key": True,
            "use_list": True,
            "max_str_len": str_len,
            "max_bin_len": str_len,
            "max_array_len": limits.max_lines,
            "max_map_len": 16,
            "max_ext_len": 64,
        }

    @property
    def limits(self) -> Limits:
        """The limits this decoder enforces."""
        return self._limits

    @property
    def config_digest(self) -> str | None:
        """Identity of the configuration that changes what this decoder produces:
        the SHA-256 hex of its price list's canonical JSON (the same items and
        prices give the same digest whatever the file's order), ``None``
        without one. It is the shop domain's ``config_digest``, recorded in
        every snapshot, so a restart with another price list rebuilds by
        replay instead of continuing a state folded with other prices. (The
        limits are not part of it: a different limit changes which entries
        are dead letters, which the operator chooses knowingly.)

        >>> Decoder({"b": 1, "a": 2}).config_digest == Decoder({"a": 2, "b": 1}).config_digest
        True
        >>> Decoder().config_digest is None
        True
        """
        return self._config_digest

    def decode(self, fields: Fields) -> Result[Event, str]:
        """Decode one entry: ``Success(event)`` or ``Failure(reason)``; never raises for bad input.

        ``fields``: ``Mapping[bytes, bytes]`` (``str`` names and values are
        accepted and read as UTF-8). See the module docstring for the formats
        and the reasons.
        """
        try:
            return Success(self._decode(fields))
        except _Invalid as exc:
            return Failure(exc.args[0])

    def decode_records(
        self, records: Sequence[Record]
    ) -> tuple[list[tuple[Position, Event]], list[DeadLetter]]:
        """Decode a batch: ``([(position, event), ...], [DeadLetter, ...])``, both in log order.

        Same semantics as :meth:`decode` record by record, without a ``Result``
        per record (the replay hot path). Never raises for bad input.
        """
        events: list[tuple[Position, Event]] = []
        dead: list[DeadLetter] = []
        append = events.append
        decode = self._decode
        for record in records:
            try:
                append((record.position, decode(record.fields)))
            except _Invalid as exc:
                dead.append(DeadLetter(record.position, record.fields, exc.args[0]))
        return events, dead

    def _normalise(self, fields: Fields) -> Mapping[bytes, bytes]:
        """Check the size first, then make every name and value ``bytes``."""
        if type(fields) is not dict and not isinstance(fields, Mapping):
            raise _Invalid(f"an entry must be a mapping of fields, got {type(fields).__name__}")
        limit = self._limits.max_entry_bytes
        size = 0
        plain = True
        try:
            for key, value in fields.items():
                if type(key) is not bytes or type(value) is not bytes:
                    plain = False
                size += len(key) + len(value)  # for str, a lower bound of its UTF-8 size
        except TypeError:
            raise _Invalid("entry field names and values must be bytes or str") from None
        if size > limit:
            raise _Invalid(f"entry too large: at least {size} bytes of fields, limit {limit}")
        if plain:
            return fields
        out: dict[bytes, bytes] = {}
        size = 0
        for key, value in fields.items():
            bkey = _as_bytes(key, "a field name")
            if bkey in out:
                raise _Invalid(f"duplicate field {_shown(bkey)} (given as bytes and as str)")
            out[bkey] = bvalue = _as_bytes(value, f"field {_shown(bkey)}")
            size += len(bkey) + len(bvalue)
        if size > limit:
            raise _Invalid(f"entry too large: {size} bytes of fields, limit {limit}")
        return out

    def _decode(self, raw_fields: Fields) -> Event:
        """The one decoding path: an event, or raises ``_Invalid(reason)``."""
        found = None
        data_bytes: Any = None
        if type(raw_fields) is dict:
            # Fast path for the common case (a dict of bytes from redis-py or a
            # file log holding exactly type, [v,] data): one dispatch lookup, and
            # since a match means type and v are short known values, the
            # entry's size is exact without walking it. Anything else falls
            # through to the full normalisation below (same reasons).
            etype: Any = raw_fields.get(b"type")
            v: Any = raw_fields.get(b"v")
            try:
                found = _DISPATCH.get((etype, v))
            except TypeError:  # an unhashable value
                found = None
            if found is not None:
                data_bytes = raw_fields.get(b"data")
                key: Any = raw_fields.get(b"key")  # an idempotency key, for the shell
                extra = 0 if key is None else 3 + (len(key) if type(key) is bytes else 1 << 30)
                if (
                    type(data_bytes) is not bytes
                    or len(raw_fields) != (2 if v is None else 3) + (key is not None)
                    or len(data_bytes) + 8 + len(etype) + (0 if v is None else 1 + len(v)) + extra
                    > self._limits.max_entry_bytes
                ):
                    found = None
        if found is None:
            fields = self._normalise(raw_fields)
            etype = fields.get(b"type")
            if etype is None:
                raise _Invalid("missing field 'type'")
            v = fields.get(b"v")
            found = _DISPATCH.get((etype, v))
            if found is None:
                raise _Invalid(_unknown(etype, v, fields.get(b"data")))
            data_bytes = fields.get(b"data")
        version, name = found
        if data_bytes is None:
            raise _Invalid("missing field 'data'")
        data: Any
        if version == 1 and self._compiled:
            # The compiled path: msgspec checks the schema and every bound in C and
            # the event is built without checking again. Anything it refuses goes
            # through the path below, which gives the reason (the same as ever).
            try:
                return _V1_COMPILED[name](data_bytes)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass
        if version == 1:
            try:
                data = orjson.loads(data_bytes)
            except orjson.JSONDecodeError as exc:
                if "not valid UTF-8" in str(exc):
                    raise _Invalid(f"v1 {name} data is not UTF-8 text (JSON must be)") from None
                raise _Invalid(f"v1 {name} data is not valid JSON: {exc}") from None
            if type(data) is not dict:
                raise _Invalid(f"v1 {name} data must be a JSON object, got {type(data).__name__}")
        else:
            data = self._unpack_v0(name, data_bytes)
        try:
            while version < CURRENT_SCHEMA_VERSION:
                name, data = _UPCASTERS[version](name, data, self._price_list)
                version += 1
            return _BUILDERS[name](data, self._limits)
        except (TypeError, ValueError) as exc:
            reason = f"{name}: {exc}"
            if isinstance(exc, TypeError) and _huge_float(data):
                reason += " (an integer this large is out of range: at most 2**63 - 1)"
            raise _Invalid(reason) from None

    def _unpack_v0(self, name: str, data_bytes: bytes) -> _EventData:
        try:
            data = msgpack.unpackb(data_bytes, **self._unpack_options)
        except ValueError as exc:  # FormatError, StackError, ExtraData, UnicodeDecodeError
            detail = str(exc) or type(exc).__name__
            if "max_array_len" in detail:
                detail = f"too many lines ({detail}; at most {self._limits.max_lines})"
            elif "max_str_len" in detail or "max_bin_len" in detail:
                detail = f"id too long ({detail}; at most {self._limits.max_id_length} characters)"
            hint = ""
            if data_bytes[:1] == b"{":
                hint = " (data looks like JSON: a v1 entry needs field v=1)"
            raise _Invalid(
                f"v0 {name} data (no field v) is not valid MessagePack: {detail}{hint}"
            ) from None
        if type(data) is not dict:
            raise _Invalid(f"v0 {name} data must be a MessagePack map, got {type(data).__name__}")
        return data


def _unknown(etype: bytes, v: bytes | None, data: bytes | None) -> str:
    if v is None:
        hint = ""
        if etype in {b"Order"} or (data is not None and data[:1] == b"{"):
            hint = "; data looks like v1: a v1 entry needs field v=1"
        return (
            f"unknown event type {_shown(etype)} for the seed's v0 format (no field v; "
            f"expected TopUp, AddItem or OrderType){hint}"
        )
    if v != b"1":
        return (
            f"unknown schema version {_shown(v)} (this build reads v=1, or no v for the seed's v0)"
        )
    return f"unknown event type {_shown(etype)} for schema v1 (expected TopUp, AddItem or Order)"


_DEFAULT_DECODER = Decoder()


def decode_entry(
    fields: Fields, price_list: Mapping[str, int] | None = None, limits: Limits = DEFAULT_LIMITS
) -> Result[Event, str]:
    """Decode one entry with a :class:`Decoder` of these arguments (see :meth:`Decoder.decode`).

    >>> import msgpack
    >>> data = msgpack.packb({"ID": "", "Type": "TopUp", "UserID": 8081, "Amount": 500})
    >>> decode_entry({b"type": b"TopUp", b"data": data})
    <Success: TopUp(user_id=8081, amount=500)>
    """
    if price_list is None and limits == DEFAULT_LIMITS:
        return _DEFAULT_DECODER.decode(fields)
    return Decoder(price_list, limits).decode(fields)


# ---------------------------------------------------------------------------
# Price lists


def _check_price_list(prices: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(prices, Mapping):
        raise TypeError(
            f"a price list is a mapping of item id to price, got {type(prices).__name__}"
        )
    out: dict[str, int] = {}
    for item_id, price in prices.items():
        if type(item_id) is not str or not 0 < len(item_id) <= MAX_ID_LENGTH:
            raise ValueError(
                f"price list: item ids are str of 1 to {MAX_ID_LENGTH} characters, "
                f"got {item_id!r:.80}"
            )
        if type(price) is not int:
            raise ValueError(
                f"price list: price of {item_id!r:.80} must be an int in minor units, "
                f"got {type(price).__name__} {price!r:.80}"
            )
        if not 0 <= price <= MAX_INT:
            raise ValueError(
                f"price list: price of {item_id!r:.80} must be in [0, 2**63 - 1], got {price}"
            )
        out[item_id] = price
    return out


def load_price_list(path: str | Path) -> dict[str, int]:
    """Read a price list: a JSON object ``{item_id: price in minor units}`` (UTF-8).

    Raises ``OSError`` if the file cannot be read, and ``ValueError`` with the
    file name and what is wrong for bad content: not JSON, not an object, a
    repeated id, an id not of 1 to 128 characters, a price that is not an int
    (float, bool, string, null), negative, or above 2**63 - 1.
    """
    raw = Path(path).read_bytes()
    try:
        prices = strict_json(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, our refusals
        what = "not a valid price list" if "not allowed" in str(exc) else "not valid JSON"
        raise ValueError(f"price list {str(path)!r}: {what}: {exc}") from None
    if type(prices) is not dict:
        raise ValueError(
            f"price list {str(path)!r}: expected a JSON object {{item_id: price}}, "
            f"got {type(prices).__name__}"
        )
    try:
        return _check_price_list(prices)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None
