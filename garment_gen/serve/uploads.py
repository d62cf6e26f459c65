"""Read uploads in memory and refuse bad ones before any image is decoded.

A multipart body is parsed as it streams in (python-multipart), into bytes held in memory:
nothing is spooled to disk and no client-given file name is ever used as a path. A part
over ``max_part_bytes`` or a body over ``max_body_bytes`` stops the read at once (413). An
image's width x height is read from its header and checked against ``max_pixels`` before
its pixels are decoded (decompression bombs, 413). Every refusal is an :class:`UploadError`
naming the form field.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MIN_SIDE = 8


class UploadError(Exception):
    """A request the server refuses: HTTP ``status``, a one-line ``message``, the form ``field``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        self.status = int(status)
        self.message = " ".join(str(message).split())  # one line, always
        self.field = field
        super().__init__(self.message)


@dataclass
class Part:
    """One form part: its bytes, whether it was a file, and the client's file name (a label only)."""

    name: str
    data: bytes
    is_file: bool
    filename: str | None = None

    def text(self) -> str:
        """The part as text (UTF-8, surrounding spaces removed)."""
        try:
            return self.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UploadError(422, f"{self.name}: not UTF-8 text", self.name) from None


@dataclass
class Form:
    """The parts of a multipart body, in the order they came."""

    parts: list[Part] = field(default_factory=list)

    def get(self, name: str) -> list[Part]:
        """Every part called ``name``."""
        return [p for p in self.parts if p.name == name]

    def first(self, name: str) -> Part | None:
        """The first part called ``name``, or None."""
        found = self.get(name)
        return found[0] if found else None

    def names(self) -> set[str]:
        """Names of the parts present."""
        return {p.name for p in self.parts}


def _options(header: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    from python_multipart.multipart import parse_options_header

    return parse_options_header(header)


class _Collector:
    """python-multipart callbacks that keep parts in memory under the size limits."""

    def __init__(self, max_part_bytes: int, max_parts: int) -> None:
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self.form = Form()
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._part: Part | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        if len(self.form.parts) >= self.max_parts:
            raise UploadError(413, f"too many form parts (limit {self.max_parts})")
        self._headers, self._chunks, self._size, self._part = {}, [], 0, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, opts = _options(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise UploadError(422, "a form part has no name")
        filename = opts.get(b"filename")
        self._part = Part(
            name=name,
            data=b"",
            is_file=filename is not None,
            filename=filename.decode("utf-8", "replace") if filename is not None else None,
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._part is not None and self._size > self.max_part_bytes:
            raise UploadError(
                413,
                f"{self._part.name}: upload is over the limit of {_mb(self.max_part_bytes)}",
                self._part.name,
            )
        self._chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self._part is not None:
            self._part.data = b"".join(self._chunks)
            self.form.parts.append(self._part)
        self._chunks, self._part = [], None


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1e6 else f"{n / 1e3:g} kB"


async def read_form(request, max_part_bytes: int, max_body_bytes: int, max_parts: int = 40) -> Form:
    """Parse a ``multipart/form-data`` request body into memory.

    Args:
        request: a Starlette/FastAPI ``Request``.
        max_part_bytes: largest allowed part (one uploaded file).
        max_body_bytes: largest allowed body; a ``Content-Length`` above it is refused
            before reading.
        max_parts: most parts in the body.

    Raises:
        UploadError: 415 not multipart, 413 over a limit, 400 a malformed body.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    ctype, opts = _options(request.headers.get("content-type", "").encode("latin-1"))
    if ctype == b"application/x-www-form-urlencoded":
        return await _read_urlencoded(request, min(max_body_bytes, 1 << 16), max_parts)
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise UploadError(
            415, "send the images as multipart/form-data (an HTML form, or curl -F field=@file)"
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise UploadError(413, f"request body is over the limit of {_mb(max_body_bytes)}")
    collector = _Collector(max_part_bytes, max_parts)
    parser = MultipartParser(opts[b"boundary"], collector.callbacks())
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_body_bytes:
                raise UploadError(413, f"request body is over the limit of {_mb(max_body_bytes)}")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    return collector.form


async def _read_urlencoded(request, max_bytes: int, max_parts: int) -> Form:
    """A URL-encoded form (text fields only: sample ids and options)."""
    from urllib.parse import parse_qsl

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise UploadError(
                413,
                f"form is over the limit of {_mb(max_bytes)}; upload images as multipart/form-data",
            )
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=max_parts)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UploadError(400, f"malformed form: {exc}") from None
    return Form([Part(k, v.encode("utf-8"), False) for k, v in pairs])


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes of a PNG, JPEG or WebP -> PIL image (EXIF orientation applied), checked first.

    The header's width x height is checked against ``max_pixels`` before decoding.

    Raises:
        UploadError: 422 empty, not an image, corrupt or tiny; 413 too many pixels.
    """
    if not data:
        raise UploadError(422, f"{field}: empty file (0 bytes)", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own guard, at twice its limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise UploadError(
            413, f"{field}: image has {size}, over the limit of {max_pixels:,}", field
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(
            422, f"{field}: not a readable image (PNG, JPEG or WebP expected)", field
        ) from None
    w, h = img.size
    if w * h > max_pixels:
        raise UploadError(
            413,
            f"{field}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}",
            field,
        )
    if min(w, h) < MIN_SIDE:
        raise UploadError(
            422, f"{field}: image is only {w}x{h} pixels (at least {MIN_SIDE} a side)", field
        )
    try:
        img.load()
    except Exception:  # noqa: BLE001 - any decoder failure is the file's fault
        raise UploadError(422, f"{field}: corrupt or truncated image", field) from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    return img


def safe_label(filename: str | None, fallback: str, limit: int = 24) -> str:
    """A short label from a client's file name (its stem, letters/digits/-/_ only), for grids."""
    stem = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:limit]
    return stem or fallback
