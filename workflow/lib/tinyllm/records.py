"""The documents in one file's bytes, by format, and the text of a record.

JSON (an array of objects or strings, streamed element by element), JSON Lines, plain text (a document per
file, per blank-line paragraph or per line) and Parquet (by row batch). A record's text is a field, a dotted
path into nested objects or a template such as "{subject}\\n{lines}"; a list of strings is joined with
newlines. Each reader yields (text, label, where): the document, the file (or archive member) it came from,
and where in it ("line 12", "record 3", "row 7"), which every DataError names too. Memory holds one record,
at most MAX_RECORD_BYTES. `source` is a tinyllm.sources.Source: its text, missing, documents and key.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import string
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from tinyllm.errors import ConfigError, DataError

MAX_RECORD_BYTES = 64 << 20  # one JSON record, JSON line, paragraph or whole-file document
BLOCK = 1 << 20  # what a reader reads at once

if TYPE_CHECKING:
    from tinyllm.sources import Source


# --- a record's text ----------------------------------------------------------------------------------------


def is_template(text: str) -> bool:
    return "{" in text or "}" in text


def template_fields(text: str, key: str) -> list[str]:
    """The dotted field paths a text setting reads: [text] for a field, the placeholders of a template.

    A template takes "{field}" or "{a.b}" placeholders and "{{", "}}" for literal braces; a format spec,
    conversion, index or empty placeholder is a ConfigError naming key.
    """
    if not text.strip():
        raise ConfigError(f"{key}: empty; name a field (text), a dotted path (meta.body) or a template")
    if not is_template(text):
        return [text]
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ConfigError(
            f"{key}: {text!r} is not a valid template ({err}); write literal braces as {{{{ and }}}}"
        ) from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion or "[" in name or name.isdigit():
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(
                f"{key}: placeholder {shown} in {text!r}: name a field or a dotted path, such as {{title}} "
                "or {meta.title}, without format specs or indexes"
            )
        fields.append(name)
    if not fields:
        raise ConfigError(f"{key}: the template {text!r} has no {{field}} placeholder")
    return fields


class _Missing(Exception):
    def __init__(self, path: str):
        self.path = path


def _lookup(record, dotted: str):
    """record[dotted] where a dotted path walks nested objects (an exact key with dots wins)."""
    if isinstance(record, dict) and dotted in record:
        value = record[dotted]
    else:
        value = record
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise _Missing(dotted)
            value = value[part]
    if value is None:
        raise _Missing(dotted)
    return value


def _as_text(value, dotted: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "\n".join(value)
        bad = next(v for v in value if not isinstance(v, str))
        raise TypeError(f"field {dotted} is a list holding a {type(bad).__name__}, not only strings")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"field {dotted} is a {type(value).__name__}, not text")


def record_text_function(text: str, key: str) -> Callable[[object], str]:
    """A function from a record (a JSON object or a Parquet row) to its text, as data.sources[i].text says.

    It raises _Missing naming the absent field, or TypeError for a value that is not text.
    """
    fields = template_fields(text, key)
    if not is_template(text):
        (only,) = fields

        def field_text(record) -> str:
            return _as_text(_lookup(record, only), only)

        return field_text
    parts = list(string.Formatter().parse(text))

    def template_text(record) -> str:
        out = []
        for literal, name, _, _ in parts:
            out.append(literal)
            if name is not None:
                out.append(_as_text(_lookup(record, name), name))
        return "".join(out)

    return template_text


# --- the formats --------------------------------------------------------------------------------------------


def _utf8(raw: bytes, label: str, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{label}: {where}: byte {err.start} of it ({raw[err.start : err.start + 1]!r}) is not valid "
            "UTF-8; convert the file to UTF-8 (iconv -f LATIN1 -t UTF-8, say)"
        ) from None


def _record_text(source: Source, to_text, record, label: str, where: str) -> str | None:
    """A record's text; None to skip it (missing: skip). Strings are documents as they are."""
    if isinstance(record, str):
        return record
    try:
        return to_text(record)
    except _Missing as missing:
        if source.missing == "skip":
            return None
        fields = ", ".join(list(record)[:8]) if isinstance(record, dict) else type(record).__name__
        raise DataError(
            f"{label}: {where} has no field {missing.path!r} ({source.key}.text {source.text!r}; its fields: "
            f"{fields}); fix the text setting, or set {source.key}.missing: skip to skip such records"
        ) from None
    except TypeError as err:
        raise DataError(f"{label}: {where}: {err}; name a text field in {source.key}.text") from None


def _check_first_record(source: Source, record, label: str, where: str) -> None:
    """A template placeholder that the first record lacks is a typo, not a gap: say which fields it has."""
    if not isinstance(record, dict) or not is_template(source.text):
        return
    for name in template_fields(source.text, source.key):
        try:
            _lookup(record, name)
        except _Missing:
            raise DataError(
                f"{label}: {source.key}.text {source.text!r} has the unknown placeholder {{{name}}}: {where} "
                f"has the fields {', '.join(record) or '(none)'}"
            ) from None


def jsonl_documents(source: Source, body, label: str) -> Iterator[tuple[str, str, str]]:
    to_text = record_text_function(source.text, source.key)
    first = True
    for number, raw in enumerate(iter(lambda: body.readline(MAX_RECORD_BYTES + 1), b""), start=1):
        if len(raw) > MAX_RECORD_BYTES:
            raise DataError(f"{label}: line {number} is longer than {MAX_RECORD_BYTES >> 20} MB; split it")
        line = _utf8(raw, label, f"line {number}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{label}: line {number} is not JSON ({err.msg} at column {err.colno}); fix or remove it"
            ) from None
        where = f"line {number}"
        if first:
            _check_first_record(source, record, label, where)
            first = False
        if not isinstance(record, (dict, str)):
            raise DataError(f"{label}: {where} is a JSON {type(record).__name__}, not an object or a string")
        text = _record_text(source, to_text, record, label, where)
        if text is not None:
            yield text, label, where


def json_documents(source: Source, body, label: str) -> Iterator[tuple[str, str, str]]:
    to_text = record_text_function(source.text, source.key)
    for index, record in iter_json_array(body, label):
        where = f"record {index}"
        if index == 0:
            _check_first_record(source, record, label, where)
        if not isinstance(record, (dict, str)):
            raise DataError(f"{label}: {where} is a JSON {type(record).__name__}, not an object or a string")
        text = _record_text(source, to_text, record, label, where)
        if text is not None:
            yield text, label, where


def iter_json_array(body, label: str, block: int = BLOCK) -> Iterator[tuple[int, object]]:
    """(index, value) of each element of the JSON array in a binary stream, without reading it whole.

    The stream is decoded as strict UTF-8 block by block and each element parsed with the C scanner as soon as
    it is whole; an element longer than MAX_RECORD_BYTES, text that is not UTF-8, and anything but one array
    are DataErrors naming the file and the element.
    """
    stream = _JsonText(body, label, block)
    if stream.next_char() != "[":
        found = stream.next_char() or "nothing"
        raise DataError(
            f"{label}: expected a JSON array of objects or strings, found {found[:1]!r} at its start; use "
            "format: jsonl for one record per line"
        )
    stream.pos += 1
    index, following = 0, stream.next_char()
    while following != "]":
        yield index, stream.element(index)
        index += 1
        following = stream.next_char()
        if following == ",":
            stream.pos += 1
        elif following != "]":
            raise DataError(
                f"{label}: after record {index - 1}, expected ',' or ']', found "
                f"{following[:1] or 'the end of the file'!r}; the file is cut short or malformed"
            )
    stream.pos += 1
    if stream.next_char():
        raise DataError(f"{label}: text after the JSON array's closing ']'; one array per file")


class _JsonText:
    """A binary stream's text, decoded block by block, with a read position: what iter_json_array walks."""

    WHITESPACE = " \t\r\n"

    def __init__(self, body, label: str, block: int):
        self.body, self.label, self.block = body, label, block
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof, self.read_bytes = "", 0, False, 0
        while not self.buf and self.fill():  # a block may end inside the first character
            pass
        if self.buf.startswith("\ufeff"):  # a byte order mark
            self.pos = 1

    def fill(self) -> bool:
        """Read the next block onto the unread text; False at the end of the stream."""
        if self.eof:
            return False
        raw = self.body.read(self.block)
        try:
            text = self.utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as err:
            raise DataError(
                f"{self.label}: byte {self.read_bytes + err.start} is not valid UTF-8; convert the file to "
                "UTF-8"
            ) from None
        self.read_bytes += len(raw)
        self.eof = not raw
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        return bool(raw)

    def next_char(self) -> str:
        """The next character that is not whitespace (not consumed), or "" at the end."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in self.WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def element(self, index: int):
        """The JSON value at the next character, reading on while a block's end cuts it."""
        self.next_char()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                # A number may go on in the next block ("1" of "1.5e3"): complete only before another
                # character or at the end of the file.
                number = isinstance(value, (int, float))
                cut = end == len(self.buf) or (number and self.buf[end] in NUMBER_CHARS)
                if self.eof or not cut:
                    self.pos = end
                    return value
            except json.JSONDecodeError as err:
                if self.eof:
                    raise DataError(
                        f"{self.label}: record {index} is not valid JSON ({err.msg}); fix the file"
                    ) from None
            if len(self.buf) - self.pos > MAX_RECORD_BYTES:
                raise DataError(
                    f"{self.label}: record {index} is not valid JSON or longer than "
                    f"{MAX_RECORD_BYTES >> 20} MB"
                )
            self.fill()


NUMBER_CHARS = frozenset("0123456789+-.eE")


def text_documents(source: Source, body, label: str) -> Iterator[tuple[str, str, str]]:
    mode = source.documents
    if mode == "file":
        raw = body.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise DataError(
                f"{label}: longer than {MAX_RECORD_BYTES >> 20} MB, too long for one document; set "
                f"{source.key}.documents: paragraph or line"
            )
        line = raw[: _bad_utf8_start(raw)].count(b"\n") + 1
        text = _utf8(raw, label, f"line {line}")
        yield _plain(text), label, "the file"
        return
    paragraph: list[str] = []
    size, start = 0, 1
    for number, raw in enumerate(iter(lambda: body.readline(MAX_RECORD_BYTES + 1), b""), start=1):
        if len(raw) > MAX_RECORD_BYTES:
            raise DataError(f"{label}: line {number} is longer than {MAX_RECORD_BYTES >> 20} MB")
        line = _utf8(raw, label, f"line {number}")
        if number == 1:
            line = line.removeprefix("\ufeff")
        if mode == "line":
            yield _plain(line), label, f"line {number}"
            continue
        if line.strip():
            if not paragraph:
                start = number
            paragraph.append(line)
            size += len(raw)
            if size > MAX_RECORD_BYTES:
                raise DataError(f"{label}: the paragraph from line {start} is longer than 64 MB")
        elif paragraph:
            yield _plain("".join(paragraph)), label, f"line {start}"
            paragraph, size = [], 0
    if paragraph:
        yield _plain("".join(paragraph)), label, f"line {start}"


def _bad_utf8_start(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return 0


def _plain(text: str) -> str:
    """Plain text as a document: Windows line ends become \\n, a byte order mark goes."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def parquet_documents(source: Source, body, label: str, spool_dir) -> Iterator[tuple[str, str, str]]:
    """Rows of a Parquet file by batch. Parquet needs random access: an archive member or a compressed file is
    first copied to a temporary file (disk, not memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    to_text = record_text_function(source.text, source.key)
    columns = sorted({name.split(".")[0] for name in template_fields(source.text, source.key)})
    with tempfile.NamedTemporaryFile(dir=spool_dir, suffix=".parquet") as spool:
        target = getattr(body, "name", None)
        if not (isinstance(target, (str, bytes)) and os.path.isfile(target) and body.seekable()):
            shutil.copyfileobj(body, spool, BLOCK)
            spool.flush()
            target = spool.name
        try:
            parquet = pq.ParquetFile(target)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{label}: not a Parquet file ({err}); set {source.key}.format") from None
        names = parquet.schema_arrow.names
        absent = [c for c in columns if c not in names]
        if absent:
            raise DataError(
                f"{label}: {source.key}.text {source.text!r} names the column {absent[0]!r}, which the file "
                f"lacks (its columns: {', '.join(names)})"
            )
        row = 0
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for record in batch.to_pylist():
                text = _record_text(source, to_text, record, label, f"row {row}")
                if text is not None:
                    yield text, label, f"row {row}"
                row += 1
